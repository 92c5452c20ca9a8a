//! narinfo files: a strict parser, Nix's serialisation, and the fingerprint that signatures cover.

use std::fmt;

use thiserror::Error;

use super::hash::{HashError, Sha256Hash};
use super::store_path::{StorePath, StorePathError};

#[cfg(test)]
mod tests;

/// Largest narinfo accepted; real ones are a few hundred bytes, even with many references.
pub const MAX_NARINFO_BYTES: usize = 64 * 1024;

/// Why a narinfo was rejected. A malformed narinfo is an error for Nix clients, so none is served.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NarInfoError {
    /// Longer than [`MAX_NARINFO_BYTES`].
    #[error("narinfo is larger than {MAX_NARINFO_BYTES} bytes")]
    TooLarge,
    /// A '\r' anywhere: Nix would keep it inside the value.
    #[error("narinfo contains a carriage return")]
    CarriageReturn,
    /// The last line is not terminated, which Nix's parser rejects.
    #[error("narinfo does not end with a newline")]
    NoFinalNewline,
    /// A line that is not `Key: value`.
    #[error("narinfo line {line} is not \"Key: value\"")]
    BadLine {
        /// 1-based line number.
        line: usize,
    },
    /// A single-valued key given twice.
    #[error("narinfo has more than one {0} line")]
    Duplicate(&'static str),
    /// A required key is absent.
    #[error("narinfo has no {0}")]
    MissingField(&'static str),
    /// A required key has an empty value.
    #[error("narinfo has an empty {0}")]
    EmptyField(&'static str),
    /// NarSize is 0, which Nix treats as missing.
    #[error("narinfo NarSize is zero")]
    ZeroNarSize,
    /// A store path or base name that does not parse.
    #[error("narinfo {field} is not a valid store path: {source}")]
    BadStorePath {
        /// The key whose value was rejected.
        field: &'static str,
        /// What is wrong with it.
        source: StorePathError,
    },
    /// A hash that does not parse.
    #[error("narinfo {field} is not a valid sha256 hash: {source}")]
    BadHash {
        /// The key whose value was rejected.
        field: &'static str,
        /// What is wrong with it.
        source: HashError,
    },
    /// A size that is not a plain decimal u64.
    #[error("narinfo {field} is not a number")]
    BadNumber {
        /// The key whose value was rejected.
        field: &'static str,
    },
    /// A Compression value nixcache does not know.
    #[error("narinfo Compression {0:?} is not supported")]
    BadCompression(String),
}

/// How a NAR file is compressed, as named by a narinfo's Compression line.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum Compression {
    /// The file is the NAR itself.
    None,
    /// xz, the default of `nix copy`.
    Xz,
    /// zstd.
    Zstd,
    /// bzip2, meant when Compression is absent or empty.
    Bzip2,
    /// brotli.
    Br,
    /// gzip.
    Gzip,
    /// lzip.
    Lzip,
    /// lz4.
    Lz4,
}

impl Compression {
    /// Every supported compression.
    pub const ALL: [Compression; 8] = [
        Self::None,
        Self::Xz,
        Self::Zstd,
        Self::Bzip2,
        Self::Br,
        Self::Gzip,
        Self::Lzip,
        Self::Lz4,
    ];

    /// Parses a Compression value; "" means bzip2, as in Nix.
    pub fn parse(s: &str) -> Result<Self, NarInfoError> {
        if s.is_empty() {
            return Ok(Self::Bzip2);
        }
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| NarInfoError::BadCompression(s.to_string()))
    }

    /// The Compression value Nix writes.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Xz => "xz",
            Self::Zstd => "zstd",
            Self::Bzip2 => "bzip2",
            Self::Br => "br",
            Self::Gzip => "gzip",
            Self::Lzip => "lzip",
            Self::Lz4 => "lz4",
        }
    }

    /// The file name suffix after ".nar", as Nix's binary cache store names NAR files.
    pub fn extension(&self) -> &'static str {
        match self {
            Self::None => "",
            Self::Xz => ".xz",
            Self::Zstd => ".zst",
            Self::Bzip2 => ".bz2",
            Self::Br => ".br",
            Self::Gzip => ".gz",
            Self::Lzip => ".lzip",
            Self::Lz4 => ".lz4",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed narinfo. Unknown keys are dropped; everything Nix reads is kept.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct NarInfo {
    /// The path this narinfo describes.
    pub store_path: StorePath,
    /// Where the NAR file is, relative to the cache root unless absolute.
    pub url: String,
    /// How the NAR file is compressed.
    pub compression: Compression,
    /// sha256 of the NAR file as served (compressed).
    pub file_hash: Option<Sha256Hash>,
    /// Size of the NAR file as served.
    pub file_size: Option<u64>,
    /// sha256 of the uncompressed NAR.
    pub nar_hash: Sha256Hash,
    /// Size of the uncompressed NAR, never 0.
    pub nar_size: u64,
    /// Store paths this one refers to, in file order; written back as base names.
    pub references: Vec<StorePath>,
    /// Base name of the deriver, verbatim; None also for Nix's "unknown-deriver".
    pub deriver: Option<String>,
    /// `name:base64` signatures, verbatim and in file order.
    pub sigs: Vec<String>,
    /// Content address, verbatim.
    pub ca: Option<String>,
}

/// Keys that may appear at most once (Sig is the only repeatable one).
const SINGLE_KEYS: [&str; 10] = [
    "StorePath",
    "URL",
    "Compression",
    "FileHash",
    "FileSize",
    "NarHash",
    "NarSize",
    "References",
    "Deriver",
    "CA",
];

impl NarInfo {
    /// Parses a narinfo strictly: anything Nix would misread or reject is an error.
    pub fn parse(text: &str) -> Result<Self, NarInfoError> {
        if text.len() > MAX_NARINFO_BYTES {
            return Err(NarInfoError::TooLarge);
        }
        if text.contains('\r') {
            return Err(NarInfoError::CarriageReturn);
        }
        let body = text
            .strip_suffix('\n')
            .ok_or(NarInfoError::NoFinalNewline)?;
        let mut fields = Fields::default();
        for (index, line) in body.split('\n').enumerate() {
            let bad_line = NarInfoError::BadLine { line: index + 1 };
            // Nix names the key by the first ':' and skips exactly two characters after it.
            let (key, value) = line.split_once(": ").ok_or(bad_line.clone())?;
            // Every key Nix has ever written is alphanumeric; anything else is a damaged line.
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(bad_line);
            }
            fields.add(key, value)?;
        }
        fields.finish()
    }

    /// Serialises as Nix does: its key order, hashes as `sha256:<nix32>`, References always present.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "StorePath: {}\nURL: {}\nCompression: {}\n",
            self.store_path, self.url, self.compression
        );
        if let Some(h) = &self.file_hash {
            out += &format!("FileHash: {h}\n");
        }
        if let Some(n) = self.file_size {
            out += &format!("FileSize: {n}\n");
        }
        out += &format!("NarHash: {}\nNarSize: {}\n", self.nar_hash, self.nar_size);
        let refs: Vec<String> = self.references.iter().map(StorePath::base_name).collect();
        // Nix writes "References: " with the trailing space when there are none.
        out += &format!("References: {}\n", refs.join(" "));
        if let Some(d) = &self.deriver {
            out += &format!("Deriver: {d}\n");
        }
        for sig in &self.sigs {
            out += &format!("Sig: {sig}\n");
        }
        if let Some(ca) = &self.ca {
            out += &format!("CA: {ca}\n");
        }
        out
    }

    /// The text that Sig lines sign: store path, NarHash, NarSize and references, nothing else,
    /// so URL, Compression and the file fields may be rewritten without re-signing.
    pub fn fingerprint(&self) -> String {
        // Nix keeps references in a set: sorted, without duplicates.
        let mut refs: Vec<String> = self.references.iter().map(ToString::to_string).collect();
        refs.sort();
        refs.dedup();
        format!(
            "1;{};{};{};{}",
            self.store_path,
            self.nar_hash,
            self.nar_size,
            refs.join(",")
        )
    }

    /// The file's hash and size: FileHash/FileSize, or for Compression none (where the file is the NAR)
    /// NarHash/NarSize when absent.
    pub fn file_hash_or_nar(&self) -> Option<(Sha256Hash, Option<u64>)> {
        match (self.file_hash, self.compression) {
            (Some(h), Compression::None) => Some((h, self.file_size.or(Some(self.nar_size)))),
            (Some(h), _) => Some((h, self.file_size)),
            (None, Compression::None) => {
                Some((self.nar_hash, self.file_size.or(Some(self.nar_size))))
            }
            (None, _) => None,
        }
    }
}

/// Values collected while reading lines, checked for completeness by `finish`.
#[derive(Default)]
struct Fields {
    seen: Vec<&'static str>,
    store_path: Option<StorePath>,
    url: Option<String>,
    compression: Option<Compression>,
    file_hash: Option<Sha256Hash>,
    file_size: Option<u64>,
    nar_hash: Option<Sha256Hash>,
    nar_size: Option<u64>,
    references: Vec<StorePath>,
    deriver: Option<String>,
    sigs: Vec<String>,
    ca: Option<String>,
}

impl Fields {
    /// Records one `key: value` line.
    fn add(&mut self, key: &str, value: &str) -> Result<(), NarInfoError> {
        if key == "Sig" {
            self.sigs.push(value.to_string());
            return Ok(());
        }
        // Unknown keys (System, Provenance, ...) are ignored, as Nix ignores them.
        let Some(&field) = SINGLE_KEYS.iter().find(|k| **k == key) else {
            return Ok(());
        };
        if self.seen.contains(&field) {
            return Err(NarInfoError::Duplicate(field));
        }
        self.seen.push(field);
        match field {
            "StorePath" => self.store_path = Some(parse_path(field, value, StorePath::parse)?),
            "URL" => self.url = Some(value.to_string()),
            "Compression" => self.compression = Some(Compression::parse(value)?),
            "FileHash" => self.file_hash = Some(parse_hash(field, value)?),
            "FileSize" => self.file_size = Some(parse_number(field, value)?),
            "NarHash" => self.nar_hash = Some(parse_hash(field, value)?),
            "NarSize" => self.nar_size = Some(parse_number(field, value)?),
            "References" => {
                // Nix tokenizes on spaces and skips empty tokens.
                self.references = value
                    .split(' ')
                    .filter(|r| !r.is_empty())
                    .map(|r| parse_path(field, r, StorePath::from_base_name))
                    .collect::<Result<_, _>>()?;
            }
            "Deriver" if value == "unknown-deriver" => {}
            "Deriver" => {
                parse_path(field, value, StorePath::from_base_name)?;
                self.deriver = Some(value.to_string());
            }
            // An empty CA is no CA for Nix too.
            "CA" if value.is_empty() => {}
            "CA" => self.ca = Some(value.to_string()),
            _ => {}
        }
        Ok(())
    }

    /// Checks required fields and builds the narinfo.
    fn finish(self) -> Result<NarInfo, NarInfoError> {
        // Checked in the order Nix reports them.
        let store_path = self
            .store_path
            .ok_or(NarInfoError::MissingField("StorePath"))?;
        let nar_hash = self.nar_hash.ok_or(NarInfoError::MissingField("NarHash"))?;
        let url = self.url.ok_or(NarInfoError::MissingField("URL"))?;
        if url.is_empty() {
            return Err(NarInfoError::EmptyField("URL"));
        }
        let nar_size = self.nar_size.ok_or(NarInfoError::MissingField("NarSize"))?;
        if nar_size == 0 {
            return Err(NarInfoError::ZeroNarSize);
        }
        Ok(NarInfo {
            store_path,
            url,
            compression: self.compression.unwrap_or(Compression::Bzip2),
            file_hash: self.file_hash,
            file_size: self.file_size,
            nar_hash,
            nar_size,
            references: self.references,
            deriver: self.deriver,
            sigs: self.sigs,
            ca: self.ca,
        })
    }
}

/// Parses a store path field, naming the field in the error.
fn parse_path(
    field: &'static str,
    value: &str,
    parse: fn(&str) -> Result<StorePath, StorePathError>,
) -> Result<StorePath, NarInfoError> {
    parse(value).map_err(|source| NarInfoError::BadStorePath { field, source })
}

/// Parses a hash field in any form Nix accepts.
fn parse_hash(field: &'static str, value: &str) -> Result<Sha256Hash, NarInfoError> {
    Sha256Hash::parse(value).map_err(|source| NarInfoError::BadHash { field, source })
}

/// Parses a plain decimal number: no sign, no spaces.
fn parse_number(field: &'static str, value: &str) -> Result<u64, NarInfoError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NarInfoError::BadNumber { field });
    }
    value.parse().map_err(|_| NarInfoError::BadNumber { field })
}
