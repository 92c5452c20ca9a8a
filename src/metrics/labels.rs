//! The fixed label values of the metrics, and how failures map onto them. Every mapping is an exhaustive
//! match: a new kind of failure has to pick its label here.

use crate::sources::SourceError;

/// `source` label of a source recorded in the index that is not configured any more.
pub const OTHER_SOURCE: &str = "other";
/// `source` label where no source is involved (a miss, a negative answer, a failure of all of them).
pub const NO_SOURCE: &str = "none";
/// `from` label of bytes served from the appliance's own disk.
pub const FROM_DISK: &str = "disk";

/// How a narinfo request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NarinfoResult {
    /// From the index.
    Hit,
    /// Not in the index; a source had it and it was recorded now.
    Fetched,
    /// No source has it (404, remembered for `negative_ttl`).
    Miss,
    /// 404 from a remembered miss, without asking anyone.
    Negative,
    /// No source had it and at least one failed (502/504).
    Error,
}

/// How a NAR request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NarResult {
    /// From the disk.
    Hit,
    /// Not on disk: this request started the download.
    Miss,
    /// Not on disk: joined a download already running (no second download).
    Coalesced,
    /// The download failed before its first byte (502, 503 or 504).
    Error,
    /// Larger than the store's cap: streamed from the source, verified, not stored.
    PassThrough,
    /// Refused: too many downloads waiting, or no room (503).
    Busy,
}

/// How a fill ended, as metrics count it (the core maps its errors onto this at the call site).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillOutcome {
    /// Verified and stored; the file has this size.
    Stored(u64),
    /// The file failed a check: one of [`CHECKS`].
    Rejected(&'static str),
    /// It stopped for another reason: one of [`FILL_FAILURE_REASONS`].
    Failed(&'static str),
}

/// What kind of request was made to a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// A narinfo (upstream caches).
    Narinfo,
    /// A NAR file or blob.
    Nar,
    /// An index refresh (OCI source: manifest HEAD, and manifest and index blob when it changed).
    Index,
}

impl NarinfoResult {
    pub(super) const ALL: [NarinfoResult; 5] = [
        NarinfoResult::Hit,
        NarinfoResult::Fetched,
        NarinfoResult::Miss,
        NarinfoResult::Negative,
        NarinfoResult::Error,
    ];
    pub(super) fn as_str(self) -> &'static str {
        match self {
            NarinfoResult::Hit => "hit",
            NarinfoResult::Fetched => "fetched",
            NarinfoResult::Miss => "miss",
            NarinfoResult::Negative => "negative",
            NarinfoResult::Error => "error",
        }
    }
    /// Its position in [`NarinfoResult::ALL`].
    pub(super) fn index(self) -> usize {
        self as usize
    }
    /// Whether a source is involved (the others are labelled [`NO_SOURCE`]).
    pub(super) fn has_source(self) -> bool {
        matches!(self, NarinfoResult::Hit | NarinfoResult::Fetched)
    }
}

impl NarResult {
    pub(super) const ALL: [NarResult; 6] = [
        NarResult::Hit,
        NarResult::Miss,
        NarResult::Coalesced,
        NarResult::Error,
        NarResult::PassThrough,
        NarResult::Busy,
    ];
    /// Its position in [`NarResult::ALL`].
    pub(super) fn index(self) -> usize {
        self as usize
    }
    pub(super) fn as_str(self) -> &'static str {
        match self {
            NarResult::Hit => "hit",
            NarResult::Miss => "miss",
            NarResult::Coalesced => "coalesced",
            NarResult::Error => "error",
            NarResult::PassThrough => "pass_through",
            NarResult::Busy => "busy",
        }
    }
}

impl RequestKind {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            RequestKind::Narinfo => "narinfo",
            RequestKind::Nar => "nar",
            RequestKind::Index => "index",
        }
    }
}

pub(super) const FILL_RESULTS: [&str; 3] = ["stored", "failed", "rejected"];
/// Why a fill stopped without a bad file: the `reason` of `nixcache_fill_failures_total`.
pub const FILL_FAILURE_REASONS: [&str; 8] = [
    "source",
    "too_slow",
    "abandoned",
    "no_room",
    "busy",
    "shutdown",
    "local",
    "internal",
];
/// The checks a NAR file can fail: the `check` of `nixcache_verification_failures_total`.
pub const CHECKS: [&str; 7] = [
    "signature",
    "file_size",
    "file_hash",
    "nar_size",
    "nar_hash",
    "decompress",
    "compression",
];
pub(super) const SOURCE_ERRORS: [&str; 10] = [
    "timeout",
    "backed_off",
    "status",
    "connection",
    "too_large",
    "registry",
    "format",
    "unconfigured",
    "internal",
    "bucket",
];
pub(super) const REFRESH_OUTCOMES: [&str; 4] = ["unchanged", "applied", "not_published", "failed"];

/// The `error` label of a source failure. Exhaustive: a new kind of failure picks its label here.
pub(super) fn error_label(e: &SourceError) -> &'static str {
    match e {
        SourceError::Timeout => "timeout",
        SourceError::BackedOff => "backed_off",
        SourceError::Status(_) => "status",
        SourceError::Http(_) => "connection",
        SourceError::TooLarge => "too_large",
        SourceError::Unconfigured(_) => "unconfigured",
        SourceError::NarDownload | SourceError::RefreshFailed => "internal",
        // Never sent to the source: counted in nixcache_upstream_lookups_refused_total instead.
        SourceError::Saturated => "internal",
        SourceError::Registry(r) if r.is_timeout() => "timeout",
        SourceError::Registry(_) => "registry",
        SourceError::Bucket(e) if e.is_timeout() => "timeout",
        SourceError::Bucket(_) => "bucket",
    }
}

/// A configured source, as metrics know it.
#[derive(Debug, Clone)]
pub struct SourceName {
    /// The name it is recorded under (an upstream's base URL, `oci:<registry>/<image>`,
    /// `push:<token>` for what a LAN builder pushed with that token).
    pub name: String,
    /// Whether it is the OCI source (which refreshes an index) rather than an upstream cache.
    pub oci: bool,
}

/// The prefix of the sources LAN pushes are recorded under (issue 12): `push:<token name>`.
pub const PUSH_SOURCE_PREFIX: &str = "push:";

impl SourceName {
    /// The token name of a push source (nothing is ever asked of or downloaded from one).
    pub fn push_token(&self) -> Option<&str> {
        self.name.strip_prefix(PUSH_SOURCE_PREFIX)
    }
}
