//! Making a twin's file again when a client (or a warm job) asks for it and it is not on disk:
//! evicted, or dropped as damaged. The original is fetched first if needed.

use std::sync::Arc;
use std::time::Duration;

use super::encode::thread_cpu;
use super::{TranscodeError, make_again};
use crate::app::App;
use crate::fill::{Failure, Fills, Joined, Want};
use crate::index::IndexError;
use crate::nix::hash::Sha256Hash;
use crate::nix::nar_name::NarName;
use crate::nix::narinfo::Compression;

/// Why a twin could not be made again for a client.
#[derive(Debug, thiserror::Error)]
pub enum RegenerateError {
    /// Fetching the original failed.
    #[error("fetching the original: {0:?}")]
    Fill(Failure),
    /// Starting the original's fill failed.
    #[error("fetching the original: {0}")]
    Start(#[from] crate::fill::FillError),
    /// The original's record is gone.
    #[error("the original is unknown")]
    Gone,
    /// Transcoding failed.
    #[error(transparent)]
    Transcode(#[from] TranscodeError),
    /// The blocking task failed.
    #[error("task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl From<IndexError> for RegenerateError {
    fn from(e: IndexError) -> Self {
        RegenerateError::Transcode(e.into())
    }
}

/// Makes the file of twin `name` again when it is not on disk: the original is fetched if needed (a
/// fill that is never abandoned), then transcoded at the twin's recorded level. `Ok(false)` when `name`
/// is not a twin (an ordinary NAR: fill it as usual).
pub async fn regenerate(app: &Arc<App>, name: &NarName) -> Result<bool, RegenerateError> {
    if name.compression != Compression::Zstd {
        return Ok(false);
    }
    let Some(original) = app.index.original_of(&name.file_hash)? else {
        return Ok(false);
    };
    let _turn = app.transcoder.regenerating.turn(name.file_hash).await;
    regenerate_locked(app, name, original).await.map(|()| true)
}

async fn regenerate_locked(
    app: &Arc<App>,
    name: &NarName,
    original: Sha256Hash,
) -> Result<(), RegenerateError> {
    if app.index.nar(&name.file_hash)?.is_some_and(|(_, s)| s) {
        return Ok(());
    }
    let Some((record, stored)) = app.index.nar(&original)? else {
        return Err(RegenerateError::Gone);
    };
    let Some(twin) = app.index.twin_of(&original)? else {
        return Err(RegenerateError::Gone);
    };
    let original_name = NarName {
        file_hash: original,
        compression: record.compression,
    };
    if !stored {
        match Fills::join_or_start(app, original_name, record.clone(), Want::Keep)? {
            Joined::Fill(sub) => {
                sub.fill().finished().await.map_err(RegenerateError::Fill)?;
            }
            Joined::Stored => {}
            Joined::PassThrough => {
                return Err(TranscodeError::NoRoom("larger than the store's cap".into()).into());
            }
        }
        wait_stored(app, &original).await?;
    }
    let a = app.clone();
    let expected = name.file_hash;
    let made = tokio::task::spawn_blocking(move || {
        let started = thread_cpu();
        let made = make_again(&a, &original_name, &record, expected, twin.level);
        a.metrics.transcode_cpu(thread_cpu() - started);
        made
    })
    .await??;
    tracing::info!(nar = %name, size = made, "transcoded NAR made again from its original");
    Ok(())
}

/// Waits until a verified fill of `file_hash` is committed (a fill releases its clients before it
/// made the file durable): at most 30 s.
pub async fn wait_stored(app: &App, file_hash: &Sha256Hash) -> Result<(), IndexError> {
    for _ in 0..1500 {
        if app.index.nar(file_hash)?.is_some_and(|(_, stored)| stored) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(IndexError::Unavailable)
}
