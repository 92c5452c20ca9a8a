//! ed25519 signing keys and narinfo signatures in Nix's `name:base64` format.
//!
//! Secret key file: `name:base64(32-byte seed || 32-byte public key)`; public key:
//! `name:base64(32 bytes)`; signature: `name:base64(64 bytes)` over [`NarInfo::fingerprint`].

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use thiserror::Error;

use super::hash::BASE64_LENIENT;
use super::narinfo::NarInfo;

#[cfg(test)]
mod tests;

/// Why a key could not be read or made.
#[derive(Debug, Error)]
pub enum SigningError {
    /// No ':' between the key name and the key.
    #[error("key must be \"name:base64\"")]
    MissingColon,
    /// The key name is empty or contains whitespace or control characters.
    #[error("key name must be non-empty, without ':' or whitespace")]
    BadName,
    /// The key part is not base64.
    #[error("key is not valid base64")]
    BadBase64,
    /// The key decodes to the wrong number of bytes.
    #[error("key has {got} bytes, expected {expected}")]
    BadLength {
        /// 64 for a secret key, 32 for a public key.
        expected: usize,
        /// What the base64 decoded to.
        got: usize,
    },
    /// The bytes are not a valid ed25519 key, or the public half does not match the seed.
    #[error("key is not a valid ed25519 key")]
    InvalidKey,
    /// The operating system's random source failed while generating a key.
    #[error("cannot read random bytes for a new key: {0}")]
    Random(getrandom::Error),
}

/// Splits `name:base64` at the first ':' and decodes the base64 part to exactly `N` bytes.
fn split_key<const N: usize>(text: &str) -> Result<(&str, [u8; N]), SigningError> {
    let (name, b64) = text
        .trim()
        .split_once(':')
        .ok_or(SigningError::MissingColon)?;
    check_name(name)?;
    let bytes = BASE64_LENIENT
        .decode(b64)
        .map_err(|_| SigningError::BadBase64)?;
    let got = bytes.len();
    let array = bytes
        .try_into()
        .map_err(|_| SigningError::BadLength { expected: N, got })?;
    Ok((name, array))
}

/// A key name must survive the `name:base64` format and the trimming of key files.
fn check_name(name: &str) -> Result<(), SigningError> {
    let bad = |c: char| c == ':' || c.is_whitespace() || c.is_control();
    if name.is_empty() || name.contains(bad) {
        return Err(SigningError::BadName);
    }
    Ok(())
}

/// An ed25519 secret key with its Nix key name. Debug output never shows the key.
#[derive(Clone)]
pub struct SecretKey {
    name: String,
    key: SigningKey,
}

impl SecretKey {
    /// Parses `name:base64(seed || public)` as in a Nix secret key file; padding optional,
    /// surrounding whitespace ignored. The public half must match the seed.
    pub fn parse(text: &str) -> Result<Self, SigningError> {
        let (name, bytes) = split_key::<64>(text)?;
        let key = SigningKey::from_keypair_bytes(&bytes).map_err(|_| SigningError::InvalidKey)?;
        Ok(Self {
            name: name.to_string(),
            key,
        })
    }

    /// A new random key named `name` (by convention `host-1`, the suffix numbering rotations).
    pub fn generate(name: &str) -> Result<Self, SigningError> {
        check_name(name)?;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(SigningError::Random)?;
        Ok(Self {
            name: name.to_string(),
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// The key file text as `nix-store --generate-binary-cache-key` writes it: no trailing newline.
    pub fn to_file_text(&self) -> String {
        format!(
            "{}:{}",
            self.name,
            STANDARD.encode(self.key.to_keypair_bytes())
        )
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The matching public key, under the same name.
    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// Signs a fingerprint, giving a Sig value `name:base64(signature)`.
    pub fn sign(&self, fingerprint: &str) -> String {
        let sig = self.key.sign(fingerprint.as_bytes());
        format!("{}:{}", self.name, STANDARD.encode(sig.to_bytes()))
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// An ed25519 public key with its Nix key name, as in `trusted-public-keys`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PublicKey {
    name: String,
    key: VerifyingKey,
}

impl PublicKey {
    /// Parses `name:base64(32 bytes)`; padding optional, surrounding whitespace ignored.
    pub fn parse(text: &str) -> Result<Self, SigningError> {
        let (name, bytes) = split_key::<32>(text)?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| SigningError::InvalidKey)?;
        Ok(Self {
            name: name.to_string(),
            key,
        })
    }

    /// Parses every key of a configured list (`trusted_keys` and the like); the first bad one fails all.
    pub fn parse_all(texts: &[String]) -> Result<Vec<Self>, SigningError> {
        texts.iter().map(|t| Self::parse(t)).collect()
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `sig` (`name:base64`) is this key's valid signature of `fingerprint`.
    /// False for another key's name, malformed input, or a bad signature.
    pub fn verify(&self, fingerprint: &str, sig: &str) -> bool {
        let Some((name, b64)) = sig.split_once(':') else {
            return false;
        };
        if name != self.name {
            return false;
        }
        let Ok(bytes) = BASE64_LENIENT.decode(b64) else {
            return false;
        };
        let Ok(bytes) = <[u8; 64]>::try_from(bytes) else {
            return false;
        };
        // Strict verification refuses malleable and small-order signatures, as libsodium (Nix) does.
        self.key
            .verify_strict(fingerprint.as_bytes(), &Signature::from_bytes(&bytes))
            .is_ok()
    }
}

impl fmt::Display for PublicKey {
    /// `name:base64`, the form of a Nix public key file and of `trusted-public-keys` entries.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, STANDARD.encode(self.key.as_bytes()))
    }
}

/// Whether any of `sigs` is a valid signature of `fingerprint` by one of `keys`, matched by name;
/// signatures under unknown names are ignored, as Nix does.
pub fn verify_any(keys: &[PublicKey], fingerprint: &str, sigs: &[String]) -> bool {
    sigs.iter()
        .any(|sig| keys.iter().any(|key| key.verify(fingerprint, sig)))
}

/// The key name of a Sig value (`name:base64`), if it has one.
pub fn sig_key_name(sig: &str) -> Option<&str> {
    sig.split_once(':').map(|(name, _)| name)
}

impl NarInfo {
    /// Adds our signature, replacing any earlier one under the same key name and keeping others
    /// (upstream signatures stay valid: the fingerprint ignores URL and compression).
    pub fn sign_with(&mut self, key: &SecretKey) {
        self.sigs
            .retain(|sig| sig_key_name(sig) != Some(key.name()));
        let sig = key.sign(&self.fingerprint());
        self.sigs.push(sig);
    }

    /// Whether one of this narinfo's signatures verifies under `keys`.
    pub fn verify_with(&self, keys: &[PublicKey]) -> bool {
        verify_any(keys, &self.fingerprint(), &self.sigs)
    }
}
