//! `GET|HEAD /nar/<FileHash>.nar<ext>`: from disk when stored, otherwise streamed from a single fill.
//!
//! NAR responses never carry Content-Encoding: the bytes are exactly the file the narinfo describes.

use std::io::SeekFrom;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use super::error::ApiError;
use crate::app::App;
use crate::clock::unix_now;
use crate::fill::{self, Fills, Joined, Subscription, Want};
use crate::metrics::NarResult;
use crate::nix::nar_name::NarName;

/// Bytes per read when sending a stored file (large reads matter for throughput, see DESIGN.md).
const SEND_CHUNK: usize = 1 << 20;

/// A single byte range asked for with `Range: bytes=start-[end]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte.
    pub start: u64,
    /// Last byte, inclusive, when given.
    pub end: Option<u64>,
}

/// Parses the one Range form Nix sends (`bytes=N-`) and `bytes=N-M`; anything else is ignored (full body).
pub fn parse_range(value: Option<&HeaderValue>) -> Option<ByteRange> {
    let spec = value?.to_str().ok()?.trim().strip_prefix("bytes=")?;
    let (start, end) = spec.split_once('-')?;
    let start = start.trim().parse().ok()?;
    let end = match end.trim() {
        "" => None,
        e => Some(e.parse().ok()?),
    };
    match end {
        Some(e) if e < start => None,
        _ => Some(ByteRange { start, end }),
    }
}

/// The handler.
pub async fn get_nar(
    State(app): State<Arc<App>>,
    method: Method,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let name: NarName = name
        .parse()
        .map_err(|_| ApiError::BadRequest("invalid NAR name"))?;
    // A small read, done inline like narinfo hits.
    let Some((record, stored)) = app.index.nar(&name.file_hash)? else {
        return Err(ApiError::NotFound("unknown NAR"));
    };
    if record.compression != name.compression {
        return Err(ApiError::NotFound("unknown NAR"));
    }
    let range = parse_range(headers.get(header::RANGE));
    if stored {
        if let Some(response) = serve_file(&app, &name, range).await? {
            if method != Method::HEAD {
                app.metrics.nar(NarResult::Hit, &record.source);
            }
            return Ok(response);
        }
        forget_missing_file(&app, &name).await?;
    }
    if method == Method::HEAD {
        // Answer what a GET would, without starting a download.
        let mut response = Response::new(Body::empty());
        nar_headers(response.headers_mut(), record.file_size.is_some());
        if let Some(size) = record.file_size {
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
        }
        return Ok(response);
    }
    let source = record.source.clone();
    // Issue 16: a transcoded NAR whose file went is made again from its original, never fetched.
    if crate::transcode::regenerate(&app, &name).await?
        && let Some(response) = serve_file(&app, &name, range).await?
    {
        app.metrics.nar(NarResult::Hit, &source);
        return Ok(response);
    }
    // Twice at most: a NAR stored meanwhile may be evicted before it is opened; then it is fetched.
    for _ in 0..2 {
        let joined = match Fills::join_or_start(&app, name, record.clone(), Want::Client) {
            Ok(j) => j,
            Err(e) => {
                app.metrics.nar(NarResult::Busy, &source);
                return Err(e.into());
            }
        };
        match joined {
            Joined::Stored => {
                if let Some(response) = serve_file(&app, &name, range).await? {
                    app.metrics.nar(NarResult::Hit, &source);
                    return Ok(response);
                }
                forget_missing_file(&app, &name).await?;
            }
            Joined::Fill(subscription) => {
                if let Err(failure) = subscription.fill().started().await {
                    app.metrics.nar(NarResult::Error, &source);
                    return Err(failure.into());
                }
                let served = app.metrics.served_bytes(Some(&source));
                return Ok(serve_fill(subscription, range, served));
            }
            Joined::PassThrough => {
                let body = fill::pass_through(&app, &name, &record).await?;
                let mut response = Response::new(Body::empty());
                nar_headers(response.headers_mut(), false);
                if let Some(size) = record.file_size {
                    response
                        .headers_mut()
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
                }
                let served = app.metrics.served_bytes(Some(&source));
                *response.body_mut() = Body::from_stream(count_sent(body, served));
                return Ok(response);
            }
        }
    }
    Err(ApiError::Unavailable(
        "the NAR was evicted while it was opened; try again",
    ))
}

/// The index said stored but the file is gone (evicted meanwhile, or removed by hand): forget it, so
/// that it is fetched again.
async fn forget_missing_file(app: &Arc<App>, name: &NarName) -> Result<(), ApiError> {
    tracing::warn!(nar = %name, "stored NAR file missing, fetching it again");
    let (a, name) = (app.clone(), *name);
    tokio::task::spawn_blocking(move || a.index.unstore_nar(&name.file_hash)).await??;
    Ok(())
}

fn nar_headers(headers: &mut HeaderMap, ranges: bool) {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-nix-nar"),
    );
    if ranges {
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
}

/// Serves the stored file, or `None` when it is not on disk.
async fn serve_file(
    app: &Arc<App>,
    name: &NarName,
    range: Option<ByteRange>,
) -> Result<Option<Response>, ApiError> {
    let path = app.store.path(name);
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ApiError::Internal(format!("open {}: {e}", path.display()))),
    };
    let size = file
        .metadata()
        .await
        .map_err(|e| ApiError::Internal(format!("stat {}: {e}", path.display())))?
        .len();
    app.index.touch(&name.file_hash, unix_now());
    let mut response = Response::new(Body::empty());
    nar_headers(response.headers_mut(), true);
    let (start, len) = match range {
        None => (0, size),
        Some(r) if r.start >= size => return Err(ApiError::RangeNotSatisfiable { size }),
        Some(r) => {
            let end = r.end.map_or(size - 1, |e| e.min(size - 1));
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            let v = format!("bytes {}-{end}/{size}", r.start);
            response.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&v).map_err(|e| ApiError::Internal(e.to_string()))?,
            );
            (r.start, end + 1 - r.start)
        }
    };
    if start > 0 {
        file.seek(SeekFrom::Start(start))
            .await
            .map_err(|e| ApiError::Internal(format!("seek {}: {e}", path.display())))?;
    }
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    let served = app.metrics.served_bytes(None);
    let body = ReaderStream::with_capacity(file.take(len), SEND_CHUNK);
    *response.body_mut() = Body::from_stream(count_sent(body, served));
    Ok(Some(response))
}

/// Counts the bytes of a body as they are handed to the connection (a HEAD never polls its body).
fn count_sent<S>(
    body: S,
    served: prometheus::IntCounter,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send
where
    S: futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send,
{
    body.inspect(move |chunk| {
        if let Ok(bytes) = chunk {
            served.inc_by(bytes.len() as u64);
        }
    })
}

/// Streams a running fill. With a known size, `bytes=N-` is honoured (Nix resumes that way).
fn serve_fill(
    subscription: Subscription,
    range: Option<ByteRange>,
    served: prometheus::IntCounter,
) -> Response {
    let fill = subscription.fill().clone();
    let mut response = Response::new(Body::empty());
    nar_headers(response.headers_mut(), fill.size.is_some());
    let mut start = 0;
    if let Some(size) = fill.size {
        match range {
            Some(ByteRange {
                start: s,
                end: None,
            }) if s < size => {
                start = s;
                *response.status_mut() = StatusCode::PARTIAL_CONTENT;
                if let Ok(v) = HeaderValue::from_str(&format!("bytes {s}-{}/{size}", size - 1)) {
                    response.headers_mut().insert(header::CONTENT_RANGE, v);
                }
            }
            _ => {}
        }
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(size - start));
    }
    *response.body_mut() = Body::from_stream(count_sent(fill::reader(subscription, start), served));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let r = |s: &str| parse_range(Some(&HeaderValue::from_str(s).unwrap()));
        assert_eq!(
            r("bytes=10-"),
            Some(ByteRange {
                start: 10,
                end: None
            })
        );
        assert_eq!(
            r("bytes=0-99"),
            Some(ByteRange {
                start: 0,
                end: Some(99)
            })
        );
        assert_eq!(r("bytes=5-4"), None);
        assert_eq!(r("bytes=-5"), None);
        assert_eq!(r("bytes=1-2,4-5"), None);
        assert_eq!(r("items=1-"), None);
        assert_eq!(parse_range(None), None);
    }
}
