//! The zstd twin made during a fill (issue 14): the fill's check decompresses an xz or bzip2 NAR anyway
//! to verify it, and hands the same decompressed bytes to a zstd encoder writing a second temp file. So
//! the first machine of the LAN already gets zstd, through the URL narinfos name before a twin exists
//! (`nar/<original FileHash>.nar.zst`, see `server/nar.rs`), and the appliance decompresses each NAR
//! once instead of twice (the fill's check, then the transcoder).
//!
//! The twin's bytes are the transcoder's bytes (same level, checksum and pledged size; zstd's output
//! does not depend on how its input is cut), so a twin evicted later is made again from its original
//! byte for byte ([`super::regenerate`]). Its clients read the temp file as it grows, like a fill's; the
//! last byte waits until the original passed its check and the twin file passed its own
//! ([`NarVerifier`], read back). Then it is committed and recorded like a transcoded NAR
//! ([`super::record_twin`]).
//!
//! Parts:
//! - [`Alongside`]: what the fill keeps (temp file, room in the budget) to commit the twin.
//! - [`TwinCheck`]: what the fill's check thread keeps (the encoder behind the copy it gives the
//!   verifier) to finish and verify the twin once the original passed.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::TranscodeError;
use super::encode::thread_cpu;
use crate::app::App;
use crate::budget::{Reservation, compressed_bound};
use crate::fill::{Failure, Progress};
use crate::index::NarRecord;
use crate::nix::hash::Sha256Hash;
use crate::nix::nar_name::NarName;
use crate::nix::narinfo::Compression;
use crate::store::TempGuard;
use crate::verify::Expected;

/// The twin's progress, shared by the fill (which fails it when the fill fails) and the encoder.
pub type TwinProgress = Arc<watch::Sender<Progress>>;

/// A finished, verified twin file: its FileHash, its size, and the CPU seconds its encoding and check
/// took.
type Made = Result<(Sha256Hash, u64, f64), TranscodeError>;

/// What the fill keeps to commit the twin once it is made.
pub struct Alongside {
    guard: TempGuard,
    file: Arc<File>,
    reservation: Arc<Reservation>,
    level: i32,
    made: oneshot::Receiver<Made>,
}

/// What the fill's check keeps: the encoder (shared with the copy given to the verifier) and where
/// to report.
pub struct TwinCheck {
    making: Arc<Mutex<Making>>,
    file: Arc<File>,
    /// The NAR inside: NarHash, NarSize.
    nar: (Sha256Hash, u64),
    stopped: CancellationToken,
    progress: TwinProgress,
    made: Option<oneshot::Sender<Made>>,
}

struct Making {
    encoder: Option<zstd::stream::write::Encoder<'static, Sink>>,
    failed: Option<io::Error>,
    /// CPU seconds spent encoding so far.
    cpu: f64,
}

/// The encoder's output: the temp file, hashed and counted as it is written, each write offered to
/// the twin's readers.
struct Sink {
    file: Arc<File>,
    sha: Sha256,
    size: u64,
    reservation: Arc<Reservation>,
    progress: TwinProgress,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write_all_at(buf, self.size)?;
        self.sha.update(buf);
        self.size += buf.len() as u64;
        self.reservation.wrote(buf.len() as u64);
        self.progress
            .send_replace(Progress::Running { written: self.size });
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The copy the verifier writes the decompressed NAR into.
struct Copy(Arc<Mutex<Making>>);

impl Write for Copy {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut making = self.0.lock().map_err(|_| io::Error::other("poisoned"))?;
        let Some(encoder) = making.encoder.as_mut() else {
            return Err(io::Error::other("the twin failed"));
        };
        let started = thread_cpu();
        let written = encoder.write_all(buf);
        making.cpu += thread_cpu() - started;
        if let Err(e) = written {
            making.encoder = None;
            let err = io::Error::new(e.kind(), e.to_string());
            making.failed = Some(e);
            return Err(err);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Whether a fill of the NAR `name` with this record makes a twin beside it: transcoding is on, the
/// NAR is xz or bzip2, and the store's cap (less the index's `index_bytes`) can hold both files at
/// their largest.
pub fn wanted(app: &App, name: &NarName, record: &NarRecord, index_bytes: u64) -> bool {
    let bound = Expected::from_record(name, record).max_file_size();
    app.config.transcode_level.is_some()
        && super::transcodable(record.compression)
        && !app.budget.larger_than_cap(
            bound.saturating_add(compressed_bound(Compression::Zstd, record.nar_size)),
            index_bytes,
        )
}

impl Alongside {
    /// Reserves the twin's room and opens its temp file (blocking: may evict). `None` (the twin's
    /// progress failed) when there is no room or no level: the fill goes on without a twin.
    pub fn start(
        app: &App,
        original: &NarName,
        record: &NarRecord,
        progress: TwinProgress,
    ) -> Option<(Alongside, TwinCheck)> {
        let started = (|| -> Result<_, TranscodeError> {
            let level = app
                .config
                .transcode_level
                .ok_or_else(|| TranscodeError::NoRoom("transcoding is off".into()))?;
            let reservation = Arc::new(super::encode::reserve_twin(app, record.nar_size)?);
            let (guard, file) = app.store.temp_file(&NarName {
                file_hash: original.file_hash,
                compression: Compression::Zstd,
            })?;
            let file = Arc::new(file);
            let sink = Sink {
                file: file.clone(),
                sha: Sha256::new(),
                size: 0,
                reservation: reservation.clone(),
                progress: progress.clone(),
            };
            let encoder = super::encode::encoder(sink, level, record.nar_size)?;
            Ok((level, reservation, guard, file, encoder))
        })();
        let (level, reservation, guard, file, encoder) = match started {
            Ok(s) => s,
            Err(e) => {
                tracing::info!(nar = %original, error = %e, "no zstd twin beside this fill");
                progress.send_replace(Progress::Failed(Failure::NoSpace));
                return None;
            }
        };
        progress.send_replace(Progress::Running { written: 0 });
        let (made_tx, made) = oneshot::channel();
        let check = TwinCheck {
            making: Arc::new(Mutex::new(Making {
                encoder: Some(encoder),
                failed: None,
                cpu: 0.0,
            })),
            file: file.clone(),
            nar: (record.nar_hash, record.nar_size),
            stopped: app.stopped.clone(),
            progress,
            made: Some(made_tx),
        };
        let alongside = Alongside {
            guard,
            file,
            reservation,
            level,
            made,
        };
        Some((alongside, check))
    }

    /// The twin's temp file (for its readers).
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// Waits for the check's result, then commits and records the twin (on the blocking pool). Returns
    /// the twin's size and how many rows now name it; the CPU time it took is counted.
    pub async fn commit(
        self,
        app: &Arc<App>,
        original: &NarName,
        record: &NarRecord,
    ) -> Result<(u64, usize), TranscodeError> {
        let (file_hash, size, cpu) = self
            .made
            .await
            .map_err(|_| TranscodeError::ShuttingDown)??;
        app.metrics.transcode_cpu(cpu);
        let (a, original, record) = (app.clone(), *original, record.clone());
        let (guard, file, level, reservation) =
            (self.guard, self.file, self.level, self.reservation);
        tokio::task::spawn_blocking(move || {
            let rows = super::record_twin(
                &a,
                &original,
                &record,
                super::NewTwin {
                    guard,
                    file: &file,
                    file_hash,
                    size,
                    level,
                },
            )?;
            // Recorded as stored: the index counts the twin from now on.
            drop(reservation);
            Ok((size, rows))
        })
        .await
        .map_err(|e| TranscodeError::Io(io::Error::other(e)))?
    }
}

impl TwinCheck {
    /// The copy to give the fill's verifier.
    pub fn copy(&self) -> Box<dyn Write + Send> {
        Box::new(Copy(self.making.clone()))
    }

    /// The original passed: ends the zstd stream, verifies the twin file as a fill would, and lets its
    /// readers have the last byte. Blocking (runs on the check's thread, at its priority).
    pub fn finish(mut self) {
        let made = self.finish_inner();
        match &made {
            Ok((_, size, _)) => self
                .progress
                .send_replace(Progress::Verified { size: *size }),
            Err(e) => {
                tracing::warn!(error = %e, "the zstd twin made beside a fill failed; the original is served");
                self.progress
                    .send_replace(Progress::Failed(Failure::Internal))
            }
        };
        if let Some(tx) = self.made.take() {
            let _ = tx.send(made);
        }
    }

    fn finish_inner(&self) -> Made {
        let started = thread_cpu();
        let (nar_hash, nar_size) = self.nar;
        let mut making = self
            .making
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?;
        if let Some(e) = making.failed.take() {
            return Err(e.into());
        }
        let encoder = making
            .encoder
            .take()
            .ok_or_else(|| io::Error::other("the twin's encoder is gone"))?;
        let sink = encoder.finish()?;
        let file_hash = Sha256Hash(sink.sha.finalize().into());
        let expected = Expected {
            compression: Compression::Zstd,
            file_hash,
            file_size: Some(sink.size),
            nar_hash,
            nar_size,
        };
        super::encode::verify_written(&self.file, expected, &self.stopped)?;
        Ok((file_hash, sink.size, making.cpu + thread_cpu() - started))
    }
}

impl Drop for TwinCheck {
    /// A check that ended without [`TwinCheck::finish`] (the original failed, or the fill stopped):
    /// the twin's readers get an error, never a last byte.
    fn drop(&mut self) {
        if let Some(tx) = self.made.take() {
            self.progress
                .send_replace(Progress::Failed(Failure::Upstream));
            let _ = tx.send(Err(TranscodeError::Original));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::encode::encoder;
    use std::io::Write;

    /// The twin made beside a fill must be the transcoder's file byte for byte (a twin evicted later
    /// is made again by the transcoder and compared): the encoder's output may not depend on how its
    /// input is cut. The verifier hands it 64 KiB pieces; the transcoder 1 MiB ones.
    #[test]
    fn the_twin_does_not_depend_on_how_its_input_is_cut() {
        let nar: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 27) as u8 ^ (i / 1000) as u8)
            .collect();
        let encode_in = |piece: usize| {
            let mut e = encoder(Vec::new(), 3, nar.len() as u64).unwrap();
            for chunk in nar.chunks(piece) {
                e.write_all(chunk).unwrap();
            }
            e.finish().unwrap()
        };
        let whole = encode_in(1 << 20);
        assert_eq!(encode_in(64 * 1024), whole);
        assert_eq!(encode_in(1000), whole);
        assert_eq!(zstd::decode_all(&whole[..]).unwrap(), nar);
    }
}
