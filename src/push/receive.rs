//! `PUT /nar/<FileHash>.nar<ext>`: a NAR file arrives. Its room is held (the token's quota,
//! `push_max_size`, the disk budget) before a byte is read, it is hashed while it is written to a temp
//! file, and it is kept — waiting for its narinfo — only if its sha256 and size are what its name and
//! Content-Length say. A cut-off, stalled or mismatching upload leaves nothing behind.

use std::fmt::Display;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};

use super::error::PushError;
use super::pending::PendingNar;
use super::tokens::Token;
use crate::app::App;
use crate::budget::NoSpace;
use crate::nix::hash::Sha256Hash;
use crate::nix::nar_name::NarName;

/// Bytes gathered before one write (and one hand-off to the blocking pool).
const WRITE_BATCH: usize = 1 << 20;

/// What became of a NAR upload that was not refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NarReceived {
    /// Received and checked; it waits for its narinfo.
    Pending,
    /// The same file already waits for its narinfo (this upload was not read).
    AlreadyPending,
    /// The same file is already stored (this upload was not read, or was dropped).
    AlreadyStored,
}

/// Receives a NAR upload of `length` bytes (Content-Length) from `body`.
pub async fn receive_nar<S, E>(
    app: &Arc<App>,
    token: &Token,
    name: NarName,
    length: Option<u64>,
    body: S,
) -> Result<NarReceived, PushError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Display,
{
    let pushes = &app.pushes;
    if !crate::verify::supported(name.compression) {
        return Err(PushError::Compression(name.compression.as_str()));
    }
    // Nix asks with HEAD first and skips stored files; a second builder may still race us here.
    if let Some((_, true)) = app.index.nar(&name.file_hash)? {
        return Ok(NarReceived::AlreadyStored);
    }
    if pushes.pending.contains(&name.file_hash) {
        return Ok(NarReceived::AlreadyPending);
    }
    let length = length.ok_or(PushError::LengthRequired)?;
    if pushes.pending.counts().0 >= pushes.config.pending_max {
        return Err(PushError::Busy);
    }
    let hold = pushes
        .ledger
        .hold(&token.name, token.quota, length, pushes.config.max_size)?;
    let a = app.clone();
    // Room, then the temp file, both on the blocking pool (creating a file can take a while on a busy
    // disk; see `fill.rs`).
    let (reservation, created) = tokio::task::spawn_blocking(move || {
        a.budget
            .reserve(&a, length)
            .map(|r| (r, a.store.temp_file(&name)))
    })
    .await?
    .map_err(|e| match e {
        NoSpace::LargerThanCap => PushError::TooLarge("the NAR is larger than the store's cap"),
        NoSpace::Full(why) => {
            tracing::warn!(reason = %why, "push refused: no room in the store");
            PushError::NoRoom
        }
    })?;
    let (guard, file) = created?;
    let (file, sha, size) = write_body(app, &token.name, file, length, body, &reservation).await?;
    if size != length {
        return Err(PushError::CutOff(format!("got {size} of {length} bytes")));
    }
    let got = Sha256Hash(sha.finalize().into());
    if got != name.file_hash {
        return Err(PushError::FileMismatch(format!(
            "its sha256 is {got}, its name says {}",
            name.file_hash
        )));
    }
    if let Some((_, true)) = app.index.nar(&name.file_hash)? {
        return Ok(NarReceived::AlreadyStored);
    }
    let pending = PendingNar::new(name, (guard, file), size, &token.name, hold, reservation);
    let received = if pushes.pending.insert(pending) {
        NarReceived::Pending
    } else {
        NarReceived::AlreadyPending
    };
    pushes.publish_gauges(&app.metrics);
    Ok(received)
}

/// Streams the body into `file`, hashing it; stops at the first byte past `length`, at a broken
/// connection, and after `stall_timeout` without a byte. Returns the file, its hash state and size.
async fn write_body<S, E>(
    app: &Arc<App>,
    token: &str,
    mut file: File,
    length: u64,
    mut body: S,
    reservation: &crate::budget::Reservation,
) -> Result<(File, Sha256, u64), PushError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Display,
{
    let stall = app.config.stall_timeout;
    let mut sha = Sha256::new();
    let mut written = 0u64;
    let mut batch: Vec<Bytes> = Vec::new();
    let mut batch_len = 0usize;
    loop {
        let next = tokio::time::timeout(stall, body.next())
            .await
            .map_err(|_| PushError::Stalled)?;
        let chunk = match next {
            None => None,
            Some(Ok(chunk)) => Some(chunk),
            Some(Err(e)) => return Err(PushError::CutOff(e.to_string())),
        };
        if let Some(chunk) = chunk.as_ref() {
            app.metrics.push_received(token, chunk.len() as u64);
            if written + (batch_len + chunk.len()) as u64 > length {
                return Err(PushError::FileMismatch(
                    "more bytes than its Content-Length".into(),
                ));
            }
            batch_len += chunk.len();
            batch.push(chunk.clone());
        }
        let last = chunk.is_none();
        if batch_len >= WRITE_BATCH || (last && batch_len > 0) {
            let at = written;
            let chunks = std::mem::take(&mut batch);
            (file, sha) = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
                let mut at = at;
                for c in &chunks {
                    sha.update(c);
                    file.write_all_at(c, at)?;
                    at += c.len() as u64;
                }
                Ok((file, sha))
            })
            .await?
            .map_err(|e| {
                tracing::error!(error = %e, "push: writing an upload failed");
                PushError::NoRoom
            })?;
            written += batch_len as u64;
            reservation.wrote(batch_len as u64);
            batch_len = 0;
        }
        if last {
            return Ok((file, sha, written));
        }
    }
}
