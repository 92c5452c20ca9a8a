//! Why an upload was refused, as the uploader and the metrics see it. The HTTP status of each is
//! decided in `server/upload.rs`; the reason label here.

use crate::index::{IndexError, PushConflict};

/// An upload that was not taken. Nothing of it is kept.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// No credentials (401: Nix then names the missing netrc entry).
    #[error("push needs a token (netrc password or Bearer)")]
    Unauthorized,
    /// Credentials that match no token (403).
    #[error("unknown push token")]
    Forbidden,
    /// The token may not publish this store-path name (403).
    #[error("this token may not publish {0}")]
    Scope(String),
    /// No signature by a key trusted for pushes, and the token does not let the appliance sign (403).
    #[error(
        "no signature by a key trusted for pushes (push_trusted_keys), and this token does not let the appliance sign"
    )]
    Signature,
    /// A malformed request: narinfo, NAR name, StorePath against the URL (400).
    #[error("{0}")]
    Invalid(String),
    /// A compression the appliance cannot verify (400).
    #[error("compression {0} cannot be verified here; use xz, zstd, bzip2, br or none")]
    Compression(&'static str),
    /// An upload kind the appliance does not keep (501).
    #[error("{0}")]
    Unsupported(&'static str),
    /// A NAR upload without Content-Length (411).
    #[error("a NAR upload needs a Content-Length")]
    LengthRequired,
    /// The uploaded bytes are not the file their name says (sha256, size) (400).
    #[error("NAR file does not match its name: {0}")]
    FileMismatch(String),
    /// The NAR inside does not match the narinfo's NarHash/NarSize, or does not decompress (400).
    #[error("NAR does not match the narinfo: {0}")]
    NarMismatch(String),
    /// The path or its file is known with other content (409).
    #[error("{}", conflict_message(.0))]
    Conflict(PushConflict),
    /// The narinfo's NAR was not uploaded (or waited too long) (400).
    #[error("its NAR was not uploaded first (PUT nar/<FileHash>.nar<ext>), or it waited too long")]
    MissingNar,
    /// The token's quota would be exceeded (413).
    #[error("the quota of token {0} would be exceeded")]
    Quota(String),
    /// `push_max_size` would be exceeded (413).
    #[error("the appliance's room for pushes (push_max_size) is full")]
    PushFull,
    /// Larger than a narinfo or a NAR may be here (413).
    #[error("{0}")]
    TooLarge(&'static str),
    /// No room in the store now (503, retried by Nix).
    #[error("no room in the cache's store; try again later")]
    NoRoom,
    /// Too many uploads waiting for their narinfo (503, retried by Nix).
    #[error("too many uploads waiting for their narinfo; try again later")]
    Busy,
    /// The upload broke off or stalled before its last byte (400, or 408 for a stall).
    #[error("upload cut off: {0}")]
    CutOff(String),
    /// The upload sent nothing for the stall time-out (408).
    #[error("upload stalled")]
    Stalled,
    /// The index is recovering from a disk error (503).
    #[error("the cache's disk is full or failing; try again later")]
    Unavailable,
    /// Something broke inside (500, logged).
    #[error("internal: {0}")]
    Internal(String),
}

fn conflict_message(c: &PushConflict) -> &'static str {
    match c {
        PushConflict::StorePath => "this store path is already known with another NarHash",
        PushConflict::FileHash => "this FileHash is already known with other content",
    }
}

impl PushError {
    /// The metric label of this refusal (one of `metrics::PUSH_REASONS`).
    pub fn reason(&self) -> &'static str {
        match self {
            PushError::Unauthorized => "unauthorized",
            PushError::Forbidden => "forbidden",
            PushError::Scope(_) => "scope",
            PushError::Signature => "signature",
            PushError::Invalid(_) | PushError::LengthRequired | PushError::TooLarge(_) => "invalid",
            PushError::Compression(_) => "compression",
            PushError::Unsupported(_) => "unsupported",
            PushError::FileMismatch(_) => "file_hash",
            PushError::NarMismatch(_) => "nar_hash",
            PushError::Conflict(_) => "conflict",
            PushError::MissingNar => "missing_nar",
            PushError::Quota(_) => "quota",
            PushError::PushFull => "push_full",
            PushError::NoRoom | PushError::Busy | PushError::Unavailable => "no_room",
            PushError::CutOff(_) | PushError::Stalled => "cut_off",
            PushError::Internal(_) => "internal",
        }
    }
}

impl From<IndexError> for PushError {
    fn from(e: IndexError) -> Self {
        if e.is_io() || matches!(e, IndexError::Unavailable) {
            PushError::Unavailable
        } else {
            PushError::Internal(e.to_string())
        }
    }
}

impl From<crate::store::StoreError> for PushError {
    fn from(e: crate::store::StoreError) -> Self {
        // A full or failing disk: logged with its path by the caller, never shown.
        tracing::error!(error = %e, "push: store operation failed");
        PushError::NoRoom
    }
}

impl From<tokio::task::JoinError> for PushError {
    fn from(e: tokio::task::JoinError) -> Self {
        PushError::Internal(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_a_metric_label() {
        let all = [
            PushError::Unauthorized,
            PushError::Forbidden,
            PushError::Scope(String::new()),
            PushError::Signature,
            PushError::Invalid(String::new()),
            PushError::Compression("gzip"),
            PushError::Unsupported(""),
            PushError::LengthRequired,
            PushError::FileMismatch(String::new()),
            PushError::NarMismatch(String::new()),
            PushError::Conflict(PushConflict::StorePath),
            PushError::MissingNar,
            PushError::Quota(String::new()),
            PushError::PushFull,
            PushError::TooLarge(""),
            PushError::NoRoom,
            PushError::Busy,
            PushError::CutOff(String::new()),
            PushError::Stalled,
            PushError::Unavailable,
            PushError::Internal(String::new()),
        ];
        for e in all {
            assert!(crate::metrics::PUSH_REASONS.contains(&e.reason()), "{e:?}");
        }
    }
}
