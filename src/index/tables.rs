//! Every redb table of the index, in one place. A change of a table's layout gets a new versioned name;
//! the tables of older layouts stay here (in [`v1`]) for as long as an index written by them can be
//! migrated (see `migrate.rs`).

use redb::{MultimapTableDefinition, TableDefinition};

/// Store hash (32 nix32 chars) → (recorded at, trust policy tag, source, signer, FileHash, narinfo text).
///
/// The text is what is served: rewritten to the canonical NAR URL and signed by `signer` (the appliance's
/// public key `name:base64` at the time, or empty), so a hit is one lookup and a copy while neither the
/// key nor the source's trust policy changed. The policy tag says under which policy of `source` the
/// narinfo was accepted (see `trust.rs`); FileHash names the NAR the text points at.
pub const NARINFO: TableDefinition<&str, NarinfoValue> = TableDefinition::new("narinfo-v2");

/// The value of [`NARINFO`]: (recorded at, policy tag, source, signer, FileHash, text).
pub type NarinfoValue<'a> = (u64, u64, &'a str, &'a str, [u8; 32], &'a str);

/// Store hash → unix time a client last asked for it (written in batches), for the index's GC.
pub const NARINFO_ASKED: TableDefinition<&str, u64> = TableDefinition::new("narinfo-asked-v1");

/// FileHash (sha256 of the file as served) → NAR record, JSON ([`super::NarRecord`]).
pub const NAR: TableDefinition<[u8; 32], &[u8]> = TableDefinition::new("nar-v1");

/// FileHash → how many narinfo rows point at it. A NAR record nobody points at can go.
pub const NAR_REFS: TableDefinition<[u8; 32], u64> = TableDefinition::new("nar-refs-v1");

/// FileHash → (unix time of the last access, file size). A row exists exactly for the NARs on disk.
pub const STORED: TableDefinition<[u8; 32], (u64, u64)> = TableDefinition::new("stored-v2");

/// FileHash → how many holders (pins, pushes) keep it from eviction.
pub const PROTECTED: TableDefinition<[u8; 32], u64> = TableDefinition::new("protected-v1");

/// Store hash → unix time until which "absent everywhere" is believed.
pub const NEGATIVE: TableDefinition<&str, u64> = TableDefinition::new("negative-v1");

/// Named counters kept in step with the tables they summarise (so start-up needs no scan).
pub const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters-v1");

/// Store hash → sha256 of the raw index entry (and the trust policy) it was mirrored from (the OCI
/// source), so a refresh only checks, signs and writes the entries that changed.
pub const MIRROR: TableDefinition<&str, [u8; 32]> = TableDefinition::new("mirror-v1");

/// Store hash → the LAN push that recorded its narinfo (issue 12): (token name, FileHash, file size,
/// pushed at, whether it holds a [`PROTECTED`] count on the FileHash). Added to schema 2 (new table only).
pub const PUSHED: TableDefinition<&str, PushedValue> = TableDefinition::new("pushed-v1");

/// The value of [`PUSHED`].
pub type PushedValue<'a> = (&'a str, [u8; 32], u64, u64, bool);

/// Free-form metadata (`schema`, `manifest <source>`).
pub const META: TableDefinition<&str, &str> = TableDefinition::new("meta-v1");

/// FileHash → store hashes whose narinfo waits for that NAR to be in the shared bucket before it is
/// published there (issue 13; empty without a bucket). See `bucket/publish.rs`.
pub const BUCKET_PENDING: MultimapTableDefinition<[u8; 32], &str> =
    MultimapTableDefinition::new("bucket-pending-v1");
// --- Issue 16: transcoded NARs and pins (added tables: the schema stays "2") ---

/// FileHash → store hashes of the narinfo rows pointing at it, so that every row can follow its NAR
/// when the NAR is transcoded. Kept in step with [`NARINFO`] by `put_narinfo` and `remove_narinfo`.
pub const NAR_NARINFOS: MultimapTableDefinition<[u8; 32], &str> =
    MultimapTableDefinition::new("nar-narinfos-v1");

/// FileHash of an original (xz, bzip2) → (FileHash of its zstd twin, the zstd level it was made with).
pub const TRANSCODED: TableDefinition<[u8; 32], ([u8; 32], u8)> =
    TableDefinition::new("transcoded-v1");

/// FileHash of a zstd twin → FileHash of the original it was made from (and can be made again from).
pub const TRANSCODED_FROM: TableDefinition<[u8; 32], [u8; 32]> =
    TableDefinition::new("transcoded-from-v1");

/// FileHash of a transcoded original still on disk → unix time after which its file is dropped (it is
/// kept that long for clients holding the narinfo from before the switch).
pub const ORIGINALS: TableDefinition<[u8; 32], u64> =
    TableDefinition::new("transcode-originals-v1");

/// Pin name → pin record, JSON (`index::PinRecord`).
pub const PINS: TableDefinition<&str, &[u8]> = TableDefinition::new("pins-v1");

/// Key of [`META`]: present once [`NAR_NARINFOS`] was built from the narinfo rows of an older index.
pub const NAR_NARINFOS_BUILT: &str = "nar-narinfos built";

/// Key of [`COUNTERS`]: bytes of NAR files on disk.
pub const STORE_BYTES: &str = "store_bytes";
/// Key of [`COUNTERS`]: number of NAR files on disk.
pub const STORE_NARS: &str = "store_nars";
/// The schema this build writes; older ones are migrated, newer ones refused rather than misread.
pub const SCHEMA: &str = "2";

/// The layout of schema 1 (nixcache 0.1, 2026-11-25), read only to migrate it.
pub mod v1 {
    use redb::TableDefinition;

    /// Store hash → (unix time recorded, source URL, signer, narinfo text as served).
    pub const NARINFO: TableDefinition<&str, (u64, &str, &str, &str)> =
        TableDefinition::new("narinfo-v1");
    /// FileHash → unix time of the last access; a row exists exactly for the NARs on disk.
    pub const NAR_STORED: TableDefinition<[u8; 32], u64> = TableDefinition::new("nar-stored-v1");
    /// The schema string of this layout.
    pub const SCHEMA: &str = "1";
}
