//! The fixed label values of the metrics, and how failures map onto them. Every mapping is an exhaustive
//! match: a new kind of failure has to pick its label here.

use crate::fill::FillError;
use crate::sources::SourceError;
use crate::verify::VerifyError;

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
    /// The download failed before its first byte (502).
    Error,
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
    /// Whether a source is involved (the others are labelled [`NO_SOURCE`]).
    pub(super) fn has_source(self) -> bool {
        matches!(self, NarinfoResult::Hit | NarinfoResult::Fetched)
    }
}

impl NarResult {
    pub(super) const ALL: [NarResult; 4] = [
        NarResult::Hit,
        NarResult::Miss,
        NarResult::Coalesced,
        NarResult::Error,
    ];
    pub(super) fn as_str(self) -> &'static str {
        match self {
            NarResult::Hit => "hit",
            NarResult::Miss => "miss",
            NarResult::Coalesced => "coalesced",
            NarResult::Error => "error",
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
pub(super) const CHECKS: [&str; 7] = [
    "signature",
    "file_size",
    "file_hash",
    "nar_size",
    "nar_hash",
    "decompress",
    "compression",
];
pub(super) const SOURCE_ERRORS: [&str; 9] = [
    "timeout",
    "backed_off",
    "status",
    "connection",
    "too_large",
    "registry",
    "format",
    "unconfigured",
    "internal",
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
    }
}

/// The `check` label of a NAR that failed verification.
pub(super) fn check_label(e: &VerifyError) -> &'static str {
    match e {
        VerifyError::Unsupported(_) => "compression",
        VerifyError::Decode(_) => "decompress",
        VerifyError::TooLarge { .. } | VerifyError::NarSize { .. } => "nar_size",
        VerifyError::FileSize { .. } => "file_size",
        VerifyError::FileHash { .. } => "file_hash",
        VerifyError::NarHash { .. } => "nar_hash",
    }
}

/// How a failed fill counts (`failed` or `rejected`), the check that refused it, and a reason fit for
/// the status page (never a filesystem path: local failures only say where to look).
pub(super) fn fill_failure(e: &FillError) -> (&'static str, Option<&'static str>, String) {
    match e {
        FillError::Verify(v) => ("rejected", Some(check_label(v)), e.to_string()),
        FillError::Size { .. } => ("rejected", Some("file_size"), e.to_string()),
        FillError::Source(_) | FillError::Stalled | FillError::ShuttingDown => {
            ("failed", None, e.to_string())
        }
        FillError::Record(_) | FillError::Store(_) | FillError::Index(_) | FillError::Io(_) => {
            ("failed", None, "local storage error (see the log)".into())
        }
    }
}

/// A configured source, as metrics know it.
#[derive(Debug, Clone)]
pub struct SourceName {
    /// The name it is recorded under (an upstream's base URL, `oci:<registry>/<image>`).
    pub name: String,
    /// Whether it is the OCI source (which refreshes an index) rather than an upstream cache.
    pub oci: bool,
}
