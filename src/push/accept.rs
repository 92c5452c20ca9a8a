//! `PUT /<hash>.narinfo`: the narinfo that makes an uploaded NAR a published path. It is checked
//! (form, store hash, scope, signature), its NAR found (waiting upload, or already stored) and checked
//! against the signed NarHash and NarSize, and both are recorded in one durable index transaction.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::error::PushError;
use super::pending::PendingNar;
use super::tokens::Token;
use crate::app::App;
use crate::clock::unix_now;
use crate::fill::{Fills, Joined, Want};
use crate::index::{NarRecord, NarinfoRow, PushCommit, PushRecorded};
use crate::nix::nar_name::NarName;
use crate::nix::narinfo::NarInfo;
use crate::nix::store_path::StoreHash;
use crate::verify::{Expected, NarVerifier};

/// Bytes read per step when checking a waiting upload.
const READ_CHUNK: usize = 1 << 20;

/// A narinfo that was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The store path.
    pub store_path: String,
    /// Bytes of its NAR file.
    pub file_size: u64,
    /// False when the same path had been pushed before (nothing changed).
    pub new: bool,
}

/// Takes the narinfo of `hash`, uploaded with `token`. A refused narinfo takes its waiting upload with it.
pub async fn accept_narinfo(
    app: &Arc<App>,
    token: &Token,
    hash: StoreHash,
    body: &[u8],
) -> Result<Accepted, PushError> {
    let narinfo = parse(hash, body)?;
    let name = NarName::for_narinfo(&narinfo)
        .ok_or_else(|| PushError::Invalid("a compressed NAR needs a FileHash".into()))?;
    let result = accept_parsed(app, token, hash, narinfo, name).await;
    if result.is_err() {
        drop_pending(app, &name);
    }
    result
}

async fn accept_parsed(
    app: &Arc<App>,
    token: &Token,
    hash: StoreHash,
    narinfo: NarInfo,
    name: NarName,
) -> Result<Accepted, PushError> {
    let mut narinfo = check(app, token, narinfo, &name)?;
    let _turn = app.pushes.turns.turn(name.file_hash).await;
    let probe = record(token, &narinfo, &name, narinfo.file_size);
    let (a, fh) = (app.clone(), name.file_hash);
    let conflict =
        tokio::task::spawn_blocking(move || a.index.push_conflict(&hash, &fh, &probe)).await??;
    if let Some(c) = conflict {
        return Err(PushError::Conflict(c));
    }
    let (file, size) = match app.pushes.pending.take(&name.file_hash) {
        Some(p) => {
            let (p, size) = check_upload(p, &narinfo).await?;
            (Some(p), size)
        }
        None => (None, present_nar(app, &name, &narinfo).await?),
    };
    narinfo.file_size = Some(size);
    // A path this token pushed before is not counted twice against its quota.
    let row = app.index.narinfo(&hash)?;
    if row.is_none_or(|r| r.source != token.source()) {
        let ledger = &app.pushes.ledger;
        ledger.check_quota(&token.name, token.quota, size)?;
    }
    if let Some(key) = &app.signing_key {
        narinfo.sign_with(key);
    }
    let new = record_push(app, token, hash, &narinfo, &name, file, size).await?;
    Ok(Accepted {
        store_path: narinfo.store_path.to_string(),
        file_size: size,
        new,
    })
}

/// Records the checked narinfo and its NAR (moving the upload into the store). Whether it is new.
async fn record_push(
    app: &Arc<App>,
    token: &Token,
    hash: StoreHash,
    narinfo: &NarInfo,
    name: &NarName,
    upload: Option<PendingNar>,
    size: u64,
) -> Result<bool, PushError> {
    let nar = record(token, narinfo, name, Some(size));
    let row = NarinfoRow {
        recorded: unix_now(),
        policy: app.policies.tag(&token.source()).unwrap_or(0),
        source: token.source(),
        signer: app.signer.clone(),
        file_hash: name.file_hash,
        text: narinfo.to_text(),
    };
    let (a, token_name) = (app.clone(), token.name.clone());
    let recorded = tokio::task::spawn_blocking(move || {
        commit(&a, hash, upload, &row, &nar, &token_name, size)
    })
    .await??;
    match recorded {
        PushRecorded::Stored => {
            app.pushes.ledger.stored(&token.name, size);
            app.pushes.publish_gauges(&app.metrics);
            Ok(true)
        }
        PushRecorded::AlreadyPushed { .. } => Ok(false),
        PushRecorded::Conflict(c) => Err(PushError::Conflict(c)),
    }
}

/// A well-formed narinfo for the URL's store hash.
fn parse(hash: StoreHash, body: &[u8]) -> Result<NarInfo, PushError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| PushError::Invalid("the narinfo is not UTF-8".into()))?;
    let narinfo =
        NarInfo::parse(text).map_err(|e| PushError::Invalid(format!("bad narinfo: {e}")))?;
    if narinfo.store_path.hash != hash {
        return Err(PushError::Invalid(format!(
            "StorePath {} does not have the hash of the URL ({hash})",
            narinfo.store_path
        )));
    }
    Ok(narinfo)
}

/// Scope, compression, signature; rewrites URL and FileHash to the canonical ones.
fn check(
    app: &App,
    token: &Token,
    mut narinfo: NarInfo,
    name: &NarName,
) -> Result<NarInfo, PushError> {
    if !token.allows(&narinfo.store_path.name) {
        return Err(PushError::Scope(narinfo.store_path.to_string()));
    }
    if !crate::verify::supported(narinfo.compression) {
        return Err(PushError::Compression(narinfo.compression.as_str()));
    }
    if !narinfo.verify_with(&app.pushes.trusted) && !token.sign {
        return Err(PushError::Signature);
    }
    narinfo.url = name.url_path();
    narinfo.file_hash = Some(name.file_hash);
    Ok(narinfo)
}

/// The NAR record a push gets.
fn record(token: &Token, narinfo: &NarInfo, name: &NarName, size: Option<u64>) -> NarRecord {
    NarRecord {
        compression: name.compression,
        file_size: size,
        nar_hash: narinfo.nar_hash,
        nar_size: narinfo.nar_size,
        source: token.source(),
        url: name.url_path(),
    }
}

/// Decompresses the waiting upload and checks it against the narinfo (FileSize, NarHash, NarSize).
async fn check_upload(p: PendingNar, narinfo: &NarInfo) -> Result<(PendingNar, u64), PushError> {
    if narinfo.file_size.is_some_and(|s| s != p.size) {
        return Err(PushError::NarMismatch(format!(
            "FileSize {} but the upload has {} bytes",
            narinfo.file_size.unwrap_or(0),
            p.size
        )));
    }
    let expected = Expected {
        compression: p.name.compression,
        file_hash: p.name.file_hash,
        file_size: Some(p.size),
        nar_hash: narinfo.nar_hash,
        nar_size: narinfo.nar_size,
    };
    tokio::task::spawn_blocking(move || {
        let checked = verify_file(&p.file, expected);
        checked.map(|size| (p, size))
    })
    .await?
}

fn verify_file(file: &std::fs::File, expected: Expected) -> Result<u64, PushError> {
    let mismatch = |e: crate::verify::VerifyError| PushError::NarMismatch(e.to_string());
    let mut verifier = NarVerifier::new(expected).map_err(mismatch)?;
    let mut buf = vec![0u8; READ_CHUNK];
    let mut at = 0u64;
    loop {
        let n = file
            .read_at(&mut buf, at)
            .map_err(|e| PushError::Internal(format!("reading an upload: {e}")))?;
        if n == 0 {
            break;
        }
        verifier.update(&buf[..n]).map_err(mismatch)?;
        at += n as u64;
    }
    verifier.finish().map_err(mismatch)
}

/// The NAR of a narinfo whose upload is not waiting: stored already (by a fill or another push, and
/// verified against the same NarHash), or known from a source and fetched now (Nix skips the upload
/// when HEAD says the file exists). Returns its size.
async fn present_nar(app: &Arc<App>, name: &NarName, narinfo: &NarInfo) -> Result<u64, PushError> {
    let known = app.index.nar(&name.file_hash)?;
    let record = match known {
        Some((record, true)) => return record.file_size.ok_or(PushError::MissingNar),
        Some((record, false))
            if !record
                .source
                .starts_with(crate::metrics::PUSH_SOURCE_PREFIX) =>
        {
            record
        }
        _ => return Err(PushError::MissingNar),
    };
    if record.nar_hash != narinfo.nar_hash || record.nar_size != narinfo.nar_size {
        return Err(PushError::MissingNar);
    }
    match Fills::join_or_start(app, *name, record, Want::Keep) {
        Ok(Joined::Fill(sub)) => {
            sub.fill().finished().await.map_err(|f| {
                tracing::warn!(nar = %name, failure = ?f, "fetching the NAR of a pushed narinfo failed");
                PushError::MissingNar
            })?;
        }
        Ok(Joined::Stored) => {}
        Ok(Joined::PassThrough) | Err(_) => return Err(PushError::MissingNar),
    }
    match app.index.nar(&name.file_hash)? {
        Some((record, true)) => record.file_size.ok_or(PushError::MissingNar),
        _ => Err(PushError::MissingNar),
    }
}

/// Moves the checked upload (if any) into the store and records the push. Blocking. A file moved
/// here and not recorded is removed again, unless the index says someone else stored it meanwhile.
fn commit(
    app: &App,
    hash: StoreHash,
    upload: Option<PendingNar>,
    row: &NarinfoRow,
    nar: &NarRecord,
    token: &str,
    size: u64,
) -> Result<PushRecorded, PushError> {
    let name = NarName {
        file_hash: row.file_hash,
        compression: nar.compression,
    };
    let _committing = app.pushes.committing.start(name.file_hash);
    let moved = match upload {
        Some(p) => {
            app.store.commit(p.guard, &p.file, &name)?;
            true
        }
        None => false,
    };
    let result = app.index.commit_push(&PushCommit {
        hash,
        row,
        nar,
        token,
        file_size: size,
        protect: !app.pushes.config.lru,
        now: unix_now(),
    });
    let kept = matches!(result, Ok(PushRecorded::Stored));
    if moved && !kept && !matches!(app.index.nar(&name.file_hash), Ok(Some((_, true)))) {
        let _ = app.store.remove(&name);
    }
    Ok(result?)
}

/// Drops the waiting upload of a refused narinfo's NAR at once (rather than at its time-out).
fn drop_pending(app: &App, name: &NarName) {
    drop(app.pushes.pending.take(&name.file_hash));
    app.pushes.publish_gauges(&app.metrics);
}
