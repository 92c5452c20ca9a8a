//! Making one zstd file from a stored original: decode, check the NAR inside, encode, verify the result
//! as a fill would. Blocking; runs on the transcoding threads (or, for a client waiting for a twin made
//! again, on the blocking pool).

use std::fs::File;
use std::io::{self, BufReader, Read, Write};

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::{CHUNK, TranscodeError};
use crate::app::App;
use crate::budget::{NoSpace, Reservation, compressed_bound};
use crate::index::NarRecord;
use crate::nix::hash::Sha256Hash;
use crate::nix::nar_name::NarName;
use crate::nix::narinfo::Compression;
use crate::store::TempGuard;
use crate::verify::{Expected, NarVerifier};

/// CPU seconds the calling thread has used.
pub(super) fn thread_cpu() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_THREAD, &mut usage) != 0 {
            return 0.0;
        }
        let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
        t(usage.ru_utime) + t(usage.ru_stime)
    }
}

/// A verified zstd file in the temp folder.
pub(super) struct Encoded {
    /// The twin's room in the disk budget: held until its file is committed and recorded (then the
    /// index counts it), so the temp file is never counted nowhere.
    pub(super) reservation: Reservation,
    pub(super) guard: TempGuard,
    pub(super) file: File,
    pub(super) file_hash: Sha256Hash,
    pub(super) size: u64,
}

/// Counts and hashes what is written through it, and tells the budget.
struct HashingWriter<'a> {
    file: File,
    sha: Sha256,
    size: u64,
    reservation: &'a Reservation,
}

impl Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.sha.update(&buf[..n]);
        self.size += n as u64;
        self.reservation.wrote(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Decodes the stored original, checks the NAR inside against the record, encodes zstd at `level`
/// into a temp file, and verifies that file as a fill would. Blocking; stops at shutdown.
pub(super) fn encode(
    app: &App,
    original: &NarName,
    record: &NarRecord,
    level: i32,
) -> Result<Encoded, TranscodeError> {
    let stopped = &app.stopped;
    let reservation = reserve_twin(app, record.nar_size)?;
    let source = BufReader::with_capacity(CHUNK, File::open(app.store.path(original))?);
    let mut decoder: Box<dyn Read> = match original.compression {
        Compression::Xz => Box::new(liblzma::read::XzDecoder::new(source)),
        Compression::Bzip2 => Box::new(bzip2::read::BzDecoder::new(source)),
        _ => return Err(TranscodeError::Original),
    };
    let temp_name = NarName {
        file_hash: original.file_hash,
        compression: Compression::Zstd,
    };
    let (guard, file) = app.store.temp_file(&temp_name)?;
    let sink = HashingWriter {
        file: file.try_clone()?,
        sha: Sha256::new(),
        size: 0,
        reservation: &reservation,
    };
    let mut encoder = encoder(sink, level, record.nar_size)?;
    let mut nar_sha = Sha256::new();
    let mut nar_size = 0u64;
    let mut buf = vec![0u8; CHUNK];
    loop {
        if stopped.is_cancelled() {
            return Err(TranscodeError::ShuttingDown);
        }
        let n = match decoder.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(TranscodeError::Original),
        };
        nar_size += n as u64;
        if nar_size > record.nar_size {
            return Err(TranscodeError::Original);
        }
        nar_sha.update(&buf[..n]);
        encoder.write_all(&buf[..n])?;
    }
    if nar_size != record.nar_size || Sha256Hash(nar_sha.finalize().into()) != record.nar_hash {
        return Err(TranscodeError::Original);
    }
    let sink = encoder.finish()?;
    let file_hash = Sha256Hash(sink.sha.finalize().into());
    let size = sink.size;
    verify_written(
        &file,
        Expected {
            compression: Compression::Zstd,
            file_hash,
            file_size: Some(size),
            nar_hash: record.nar_hash,
            nar_size: record.nar_size,
        },
        stopped,
    )?;
    Ok(Encoded {
        reservation,
        guard,
        file,
        file_hash,
        size,
    })
}

/// Room in the budget for the zstd twin of a NAR of `nar_size` bytes (blocking: may evict).
pub(super) fn reserve_twin(app: &App, nar_size: u64) -> Result<Reservation, TranscodeError> {
    app.budget
        .reserve(app, compressed_bound(Compression::Zstd, nar_size))
        .map_err(|e| match e {
            NoSpace::LargerThanCap => TranscodeError::NoRoom("larger than the store's cap".into()),
            NoSpace::Full(why) => TranscodeError::NoRoom(why),
        })
}

/// The zstd encoder of every twin: `level`, a checksum, and the NAR's size in the frame header. A twin
/// made beside a fill (`alongside.rs`) and one made here are the same bytes.
pub(super) fn encoder<W: Write>(
    sink: W,
    level: i32,
    nar_size: u64,
) -> io::Result<zstd::stream::write::Encoder<'static, W>> {
    let mut encoder = zstd::stream::write::Encoder::new(sink, level)?;
    encoder.include_checksum(true)?;
    encoder.set_pledged_src_size(Some(nar_size))?;
    Ok(encoder)
}

/// Reads the written file back through the verifier every fill uses.
pub(super) fn verify_written(
    file: &File,
    expected: Expected,
    stopped: &CancellationToken,
) -> Result<(), TranscodeError> {
    use std::os::unix::fs::FileExt;
    let mut verifier = NarVerifier::new(expected)?;
    let mut buf = vec![0u8; CHUNK];
    let mut at = 0u64;
    loop {
        if stopped.is_cancelled() {
            return Err(TranscodeError::ShuttingDown);
        }
        let n = file.read_at(&mut buf, at)?;
        if n == 0 {
            break;
        }
        verifier.update(&buf[..n])?;
        at += n as u64;
    }
    verifier.finish()?;
    Ok(())
}
