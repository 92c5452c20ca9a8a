//! The appliance's content-addressed NAR file names, `<FileHash nix32>.nar<ext>`, as served under /nar/.
//!
//! The name doubles as a file name on disk, so parsing admits exactly one spelling per NAR and
//! nothing that could carry a path separator, an escape or a suffix.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use super::hash::Sha256Hash;
use super::narinfo::{Compression, NarInfo};

/// Length of a sha256 digest in nix32.
const HASH_LEN: usize = 52;

/// Why a NAR file name was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NarNameError {
    /// The first 52 characters are not a nix32 sha256.
    #[error("NAR name must start with a 52-character nix32 sha256")]
    BadHash,
    /// What follows the hash is not ".nar" plus a known compression suffix.
    #[error("NAR name must end in .nar or .nar plus a known compression suffix")]
    BadSuffix,
}

/// A NAR file named by the sha256 of its (compressed) bytes and its compression.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct NarName {
    /// sha256 of the file as served: the narinfo's FileHash.
    pub file_hash: Sha256Hash,
    /// How the file is compressed, which fixes its suffix.
    pub compression: Compression,
}

impl NarName {
    /// The name a narinfo's NAR file gets here: its FileHash (or NarHash for Compression none,
    /// where the file is the NAR) and its compression. None when the file hash is unknown.
    pub fn for_narinfo(info: &NarInfo) -> Option<Self> {
        info.file_hash_or_nar().map(|(file_hash, _)| Self {
            file_hash,
            compression: info.compression,
        })
    }

    /// `nar/<nix32>.nar<ext>`: the URL written into served narinfos, relative to the cache root.
    pub fn url_path(&self) -> String {
        format!("nar/{self}")
    }
}

impl FromStr for NarName {
    type Err = NarNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // `get` rather than slicing: a multi-byte character at the boundary is an error, not a panic.
        let hash_part = s.get(..HASH_LEN).ok_or(NarNameError::BadHash)?;
        let file_hash = Sha256Hash::from_nix32(hash_part).map_err(|_| NarNameError::BadHash)?;
        let ext = s[HASH_LEN..]
            .strip_prefix(".nar")
            .ok_or(NarNameError::BadSuffix)?;
        let compression = Compression::ALL
            .into_iter()
            .find(|c| c.extension() == ext)
            .ok_or(NarNameError::BadSuffix)?;
        Ok(Self {
            file_hash,
            compression,
        })
    }
}

impl fmt::Display for NarName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.nar{}",
            self.file_hash.to_nix32(),
            self.compression.extension()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FileHash of the `top` NAR in the real xz cache (see test_vectors.rs).
    const H: &str = "1lk2fx87ggsw1qwm1fp333bwbm3gm32ggxvfz3z2h6pglnxswym0";

    #[test]
    fn accepts_every_compression() {
        let file_hash = Sha256Hash::from_nix32(H).expect("valid");
        for compression in Compression::ALL {
            let text = format!("{H}.nar{}", compression.extension());
            let name: NarName = text.parse().expect(&text);
            assert_eq!(
                name,
                NarName {
                    file_hash,
                    compression
                }
            );
            assert_eq!(name.to_string(), text);
            assert_eq!(name.url_path(), format!("nar/{text}"));
        }
    }

    #[test]
    fn real_nix_nar_file_names_parse() {
        // file names `nix copy --to file://` wrote under nar/
        for (file, compression) in [
            (
                "1lk2fx87ggsw1qwm1fp333bwbm3gm32ggxvfz3z2h6pglnxswym0.nar.xz",
                Compression::Xz,
            ),
            (
                "0q6yj9sbg7xi8kks5cmqc38xcpprb64a18cq9d67pds7sw04di7k.nar",
                Compression::None,
            ),
            (
                "0vz57xli0mykd77rimfl8cs3hy36cgmk4bc1m9vq3iwglvja19a6.nar.zst",
                Compression::Zstd,
            ),
        ] {
            let name: NarName = file.parse().expect(file);
            assert_eq!(name.compression, compression);
            assert_eq!(name.to_string(), file);
        }
    }

    #[test]
    fn for_narinfo_matches_the_url_nix_wrote() {
        use crate::nix::test_vectors::{TOP_NONE, TOP_XZ, TOP_ZSTD};
        for text in [TOP_XZ, TOP_NONE, TOP_ZSTD] {
            let mut info = NarInfo::parse(text).expect("real narinfo");
            let name = NarName::for_narinfo(&info).expect("has a file hash");
            // `nix copy --to file://` names NAR files exactly as we do.
            assert_eq!(name.url_path(), info.url);
            if info.compression == Compression::None {
                info.file_hash = None;
                assert_eq!(NarName::for_narinfo(&info), Some(name));
            } else {
                info.file_hash = None;
                assert_eq!(NarName::for_narinfo(&info), None);
            }
        }
    }

    #[test]
    fn rejects_anything_else() {
        let bad_hash = [
            String::new(),
            "../x".into(),
            "..%2f".into(),
            "%2e%2e".into(),
            "x/../y".into(),
            "/etc/passwd".into(),
            format!("/{H}.nar"),
            format!("../{H}.nar"),
            format!("%2e%2e%2f{H}.nar"),
            format!("{}.nar", &H[1..]),
            format!("{}e.nar", &H[..51]),
            format!("{}o.nar", &H[..51]),
            format!("{}t.nar", &H[..51]),
            format!("{}u.nar", &H[..51]),
            format!("{}.nar", H.to_uppercase()),
            // a first digit above 1 overflows 256 bits
            format!("2{}.nar", &H[1..]),
            format!("{}é.nar", &H[..50]),
        ];
        for s in &bad_hash {
            assert_eq!(s.parse::<NarName>(), Err(NarNameError::BadHash), "{s:?}");
        }
        let bad_suffix = [
            H.to_string(),
            format!("{H}."),
            format!("{H}.na"),
            format!("{H}.nar.xz.tmp"),
            format!("{H}.nar.gz2"),
            format!("{H}.nar.XZ"),
            format!("{H}.NAR"),
            format!("{H}.nar.bzip2"),
            format!("{H}.nar.zstd"),
            format!("{H}.nar?x=1"),
            format!("{H}.nar.xz?hash=1"),
            format!("{H}.nar/"),
            format!("{H}.nar/../x"),
            format!("{H}.nar%2exz"),
            format!("{H}.nar\0"),
            format!("{H}.nar.xz\n"),
            format!("{H}-foo.nar"),
            format!("{H}0.nar"),
            format!("0{H}.nar"),
        ];
        for s in &bad_suffix {
            assert_eq!(s.parse::<NarName>(), Err(NarNameError::BadSuffix), "{s:?}");
        }
    }
}
