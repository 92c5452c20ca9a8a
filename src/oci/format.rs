//! The nixcache-oci storage format (v1), both ways: the index blob behind the tag `cache-index` and the
//! OCI image manifest that points at it. Pure data: no I/O.
//!
//! Byte compatibility matters: nixcache-oci's tools read what nixcache writes and the other way round.
//! The index is JSON with keys sorted and a 2-space indent; the manifest's config is the 3-byte blob `{}\n`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The one tag a cache lives behind.
pub const INDEX_TAG: &str = "cache-index";
/// Media type of the index layer.
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.nix.cache.index.v1+json";
/// Media type of the (empty) config blob.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of the manifest.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The config blob: `{}` and a newline.
pub const CONFIG_BLOB: &[u8] = b"{}\n";

/// `sha256:<hex>` of some bytes: an OCI digest.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The image name of a repository's cache: `<owner>/<repo>/nix-cache`, lower-cased (registries require it).
pub fn image_name(repo: &str) -> String {
    format!("{}/nix-cache", repo.to_ascii_lowercase())
}

/// Checks `OWNER/REPO`.
pub fn check_repo(repo: &str) -> Result<(), String> {
    let ok_part = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    match repo.split_once('/') {
        Some((owner, name)) if ok_part(owner) && ok_part(name) => Ok(()),
        _ => Err(format!("{repo:?} is not OWNER/REPO")),
    }
}

/// The index blob. Field order is alphabetical, so serde writes the keys sorted as nixcache-oci does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheIndex {
    /// Store hash → entry (a BTreeMap: sorted keys).
    pub entries: BTreeMap<String, IndexEntry>,
    /// Store hashes of the roots kept by `gc`.
    #[serde(default)]
    pub gc_roots: Vec<String>,
    /// When it was written, `YYYY-MM-DDTHH:MM:SSZ`.
    #[serde(default)]
    pub generated: String,
    /// Image name (`owner/repo/nix-cache`).
    #[serde(default)]
    pub image: String,
    /// The publisher's public key (`name:base64`), or "". Informational: never trusted on its own.
    #[serde(default)]
    pub public_key: String,
    /// Registry host (`ghcr.io`).
    #[serde(default)]
    pub registry: String,
    /// `owner/repo`.
    #[serde(default)]
    pub repo: String,
    /// Format version: 1.
    pub version: u32,
}

/// One cached store path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// When it was added, `YYYY-MM-DDTHH:MM:SSZ`.
    #[serde(default)]
    pub added: String,
    /// The name part of the store path.
    #[serde(default)]
    pub name: String,
    /// Digest of the compressed NAR blob (= its FileHash), `sha256:<hex>`.
    pub nar_digest: String,
    /// Size of the compressed NAR blob.
    pub nar_size: u64,
    /// The full narinfo text.
    pub narinfo: String,
}

impl CacheIndex {
    /// An empty index for `repo` on `registry_host`.
    pub fn new(repo: &str, registry_host: &str) -> CacheIndex {
        CacheIndex {
            entries: BTreeMap::new(),
            gc_roots: Vec::new(),
            generated: String::new(),
            image: image_name(repo),
            public_key: String::new(),
            registry: registry_host.to_string(),
            repo: repo.to_string(),
            version: 1,
        }
    }

    /// Parses an index blob; only version 1 is understood.
    pub fn parse(bytes: &[u8]) -> Result<CacheIndex, String> {
        let index: CacheIndex =
            serde_json::from_slice(bytes).map_err(|e| format!("index is not valid JSON: {e}"))?;
        if index.version != 1 {
            return Err(format!("index version {} is not supported", index.version));
        }
        Ok(index)
    }

    /// The blob as nixcache-oci writes it: sorted keys, 2-space indent.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain maps and strings cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }
}

/// An OCI image manifest (only what the format uses).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// 2.
    pub schema_version: u32,
    /// The manifest media type.
    #[serde(default)]
    pub media_type: String,
    /// The config blob.
    pub config: Descriptor,
    /// `layers[0]` is the index blob.
    pub layers: Vec<Descriptor>,
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type.
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Bytes.
    pub size: u64,
}

impl Manifest {
    /// The manifest for an index blob.
    pub fn for_index(index_blob: &[u8]) -> Manifest {
        Manifest {
            schema_version: 2,
            media_type: MANIFEST_MEDIA_TYPE.to_string(),
            config: Descriptor {
                media_type: CONFIG_MEDIA_TYPE.to_string(),
                digest: digest_of(CONFIG_BLOB),
                size: CONFIG_BLOB.len() as u64,
            },
            layers: vec![Descriptor {
                media_type: INDEX_MEDIA_TYPE.to_string(),
                digest: digest_of(index_blob),
                size: index_blob.len() as u64,
            }],
        }
    }

    /// The index layer, checked.
    pub fn index_layer(&self) -> Result<&Descriptor, String> {
        match self.layers.first() {
            Some(l) if l.media_type == INDEX_MEDIA_TYPE && l.digest.starts_with("sha256:") => Ok(l),
            Some(l) => Err(format!("first layer has media type {:?}", l.media_type)),
            None => Err("manifest has no layers".into()),
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix time (UTC), without a date library.
pub fn timestamp(unix: u64) -> String {
    let days = unix / 86_400;
    let secs = unix % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Parses [`timestamp`]'s format back to a Unix time.
pub fn parse_timestamp(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[19] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Days-from-civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_blob_digest_is_the_documented_one() {
        assert_eq!(
            digest_of(CONFIG_BLOB),
            "sha256:ca3d163bab055381827226140568f3bef7eaac187cebd76878e0b63e9e442356"
        );
    }

    #[test]
    fn index_is_written_with_sorted_keys_and_two_space_indent() {
        let mut index = CacheIndex::new("Owner/Repo", "ghcr.io");
        index.generated = "2026-11-25T10:00:00Z".into();
        index.entries.insert(
            "b".repeat(32),
            IndexEntry {
                added: "2026-11-25T10:00:00Z".into(),
                name: "hello".into(),
                nar_digest: "sha256:00".into(),
                nar_size: 3,
                narinfo: "StorePath: x\n".into(),
            },
        );
        let text = String::from_utf8(index.to_bytes()).unwrap();
        let want = format!(
            "{{\n  \"entries\": {{\n    \"{}\": {{\n      \"added\": \"2026-11-25T10:00:00Z\",\n      \
             \"name\": \"hello\",\n      \"nar_digest\": \"sha256:00\",\n      \"nar_size\": 3,\n      \
             \"narinfo\": \"StorePath: x\\n\"\n    }}\n  }},\n  \"gc_roots\": [],\n  \
             \"generated\": \"2026-11-25T10:00:00Z\",\n  \"image\": \"owner/repo/nix-cache\",\n  \
             \"public_key\": \"\",\n  \"registry\": \"ghcr.io\",\n  \"repo\": \"Owner/Repo\",\n  \"version\": 1\n}}",
            "b".repeat(32)
        );
        assert_eq!(text, want);
        assert_eq!(CacheIndex::parse(text.as_bytes()).unwrap(), index);
    }

    #[test]
    fn manifest_points_at_the_index() {
        let blob = b"{\"version\": 1}";
        let m = Manifest::for_index(blob);
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains("\"schemaVersion\":2"));
        assert!(json.contains(INDEX_MEDIA_TYPE));
        assert_eq!(m.index_layer().unwrap().digest, digest_of(blob));
        assert!(!json.contains("annotations"));
    }

    #[test]
    fn timestamps_round_trip() {
        for (unix, text) in [
            (0, "1970-01-01T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_795_000_000, "2026-11-18T11:06:40Z"), // date -u -d @1795000000
        ] {
            assert_eq!(timestamp(unix), text);
            assert_eq!(parse_timestamp(text), Some(unix));
        }
        assert_eq!(parse_timestamp("2026-11-18 09:06:40"), None);
    }

    #[test]
    fn repos() {
        assert!(check_repo("cmspam/nixcache-oci").is_ok());
        for bad in ["", "x", "a/b/c", "/b", "a/", "a b/c"] {
            assert!(check_repo(bad).is_err(), "{bad}");
        }
        assert_eq!(image_name("CMSpam/Repo"), "cmspam/repo/nix-cache");
    }
}
