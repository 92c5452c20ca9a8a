//! Answering a narinfo request: the index, then the negative cache, then every source at once; what a
//! source answers is validated, rewritten to this appliance's canonical NAR URL and recorded.

use std::sync::Arc;

use crate::app::App;
use crate::clock::unix_now;
use crate::index::{IndexError, NarRecord, NarinfoRow, NewNarinfo, Recorded};
use crate::metrics::NarinfoResult;
use crate::nix::nar_name::NarName;
use crate::nix::narinfo::{Compression, NarInfo};
use crate::nix::store_path::StoreHash;
use crate::sources::{Lookup, Rejection, SourceError};
use crate::trust::Verdict;

/// Why a narinfo could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// No source has it, and at least one could not be asked.
    #[error("upstream: {0}")]
    Source(#[from] SourceError),
    /// The index failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// A blocking task failed.
    #[error("task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Who asks for a narinfo: what is fetched ahead for it (`prefetch.rs`) depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asker {
    /// A client's GET, which substitutes next: the references' narinfos and the NAR are fetched ahead.
    Client,
    /// A client's HEAD, which only asks whether the path is here (`nix copy --to` before a push asks so
    /// for every path): the references' narinfos are fetched ahead; the NAR waits for a GET.
    Probe,
    /// Fetching ahead: as `Probe`, and not counted as a client's request.
    Ahead,
    /// A warm job, which follows the closure itself: nothing is fetched ahead for it.
    Warm,
}

/// The narinfo of `hash` for `asker` (its text, or `None` when it is absent everywhere) and how it was
/// reached. Counted in the narinfo metrics unless it was fetched ahead (`prefetch.rs` counts those).
pub async fn narinfo_as(
    app: &Arc<App>,
    hash: StoreHash,
    asker: Asker,
) -> Result<(NarinfoResult, Option<String>), LookupError> {
    let answered = answer(app, hash, asker).await;
    if asker == Asker::Ahead {
        return answered.map(|(result, _, text)| (result, text));
    }
    match answered {
        Ok((result, source, text)) => {
            app.metrics.narinfo(result, &source);
            Ok((result, text))
        }
        Err(e) => {
            app.metrics.narinfo(NarinfoResult::Error, "");
            Err(e)
        }
    }
}

/// The answer the index already has for a client (a hit, or a live negative entry), counted as
/// [`narinfo_as`] counts it, without waiting for anything: most requests of a warm cache are answered
/// so, with no future to build and poll. `None` when the sources must be asked, or the index failed:
/// the caller then takes [`narinfo_as`], which asks them or reports the failure.
pub fn narinfo_known(
    app: &App,
    hash: &StoreHash,
    asker: Asker,
) -> Option<(NarinfoResult, Option<String>)> {
    debug_assert!(asker != Asker::Ahead, "fetching ahead is not counted here");
    let (result, source, text) = known(app, hash, asker).ok()??;
    app.metrics.narinfo(result, &source);
    Some((result, text))
}

/// What the index already says: a recorded narinfo that today's trust policy still accepts, or a live
/// negative entry.
///
/// A read of a few hundred bytes, mostly from the page cache: done inline, because a hop to the blocking
/// pool per request cost more than the read itself (see docs/benchmarks.md).
fn known(
    app: &App,
    hash: &StoreHash,
    asker: Asker,
) -> Result<Option<(NarinfoResult, String, Option<String>)>, LookupError> {
    if let Some(row) = app.index.narinfo_shared(hash)? {
        match app.policies.verdict(&row) {
            Verdict::Current | Verdict::StillAccepted => {
                app.index.asked(hash, unix_now());
                if asker == Asker::Client {
                    app.prefetch.asked(app, hash);
                }
                let text = signed_now(app, &row.signer, &row.text);
                return Ok(Some((NarinfoResult::Hit, row.source.clone(), Some(text))));
            }
            // Recorded under trust that was taken away: not served; asked for again below (the sweep
            // removes the row).
            Verdict::SourceGone | Verdict::Refused => {}
        }
    }
    if app.index.is_negative(hash, unix_now())? {
        return Ok(Some((NarinfoResult::Negative, String::new(), None)));
    }
    Ok(None)
}

/// The answer, how it was reached and the source it came from (counted by the caller).
async fn answer(
    app: &Arc<App>,
    hash: StoreHash,
    asker: Asker,
) -> Result<(NarinfoResult, String, Option<String>), LookupError> {
    if let Some(known) = known(app, &hash, asker)? {
        return Ok(known);
    }
    // Boxed: the future of every request holds room for its largest state, and hyper moves it; a hit
    // should not carry (and copy) the upstream lookup's (see docs/benchmarks.md).
    Box::pin(ask_sources(app, hash, asker)).await
}

/// The answer when the index has none: the sources are asked, one lookup per hash at a time.
async fn ask_sources(
    app: &Arc<App>,
    hash: StoreHash,
    asker: Asker,
) -> Result<(NarinfoResult, String, Option<String>), LookupError> {
    // One upstream lookup per hash at a time: clients asking for the same missing path together (a
    // closure being fetched by several machines) wait for the first lookup and then read its result.
    let _turn = app.lookups.turn(hash).await;
    if let Some(known) = known(app, &hash, asker)? {
        return Ok(known);
    }
    // The shared bucket (issue 13), when configured, is asked before the upstreams.
    match app.sources.lookup_all(&hash).await {
        Lookup::Found {
            source: source_url,
            narinfo,
            nar_url,
        } => {
            let store_path = narinfo.store_path.to_string();
            let references: Vec<StoreHash> = narinfo.references.iter().map(|r| r.hash).collect();
            let a = app.clone();
            let recorded = source_url.clone();
            let recorded =
                tokio::task::spawn_blocking(move || record(&a, hash, *narinfo, recorded, nar_url))
                    .await??;
            let Some(text) = recorded else {
                // Its FileHash is known with other content: refused like a bad narinfo, so a
                // hostile source cannot break a path that is already there.
                let reason = "FileHash already recorded with another NarHash";
                tracing::warn!(source = %source_url, hash = %hash, reason, "upstream narinfo rejected");
                if let Some(u) = app.sources.by_url(&source_url) {
                    u.count_rejected(Rejection::FileHash, reason);
                }
                return Ok((NarinfoResult::Miss, String::new(), None));
            };
            app.metrics.fetched_narinfo(&store_path, &source_url);
            // Before the turn ends: a client waiting for this lookup finds it fetched ahead.
            app.prefetch
                .fetched(app, hash, references.into_iter(), asker);
            Ok((NarinfoResult::Fetched, source_url, Some(text)))
        }
        Lookup::Absent => {
            let a = app.clone();
            let until = unix_now() + app.config.negative_ttl.as_secs();
            tokio::task::spawn_blocking(move || a.index.record_negative(&hash, until)).await??;
            Ok((NarinfoResult::Miss, String::new(), None))
        }
        Lookup::Failed(e) => Err(e.into()),
    }
}

/// Rewrites `narinfo` to point at this appliance's content-addressed NAR URL and records both.
/// `None` when the index refused it (its FileHash is known with other content).
fn record(
    app: &App,
    hash: StoreHash,
    mut narinfo: NarInfo,
    source: String,
    nar_url: String,
) -> Result<Option<String>, IndexError> {
    // Sources hand us only narinfos for which this is Some (see `Upstream::narinfo`).
    let Some((file_hash, file_size)) = narinfo.file_hash_or_nar() else {
        return Err(IndexError::Corrupt("narinfo without a file hash".into()));
    };
    let name = NarName {
        file_hash,
        compression: narinfo.compression,
    };
    narinfo.url = name.url_path();
    narinfo.file_hash = Some(file_hash);
    narinfo.file_size = file_size;
    // Signed only now: the source's signature was checked (or the source is explicitly trusted), and the
    // NAR will be kept only if its NarHash matches this signed one.
    if let Some(key) = &app.signing_key {
        narinfo.sign_with(key);
    }
    let nar = NarRecord {
        compression: narinfo.compression,
        file_size,
        nar_hash: narinfo.nar_hash,
        nar_size: narinfo.nar_size,
        source: source.clone(),
        url: nar_url,
    };
    let text = if zstd_from_first_ask(app, &name, &nar) {
        // Issue 14: the zstd twin, by the original's name (`server/nar.rs`), before it exists. Its
        // FileHash and FileSize are not known yet, and Nix does without them (it checks NarHash).
        let mut served = narinfo.clone();
        served.url = NarName {
            file_hash,
            compression: Compression::Zstd,
        }
        .url_path();
        served.compression = Compression::Zstd;
        served.file_hash = None;
        served.file_size = None;
        served.to_text()
    } else {
        narinfo.to_text()
    };
    let row = NarinfoRow {
        recorded: unix_now(),
        policy: app.policies.tag(&source).unwrap_or(0),
        source,
        signer: app.signer.clone(),
        file_hash,
        text,
    };
    // With a shared bucket (issue 13), the narinfo also waits to be published there with its NAR.
    let new = NewNarinfo {
        hash,
        row: &row,
        nar: &nar,
    };
    let recorded = crate::bucket::publish::record(app, &new, &row.source)?;
    Ok((recorded == Recorded::Yes).then_some(row.text))
}

/// Whether a narinfo fetched now names its NAR's zstd twin by the original's name (issue 14): when
/// transcoding is on, the NAR is xz or bzip2, and its fill can make the twin beside it. Not with a
/// shared bucket, where the recorded text is published for other appliances, which know no such URL.
fn zstd_from_first_ask(app: &App, name: &NarName, nar: &NarRecord) -> bool {
    app.bucket.is_none()
        && crate::transcode::alongside::wanted(app, name, nar, app.index.file_bytes())
}

/// The recorded text, re-signed when the appliance's key changed since it was recorded: the old key's
/// signature goes, the current key's comes (none if signing was turned off).
fn signed_now(app: &App, signer: &str, text: &str) -> String {
    if signer == app.signer {
        return text.to_string();
    }
    let Ok(mut narinfo) = NarInfo::parse(text) else {
        return text.to_string();
    };
    if let Some((old_name, _)) = signer.split_once(':') {
        narinfo
            .sigs
            .retain(|s| crate::nix::signing::sig_key_name(s) != Some(old_name));
    }
    if let Some(key) = &app.signing_key {
        narinfo.sign_with(key);
    }
    narinfo.to_text()
}
