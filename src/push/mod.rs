//! LAN pushes (issue 12): builders publish to the appliance with `nix copy --to http://…` (HTTP PUT,
//! a token in their netrc), and what they publish is verified before anyone is served it.
//!
//! The flow Nix follows (docs/configuration.md, "Pushes", has the whole contract): for each path,
//! `PUT nar/<FileHash>.nar<ext>` then `PUT <hash>.narinfo`. A NAR upload is hashed as it arrives and
//! kept in `tmp/` only if its bytes are the file its name says ([`receive`]); it then waits, bounded in
//! count, bytes and age, for its narinfo ([`pending`]). The narinfo must be well formed, name the URL's
//! store hash, lie within the token's scope, and carry a signature by a key trusted for pushes — or the
//! token lets the appliance sign. Its NAR is then decompressed and checked against the signed NarHash
//! and NarSize, and both are recorded in one index transaction under the source `push:<token>`
//! ([`accept`]), with the NAR kept from eviction unless `push_lru` is set. From then on the path is
//! served like any other, before any source is asked for it.

pub mod accept;
pub mod error;
pub mod pending;
pub mod receive;
pub mod tokens;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::app::App;
use crate::config::PushConfig;
use crate::index::Evicted;
use crate::metrics::Metrics;
use crate::nix::signing::PublicKey;
use crate::trust::Trust;
pub use error::PushError;
use pending::{Committing, Ledger, PendingNars};
pub use tokens::Token;

/// How often waiting uploads are expired and pushed rows reconciled with the index.
const UPKEEP_EVERY: Duration = Duration::from_secs(30);

/// The appliance's push state: tokens, trust, what uploads hold.
pub struct Pushes {
    tokens: Vec<Token>,
    trusted: Vec<PublicKey>,
    config: PushConfig,
    ledger: Arc<Ledger>,
    pending: PendingNars,
    /// One narinfo at a time per NAR: the second of two builders pushing the same path waits for the
    /// first, then finds it recorded.
    turns: crate::turns::Turns<crate::nix::hash::Sha256Hash>,
    committing: Committing,
}

/// Why the push tokens could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("push token {name} ({path}): {reason}")]
pub struct TokenError {
    /// The token's name.
    pub name: String,
    /// Its file.
    pub path: String,
    /// What is wrong (never the secret).
    pub reason: String,
}

impl Pushes {
    /// Reads every token's file. Fails on an unreadable, short or duplicate secret.
    pub fn new(config: &PushConfig) -> Result<Pushes, TokenError> {
        let mut tokens: Vec<Token> = Vec::with_capacity(config.tokens.len());
        for t in &config.tokens {
            let fail = |reason: String| TokenError {
                name: t.name.clone(),
                path: t.token_file.display().to_string(),
                reason,
            };
            let token = Token::load(t).map_err(fail)?;
            if let Some(other) = tokens.iter().find(|o| o.same_secret(&token)) {
                return Err(fail(format!("same secret as token {}", other.name)));
            }
            tokens.push(token);
        }
        let trusted = PublicKey::parse_all(&config.trusted_keys).map_err(|e| TokenError {
            name: "-".into(),
            path: "push_trusted_keys".into(),
            reason: e.to_string(),
        })?;
        Ok(Pushes {
            tokens,
            trusted,
            config: config.clone(),
            ledger: Arc::default(),
            pending: PendingNars::default(),
            turns: crate::turns::Turns::default(),
            committing: Committing::default(),
        })
    }

    /// The configured tokens.
    pub fn tokens(&self) -> &[Token] {
        &self.tokens
    }

    /// The token a request's Authorization header presents: `Unauthorized` without credentials,
    /// `Forbidden` with credentials that match no token.
    pub fn authorize(&self, header: Option<&str>) -> Result<&Token, PushError> {
        match tokens::presented(header) {
            tokens::Presented::Nothing => Err(PushError::Unauthorized),
            tokens::Presented::Secret(s) => {
                tokens::find(&self.tokens, &s).ok_or(PushError::Forbidden)
            }
        }
    }

    /// Each token's source name and trust policy, for `trust::Policies`: a token that lets the
    /// appliance sign vouches for its uploads itself; the others need a `push_trusted_keys` signature.
    pub fn policies(&self) -> Vec<(String, Trust)> {
        self.tokens
            .iter()
            .map(|t| {
                let trust = if t.sign {
                    Trust::AcceptUnsigned
                } else {
                    Trust::Keys(self.trusted.clone())
                };
                (t.source(), trust)
            })
            .collect()
    }

    /// Runs `f` unless a push is moving `file_hash`'s file into the store (for the orphan sweep).
    pub fn unless_committing<T>(
        &self,
        file_hash: &crate::nix::hash::Sha256Hash,
        f: impl FnOnce() -> T,
    ) -> Option<T> {
        self.committing.unless_committing(file_hash, f)
    }

    /// What `/_status` shows; `None` when no token is configured.
    pub fn status(&self, metrics: &Metrics) -> Option<PushStatus> {
        if self.tokens.is_empty() {
            return None;
        }
        let (pending, pending_bytes) = self.pending.counts();
        let tokens: Vec<TokenStatus> = self
            .tokens
            .iter()
            .map(|t| {
                let (stored_bytes, stored_paths, held_bytes) = self.ledger.usage(&t.name);
                let totals = metrics.push_totals(&t.name);
                TokenStatus {
                    name: t.name.clone(),
                    paths: t.paths.clone(),
                    quota: t.quota,
                    sign: t.sign,
                    stored_bytes,
                    stored_paths,
                    held_bytes,
                    accepted: totals.accepted,
                    refused: totals.refused,
                    received_bytes: totals.received_bytes,
                }
            })
            .collect();
        Some(PushStatus {
            max_bytes: self.config.max_size,
            stored_bytes: tokens.iter().map(|t| t.stored_bytes).sum(),
            lru: self.config.lru,
            trusted_keys: self.config.trusted_keys.clone(),
            pending,
            pending_bytes,
            refused_without_token: metrics.push_totals(crate::metrics::NO_TOKEN).refused,
            tokens,
        })
    }

    fn publish_gauges(&self, metrics: &Metrics) {
        for t in &self.tokens {
            let (bytes, paths, _) = self.ledger.usage(&t.name);
            metrics.push_stored(&t.name, bytes, paths);
        }
        metrics.push_pending(self.pending.counts().0);
    }
}

/// Pushes in `/_status`.
#[derive(Debug, Clone, Serialize)]
pub struct PushStatus {
    /// `push_max_size`.
    pub max_bytes: u64,
    /// Bytes of pushed NAR files stored, all tokens.
    pub stored_bytes: u64,
    /// Whether pushed NARs are evicted like fetched ones (`push_lru`) rather than kept.
    pub lru: bool,
    /// `push_trusted_keys`.
    pub trusted_keys: Vec<String>,
    /// NAR uploads waiting for their narinfo.
    pub pending: usize,
    /// Their bytes.
    pub pending_bytes: u64,
    /// Uploads refused for want of a valid token.
    pub refused_without_token: u64,
    /// Each token.
    pub tokens: Vec<TokenStatus>,
}

/// One token in `/_status` (never its secret).
#[derive(Debug, Clone, Serialize)]
pub struct TokenStatus {
    /// Its name.
    pub name: String,
    /// The store-path names it may publish.
    pub paths: Vec<String>,
    /// Its quota in bytes, if any.
    pub quota: Option<u64>,
    /// Whether the appliance signs its unsigned uploads.
    pub sign: bool,
    /// Bytes of NAR files it pushed that are stored.
    pub stored_bytes: u64,
    /// Paths it pushed that are stored.
    pub stored_paths: u64,
    /// Bytes of its uploads running or waiting for their narinfo.
    pub held_bytes: u64,
    /// Uploads accepted since start (NARs, narinfos and others).
    pub accepted: u64,
    /// Uploads refused since start.
    pub refused: u64,
    /// NAR bytes received since start.
    pub received_bytes: u64,
}

/// Background upkeep, started by `housekeeping`: reconciles the pushed rows with the index at start
/// and every 30 s, and drops uploads that waited too long for their narinfo.
pub async fn run_upkeep(app: Arc<App>) {
    loop {
        let a = app.clone();
        match tokio::task::spawn_blocking(move || upkeep_once(&a)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "push upkeep failed"),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => tracing::error!(error = %e, "push upkeep task failed"),
        }
        tokio::select! {
            () = tokio::time::sleep(UPKEEP_EVERY) => {}
            () = app.stopped.cancelled() => return,
        }
    }
}

fn upkeep_once(app: &App) -> Result<(), crate::index::IndexError> {
    let pushes = &app.pushes;
    for (name, token) in pushes.pending.expire(pushes.config.pending_timeout) {
        tracing::warn!(nar = %name, token = %token, "uploaded NAR got no narinfo in time; dropped");
        app.metrics.push_refused(Some(&token), "nar", "missing_nar");
    }
    reconcile(app)
}

/// Brings the pushed rows in step with the index (see [`crate::index::Index::reconcile_pushes`]),
/// refreshes the ledger and the gauges. Blocking.
pub fn reconcile(app: &App) -> Result<(), crate::index::IndexError> {
    let forgotten = app.index.reconcile_pushes(!app.pushes.config.lru)?;
    for row in &forgotten {
        tracing::info!(hash = %row.hash, token = %row.token, "pushed path no longer stored or no longer the push's; forgotten");
    }
    let mut stored: HashMap<String, (u64, u64)> = HashMap::new();
    for row in app.index.pushed()? {
        let e = stored.entry(row.token).or_default();
        e.0 += row.file_size;
        e.1 += 1;
    }
    app.pushes.ledger.set_stored(stored);
    app.pushes.publish_gauges(&app.metrics);
    Ok(())
}

/// Called after eviction (blocking): pushed NARs that went (with `push_lru`) take their narinfos
/// with them at once, since nothing can fetch them again.
pub fn forget_evicted(app: &App, evicted: &[Evicted]) {
    if evicted.iter().any(|e| {
        e.record
            .source
            .starts_with(crate::metrics::PUSH_SOURCE_PREFIX)
    }) && let Err(e) = reconcile(app)
    {
        tracing::error!(error = %e, "forgetting evicted pushed paths failed");
    }
}
