//! The one place where failures become HTTP answers. The match is exhaustive on purpose: a new kind of
//! failure has to decide its status here. Clients get a short reason, never a path or an internal error.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::fill::{Failure, FillError};
use crate::index::IndexError;
use crate::lookup::LookupError;
use crate::sources::SourceError;

/// A request that cannot be answered with what was asked for.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request itself is malformed (4xx, nothing was looked up).
    #[error("{0}")]
    BadRequest(&'static str),
    /// Nothing is known under this name.
    #[error("{0}")]
    NotFound(&'static str),
    /// Not allowed from where it came.
    #[error("{0}")]
    Forbidden(&'static str),
    /// The same work is already running; the client may ask again later (429 with Retry-After).
    #[error("{0}")]
    TooManyRequests(&'static str),
    /// A Range that starts past the end of the file.
    #[error("range not satisfiable")]
    RangeNotSatisfiable {
        /// The file's size, for `Content-Range: bytes */size`.
        size: u64,
    },
    /// The sources could not answer (502, or 504 on a time-out).
    #[error("upstream: {0}")]
    Upstream(#[from] SourceError),
    /// The appliance cannot take this now: no room on disk, too many downloads waiting, or the index
    /// recovering from a disk error (503 with Retry-After; hits keep being served).
    #[error("{0}")]
    Unavailable(&'static str),
    /// Something broke inside: logged with its cause, 500 to the client.
    #[error("internal: {0}")]
    Internal(String),
}

impl From<IndexError> for ApiError {
    fn from(e: IndexError) -> Self {
        if e.is_io() || matches!(e, IndexError::Unavailable) {
            tracing::warn!(error = %e, "answering 503: the index cannot be written");
            ApiError::Unavailable("the cache's disk is full or failing; try again later")
        } else {
            ApiError::Internal(e.to_string())
        }
    }
}

impl From<Failure> for ApiError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Upstream => ApiError::Upstream(SourceError::NarDownload),
            Failure::Timeout => ApiError::Upstream(SourceError::Timeout),
            Failure::NoSpace => {
                ApiError::Unavailable("no room in the cache's store; try again later")
            }
            Failure::Busy => ApiError::Unavailable("too many downloads waiting; try again later"),
            Failure::Internal => ApiError::Internal("NAR fill failed inside".into()),
        }
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<LookupError> for ApiError {
    fn from(e: LookupError) -> Self {
        match e {
            LookupError::Source(s) => ApiError::Upstream(s),
            LookupError::Index(i) => i.into(),
            LookupError::Task(t) => t.into(),
        }
    }
}

impl From<FillError> for ApiError {
    fn from(e: FillError) -> Self {
        match e {
            FillError::Source(s) => ApiError::Upstream(s),
            FillError::Index(i) => i.into(),
            other => other.failure().into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body): (StatusCode, &str) = match &self {
            ApiError::BadRequest(reason) => (StatusCode::BAD_REQUEST, reason),
            ApiError::NotFound(reason) => (StatusCode::NOT_FOUND, reason),
            ApiError::Forbidden(reason) => (StatusCode::FORBIDDEN, reason),
            ApiError::TooManyRequests(reason) => (StatusCode::TOO_MANY_REQUESTS, reason),
            ApiError::RangeNotSatisfiable { .. } => {
                (StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable")
            }
            ApiError::Upstream(SourceError::Saturated) => {
                // The appliance is busy, no source was asked: Nix retries a 503 (honouring Retry-After).
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many upstream lookups, retry",
                )
            }
            ApiError::Upstream(e) if e.is_timeout() => {
                tracing::warn!(error = %e, "answering 504");
                (StatusCode::GATEWAY_TIMEOUT, "upstream cache timed out")
            }
            ApiError::Upstream(e) => {
                tracing::warn!(error = %e, "answering 502");
                (StatusCode::BAD_GATEWAY, "upstream cache unavailable")
            }
            ApiError::Unavailable(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason),
            ApiError::Internal(cause) => {
                tracing::error!(cause = %cause, "internal error");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            }
        };
        let mut response = (status, format!("{body}\n")).into_response();
        if let ApiError::RangeNotSatisfiable { size } = self
            && let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}"))
        {
            response.headers_mut().insert(header::CONTENT_RANGE, v);
        }
        if matches!(
            status,
            StatusCode::BAD_GATEWAY
                | StatusCode::GATEWAY_TIMEOUT
                | StatusCode::SERVICE_UNAVAILABLE
                | StatusCode::TOO_MANY_REQUESTS
        ) {
            // Nix 2.35+ honours it; others retry with their own back-off.
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
    }
}
