//! `GET|HEAD /nar/<FileHash>.nar<ext>`: from disk when stored, otherwise streamed from a single fill.
//!
//! NAR responses never carry Content-Encoding: the bytes are exactly the file the narinfo describes.

use std::fs::File;
use std::io::SeekFrom;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;

use super::error::ApiError;
use super::sendfile::SendFile;
use crate::app::App;
use crate::clock::unix_now;
use crate::fill::{self, Fills, Joined, Part, Subscription, Want};
use crate::index::NarRecord;
use crate::metrics::NarResult;
use crate::nix::nar_name::NarName;
use crate::nix::narinfo::Compression;
use crate::transcode::transcodable;

/// Stored files up to this size are read on the async worker and sent in one piece: a copy from the
/// page cache of at most a few tens of microseconds, cheaper than a hop to the blocking pool (most NARs
/// of a closure are this small).
const INLINE_MAX: u64 = 256 * 1024;
/// Bytes per read of a larger stored file where no connection sends it with `sendfile` (the router
/// called in-process).
const READ_CHUNK: u64 = 1 << 20;

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
    Path(name): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    // The request itself rather than `Method` and `HeaderMap` extractors, which clone them.
    answer(&app, &name, request.method(), request.headers()).await
}

/// The answer to `method` (GET or HEAD) of `/nar/<name>`; also called straight by
/// [`super::dispatch`].
pub async fn answer(
    app: &Arc<App>,
    name: &str,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let name: NarName = name
        .parse()
        .map_err(|_| ApiError::BadRequest("invalid NAR name"))?;
    // A small read, done inline like narinfo hits.
    let Some((record, stored, remembered)) = app.index.nar_with_file(&name.file_hash)? else {
        return Err(ApiError::NotFound("unknown NAR"));
    };
    if record.compression != name.compression {
        // Issue 14: `<original>.nar.zst` is the zstd twin of an xz or bzip2 NAR.
        if name.compression == Compression::Zstd && transcodable(record.compression) {
            let original = NarName {
                file_hash: name.file_hash,
                compression: record.compression,
            };
            return Box::pin(twin_by_original(app, original, record, method, headers)).await;
        }
        return Err(ApiError::NotFound("unknown NAR"));
    }
    let range = parse_range(headers.get(header::RANGE));
    let hit = match remembered {
        Some(bytes) if range.is_none() => Some(serve_remembered(app, &name, bytes, method)),
        _ if stored => serve_file(app, &name, &record, range, method)?,
        _ => None,
    };
    if let Some(response) = hit {
        if *method != Method::HEAD {
            app.metrics.nar(NarResult::Hit, &record.source);
        }
        return Ok(response);
    }
    // Boxed: a hit's future should not carry (and copy) the room a fill needs (see lookup.rs).
    Box::pin(not_on_disk(
        app.clone(),
        name,
        record,
        stored,
        range,
        method,
    ))
    .await
}

/// The answer for a NAR whose file is not on disk (or vanished: `stored` said it was there).
async fn not_on_disk(
    app: Arc<App>,
    name: NarName,
    record: crate::index::NarRecord,
    stored: bool,
    range: Option<ByteRange>,
    method: &Method,
) -> Result<Response, ApiError> {
    if stored {
        forget_missing_file(&app, &name).await?;
    }
    if *method == Method::HEAD {
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
    // Issue 13: a range of a NAR in the shared bucket (not on the local disk) is read from there.
    if let Some(r) = range
        && let Some(response) = super::bucket::ranged(&app, &record, r).await?
    {
        return Ok(response);
    }
    let source = record.source.clone();
    // Issue 16: a transcoded NAR whose file went is made again from its original, never fetched.
    if crate::transcode::regenerate(&app, &name).await?
        && let Some(response) = serve_file(&app, &name, &record, range, method)?
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
                if let Some(response) = serve_file(&app, &name, &record, range, method)? {
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
                return Ok(serve_fill(subscription, Part::Nar, range, served));
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

/// `nar/<original FileHash>.nar.zst`: the zstd twin of an xz or bzip2 NAR, named by its original.
/// Narinfos fetched while transcoding is on give this URL (`lookup.rs`) before any twin exists, so the
/// first machine of the LAN gets zstd too; it is answered for as long as the original is known:
/// - a twin is recorded: the twin's answer (made again if its file went);
/// - the original is being fetched, or not on disk: its fill makes the twin beside it
///   (`transcode/alongside.rs`), streamed as it grows, the last byte once both files were checked;
/// - otherwise (stored before, or no twin could be made beside its fill): made from the stored
///   original now, then served.
async fn twin_by_original(
    app: &Arc<App>,
    original: NarName,
    record: NarRecord,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let twin = |t: crate::index::Twin| {
        NarName {
            file_hash: t.file_hash,
            compression: Compression::Zstd,
        }
        .to_string()
    };
    if let Some(t) = app.index.twin_of(&original.file_hash)? {
        return answer(app, &twin(t), method, headers).await;
    }
    if *method == Method::HEAD {
        // Answer what a GET would, without starting a download: the size is not known yet.
        let mut response = Response::new(Body::empty());
        nar_headers(response.headers_mut(), false);
        return Ok(response);
    }
    let source = record.source.clone();
    // Joins the running fill (also one that has just committed the original and is recording the
    // twin), starts one, or finds the original stored.
    let joined = Fills::join_or_start(app, original, record, Want::Client).inspect_err(|_| {
        app.metrics.nar(NarResult::Busy, &source);
    })?;
    match joined {
        Joined::Fill(subscription) => {
            let fill = subscription.fill().clone();
            if fill.makes_twin() && fill.part_started(Part::Twin).await.is_ok() {
                let served = app.metrics.served_bytes(Some(&source));
                return Ok(serve_fill(subscription, Part::Twin, None, served));
            }
            // No twin beside this fill (no room for it then): the original first, then its twin.
            if let Err(failure) = fill.finished().await {
                app.metrics.nar(NarResult::Error, &source);
                return Err(failure.into());
            }
            crate::transcode::wait_stored(app, &original.file_hash).await?;
        }
        Joined::Stored => {}
        Joined::PassThrough => {
            return Err(ApiError::Unavailable(
                "this NAR is larger than the cache's store can hold, so it has no zstd form here",
            ));
        }
    }
    let made = crate::transcode::make_now(app, &original.file_hash).await?;
    answer(app, &twin(made), method, headers).await
}

/// The index said stored but the file is gone (evicted meanwhile, or removed by hand) or not the size
/// recorded: forget it, so that it is fetched again (the new file replaces a damaged one).
async fn forget_missing_file(app: &Arc<App>, name: &NarName) -> Result<(), ApiError> {
    tracing::warn!(nar = %name, "stored NAR file missing or damaged, fetching it again");
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

/// Serves the stored file, or `None` when it is not on disk or not `expected` bytes long (damaged or
/// changed behind the appliance's back: fetched again, never served).
///
/// Opening and stat'ing a stored file (its folder is in the kernel's caches after the first hit) and
/// reading a small one take microseconds: done on the async worker, like index reads, so a small NAR is
/// answered without a hop to the blocking pool and goes out with its headers in one write. Larger
/// files are offered to the connection, which sends them with `sendfile` (`sendfile.rs`).
fn serve_file(
    app: &Arc<App>,
    name: &NarName,
    record: &NarRecord,
    range: Option<ByteRange>,
    method: &Method,
) -> Result<Option<Response>, ApiError> {
    let expected = record.file_size;
    let path = app.store.path(name);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ApiError::Internal(format!("open {}: {e}", path.display()))),
    };
    let size = file
        .metadata()
        .map_err(|e| ApiError::Internal(format!("stat {}: {e}", path.display())))?
        .len();
    if expected.is_some_and(|e| e != size) {
        tracing::warn!(nar = %name, size, expected, "stored NAR file has the wrong size");
        return Ok(None);
    }
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
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if *method == Method::HEAD {
        return Ok(Some(response));
    }
    let body = if len <= INLINE_MAX {
        let mut buf = vec![0; len as usize];
        file.read_exact_at(&mut buf, start)
            .map_err(|e| ApiError::Internal(format!("read {}: {e}", path.display())))?;
        let bytes = Bytes::from(buf);
        if len == size {
            app.index
                .remember_file(&name.file_hash, record, bytes.clone());
        }
        in_memory_body(bytes, app.metrics.served_bytes(None))
    } else {
        // Sent with `sendfile` by the connection; the body reads the file where nothing takes the offer.
        let served = app.metrics.served_bytes(None);
        let file = Arc::new(file);
        response.extensions_mut().insert(SendFile {
            file: file.clone(),
            start,
            len,
            served: served.clone(),
        });
        Body::from_stream(count_sent(read_chunks(file, start, len), served))
    };
    *response.body_mut() = body;
    Ok(Some(response))
}

/// Exactly `len` bytes of `file` from `offset` (an error if the file is shorter).
fn read_chunk(file: &File, offset: u64, len: u64) -> std::io::Result<Bytes> {
    use std::io::{Read, Seek};
    let mut reader = file;
    reader.seek(SeekFrom::Start(offset))?;
    // `read_to_end` reads into the spare capacity without zeroing it first.
    let mut buf = Vec::with_capacity(len as usize);
    reader.take(len).read_to_end(&mut buf)?;
    if (buf.len() as u64) < len {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(Bytes::from(buf))
}

/// `len` bytes of `file` from `start`, in [`READ_CHUNK`] reads on the blocking pool, the first when
/// the body is first polled (a body dropped unread, when the connection takes the `sendfile` offer,
/// reads nothing). A read error or a file shorter than announced ends the stream with an error (the
/// connection is aborted: a short body never looks complete).
fn read_chunks(
    file: Arc<File>,
    start: u64,
    len: u64,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send {
    let end = start + len;
    futures_util::stream::try_unfold(start, move |offset| {
        let file = file.clone();
        async move {
            let n = (end - offset).min(READ_CHUNK);
            if n == 0 {
                return Ok(None);
            }
            let chunk = tokio::task::spawn_blocking(move || read_chunk(&file, offset, n))
                .await
                .map_err(std::io::Error::other)??;
            Ok(Some((chunk, offset + n)))
        }
    })
}

/// Serves a small stored file from the bytes this thread remembers of it (see `index/snapshot.rs`): the
/// same answer as [`serve_file`] without a range, with no file opened.
fn serve_remembered(app: &Arc<App>, name: &NarName, bytes: Bytes, method: &Method) -> Response {
    app.index.touch(&name.file_hash, unix_now());
    let mut response = Response::new(Body::empty());
    nar_headers(response.headers_mut(), true);
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    if *method != Method::HEAD {
        *response.body_mut() = in_memory_body(bytes, app.metrics.served_bytes(None));
    }
    response
}

/// A body of `bytes` already in memory, counted as served when handed to the connection.
fn in_memory_body(bytes: Bytes, served: prometheus::IntCounter) -> Body {
    Body::new(InMemory {
        bytes: Some(bytes),
        served,
    })
}

/// The body of [`in_memory_body`]: whole, of exact size, and at its end once its one frame is taken, as
/// axum's own body of bytes is. So hyper sees the end together with the last bytes, and the answer ends
/// with the write that sends them (`BusyGuard` in `connection.rs`). A stream of one chunk looked
/// unfinished until polled once more, so the end of every small NAR woke the connection's task again,
/// and that woke tokio's other worker to look for work: one `write` to its eventfd and one futex per
/// small NAR (issue 14, measured with `strace -c`; narinfo hits, whose bodies were whole, made neither).
struct InMemory {
    bytes: Option<Bytes>,
    served: prometheus::IntCounter,
}

impl http_body::Body for InMemory {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        std::task::Poll::Ready(this.bytes.take().map(|bytes| {
            this.served.inc_by(bytes.len() as u64);
            Ok(http_body::Frame::data(bytes))
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.bytes.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.bytes.as_ref().map_or(0, |b| b.len() as u64))
    }
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

/// Streams `part` of a running fill. With a known size (the NAR's FileSize; a twin's is known only
/// once it is made), `bytes=N-` is honoured (Nix resumes that way).
fn serve_fill(
    subscription: Subscription,
    part: Part,
    range: Option<ByteRange>,
    served: prometheus::IntCounter,
) -> Response {
    let size = match part {
        Part::Nar => subscription.fill().size,
        Part::Twin => None,
    };
    let mut response = Response::new(Body::empty());
    nar_headers(response.headers_mut(), size.is_some());
    let mut start = 0;
    if let Some(size) = size {
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
    *response.body_mut() =
        Body::from_stream(count_sent(fill::reader(subscription, part, start), served));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body the in-process router gets: the file's bytes in order across reads, and an error, not
    /// a quiet end, when the file is shorter than announced.
    #[tokio::test]
    async fn read_chunks_reads_the_range_and_fails_short() {
        use futures_util::TryStreamExt;
        use std::io::Write;
        let content: Vec<u8> = (0..(5 * READ_CHUNK / 2) as u32)
            .map(|i| (i % 251) as u8)
            .collect();
        let mut tmp = tempfile::tempfile().unwrap();
        tmp.write_all(&content).unwrap();
        let file = Arc::new(tmp);
        let len = content.len() as u64 - 100;
        let got: Vec<Bytes> = read_chunks(file.clone(), 100, len)
            .try_collect()
            .await
            .unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got.concat(), content[100..]);
        let short: Result<Vec<Bytes>, _> = read_chunks(file, 100, len + 1).try_collect().await;
        assert!(short.is_err());
    }

    /// A small NAR's body is whole: hyper learns its size up front and its end with its one frame, so
    /// the answer ends without waking the connection again (see [`InMemory`]); the bytes are counted
    /// once, when handed over.
    #[test]
    fn an_in_memory_body_ends_with_its_bytes() {
        use http_body::Body as _;
        let served = prometheus::IntCounter::new("served", "served").unwrap();
        let mut body = in_memory_body(Bytes::from_static(b"a small NAR"), served.clone());
        assert_eq!(body.size_hint().exact(), Some(11));
        assert!(!body.is_end_stream());
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let std::task::Poll::Ready(Some(Ok(frame))) =
            std::pin::Pin::new(&mut body).poll_frame(&mut cx)
        else {
            panic!("the bytes come in the first frame");
        };
        assert_eq!(
            frame.into_data().unwrap(),
            Bytes::from_static(b"a small NAR")
        );
        assert!(body.is_end_stream(), "the end is known with the last bytes");
        assert_eq!(served.get(), 11);
        assert!(matches!(
            std::pin::Pin::new(&mut body).poll_frame(&mut cx),
            std::task::Poll::Ready(None)
        ));
        assert_eq!(served.get(), 11);
    }

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
