//! SHA-256 hashes as Nix writes and reads them (NarHash, FileHash, fingerprints).

use std::fmt;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use sha2::{Digest as _, Sha256};
use thiserror::Error;

use super::nix32::{self, Nix32Error};

/// Standard base64 that accepts input with or without padding, as Nix's decoder does.
/// Trailing bits must still be zero, so each value has one accepted spelling per padding choice.
pub(crate) const BASE64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Length of a sha256 digest in nix32 characters.
const NIX32_LEN: usize = 52;
/// Length of a sha256 digest in hex characters.
const HEX_LEN: usize = 64;
/// Length of a sha256 digest in padded base64.
const BASE64_LEN: usize = 44;

/// Why a hash string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HashError {
    /// Neither "sha256:" nor the SRI prefix "sha256-" (other algorithms are not used in narinfos).
    #[error("hash must start with \"sha256:\" or \"sha256-\"")]
    UnsupportedType,
    /// After "sha256:", a length that is neither nix32 (52), hex (64) nor base64 (44).
    #[error("a sha256 hash cannot have {0} characters")]
    BadLength(usize),
    /// Not valid nix32.
    #[error("invalid nix32 hash: {0}")]
    Nix32(#[from] Nix32Error),
    /// Not valid hex.
    #[error("invalid hex hash")]
    Hex,
    /// Not valid base64, or not 32 bytes once decoded.
    #[error("invalid base64 hash")]
    Base64,
}

/// A SHA-256 digest. Displays as `sha256:<nix32>`, the form Nix emits in narinfos and fingerprints.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Hash(pub [u8; 32]);

impl Sha256Hash {
    /// Parses `sha256:<52 nix32>`, `sha256:<64 hex>`, `sha256:<44 base64>` or SRI `sha256-<base64>`.
    pub fn parse(s: &str) -> Result<Self, HashError> {
        if let Some(rest) = s.strip_prefix("sha256:") {
            match rest.len() {
                NIX32_LEN => Self::from_nix32(rest),
                HEX_LEN => Self::from_hex(rest),
                BASE64_LEN => Self::from_base64(rest),
                n => Err(HashError::BadLength(n)),
            }
        } else if let Some(rest) = s.strip_prefix("sha256-") {
            // SRI: Nix takes any base64 that decodes to 32 bytes, padded or not.
            Self::from_base64(rest)
        } else {
            Err(HashError::UnsupportedType)
        }
    }

    /// Parses a bare 52-character nix32 digest.
    pub fn from_nix32(s: &str) -> Result<Self, HashError> {
        if s.len() != NIX32_LEN {
            return Err(HashError::BadLength(s.len()));
        }
        let bytes = nix32::decode(s)?;
        Ok(Self(to_array(&bytes).ok_or(HashError::BadLength(s.len()))?))
    }

    /// Parses a bare 64-character hex digest (either case, as Nix accepts).
    pub fn from_hex(s: &str) -> Result<Self, HashError> {
        let bytes = hex::decode(s).map_err(|_| HashError::Hex)?;
        to_array(&bytes).map(Self).ok_or(HashError::Hex)
    }

    /// Parses a bare base64 digest, padding optional.
    pub fn from_base64(s: &str) -> Result<Self, HashError> {
        let bytes = BASE64_LENIENT.decode(s).map_err(|_| HashError::Base64)?;
        to_array(&bytes).map(Self).ok_or(HashError::Base64)
    }

    /// The bare 52-character nix32 form.
    pub fn to_nix32(&self) -> String {
        nix32::encode(&self.0)
    }

    /// The bare 64-character lower-case hex form (as in OCI digests).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The SRI form `sha256-<base64>`.
    pub fn to_sri(&self) -> String {
        format!(
            "sha256-{}",
            base64::engine::general_purpose::STANDARD.encode(self.0)
        )
    }

    /// The SHA-256 of `data`.
    pub fn digest(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }
}

/// Copies a 32-byte slice into an array; None for any other length.
fn to_array(bytes: &[u8]) -> Option<[u8; 32]> {
    bytes.try_into().ok()
}

impl fmt::Display for Sha256Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.to_nix32())
    }
}

impl fmt::Debug for Sha256Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One hash in every form, each printed by `nix hash to-base16/to-base32/to-base64/to-sri` (Nix 2.8).
    struct Forms {
        hex: &'static str,
        nix32: &'static str,
        base64: &'static str,
        sri: &'static str,
    }

    const FORMS: &[Forms] = &[
        // sha256("")
        Forms {
            hex: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            nix32: "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73",
            base64: "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
            sri: "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
        },
        // sha256("hello\n")
        Forms {
            hex: "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03",
            nix32: "00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq",
            base64: "WJG1tSLV3whtD/CxEPvZ0hu0/HFjrzTQgoai6Eb2vgM=",
            sri: "sha256-WJG1tSLV3whtD/CxEPvZ0hu0/HFjrzTQgoai6Eb2vgM=",
        },
        // the NarHash of the `top` test path (see test_vectors.rs)
        Forms {
            hex: "f3c44600d747b77b4c4b98a1a08859f95ed6d160b8b2a2e744b19fb77492de60",
            nix32: "0q6yj9sbg7xi8kks5cmqc38xcpprb64a18cq9d67pds7sw04di7k",
            base64: "88RGANdHt3tMS5ihoIhZ+V7W0WC4sqLnRLGft3SS3mA=",
            sri: "sha256-88RGANdHt3tMS5ihoIhZ+V7W0WC4sqLnRLGft3SS3mA=",
        },
    ];

    #[test]
    fn all_forms_parse_to_the_same_hash() {
        for f in FORMS {
            let want = Sha256Hash::from_hex(f.hex).expect("hex");
            let inputs = [
                format!("sha256:{}", f.nix32),
                format!("sha256:{}", f.hex),
                format!("sha256:{}", f.hex.to_uppercase()),
                format!("sha256:{}", f.base64),
                f.sri.to_string(),
                f.sri.trim_end_matches('=').to_string(),
            ];
            for input in &inputs {
                assert_eq!(Sha256Hash::parse(input), Ok(want), "{input}");
            }
            assert_eq!(Sha256Hash::from_nix32(f.nix32), Ok(want));
            assert_eq!(want.to_nix32(), f.nix32);
            assert_eq!(want.to_hex(), f.hex);
            assert_eq!(want.to_sri(), f.sri);
            assert_eq!(want.to_string(), format!("sha256:{}", f.nix32));
            assert_eq!(format!("{want:?}"), format!("sha256:{}", f.nix32));
        }
    }

    #[test]
    fn digest_matches_sha256sum() {
        assert_eq!(Sha256Hash::digest(b"").to_hex(), FORMS[0].hex);
        assert_eq!(Sha256Hash::digest(b"hello\n").to_hex(), FORMS[1].hex);
    }

    #[test]
    fn rejects_bad_hashes() {
        let nix32 = FORMS[0].nix32;
        let cases: Vec<(String, HashError)> = vec![
            (format!("sha1:{nix32}"), HashError::UnsupportedType),
            (format!("SHA256:{nix32}"), HashError::UnsupportedType),
            (nix32.to_string(), HashError::UnsupportedType),
            (String::new(), HashError::UnsupportedType),
            ("sha256:".to_string(), HashError::BadLength(0)),
            (format!("sha256:{nix32}0"), HashError::BadLength(53)),
            (format!("sha256: {nix32}"), HashError::BadLength(53)),
            (
                format!("sha256:2{}", &nix32[1..]),
                HashError::Nix32(Nix32Error::Overflow),
            ),
            (
                format!("sha256:e{}", &nix32[1..]),
                HashError::Nix32(Nix32Error::BadChar('e')),
            ),
            (format!("sha256:g{}", &FORMS[0].hex[1..]), HashError::Hex),
            (
                "sha256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuF!=".into(),
                HashError::Base64,
            ),
            // base64 of 33 bytes is also 44 characters
            (format!("sha256:{}", "A".repeat(44)), HashError::Base64),
            (
                "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuA==".into(),
                HashError::Base64,
            ),
            ("sha256-".into(), HashError::Base64),
        ];
        for (input, want) in cases {
            assert_eq!(Sha256Hash::parse(&input), Err(want), "{input}");
        }
        assert_eq!(
            Sha256Hash::from_nix32(&nix32[1..]),
            Err(HashError::BadLength(51))
        );
    }
}
