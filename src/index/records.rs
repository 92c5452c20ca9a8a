//! The typed records the index hands out and takes: values are parsed once, at the index boundary, so
//! the rest of the appliance never compares compression names as text or re-parses hashes.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::IndexError;
use crate::nix::hash::Sha256Hash;
use crate::nix::narinfo::Compression;
use crate::nix::store_path::StoreHash;

/// What the index knows about one NAR file (keyed by its FileHash).
///
/// Stored as JSON with the field names and string forms of schema 1, so the table was kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NarRecord {
    /// Its compression.
    #[serde(with = "compression_text")]
    pub compression: Compression,
    /// Size of the file, when known (always known once stored).
    pub file_size: Option<u64>,
    /// NarHash of the uncompressed NAR.
    #[serde(with = "hash_text")]
    pub nar_hash: Sha256Hash,
    /// NarSize.
    pub nar_size: u64,
    /// The source it comes from (an upstream's base URL, the OCI source's id, ...).
    pub source: String,
    /// Where the file is at that source (an absolute URL, or a blob digest for the OCI source).
    pub url: String,
}

impl NarRecord {
    /// Whether `other` describes the same file content: a second narinfo may point at a known file only
    /// if it agrees on what is inside (where it is fetched from may differ).
    pub fn same_content(&self, other: &NarRecord) -> bool {
        self.compression == other.compression
            && self.nar_hash == other.nar_hash
            && self.nar_size == other.nar_size
            && (self.file_size.is_none()
                || other.file_size.is_none()
                || self.file_size == other.file_size)
    }

    pub(super) fn encode(&self) -> Result<Vec<u8>, IndexError> {
        serde_json::to_vec(self).map_err(|e| IndexError::Corrupt(e.to_string()))
    }

    pub(super) fn decode(raw: &[u8]) -> Result<NarRecord, IndexError> {
        serde_json::from_slice(raw).map_err(|e| IndexError::Corrupt(e.to_string()))
    }
}

/// A recorded narinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarinfoRow {
    /// Unix time it was recorded.
    pub recorded: u64,
    /// The trust policy tag of its source when it was accepted (`trust.rs`).
    pub policy: u64,
    /// The source it came from.
    pub source: String,
    /// The appliance key (`name:base64`) that signed `text`, or empty.
    pub signer: String,
    /// The NAR file it points at.
    pub file_hash: Sha256Hash,
    /// The narinfo as served.
    pub text: String,
}

/// A narinfo to record, with the NAR it points at.
#[derive(Debug, Clone)]
pub struct NewNarinfo<'a> {
    /// Its store hash.
    pub hash: StoreHash,
    /// The row.
    pub row: &'a NarinfoRow,
    /// The NAR record its FileHash gets, unless that file is already known.
    pub nar: &'a NarRecord,
}

/// Whether a narinfo was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Recorded (or replaced).
    Yes,
    /// Refused: its FileHash is already known with other content (another NarHash, NarSize or
    /// compression). The first record stays, so a narinfo cannot break a path that is already there.
    Conflict,
}

/// A NAR chosen for eviction: its FileHash, record and the size of its file.
#[derive(Debug, Clone)]
pub struct Evicted {
    /// FileHash.
    pub file_hash: Sha256Hash,
    /// Its record.
    pub record: NarRecord,
    /// Bytes freed.
    pub size: u64,
}

/// One stored NAR, as the scrub and `nixcache verify` walk them.
#[derive(Debug, Clone)]
pub struct StoredNar {
    /// FileHash.
    pub file_hash: Sha256Hash,
    /// Its record.
    pub record: NarRecord,
    /// The recorded file size.
    pub size: u64,
}

mod compression_text {
    use super::*;

    pub fn serialize<S: Serializer>(c: &Compression, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(c.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Compression, D::Error> {
        let text = String::deserialize(d)?;
        Compression::parse(&text).map_err(serde::de::Error::custom)
    }
}

mod hash_text {
    use super::*;

    pub fn serialize<S: Serializer>(h: &Sha256Hash, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&h.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Sha256Hash, D::Error> {
        let text = String::deserialize(d)?;
        Sha256Hash::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_json_of_schema_1_still_decodes() {
        // A record exactly as nixcache 0.1 wrote it (strings for compression and NarHash).
        let v1 = br#"{"compression":"xz","file_size":412,"nar_hash":"sha256:1ycmgz5w1mh7iyw2dc6w2qkwa5vgaqyrbhrflbdbzq2idfyhk3yf","nar_size":120,"source":"http://a/","url":"http://a/nar/x.nar.xz"}"#;
        let r = NarRecord::decode(v1).unwrap();
        assert_eq!(r.compression, Compression::Xz);
        assert_eq!(r.file_size, Some(412));
        assert_eq!(NarRecord::decode(&r.encode().unwrap()).unwrap(), r);
        assert!(NarRecord::decode(br#"{"compression":"rar"}"#).is_err());
    }
}
