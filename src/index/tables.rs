//! Every redb table of the index, in one place. A change of a table's layout gets a new versioned name.

use redb::TableDefinition;

/// Store hash (32 nix32 chars) → (unix time recorded, source URL, signer, narinfo text as served).
///
/// The text is already rewritten to the canonical NAR URL and signed by `signer` (the appliance's public
/// key `name:base64` at the time, or empty), so a hit is one lookup and a copy while the key is unchanged.
pub const NARINFO: TableDefinition<&str, (u64, &str, &str, &str)> =
    TableDefinition::new("narinfo-v1");

/// FileHash (sha256 of the file as served) → NAR record, JSON ([`super::NarRecord`]).
pub const NAR: TableDefinition<[u8; 32], &[u8]> = TableDefinition::new("nar-v1");

/// FileHash → unix time of the last access. A row exists exactly for the NARs stored on disk.
pub const NAR_STORED: TableDefinition<[u8; 32], u64> = TableDefinition::new("nar-stored-v1");

/// Store hash → unix time until which "absent everywhere" is believed.
pub const NEGATIVE: TableDefinition<&str, u64> = TableDefinition::new("negative-v1");

/// Named counters kept in step with the tables they summarise (so start-up needs no scan).
pub const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters-v1");

/// Store hash → sha256 of the raw index entry it was mirrored from (the OCI source), so a refresh only
/// checks, signs and writes the entries that changed.
pub const MIRROR: TableDefinition<&str, [u8; 32]> = TableDefinition::new("mirror-v1");

/// Free-form metadata (`schema`).
pub const META: TableDefinition<&str, &str> = TableDefinition::new("meta-v1");

/// Key of [`COUNTERS`]: bytes of NAR files on disk.
pub const STORE_BYTES: &str = "store_bytes";
/// Key of [`COUNTERS`]: number of NAR files on disk.
pub const STORE_NARS: &str = "store_nars";
/// The schema this build writes; a database with another one is refused rather than misread.
pub const SCHEMA: &str = "1";
