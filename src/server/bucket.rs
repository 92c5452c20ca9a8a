//! Ranged NAR requests for a NAR that is in the shared bucket (issue 13) and not on the local disk:
//! answered with a ranged GET against the bucket, streamed, never the whole file in memory. (Whole
//! requests go through a fill, which keeps the NAR on the local disk cache, or stream from the bucket
//! unstored when there is none: see `fill::Fills::join_or_start`.)

use std::sync::Arc;

use serde::Serialize;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use futures_util::StreamExt;

use super::error::ApiError;
use super::nar::ByteRange;
use crate::app::App;
use crate::bucket::BucketError;
use crate::index::NarRecord;
use crate::metrics::NarResult;
use crate::sources::{HealthSnapshot, SourceError};

/// What `/_status` shows of the shared bucket.
#[derive(Serialize)]
pub struct BucketStatus {
    /// Its name as a source (`bucket:<endpoint>/<bucket>[/<prefix>]`).
    id: String,
    /// Whether hot NARs are kept on the local disk too.
    local_cache: bool,
    /// Narinfos found in the bucket and refused (unsigned, wrong key, not canonical).
    rejected_narinfos: u64,
    #[serde(flatten)]
    health: HealthSnapshot,
}

/// The bucket's status, when there is one.
pub fn status(app: &App) -> Option<BucketStatus> {
    let source = app.sources.bucket()?;
    Some(BucketStatus {
        id: source.id().to_string(),
        local_cache: app.bucket.as_ref().is_some_and(|b| b.local_cache()),
        rejected_narinfos: source.rejected(),
        health: source.health().snapshot(),
    })
}

/// The answer to `range` of a NAR recorded in the bucket, or `None` when it is not a bucket NAR.
pub async fn ranged(
    app: &Arc<App>,
    record: &NarRecord,
    range: ByteRange,
) -> Result<Option<Response>, ApiError> {
    let Some(bucket) = app.sources.bucket() else {
        return Ok(None);
    };
    if record.source != bucket.id() {
        return Ok(None);
    }
    let upstream = match bucket
        .get_range(&record.url, Some((range.start, range.end)))
        .await
    {
        Ok(r) => r,
        Err(SourceError::Bucket(BucketError::Status(416))) => {
            return Err(ApiError::RangeNotSatisfiable {
                size: record.file_size.unwrap_or(0),
            });
        }
        Err(e) => {
            app.metrics.nar(NarResult::Error, &record.source);
            return Err(e.into());
        }
    };
    app.metrics.nar(NarResult::PassThrough, &record.source);
    let mut response = Response::new(Body::empty());
    // 206 with the bucket's Content-Range, or 200 with the whole file if it ignored the range.
    *response.status_mut() = match upstream.status().as_u16() {
        206 => StatusCode::PARTIAL_CONTENT,
        _ => StatusCode::OK,
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-nix-nar"),
    );
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    for name in [header::CONTENT_RANGE, header::CONTENT_LENGTH] {
        if let Some(v) = upstream.headers().get(&name) {
            headers.insert(name, v.clone());
        }
    }
    let served = app.metrics.served_bytes(Some(&record.source));
    let body = upstream.bytes_stream().map(move |chunk| {
        chunk
            .inspect(|b| served.inc_by(b.len() as u64))
            .map_err(std::io::Error::other)
    });
    *response.body_mut() = Body::from_stream(body);
    Ok(Some(response))
}
