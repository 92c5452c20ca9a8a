//! The shared bucket (issue 13): an S3-compatible object store that several appliances use as one
//! store, laid out as a plain Nix binary cache so that Nix and other tools can read it directly:
//!
//! ```text
//! <prefix>/nix-cache-info                     written once, if absent
//! <prefix>/<store hash>.narinfo               the appliance's signed narinfo, URL nar/<FileHash>.nar<ext>
//! <prefix>/nar/<FileHash nix32>.nar<ext>      the verified NAR file
//! ```
//!
//! Only verified content is written, NAR before narinfo (see `publish.rs`), so a reader that finds a
//! narinfo finds its NAR. Keys are content-addressed: two appliances writing the same NAR write the
//! same bytes under the same key. Small objects and NARs up to `multipart_threshold` go up in one PUT
//! with `If-None-Match: *` (where the server honours it — AWS, MinIO, SeaweedFS — the first writer
//! wins and the others get 412; elsewhere the same bytes are written twice), and a PUT is never
//! visible half-written; larger NARs in parts, after a HEAD, and a part upload is
//! invisible until it completes. Only the one elected appliance deletes, and only what no appliance
//! uses (`gc.rs`).
//!
//! Requests are signed by `object_store` (SigV4). NAR bodies travel as streams both ways: GETs and the
//! single-PUT upload use short-lived presigned URLs with the appliance's HTTP client, so a download is
//! the same `reqwest::Response` a fill gets from an upstream and nothing holds a whole NAR in memory.

pub mod gc;
pub mod publish;

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::signer::{SignedUrlOptions, Signer};
use object_store::{
    ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, RetryConfig, WriteMultipart,
};
use reqwest::header::{CONTENT_LENGTH, HeaderValue, IF_NONE_MATCH, RANGE};
use reqwest::{Method, StatusCode};

use crate::config::{BucketConfig, Credential};
use crate::nix::store_path::StoreHash;

/// How long a presigned URL is valid: only its start must fall within, the transfer may take longer.
const PRESIGN_FOR: Duration = Duration::from_secs(15 * 60);
/// Size of the parts of a multipart upload, and of the reads feeding uploads.
const PART_SIZE: usize = 8 << 20;
/// Parts of one upload in flight at once (memory per upload: this many parts).
const PARTS_IN_FLIGHT: usize = 2;
/// Bytes read from a local file per chunk of a streamed upload.
const READ_CHUNK: usize = 1 << 20;
/// The key of the cache description.
pub const CACHE_INFO: &str = "nix-cache-info";

/// Why a bucket request failed. Logged; clients see 502/504.
#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    /// No answer in time.
    #[error("bucket timed out")]
    Timeout,
    /// The S3 client failed (signing, connection, an error answer).
    #[error("bucket: {0}")]
    Store(#[from] object_store::Error),
    /// A presigned request answered an unexpected status.
    #[error("bucket answered HTTP {0}")]
    Status(u16),
    /// A presigned request failed on the way.
    #[error("bucket request failed: {0}")]
    Http(#[source] reqwest::Error),
    /// The local file being uploaded could not be read.
    #[error("reading the local file: {0}")]
    Io(#[from] io::Error),
}

impl BucketError {
    /// Whether this is a time-out (504 rather than 502).
    pub fn is_timeout(&self) -> bool {
        match self {
            BucketError::Timeout => true,
            BucketError::Http(e) => e.is_timeout(),
            _ => false,
        }
    }

    /// Whether it says the bucket is unwell (counts towards its back-off): no answer, a failed
    /// connection, a 5xx or 429. A missing object is not an outage.
    pub fn is_outage(&self) -> bool {
        match self {
            BucketError::Timeout | BucketError::Http(_) => true,
            BucketError::Status(status) => crate::sources::status_is_outage(*status),
            BucketError::Store(object_store::Error::NotFound { .. }) => false,
            BucketError::Store(_) => true,
            BucketError::Io(_) => false,
        }
    }
}

fn http_error(e: reqwest::Error) -> BucketError {
    if e.is_timeout() {
        BucketError::Timeout
    } else {
        BucketError::Http(e)
    }
}

/// What an upload found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// This appliance wrote the object.
    Created,
    /// It was there already (another appliance, or an earlier run, wrote the same content).
    AlreadyThere,
}

/// The bucket and how to reach it.
pub struct Bucket {
    id: String,
    store: AmazonS3,
    prefix: Vec<String>,
    http: reqwest::Client,
    timeout: Duration,
    multipart_threshold: u64,
    local_cache: bool,
    gc_max_size: Option<u64>,
    /// NARs now in the bucket whose waiting narinfos the publisher should write (see `publish.rs`).
    to_publish: std::sync::Mutex<std::collections::HashSet<crate::nix::hash::Sha256Hash>>,
    /// Wakes the publisher.
    wake: tokio::sync::Notify,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket").field("id", &self.id).finish()
    }
}

/// Reads a credential; the error names the file, never the value.
fn read_credential(c: &Credential) -> Result<String, String> {
    match c {
        Credential::Env(secret) => Ok(secret.0.clone()),
        Credential::File(path) => std::fs::read_to_string(path)
            .map(|s| s.trim().to_string())
            .map_err(|e| format!("credential file {}: {e}", path.display())),
    }
}

impl Bucket {
    /// The bucket of `config` (credentials read now), reached with `http` for streamed bodies.
    pub fn new(config: &BucketConfig, http: reqwest::Client) -> Result<Bucket, String> {
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_access_key_id(read_credential(&config.access_key_id)?)
            .with_secret_access_key(read_credential(&config.secret_access_key)?)
            .with_virtual_hosted_style_request(!config.path_style)
            // Every appliance runs the same code against the same key: retries belong to the caller
            // (a fill, a lookup, the publisher), which has its own time limits.
            .with_retry(RetryConfig {
                max_retries: 1,
                retry_timeout: config.timeout,
                ..RetryConfig::default()
            })
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(config.timeout)
                    .with_allow_http(true),
            );
        if let Some(token) = &config.session_token {
            builder = builder.with_token(read_credential(token)?);
        }
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        let store = builder.build().map_err(|e| format!("bucket: {e}"))?;
        let endpoint = config.endpoint.as_deref().unwrap_or("aws");
        let mut id = format!("bucket:{endpoint}/{}", config.bucket);
        if !config.prefix.is_empty() {
            id = format!("{id}/{}", config.prefix);
        }
        Ok(Bucket {
            id,
            store,
            prefix: config
                .prefix
                .split('/')
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect(),
            http,
            timeout: config.timeout,
            multipart_threshold: config.multipart_threshold,
            local_cache: config.local_cache,
            gc_max_size: config.gc_max_size,
            to_publish: Default::default(),
            wake: tokio::sync::Notify::new(),
        })
    }

    /// The name the bucket has as a source in the index, in metrics and in `/_status`
    /// (`bucket:<endpoint>/<bucket>[/<prefix>]`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether hot NARs are kept on the local disk too.
    pub fn local_cache(&self) -> bool {
        self.local_cache
    }

    /// The key of `relative` (`nar/<name>`, `<hash>.narinfo`) under the prefix.
    fn key(&self, relative: &str) -> Key {
        Key::from_iter(
            self.prefix
                .iter()
                .map(String::as_str)
                .chain(relative.split('/')),
        )
    }

    /// `<hash>.narinfo`, relative to the cache root.
    pub fn narinfo_name(hash: &StoreHash) -> String {
        format!("{hash}.narinfo")
    }

    /// Runs `f` within the time limit.
    async fn limited<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, BucketError>>,
    ) -> Result<T, BucketError> {
        tokio::time::timeout(self.timeout, f)
            .await
            .unwrap_or(Err(BucketError::Timeout))
    }

    /// A small object (a narinfo), or `None` when it does not exist. Larger than `cap`: an error.
    pub async fn get_small(&self, relative: &str, cap: u64) -> Result<Option<Bytes>, BucketError> {
        let key = self.key(relative);
        self.limited(async {
            let result = match self.store.get(&key).await {
                Ok(r) => r,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            if result.meta.size > cap {
                return Err(BucketError::Status(413));
            }
            Ok(Some(result.bytes().await?))
        })
        .await
    }

    /// Starts a GET of `relative`, whole or from `range` (`(first, last)` inclusive, last optional):
    /// the response once its status is 200 or 206. 404 is `Status(404)`: the caller knows the object
    /// should be there.
    pub async fn get(
        &self,
        relative: &str,
        range: Option<(u64, Option<u64>)>,
    ) -> Result<reqwest::Response, BucketError> {
        let key = self.key(relative);
        self.limited(async {
            let url = self
                .store
                .signed_url(Method::GET, &key, PRESIGN_FOR)
                .await?;
            let mut request = self.http.get(url);
            if let Some((first, last)) = range {
                let last = last.map(|l| l.to_string()).unwrap_or_default();
                request = request.header(RANGE, format!("bytes={first}-{last}"));
            }
            let response = request.send().await.map_err(http_error)?;
            match response.status() {
                StatusCode::OK | StatusCode::PARTIAL_CONTENT => Ok(response),
                s => Err(BucketError::Status(s.as_u16())),
            }
        })
        .await
    }

    /// The size of `relative`, or `None` when it does not exist.
    pub async fn head(&self, relative: &str) -> Result<Option<u64>, BucketError> {
        let key = self.key(relative);
        self.limited(async {
            match self.store.head(&key).await {
                Ok(meta) => Ok(Some(meta.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    /// Writes a small object unless one exists under its key (`If-None-Match: *`).
    pub async fn put_small(&self, relative: &str, body: Bytes) -> Result<Written, BucketError> {
        let key = self.key(relative);
        self.limited(async {
            let options = PutOptions {
                mode: PutMode::Create,
                ..PutOptions::default()
            };
            match self.store.put_opts(&key, body.into(), options).await {
                Ok(_) => Ok(Written::Created),
                Err(
                    object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. },
                ) => Ok(Written::AlreadyThere),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    /// Uploads `size` bytes of a verified local file as `relative`, streamed (never whole in
    /// memory). Up to the multipart threshold: one conditional PUT. Larger: a HEAD (skip it when the
    /// object is there with this size), then a multipart upload, which becomes visible only whole.
    pub async fn put_file(
        &self,
        relative: &str,
        file: Arc<File>,
        size: u64,
    ) -> Result<Written, BucketError> {
        let key = self.key(relative);
        if size <= self.multipart_threshold {
            return self.put_whole(&key, file, size).await;
        }
        if self.head(relative).await? == Some(size) {
            return Ok(Written::AlreadyThere);
        }
        let upload = self.store.put_multipart(&key).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut chunks = std::pin::pin!(file_chunks(file, size));
        use futures_util::StreamExt;
        while let Some(chunk) = chunks.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(e.into());
                }
            };
            if let Err(e) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
                let _ = writer.abort().await;
                return Err(e.into());
            }
            writer.write(&chunk);
        }
        writer.finish().await?;
        Ok(Written::Created)
    }

    /// Writes a small object, replacing what is there (this appliance's own objects only).
    pub async fn put_replacing(&self, relative: &str, body: Bytes) -> Result<(), BucketError> {
        let key = self.key(relative);
        self.limited(async {
            self.store.put(&key, body.into()).await?;
            Ok(())
        })
        .await
    }

    /// Removes an object (the pruning appliance only, see `gc.rs`); a missing one is no error.
    pub async fn delete(&self, relative: &str) -> Result<(), BucketError> {
        let key = self.key(relative);
        self.limited(async {
            match self.store.delete(&key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    /// Every object under the prefix: (key relative to it, size, unix time last written).
    pub async fn list(&self) -> Result<Vec<(String, u64, i64)>, BucketError> {
        use futures_util::TryStreamExt;
        let prefix = (!self.prefix.is_empty())
            .then(|| Key::from_iter(self.prefix.iter().map(String::as_str)));
        let skip = self.prefix.len();
        let metas: Vec<object_store::ObjectMeta> =
            self.store.list(prefix.as_ref()).try_collect().await?;
        Ok(metas
            .into_iter()
            .map(|m| {
                let relative: Vec<&str> = m.location.as_ref().split('/').skip(skip).collect();
                (relative.join("/"), m.size, m.last_modified.timestamp())
            })
            .collect())
    }

    /// One PUT of a streamed body with `If-None-Match: *` through a presigned URL (object_store's
    /// own PUT takes the body in memory).
    async fn put_whole(
        &self,
        key: &Key,
        file: Arc<File>,
        size: u64,
    ) -> Result<Written, BucketError> {
        let options = SignedUrlOptions::default()
            .with_signed_header(IF_NONE_MATCH, HeaderValue::from_static("*"));
        let url = self
            .store
            .signed_url_opts(Method::PUT, key, PRESIGN_FOR, &options)
            .await?;
        let body = reqwest::Body::wrap_stream(file_chunks(file, size));
        // A stalled server must not hold the upload for ever; a slow link gets 4 s per MiB.
        let limit = self.timeout * 6 + Duration::from_secs(size >> 18);
        let response = self
            .http
            .put(url)
            .header(IF_NONE_MATCH, "*")
            .header(CONTENT_LENGTH, size)
            .timeout(limit)
            .body(body)
            .send()
            .await
            .map_err(http_error)?;
        match response.status() {
            s if s.is_success() => Ok(Written::Created),
            // 412: written before. 409: another conditional write of the same key is in progress
            // (AWS); same content, so as good as written — the publisher checks again later.
            StatusCode::PRECONDITION_FAILED | StatusCode::CONFLICT => Ok(Written::AlreadyThere),
            s => Err(BucketError::Status(s.as_u16())),
        }
    }
}

/// The first `size` bytes of `file` as a stream of chunks, read with positioned reads (the file's
/// offset is shared with other handles and never used).
pub fn file_chunks(file: Arc<File>, size: u64) -> impl Stream<Item = io::Result<Bytes>> + Send {
    futures_util::stream::unfold(0u64, move |at| {
        let file = file.clone();
        async move {
            if at >= size {
                return None;
            }
            let len = (size - at).min(READ_CHUNK as u64) as usize;
            let read = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; len];
                file.read_exact_at(&mut buf, at).map(|()| Bytes::from(buf))
            })
            .await
            .map_err(io::Error::other)
            .and_then(|r| r);
            match read {
                Ok(bytes) => Some((Ok(bytes), at + len as u64)),
                // The stream ends after an error.
                Err(e) => Some((Err(e), u64::MAX)),
            }
        }
    })
}
