//! Store paths (`/nix/store/<hash>-<name>`) and their 32-character hash part, validated as Nix does.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use super::STORE_DIR;
use super::nix32;

/// Length of the hash part of a store path.
const HASH_LEN: usize = 32;
/// Longest name Nix accepts (`StorePath::MaxPathLen`).
const MAX_NAME_LEN: usize = 211;

/// Why a store path, base name or store hash was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StorePathError {
    /// The hash part is not 32 nix32 characters.
    #[error("store hash must be 32 characters of [0-9a-df-np-sv-z]")]
    BadHash,
    /// The path is not directly inside /nix/store.
    #[error("store path is not in {STORE_DIR}")]
    WrongStoreDir,
    /// No '-' after the hash part.
    #[error("store path base name must be <hash>-<name>")]
    MissingDash,
    /// The name is empty.
    #[error("store path name is empty")]
    EmptyName,
    /// The name is longer than Nix allows.
    #[error("store path name is longer than {MAX_NAME_LEN} characters")]
    NameTooLong,
    /// The name contains a character outside [A-Za-z0-9+-._?=].
    #[error("store path name contains an invalid character")]
    BadNameChar,
    /// The name is ".", "..", or starts with ".-" or "..-" (rejected by current Nix).
    #[error("store path name must not be a dot component")]
    DotName,
}

/// The 32-character nix32 hash part of a store path, the key of `<hash>.narinfo`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoreHash([u8; HASH_LEN]);

impl StoreHash {
    /// The hash as text.
    pub fn as_str(&self) -> &str {
        // Construction only admits ASCII nix32 digits, so this never takes the fallback.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The hash as its 32 ASCII bytes.
    pub fn as_bytes(&self) -> &[u8; HASH_LEN] {
        &self.0
    }
}

impl FromStr for StoreHash {
    type Err = StorePathError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Any 32 nix32 digits are a valid store hash: 32 digits carry exactly 160 bits, so no
        // overflow check is needed.
        let bytes: [u8; HASH_LEN] = s
            .as_bytes()
            .try_into()
            .map_err(|_| StorePathError::BadHash)?;
        if !nix32::is_nix32(s) {
            return Err(StorePathError::BadHash);
        }
        Ok(Self(bytes))
    }
}

impl fmt::Display for StoreHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for StoreHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreHash({})", self.as_str())
    }
}

/// A store path in /nix/store: its hash part and its name.
///
/// Ordering compares the hash, then the name, which is the order of the base names and of the full
/// paths, the order Nix uses for references in fingerprints.
#[derive(Clone, PartialEq, Eq, Debug, Hash, PartialOrd, Ord)]
pub struct StorePath {
    /// The hash part.
    pub hash: StoreHash,
    /// The name part, after the dash.
    pub name: String,
}

impl StorePath {
    /// Parses a full path, `/nix/store/<hash>-<name>`; other store directories are rejected.
    pub fn parse(full: &str) -> Result<Self, StorePathError> {
        let base = full
            .strip_prefix(STORE_DIR)
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or(StorePathError::WrongStoreDir)?;
        Self::from_base_name(base)
    }

    /// Parses a base name, `<hash>-<name>`, as found in References and Deriver.
    pub fn from_base_name(base: &str) -> Result<Self, StorePathError> {
        let hash_part = base.get(..HASH_LEN).ok_or(StorePathError::BadHash)?;
        let hash = hash_part.parse()?;
        let name = base[HASH_LEN..]
            .strip_prefix('-')
            .ok_or(StorePathError::MissingDash)?;
        check_name(name)?;
        Ok(Self {
            hash,
            name: name.to_string(),
        })
    }

    /// `<hash>-<name>`.
    pub fn base_name(&self) -> String {
        format!("{}-{}", self.hash, self.name)
    }
}

/// Nix's name rule (libstore `checkName`). Since Nix 2.20 "." and "..", alone or as the first
/// dash-separated component, are refused; other leading dots (".zshrc") have always been valid.
/// Because every name follows a hash and a dash, none of these can escape a directory anyway.
fn check_name(name: &str) -> Result<(), StorePathError> {
    if name.is_empty() {
        return Err(StorePathError::EmptyName);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(StorePathError::NameTooLong);
    }
    let first_component = name.split('-').next().unwrap_or(name);
    if first_component == "." || first_component == ".." {
        return Err(StorePathError::DotName);
    }
    let allowed = |c: u8| c.is_ascii_alphanumeric() || b"+-._?=".contains(&c);
    if !name.bytes().all(allowed) {
        return Err(StorePathError::BadNameChar);
    }
    Ok(())
}

impl FromStr for StorePath {
    type Err = StorePathError;

    /// Same as [`StorePath::parse`]: the full path.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{STORE_DIR}/{}-{}", self.hash, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOP: &str = "/nix/store/0r2v93mqaf9d2zyqi8pgmyzmf879753y-top";

    #[test]
    fn parses_real_paths() {
        // paths printed by nix-build and nix eval (Nix 2.8)
        let cases = [
            (TOP, "0r2v93mqaf9d2zyqi8pgmyzmf879753y", "top"),
            (
                "/nix/store/13ymk1q4wh30z4fq5lf3a5d15fvb07f9-top.drv",
                "13ymk1q4wh30z4fq5lf3a5d15fvb07f9",
                "top.drv",
            ),
            (
                "/nix/store/q144f75swlv405pb69crqqkdwiza7nlk-.foo",
                "q144f75swlv405pb69crqqkdwiza7nlk",
                ".foo",
            ),
            (
                "/nix/store/zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-a+b-1.0_x?y=z",
                "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
                "a+b-1.0_x?y=z",
            ),
        ];
        for (full, hash, name) in cases {
            let p = StorePath::parse(full).expect(full);
            assert_eq!(p.hash.as_str(), hash);
            assert_eq!(p.hash.as_bytes(), hash.as_bytes());
            assert_eq!(p.name, name);
            assert_eq!(p.to_string(), full);
            assert_eq!(p.base_name(), format!("{hash}-{name}"));
            assert_eq!(StorePath::from_base_name(&p.base_name()), Ok(p.clone()));
            assert_eq!(full.parse::<StorePath>(), Ok(p));
        }
        let long = format!(
            "/nix/store/0r2v93mqaf9d2zyqi8pgmyzmf879753y-{}",
            "a".repeat(211)
        );
        assert!(StorePath::parse(&long).is_ok());
    }

    #[test]
    fn rejects_bad_paths() {
        let h = "0r2v93mqaf9d2zyqi8pgmyzmf879753y";
        let cases: Vec<(String, StorePathError)> = vec![
            (format!("/gnu/store/{h}-top"), StorePathError::WrongStoreDir),
            (
                format!("/nix/store2/{h}-top"),
                StorePathError::WrongStoreDir,
            ),
            (
                format!("/nix/storex/{h}-top"),
                StorePathError::WrongStoreDir,
            ),
            (format!("nix/store/{h}-top"), StorePathError::WrongStoreDir),
            (format!("{h}-top"), StorePathError::WrongStoreDir),
            (format!("/nix/store//{h}-top"), StorePathError::BadHash),
            (format!("/nix/store/{h}"), StorePathError::MissingDash),
            (format!("/nix/store/{h}-"), StorePathError::EmptyName),
            (format!("/nix/store/{h}_top"), StorePathError::MissingDash),
            (
                format!("/nix/store/{h}-top/bin"),
                StorePathError::BadNameChar,
            ),
            (format!("/nix/store/{h}-a b"), StorePathError::BadNameChar),
            (format!("/nix/store/{h}-é"), StorePathError::BadNameChar),
            (format!("/nix/store/{h}-top\n"), StorePathError::BadNameChar),
            (format!("/nix/store/{h}-."), StorePathError::DotName),
            (format!("/nix/store/{h}-.."), StorePathError::DotName),
            (format!("/nix/store/{h}-.-x"), StorePathError::DotName),
            (format!("/nix/store/{h}-..-x"), StorePathError::DotName),
            (
                format!("/nix/store/{h}-{}", "a".repeat(212)),
                StorePathError::NameTooLong,
            ),
            (
                "/nix/store/0r2v93mqaf9d2zyqi8pgmyzmf879753u-top".into(),
                StorePathError::BadHash,
            ),
            (
                "/nix/store/0R2V93MQAF9D2ZYQI8PGMYZMF879753Y-top".into(),
                StorePathError::BadHash,
            ),
            (
                "/nix/store/0r2v93mqaf9d2zyqi8pgmyzmf87975-top".into(),
                StorePathError::BadHash,
            ),
            (
                "/nix/store/0r2v93mqaf9d2zyqi8pgmyzmf87975é-top".into(),
                StorePathError::BadHash,
            ),
            ("/nix/store/short".into(), StorePathError::BadHash),
            ("/nix/store/".into(), StorePathError::BadHash),
        ];
        for (input, want) in cases {
            assert_eq!(StorePath::parse(&input), Err(want), "{input:?}");
        }
    }

    #[test]
    fn store_hash_parse() {
        let ok = "z4asv3j07d89ywjf8fxkn7sg6mf5s9q5";
        let h: StoreHash = ok.parse().expect("valid");
        assert_eq!(h.to_string(), ok);
        assert_eq!(format!("{h:?}"), format!("StoreHash({ok})"));
        for bad in [
            "",
            "z4asv3j07d89ywjf8fxkn7sg6mf5s9q",
            "z4asv3j07d89ywjf8fxkn7sg6mf5s9q55",
            "e4asv3j07d89ywjf8fxkn7sg6mf5s9q5",
            "o4asv3j07d89ywjf8fxkn7sg6mf5s9q5",
            "t4asv3j07d89ywjf8fxkn7sg6mf5s9q5",
            "u4asv3j07d89ywjf8fxkn7sg6mf5s9q5",
            "Z4asv3j07d89ywjf8fxkn7sg6mf5s9q5",
            "../asv3j07d89ywjf8fxkn7sg6mf5s9q5",
            "z4asv3j07d89ywjf8fxkn7sg6mf5s9q5.narinfo",
        ] {
            assert_eq!(
                bad.parse::<StoreHash>(),
                Err(StorePathError::BadHash),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn orders_like_base_names() {
        let mut paths: Vec<StorePath> = [
            "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-a",
            "00000000000000000000000000000000-b",
            "00000000000000000000000000000000-a",
        ]
        .iter()
        .map(|b| StorePath::from_base_name(b).expect("valid"))
        .collect();
        let mut names: Vec<String> = paths.iter().map(StorePath::base_name).collect();
        paths.sort();
        names.sort();
        let sorted: Vec<String> = paths.iter().map(StorePath::base_name).collect();
        assert_eq!(sorted, names);
    }
}
