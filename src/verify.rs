//! Verifying a NAR file while it streams in: the sha256 and size of the file (FileHash, FileSize), and —
//! after decompressing it on the fly — the sha256 and size of the NAR inside (NarHash, NarSize).
//!
//! FileHash alone proves nothing: it is not covered by the narinfo's signature. NarHash and NarSize are, so
//! only a NAR whose decompressed bytes match them is one the appliance may keep and sign for.

use std::io::{self, Write};

use sha2::{Digest, Sha256};

use crate::nix::hash::Sha256Hash;
use crate::nix::narinfo::Compression;

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

/// Hashes and counts the decompressed NAR, refusing to grow past NarSize.
struct NarSink {
    sha: Sha256,
    size: u64,
    limit: u64,
}

impl Write for NarSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.size += buf.len() as u64;
        if self.size > self.limit {
            return Err(io::Error::other(TOO_LARGE));
        }
        self.sha.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

const TOO_LARGE: &str = "decompressed NAR exceeds NarSize";

enum Decoder {
    None(NarSink),
    Xz(liblzma::write::XzDecoder<NarSink>),
    Zstd(Box<zstd::stream::write::Decoder<'static, NarSink>>),
    Bzip2(bzip2::write::BzDecoder<NarSink>),
    Br(Box<brotli::DecompressorWriter<NarSink>>),
}

/// A decoder's error: the sink refusing to grow past NarSize, or corrupt input.
fn decode_error(e: io::Error, nar_size: u64) -> VerifyError {
    if e.to_string().contains(TOO_LARGE) {
        VerifyError::TooLarge { expected: nar_size }
    } else {
        VerifyError::Decode(e)
    }
}

/// Verifies one NAR file fed to it in pieces.
pub struct NarVerifier {
    expected: Expected,
    file_sha: Sha256,
    file_size: u64,
    decoder: Decoder,
}

impl NarVerifier {
    /// A verifier for a file that must match `expected`.
    pub fn new(expected: Expected) -> Result<NarVerifier, VerifyError> {
        let sink = NarSink {
            sha: Sha256::new(),
            size: 0,
            limit: expected.nar_size,
        };
        let decoder = match expected.compression {
            Compression::None => Decoder::None(sink),
            Compression::Xz => Decoder::Xz(liblzma::write::XzDecoder::new_multi_decoder(sink)),
            Compression::Zstd => Decoder::Zstd(Box::new(
                zstd::stream::write::Decoder::new(sink).map_err(VerifyError::Decode)?,
            )),
            Compression::Bzip2 => Decoder::Bzip2(bzip2::write::BzDecoder::new(sink)),
            Compression::Br => {
                Decoder::Br(Box::new(brotli::DecompressorWriter::new(sink, 64 * 1024)))
            }
            other => return Err(VerifyError::Unsupported(other.as_str())),
        };
        Ok(NarVerifier {
            expected,
            file_sha: Sha256::new(),
            file_size: 0,
            decoder,
        })
    }

    /// Feeds the next piece of the file. Fails early on corrupt data or a NAR growing past NarSize.
    pub fn update(&mut self, chunk: &[u8]) -> Result<(), VerifyError> {
        self.file_sha.update(chunk);
        self.file_size += chunk.len() as u64;
        if let Some(expected) = self.expected.file_size
            && self.file_size > expected
        {
            return Err(VerifyError::FileSize {
                expected,
                got: self.file_size,
            });
        }
        let written = match &mut self.decoder {
            Decoder::None(sink) => sink.write_all(chunk),
            Decoder::Xz(d) => d.write_all(chunk),
            Decoder::Zstd(d) => d.write_all(chunk),
            Decoder::Bzip2(d) => d.write_all(chunk),
            Decoder::Br(d) => d.write_all(chunk),
        };
        written.map_err(|e| decode_error(e, self.expected.nar_size))
    }

    /// Ends the file: every hash and size must match. Returns the file's size.
    pub fn finish(self) -> Result<u64, VerifyError> {
        let expected = self.expected;
        let too_large = |e| decode_error(e, expected.nar_size);
        let sink = match self.decoder {
            Decoder::None(sink) => sink,
            Decoder::Xz(d) => d.finish().map_err(too_large)?,
            Decoder::Zstd(mut d) => {
                d.flush().map_err(too_large)?;
                d.into_inner()
            }
            Decoder::Bzip2(mut d) => d.finish().map_err(too_large)?,
            Decoder::Br(mut d) => {
                d.close().map_err(too_large)?;
                d.into_inner().map_err(|_| {
                    VerifyError::Decode(io::Error::other("brotli stream incomplete"))
                })?
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
}
