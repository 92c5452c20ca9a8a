//! Verifying a NAR file while it streams in: the sha256 and size of the file (FileHash, FileSize), and —
//! after decompressing it on the fly — the sha256 and size of the NAR inside (NarHash, NarSize).
//!
//! FileHash alone proves nothing: it is not covered by the narinfo's signature. NarHash and NarSize are, so
//! only a NAR whose decompressed bytes match them is one the appliance may keep and sign for. Because the
//! file itself is unsigned, it is also held to a shape: its size is bounded (by FileSize, or by the most a
//! NAR of NarSize can compress to), and the compressed stream must end exactly at the end of the file —
//! one xz stream without padding, one zstd frame without skippable frames, one bzip2 stream, one brotli
//! stream. Otherwise a hostile mirror could make the appliance store and serve a huge file for a small NAR.

use std::io::{self, Write};

use sha2::{Digest, Sha256};

use crate::nix::hash::Sha256Hash;
use crate::nix::narinfo::Compression;

/// The most memory the xz decoder may use (xz -9 needs 65 MiB).
pub const XZ_MEMORY_LIMIT: u64 = 128 << 20;
/// The largest zstd window accepted, as a power of two (zstd's own default limit, 128 MiB).
const ZSTD_WINDOW_LOG_MAX: u32 = 27;
/// Bytes of decompressed output produced per decoder step.
const OUT_CHUNK: usize = 64 * 1024;

/// Why a NAR file failed verification.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The compression cannot be decoded here, so the NAR cannot be verified.
    #[error("compression {0} cannot be verified")]
    Unsupported(&'static str),
    /// The compressed stream is corrupt or truncated.
    #[error("decompression failed: {0}")]
    Decode(#[source] io::Error),
    /// The decompressed NAR is larger than NarSize (stopped early: no decompression bomb).
    #[error("NAR is larger than its NarSize {expected}")]
    TooLarge {
        /// NarSize.
        expected: u64,
    },
    /// The file's size is not FileSize.
    #[error("file size {got} is not FileSize {expected}")]
    FileSize {
        /// FileSize.
        expected: u64,
        /// Received.
        got: u64,
    },
    /// The file's sha256 is not FileHash.
    #[error("file hash {got} is not FileHash {expected}")]
    FileHash {
        /// FileHash.
        expected: Sha256Hash,
        /// Received.
        got: Sha256Hash,
    },
    /// The NAR's size is not NarSize.
    #[error("NAR size {got} is not NarSize {expected}")]
    NarSize {
        /// NarSize.
        expected: u64,
        /// Decompressed.
        got: u64,
    },
    /// The file is larger than a NAR of NarSize can compress to (FileSize was not given).
    #[error("file is larger than {limit} bytes, the most its NarSize allows")]
    FileTooLarge {
        /// The bound.
        limit: u64,
    },
    /// Bytes follow the end of the compressed stream (a second stream, padding, a skippable frame).
    #[error("data after the end of the compressed stream")]
    Trailing,
    /// The NAR's sha256 is not NarHash.
    #[error("NAR hash {got} is not NarHash {expected}")]
    NarHash {
        /// NarHash.
        expected: Sha256Hash,
        /// Decompressed.
        got: Sha256Hash,
    },
}

/// What a NAR file must be.
#[derive(Debug, Clone, Copy)]
pub struct Expected {
    /// Its compression.
    pub compression: Compression,
    /// FileHash.
    pub file_hash: Sha256Hash,
    /// FileSize, when known.
    pub file_size: Option<u64>,
    /// NarHash.
    pub nar_hash: Sha256Hash,
    /// NarSize.
    pub nar_size: u64,
}

impl Expected {
    /// The most bytes the file may have: FileSize, or what a NAR of NarSize can compress to at worst.
    pub fn max_file_size(&self) -> u64 {
        self.file_size
            .unwrap_or_else(|| crate::budget::compressed_bound(self.compression, self.nar_size))
    }
}

/// Whether NARs with this compression can be verified (and so served).
pub fn supported(compression: Compression) -> bool {
    matches!(
        compression,
        Compression::None
            | Compression::Xz
            | Compression::Zstd
            | Compression::Bzip2
            | Compression::Br
    )
}

/// Hashes and counts the decompressed NAR, refusing to grow past NarSize; and hands it to the copy,
/// when there is one.
struct NarSink {
    sha: Sha256,
    size: u64,
    limit: u64,
    copy: Option<Box<dyn Write + Send>>,
}

impl NarSink {
    fn take(&mut self, buf: &[u8]) -> Result<(), VerifyError> {
        self.size += buf.len() as u64;
        if self.size > self.limit {
            return Err(VerifyError::TooLarge {
                expected: self.limit,
            });
        }
        self.sha.update(buf);
        // A copy that fails is dropped: its owner knows why; the verification goes on.
        if let Some(copy) = &mut self.copy
            && copy.write_all(buf).is_err()
        {
            self.copy = None;
        }
        Ok(())
    }
}

impl Write for NarSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.take(buf).map_err(|_| io::Error::other(TOO_LARGE))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

const TOO_LARGE: &str = "decompressed NAR exceeds NarSize";

/// A decoder of exactly one compressed stream, feeding a [`NarSink`].
enum Decoder {
    None,
    Xz(Box<liblzma::stream::Stream>),
    Zstd(Box<zstd::stream::raw::Decoder<'static>>),
    Bzip2(Box<bzip2::Decompress>),
    Br(Box<brotli::DecompressorWriter<NarSink>>),
}

fn decode_error(e: impl std::fmt::Display) -> VerifyError {
    VerifyError::Decode(io::Error::other(e.to_string()))
}

/// A brotli writer's error: the sink refusing to grow past NarSize, or corrupt input.
fn brotli_error(e: io::Error, nar_size: u64) -> VerifyError {
    if e.to_string().contains(TOO_LARGE) {
        VerifyError::TooLarge { expected: nar_size }
    } else {
        VerifyError::Decode(e)
    }
}

/// Verifies one NAR file fed to it in pieces.
pub struct NarVerifier {
    expected: Expected,
    max_file_size: u64,
    file_sha: Sha256,
    file_size: u64,
    decoder: Decoder,
    /// The sink (inside the brotli writer for br).
    sink: NarSink,
    /// The compressed stream has ended: any further byte is trailing data.
    ended: bool,
    out: Vec<u8>,
}

impl NarVerifier {
    /// A verifier for a file that must match `expected`.
    pub fn new(expected: Expected) -> Result<NarVerifier, VerifyError> {
        let sink = || NarSink {
            sha: Sha256::new(),
            size: 0,
            limit: expected.nar_size,
            copy: None,
        };
        let decoder = match expected.compression {
            Compression::None => Decoder::None,
            // One stream: no LZMA_CONCATENATED, so padding or a second stream is trailing data.
            Compression::Xz => Decoder::Xz(Box::new(
                liblzma::stream::Stream::new_stream_decoder(XZ_MEMORY_LIMIT, 0)
                    .map_err(decode_error)?,
            )),
            Compression::Zstd => {
                let mut d = zstd::stream::raw::Decoder::new().map_err(VerifyError::Decode)?;
                d.set_parameter(zstd::stream::raw::DParameter::WindowLogMax(
                    ZSTD_WINDOW_LOG_MAX,
                ))
                .map_err(VerifyError::Decode)?;
                Decoder::Zstd(Box::new(d))
            }
            Compression::Bzip2 => Decoder::Bzip2(Box::new(bzip2::Decompress::new(false))),
            Compression::Br => {
                Decoder::Br(Box::new(brotli::DecompressorWriter::new(sink(), 64 * 1024)))
            }
            other => return Err(VerifyError::Unsupported(other.as_str())),
        };
        Ok(NarVerifier {
            max_file_size: expected.max_file_size(),
            expected,
            file_sha: Sha256::new(),
            file_size: 0,
            decoder,
            sink: sink(),
            ended: false,
            out: vec![0; OUT_CHUNK],
        })
    }

    /// Hands every decompressed byte also to `copy`, as it is checked (the fill's zstd twin, made from
    /// the one decompression: `transcode/alongside.rs`). The copy sees bytes not yet verified; its owner
    /// keeps nothing unless [`NarVerifier::finish`] passes. Not for brotli, whose decoder owns its sink.
    pub fn copying_to(mut self, copy: Box<dyn Write + Send>) -> NarVerifier {
        debug_assert!(
            !matches!(self.decoder, Decoder::Br(_)),
            "brotli is never copied"
        );
        self.sink.copy = Some(copy);
        self
    }

    /// Feeds the next piece of the file. Fails early on corrupt data, a file growing past its bound,
    /// data after the end of the compressed stream, or a NAR growing past NarSize.
    pub fn update(&mut self, chunk: &[u8]) -> Result<(), VerifyError> {
        self.file_sha.update(chunk);
        self.file_size += chunk.len() as u64;
        if self.file_size > self.max_file_size {
            return Err(match self.expected.file_size {
                Some(expected) => VerifyError::FileSize {
                    expected,
                    got: self.file_size,
                },
                None => VerifyError::FileTooLarge {
                    limit: self.max_file_size,
                },
            });
        }
        if chunk.is_empty() {
            return Ok(());
        }
        if self.ended {
            return Err(VerifyError::Trailing);
        }
        let nar_size = self.expected.nar_size;
        match &mut self.decoder {
            Decoder::None => self.sink.take(chunk),
            Decoder::Xz(stream) => {
                let mut input = chunk;
                loop {
                    let (before_in, before_out) = (stream.total_in(), stream.total_out());
                    let status = stream
                        .process(input, &mut self.out, liblzma::stream::Action::Run)
                        .map_err(decode_error)?;
                    let read = (stream.total_in() - before_in) as usize;
                    let wrote = (stream.total_out() - before_out) as usize;
                    self.sink.take(&self.out[..wrote])?;
                    input = &input[read..];
                    if status == liblzma::stream::Status::StreamEnd {
                        self.ended = true;
                        return if input.is_empty() {
                            Ok(())
                        } else {
                            Err(VerifyError::Trailing)
                        };
                    }
                    if input.is_empty() && wrote < self.out.len() {
                        return Ok(());
                    }
                }
            }
            Decoder::Zstd(d) => {
                use zstd::stream::raw::Operation;
                let mut input = zstd::stream::raw::InBuffer::around(chunk);
                loop {
                    let mut output = zstd::stream::raw::OutBuffer::around(&mut self.out[..]);
                    let hint = d
                        .run(&mut input, &mut output)
                        .map_err(VerifyError::Decode)?;
                    let wrote = output.pos();
                    self.sink.take(&self.out[..wrote])?;
                    // 0: a frame ended and is fully flushed. A skippable frame also "ends" (with no
                    // output), so one before the real frame makes that frame trailing data.
                    if hint == 0 {
                        self.ended = true;
                        return if input.pos() == chunk.len() {
                            Ok(())
                        } else {
                            Err(VerifyError::Trailing)
                        };
                    }
                    if input.pos() == chunk.len() && wrote < self.out.len() {
                        return Ok(());
                    }
                }
            }
            Decoder::Bzip2(d) => {
                let mut input = chunk;
                loop {
                    let (before_in, before_out) = (d.total_in(), d.total_out());
                    let status = d.decompress(input, &mut self.out).map_err(decode_error)?;
                    let read = (d.total_in() - before_in) as usize;
                    let wrote = (d.total_out() - before_out) as usize;
                    self.sink.take(&self.out[..wrote])?;
                    input = &input[read..];
                    if status == bzip2::Status::StreamEnd {
                        self.ended = true;
                        return if input.is_empty() {
                            Ok(())
                        } else {
                            Err(VerifyError::Trailing)
                        };
                    }
                    if input.is_empty() && wrote < self.out.len() {
                        return Ok(());
                    }
                    if read == 0 && wrote == 0 {
                        return Err(decode_error("bzip2 decoder made no progress"));
                    }
                }
            }
            Decoder::Br(w) => {
                // The writer takes less than it was given once the stream ended.
                let mut input = chunk;
                while !input.is_empty() {
                    let n = w.write(input).map_err(|e| brotli_error(e, nar_size))?;
                    if n == 0 {
                        self.ended = true;
                        return Err(VerifyError::Trailing);
                    }
                    input = &input[n..];
                }
                Ok(())
            }
        }
    }

    /// Ends the file: the compressed stream must be complete, and every hash and size must match.
    /// Returns the file's size.
    pub fn finish(mut self) -> Result<u64, VerifyError> {
        let expected = self.expected;
        let sink = match self.decoder {
            Decoder::None => self.sink,
            Decoder::Br(mut w) => {
                w.close().map_err(|e| brotli_error(e, expected.nar_size))?;
                w.into_inner().map_err(|_| {
                    VerifyError::Decode(io::Error::other("brotli stream incomplete"))
                })?
            }
            Decoder::Xz(_) | Decoder::Zstd(_) | Decoder::Bzip2(_) => {
                if !self.ended {
                    return Err(VerifyError::Decode(io::Error::other(
                        "compressed stream is truncated",
                    )));
                }
                std::mem::replace(
                    &mut self.sink,
                    NarSink {
                        sha: Sha256::new(),
                        size: 0,
                        limit: 0,
                        copy: None,
                    },
                )
            }
        };
        if let Some(size) = expected.file_size
            && size != self.file_size
        {
            return Err(VerifyError::FileSize {
                expected: size,
                got: self.file_size,
            });
        }
        let file_hash = Sha256Hash(self.file_sha.finalize().into());
        if file_hash != expected.file_hash {
            return Err(VerifyError::FileHash {
                expected: expected.file_hash,
                got: file_hash,
            });
        }
        if sink.size != expected.nar_size {
            return Err(VerifyError::NarSize {
                expected: expected.nar_size,
                got: sink.size,
            });
        }
        let nar_hash = Sha256Hash(sink.sha.finalize().into());
        if nar_hash != expected.nar_hash {
            return Err(VerifyError::NarHash {
                expected: expected.nar_hash,
                got: nar_hash,
            });
        }
        Ok(self.file_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nar() -> Vec<u8> {
        // Not a real NAR's structure, but the verifier only hashes bytes; real NARs are covered end to end.
        (0..50_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect()
    }

    fn compress(c: Compression, data: &[u8]) -> Vec<u8> {
        match c {
            Compression::None => data.to_vec(),
            Compression::Xz => {
                let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Zstd => zstd::stream::encode_all(data, 1).unwrap(),
            Compression::Bzip2 => {
                let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Br => {
                let mut out = Vec::new();
                {
                    let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
                    w.write_all(data).unwrap();
                }
                out
            }
            _ => unreachable!(),
        }
    }

    fn expected(c: Compression, file: &[u8], nar: &[u8]) -> Expected {
        Expected {
            compression: c,
            file_hash: Sha256Hash::digest(file),
            file_size: Some(file.len() as u64),
            nar_hash: Sha256Hash::digest(nar),
            nar_size: nar.len() as u64,
        }
    }

    fn run(e: Expected, file: &[u8], piece: usize) -> Result<u64, VerifyError> {
        let mut v = NarVerifier::new(e)?;
        for chunk in file.chunks(piece) {
            v.update(chunk)?;
        }
        v.finish()
    }

    const SUPPORTED: [Compression; 5] = [
        Compression::None,
        Compression::Xz,
        Compression::Zstd,
        Compression::Bzip2,
        Compression::Br,
    ];

    #[test]
    fn good_files_pass_in_any_piece_size() {
        let nar = nar();
        for c in SUPPORTED {
            let file = compress(c, &nar);
            for piece in [1 << 20, 4096, 7] {
                assert_eq!(
                    run(expected(c, &file, &nar), &file, piece).unwrap(),
                    file.len() as u64,
                    "{c:?}"
                );
            }
        }
    }

    #[test]
    fn other_content_with_a_recomputed_file_hash_fails_on_nar_hash() {
        let nar = nar();
        let mut other = nar.clone();
        other[1000] ^= 1;
        for c in SUPPORTED {
            let file = compress(c, &other);
            // FileHash and FileSize describe the file as sent; NarHash is the signed original.
            let mut e = expected(c, &file, &nar);
            e.file_hash = Sha256Hash::digest(&file);
            let err = run(e, &file, 4096).unwrap_err();
            assert!(matches!(err, VerifyError::NarHash { .. }), "{c:?}: {err}");
        }
    }

    #[test]
    fn truncated_or_corrupt_files_fail() {
        let nar = nar();
        for c in SUPPORTED {
            let file = compress(c, &nar);
            let half = &file[..file.len() / 2];
            let mut e = expected(c, half, &nar);
            e.file_size = None;
            assert!(run(e, half, 4096).is_err(), "{c:?} truncated");
            let mut bad = file.clone();
            let mid = bad.len() / 2;
            bad[mid] ^= 0x55;
            assert!(
                run(expected(c, &file, &nar), &bad, 4096).is_err(),
                "{c:?} corrupt"
            );
        }
    }

    #[test]
    fn decompression_stops_at_nar_size() {
        let nar = nar();
        let file = compress(Compression::Zstd, &nar);
        let mut e = expected(Compression::Zstd, &file, &nar);
        e.nar_size = 1000;
        assert!(matches!(
            run(e, &file, 1 << 20),
            Err(VerifyError::TooLarge { .. })
        ));
    }

    #[test]
    fn unverifiable_compressions_are_refused() {
        for c in [Compression::Gzip, Compression::Lzip, Compression::Lz4] {
            assert!(!supported(c));
            assert!(NarVerifier::new(expected(c, b"", b"x")).is_err());
        }
    }

    /// Verifies `file` against the NAR with no FileSize given (as a hostile mirror would leave it out).
    fn run_unsized(
        c: Compression,
        file: &[u8],
        nar: &[u8],
        piece: usize,
    ) -> Result<u64, VerifyError> {
        let mut e = expected(c, file, nar);
        e.file_size = None;
        run(e, file, piece)
    }

    #[test]
    fn a_second_stream_padding_or_skippable_frames_fail_the_nar() {
        let nar = nar();
        for c in [
            Compression::Xz,
            Compression::Zstd,
            Compression::Bzip2,
            Compression::Br,
        ] {
            let file = compress(c, &nar);
            // The same stream twice: decodes to twice the NAR in tools that accept concatenation.
            let twice = [file.clone(), compress(c, b"")].concat();
            for piece in [1 << 20, 4096, 7] {
                let err = run_unsized(c, &twice, &nar, piece).unwrap_err();
                assert!(matches!(err, VerifyError::Trailing), "{c:?}/{piece}: {err}");
            }
        }
        // xz stream padding (four zero bytes after the stream is valid for `xz -d`).
        let xz = [compress(Compression::Xz, &nar), vec![0; 4]].concat();
        assert!(matches!(
            run_unsized(Compression::Xz, &xz, &nar, 4096),
            Err(VerifyError::Trailing)
        ));
        // zstd skippable frames, before and after the real frame.
        let skippable = [0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4];
        let zst = compress(Compression::Zstd, &nar);
        let before = [skippable.to_vec(), zst.clone()].concat();
        let after = [zst, skippable.to_vec()].concat();
        for file in [before, after] {
            assert!(run_unsized(Compression::Zstd, &file, &nar, 4096).is_err());
        }
    }

    #[test]
    fn a_stream_cut_before_its_end_fails_even_when_the_nar_is_complete() {
        // An xz file without its index and footer decodes to the whole NAR; Nix would still fail on it.
        let nar = nar();
        let file = compress(Compression::Xz, &nar);
        let cut = &file[..file.len() - 12];
        let err = run_unsized(Compression::Xz, cut, &nar, 4096).unwrap_err();
        assert!(matches!(err, VerifyError::Decode(_)), "{err}");
    }

    #[test]
    fn without_file_size_the_file_is_bounded_by_nar_size() {
        let nar = nar();
        // Valid zstd of the NAR, then a huge tail: stopped as soon as it passes the bound.
        let mut file = compress(Compression::None, &nar);
        file.extend(std::iter::repeat_n(0u8, 200_000));
        let err = run_unsized(Compression::None, &file, &nar, 4096).unwrap_err();
        assert!(
            matches!(
                err,
                VerifyError::FileTooLarge { .. } | VerifyError::TooLarge { .. }
            ),
            "{err}"
        );
        let zst = [compress(Compression::Zstd, &nar), vec![0; 300_000]].concat();
        let mut e = expected(Compression::Zstd, &zst, &nar);
        e.file_size = None;
        let mut v = NarVerifier::new(e).unwrap();
        let limit = e.max_file_size();
        let mut fed = 0u64;
        let failed = zst.chunks(4096).any(|c| {
            fed += c.len() as u64;
            v.update(c).is_err()
        });
        assert!(
            failed && fed <= limit + 4096,
            "fed {fed} bytes, limit {limit}"
        );
    }
}
