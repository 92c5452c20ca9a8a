//! A registry client for one image: manifests and blobs, following the registry's auth challenge
//! (`WWW-Authenticate: Bearer realm=...` → token endpoint, anonymously or with Basic credentials), with
//! tokens cached until they expire. Blob GETs follow redirects to other hosts (GHCR's presigned URLs)
//! without the Authorization header, and ask the registry again when a presigned URL has expired.
//!
//! A registry is a peer on the network, so nothing it says is trusted with memory or time: every body is
//! read with a cap that fits its kind, token lifetimes are clamped, and its error text is escaped.
//! The credentials (`GITHUB_TOKEN`) go only to an https registry, only after it asked for them (a
//! challenge), and only to a token realm on the registry's own host or one allowed by name
//! ([`Registry::allow_token_hosts`]); anywhere else a token is asked for anonymously.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;

use super::format::{INDEX_TAG, MANIFEST_MEDIA_TYPE, Manifest, digest_of};

/// Manifest types asked for (a registry answers 404 when the stored type is not accepted).
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// The largest manifest read (the distribution spec lets registries refuse manifests over 4 MiB).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// The largest token answer read (tokens are a few KiB at most).
pub const MAX_TOKEN_BYTES: u64 = 256 << 10;
/// The most of an error answer read (only its first error's code and message are kept).
pub const MAX_ERROR_BYTES: u64 = 64 << 10;
/// The longest a token is kept, whatever `expires_in` says.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// Characters of a registry's error message kept for logs and `/_status`.
const MAX_DETAIL_CHARS: usize = 200;

/// Failures talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The connection or transfer failed (shown without the URL: presigned URLs carry signatures).
    #[error("request failed: {}", crate::redact::reqwest_error(.0))]
    Http(#[from] reqwest::Error),
    /// An unexpected status, with the registry's error code when it gave one.
    #[error("{what}: HTTP {status} {detail}")]
    Status {
        /// What was asked.
        what: &'static str,
        /// The status.
        status: u16,
        /// The registry's error code/message, if any.
        detail: String,
    },
    /// The token endpoint refused or answered nonsense.
    #[error("authentication: {0}")]
    Auth(String),
    /// Content did not match its digest.
    #[error("digest mismatch: expected {expected}, got {got}")]
    Digest {
        /// Asked for.
        expected: String,
        /// Received.
        got: String,
    },
    /// The manifest or index is not in the expected format.
    #[error("format: {0}")]
    Format(String),
    /// An answer was larger than allowed for its kind; reading stopped there.
    #[error("{what} larger than {cap} bytes")]
    TooLarge {
        /// What was read.
        what: &'static str,
        /// The cap.
        cap: u64,
    },
}

impl RegistryError {
    /// Whether the failure is a time-out.
    pub fn is_timeout(&self) -> bool {
        matches!(self, RegistryError::Http(e) if e.is_timeout())
    }

    /// Whether it says the registry is unwell (see [`crate::sources::SourceError::is_outage`]): a failed
    /// connection or transfer, a 5xx or a 429. A 404 (a missing blob) and content problems do not.
    pub fn is_outage(&self) -> bool {
        match self {
            RegistryError::Http(_) => true,
            RegistryError::Status { status, .. } => crate::sources::status_is_outage(*status),
            RegistryError::Auth(_)
            | RegistryError::Digest { .. }
            | RegistryError::Format(_)
            | RegistryError::TooLarge { .. } => false,
        }
    }
}

/// Reads a body of at most `cap` bytes (see [`crate::capped::read`]); `what` names it in the error.
pub async fn read_capped(
    response: reqwest::Response,
    what: &'static str,
    cap: u64,
    each: impl FnMut(&[u8]),
) -> Result<Vec<u8>, RegistryError> {
    crate::capped::read(response, cap, each)
        .await
        .map_err(|e| match e {
            crate::capped::CappedError::TooLarge => RegistryError::TooLarge { what, cap },
            crate::capped::CappedError::Http(e) => RegistryError::Http(e),
        })
}

#[derive(Debug, Clone)]
struct Token {
    value: String,
    scope: String,
    expires: Instant,
}

/// A client for `<registry>/v2/<image>/...`.
pub struct Registry {
    base: Url,
    image: String,
    client: reqwest::Client,
    /// A GitHub token or registry password, sent as Basic credentials only where the module doc says.
    /// `None` for a plain-http registry, whatever was configured.
    credentials: Option<String>,
    /// Token realm hosts (`host` or `host:port`, lower case) allowed to receive the credentials besides
    /// the registry's own.
    token_hosts: Vec<String>,
    /// The registry asked for Basic credentials itself (a `Basic` challenge).
    basic_challenged: AtomicBool,
    /// A realm was refused the credentials once already (warned about once).
    realm_refused: AtomicBool,
    token: Mutex<Option<Token>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("base", &self.base.as_str())
            .field("image", &self.image)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    token: Option<String>,
    access_token: Option<String>,
    /// Seconds; a number of any size or sign (clamped, never trusted with arithmetic).
    expires_in: Option<f64>,
}

/// How long to keep a token the endpoint said lives `expires_in` seconds: 60 s when unsaid (the spec's
/// default), 10 s to [`MAX_TOKEN_LIFETIME`], renewed 5 s early.
pub fn token_lifetime(expires_in: Option<f64>) -> Duration {
    let secs = expires_in
        .filter(|s| s.is_finite())
        .unwrap_or(60.0)
        .clamp(10.0, MAX_TOKEN_LIFETIME.as_secs_f64());
    Duration::from_secs_f64(secs).saturating_sub(Duration::from_secs(5))
}

/// Parses `Bearer realm="...",service="...",scope="..."` into its parameters.
pub fn parse_challenge(value: &str) -> Option<(String, Vec<(String, String)>)> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    let mut params = Vec::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let after = after.trim_start();
        let (val, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        params.push((key.trim().to_ascii_lowercase(), val.to_string()));
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    Some((scheme.to_ascii_lowercase(), params))
}

impl Registry {
    /// A client for `image` on the registry at `base` (`https://ghcr.io`).
    pub fn new(
        base: &str,
        image: &str,
        credentials: Option<String>,
        client: reqwest::Client,
    ) -> Result<Registry, String> {
        let shown = crate::redact::url(base);
        let mut base = Url::parse(base).map_err(|e| format!("{shown:?}: {e}"))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(format!("{shown}: only http and https registries"));
        }
        base.set_path("/");
        let credentials = match credentials {
            Some(_) if base.scheme() != "https" => {
                tracing::warn!(
                    registry = %shown,
                    "the registry token is never sent over plain http; asking this registry anonymously"
                );
                None
            }
            c => c,
        };
        Ok(Registry {
            base,
            image: image.to_string(),
            client,
            credentials,
            token_hosts: Vec::new(),
            basic_challenged: AtomicBool::new(false),
            realm_refused: AtomicBool::new(false),
            token: Mutex::new(None),
        })
    }

    /// Lets the credentials go to token realms on these hosts too (`host` or `host:port`; https only).
    pub fn allow_token_hosts(mut self, hosts: &[String]) -> Registry {
        self.token_hosts = hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
        self
    }

    /// Whether the credentials may go to the token realm `realm`: https, and the registry's own host
    /// and port or one allowed by name.
    pub fn may_send_credentials_to(&self, realm: &Url) -> bool {
        if realm.scheme() != "https" || self.base.scheme() != "https" {
            return false;
        }
        let same_host = realm.host_str() == self.base.host_str()
            && realm.port_or_known_default() == self.base.port_or_known_default();
        let named = realm.host_str().is_some_and(|host| {
            let host = host.to_ascii_lowercase();
            let with_port = match realm.port() {
                Some(p) => format!("{host}:{p}"),
                None => host.clone(),
            };
            self.token_hosts.iter().any(|allowed| {
                *allowed == with_port || (realm.port().is_none() && *allowed == host)
            })
        });
        same_host || named
    }

    fn token_slot(&self) -> std::sync::MutexGuard<'_, Option<Token>> {
        // Nothing panics while it is held, but a poisoned lock must never disable the source.
        self.token
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The credentials for a request to the registry itself, once it asked for Basic ones.
    fn basic_credentials(&self) -> Option<&str> {
        self.credentials
            .as_deref()
            .filter(|_| self.basic_challenged.load(Ordering::Relaxed))
    }

    /// The registry's host (and port), as written in the index's `registry` field.
    pub fn host(&self) -> String {
        match (self.base.host_str(), self.base.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            _ => String::new(),
        }
    }

    /// The image name.
    pub fn image(&self) -> &str {
        &self.image
    }

    fn url(&self, tail: &str) -> Result<Url, RegistryError> {
        self.base
            .join(&format!("v2/{}/{tail}", self.image))
            .map_err(|e| RegistryError::Format(e.to_string()))
    }

    fn cached_token(&self, scope: &str) -> Option<String> {
        let guard = self.token_slot();
        let t = guard.as_ref()?;
        (t.scope == scope && Instant::now() < t.expires).then(|| t.value.clone())
    }

    /// Fetches a token for the challenge in `response` and caches it.
    async fn authenticate(
        &self,
        challenge: &str,
        default_scope: &str,
    ) -> Result<Option<String>, RegistryError> {
        let Some((scheme, params)) = parse_challenge(challenge) else {
            return Err(RegistryError::Auth(format!(
                "unreadable challenge {:?}",
                crate::redact::untrusted(challenge, MAX_DETAIL_CHARS)
            )));
        };
        if scheme == "basic" {
            // A registry asking for Basic directly: send the credentials with each request.
            self.basic_challenged.store(true, Ordering::Relaxed);
            return Ok(None);
        }
        if scheme != "bearer" {
            return Err(RegistryError::Auth(format!(
                "unsupported scheme {:?}",
                crate::redact::untrusted(&scheme, MAX_DETAIL_CHARS)
            )));
        }
        let get = |k: &str| {
            params
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        let realm =
            get("realm").ok_or_else(|| RegistryError::Auth("challenge without realm".into()))?;
        let mut url = Url::parse(&realm).map_err(|e| RegistryError::Auth(format!("realm: {e}")))?;
        let scope = get("scope").unwrap_or_else(|| default_scope.to_string());
        {
            let mut q = url.query_pairs_mut();
            if let Some(service) = get("service") {
                q.append_pair("service", &service);
            }
            q.append_pair("scope", &scope);
        }
        let allowed = self.may_send_credentials_to(&url);
        let mut request = self.client.get(url.clone());
        match &self.credentials {
            Some(secret) if allowed => request = request.basic_auth("token", Some(secret)),
            Some(_) if !self.realm_refused.swap(true, Ordering::Relaxed) => tracing::warn!(
                realm_host = ?url.host_str().unwrap_or(""),
                "the registry's token realm is not on its own host (or not https): asking it \
                 anonymously; name the host in oci_token_hosts to send it the registry token"
            ),
            Some(_) | None => {}
        }
        let response = request.send().await?;
        if !response.status().is_success() {
            return Err(Self::error("token", response).await);
        }
        let body = read_capped(response, "token answer", MAX_TOKEN_BYTES, |_| {}).await?;
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|e| RegistryError::Auth(format!("token answer: {e}")))?;
        let value = answer
            .token
            .or(answer.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| RegistryError::Auth("token answer without a token".into()))?;
        let expires = Instant::now()
            .checked_add(token_lifetime(answer.expires_in))
            .unwrap_or_else(Instant::now);
        *self.token_slot() = Some(Token {
            value: value.clone(),
            scope: default_scope.to_string(),
            expires,
        });
        Ok(Some(value))
    }

    /// Sends a request, answering one auth challenge. `body` makes the body afresh for the retry.
    async fn send(
        &self,
        method: Method,
        url: Url,
        push: bool,
        accept: Option<&str>,
        content_type: Option<&str>,
        body: Option<&(dyn Fn() -> reqwest::Body + Send + Sync)>,
    ) -> Result<reqwest::Response, RegistryError> {
        let actions = if push { "pull,push" } else { "pull" };
        let scope = format!("repository:{}:{actions}", self.image);
        let build = |token: Option<&str>, basic: bool| {
            let mut r = self.client.request(method.clone(), url.clone());
            if let Some(a) = accept {
                r = r.header(ACCEPT, a);
            }
            if let Some(c) = content_type {
                r = r.header(CONTENT_TYPE, c);
            }
            if let Some(t) = token {
                r = r.bearer_auth(t);
            } else if basic && let Some(secret) = self.basic_credentials() {
                r = r.basic_auth("token", Some(secret));
            }
            if let Some(b) = body {
                r = r.body(b());
            }
            r
        };
        let cached = self.cached_token(&scope);
        // Basic credentials only once this registry asked for them; a token only once it was granted.
        let response = build(cached.as_deref(), true).send().await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let challenge = response
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let token = self.authenticate(&challenge, &scope).await?;
        Ok(build(token.as_deref(), token.is_none()).send().await?)
    }

    /// The error for an unexpected answer: its status and, from at most [`MAX_ERROR_BYTES`] of its
    /// body, the first error's code and message, escaped and shortened.
    async fn error(what: &'static str, response: reqwest::Response) -> RegistryError {
        let status = response.status().as_u16();
        let detail = read_capped(response, "error answer", MAX_ERROR_BYTES, |_| {})
            .await
            .ok()
            .and_then(|body| {
                let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
                let e = v.get("errors")?.get(0)?;
                Some(format!(
                    "{} {}",
                    e.get("code")?.as_str().unwrap_or(""),
                    e.get("message").and_then(|m| m.as_str()).unwrap_or("")
                ))
            })
            .map(|d| crate::redact::untrusted(&d, MAX_DETAIL_CHARS))
            .unwrap_or_default();
        RegistryError::Status {
            what,
            status,
            detail,
        }
    }

    /// The digest of the `cache-index` manifest, or `None` when there is none yet (HEAD, no body).
    pub async fn manifest_digest(&self) -> Result<Option<String>, RegistryError> {
        let url = self.url(&format!("manifests/{INDEX_TAG}"))?;
        let r = self
            .send(Method::HEAD, url, false, Some(MANIFEST_ACCEPT), None, None)
            .await?;
        match r.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => Ok(r
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)),
            _ => Err(Self::error("manifest HEAD", r).await),
        }
    }

    /// The `cache-index` manifest and its digest (checked against the body), or `None`.
    pub async fn manifest(&self) -> Result<Option<(String, Manifest)>, RegistryError> {
        let url = self.url(&format!("manifests/{INDEX_TAG}"))?;
        let r = self
            .send(Method::GET, url, false, Some(MANIFEST_ACCEPT), None, None)
            .await?;
        if r.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !r.status().is_success() {
            return Err(Self::error("manifest GET", r).await);
        }
        let announced = r
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = read_capped(r, "manifest", MAX_MANIFEST_BYTES, |_| {}).await?;
        let digest = digest_of(&body);
        if let Some(a) = announced
            && a != digest
        {
            return Err(RegistryError::Digest {
                expected: a,
                got: digest,
            });
        }
        let manifest: Manifest = serde_json::from_slice(&body)
            .map_err(|e| RegistryError::Format(format!("manifest: {e}")))?;
        Ok(Some((digest, manifest)))
    }

    /// Starts a blob download (status 200 or 206). A presigned URL that expired is asked for again.
    pub async fn blob(
        &self,
        digest: &str,
        range_from: Option<u64>,
    ) -> Result<reqwest::Response, RegistryError> {
        let url = self.url(&format!("blobs/{digest}"))?;
        let mut last = None;
        for _ in 0..3 {
            let scope = format!("repository:{}:pull", self.image);
            let token = match self.cached_token(&scope) {
                Some(t) => Some(t),
                None => {
                    // One cheap HEAD establishes the token without a redirect in the way.
                    let probe = self
                        .send(Method::HEAD, url.clone(), false, None, None, None)
                        .await?;
                    drop(probe);
                    self.cached_token(&scope)
                }
            };
            let mut request = self.client.get(url.clone());
            if let Some(t) = &token {
                // reqwest drops Authorization when a redirect leaves this host (GHCR's storage URLs).
                request = request.header(AUTHORIZATION, format!("Bearer {t}"));
            } else if let Some(secret) = self.basic_credentials() {
                request = request.basic_auth("token", Some(secret));
            }
            if let Some(from) = range_from {
                request = request.header(reqwest::header::RANGE, format!("bytes={from}-"));
            }
            let r = request.send().await?;
            let elsewhere = r.url().host_str() != url.host_str() || r.url().port() != url.port();
            match r.status() {
                s if s.is_success() => return Ok(r),
                // An expired presigned URL: the registry hands out a fresh one.
                StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED if elsewhere => {
                    last = Some(Self::error("blob GET (storage)", r).await);
                }
                StatusCode::UNAUTHORIZED => {
                    *self.token_slot() = None;
                    last = Some(Self::error("blob GET", r).await);
                }
                _ => return Err(Self::error("blob GET", r).await),
            }
        }
        Err(last.unwrap_or(RegistryError::Auth("blob GET kept failing".into())))
    }

    /// A whole blob of exactly `size` bytes (its descriptor's) when known, and at most `cap`, checked
    /// against its digest. Read as it arrives: a body longer than announced stops the download there.
    pub async fn blob_bytes(
        &self,
        digest: &str,
        size: Option<u64>,
        cap: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        if size.is_some_and(|s| s > cap) {
            return Err(RegistryError::TooLarge { what: "blob", cap });
        }
        let r = self.blob(digest, None).await?;
        let mut sha = Sha256::new();
        let body = read_capped(r, "blob", size.unwrap_or(cap), |chunk| sha.update(chunk)).await?;
        if let Some(size) = size
            && body.len() as u64 != size
        {
            return Err(RegistryError::Format(format!(
                "blob is {} bytes, its descriptor says {size}",
                body.len()
            )));
        }
        let got = format!("sha256:{}", hex::encode(sha.finalize()));
        if got != digest {
            return Err(RegistryError::Digest {
                expected: digest.to_string(),
                got,
            });
        }
        Ok(body)
    }

    /// Whether the registry already has the blob (HEAD).
    pub async fn blob_exists(&self, digest: &str) -> Result<bool, RegistryError> {
        let url = self.url(&format!("blobs/{digest}"))?;
        let r = self.send(Method::HEAD, url, true, None, None, None).await?;
        match r.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(Self::error("blob HEAD", r).await),
        }
    }

    /// Uploads a blob: POST an upload session, then PUT the bytes with `digest=` (monolithic upload).
    /// `body` makes the body afresh if the PUT must be retried after an auth challenge.
    pub async fn upload_blob(
        &self,
        digest: &str,
        body: &(dyn Fn() -> reqwest::Body + Send + Sync),
    ) -> Result<(), RegistryError> {
        let start = self.url("blobs/uploads/")?;
        let r = self
            .send(Method::POST, start.clone(), true, None, None, None)
            .await?;
        if r.status() != StatusCode::ACCEPTED {
            return Err(Self::error("upload start", r).await);
        }
        let location = r
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| RegistryError::Format("upload without Location".into()))?;
        // The Location may be relative and may already carry a query (`?_state=`).
        let mut put = start
            .join(location)
            .map_err(|e| RegistryError::Format(format!("upload Location: {e}")))?;
        put.query_pairs_mut().append_pair("digest", digest);
        let r = self
            .send(
                Method::PUT,
                put,
                true,
                None,
                Some("application/octet-stream"),
                Some(body),
            )
            .await?;
        if r.status() != StatusCode::CREATED {
            return Err(Self::error("upload", r).await);
        }
        Ok(())
    }

    /// Pushes the manifest under the `cache-index` tag. Returns its digest.
    pub async fn put_manifest(&self, manifest: &Manifest) -> Result<String, RegistryError> {
        let bytes =
            serde_json::to_vec(manifest).map_err(|e| RegistryError::Format(e.to_string()))?;
        let digest = digest_of(&bytes);
        let url = self.url(&format!("manifests/{INDEX_TAG}"))?;
        let make = move || reqwest::Body::from(bytes.clone());
        let r = self
            .send(
                Method::PUT,
                url,
                true,
                None,
                Some(MANIFEST_MEDIA_TYPE),
                Some(&make),
            )
            .await?;
        if r.status() != StatusCode::CREATED {
            return Err(Self::error("manifest PUT", r).await);
        }
        Ok(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let (scheme, params) = parse_challenge(
            r#"Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:a/b/nix-cache:pull""#,
        )
        .unwrap();
        assert_eq!(scheme, "bearer");
        assert_eq!(
            params,
            vec![
                ("realm".into(), "https://ghcr.io/token".into()),
                ("service".into(), "ghcr.io".into()),
                ("scope".into(), "repository:a/b/nix-cache:pull".into()),
            ]
        );
        let (scheme, params) = parse_challenge(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(scheme, "basic");
        assert_eq!(params.len(), 1);
        assert!(parse_challenge("Bearer").is_none());
    }

    fn registry(base: &str, token: Option<&str>) -> Registry {
        Registry::new(
            base,
            "o/r/nix-cache",
            token.map(str::to_string),
            reqwest::Client::new(),
        )
        .unwrap()
    }

    #[test]
    fn credentials_go_only_to_https_realms_on_the_registry_host_or_named_ones() {
        let url = |s: &str| Url::parse(s).unwrap();
        let ghcr = registry("https://ghcr.io", Some("secret"));
        assert!(ghcr.may_send_credentials_to(&url("https://ghcr.io/token")));
        assert!(ghcr.may_send_credentials_to(&url("https://ghcr.io:443/token")));
        for elsewhere in [
            "http://ghcr.io/token",
            "https://ghcr.io:8443/token",
            "https://evil.example/token",
            "https://ghcr.io.evil.example/token",
        ] {
            assert!(
                !ghcr.may_send_credentials_to(&url(elsewhere)),
                "{elsewhere}"
            );
        }
        let hub = registry("https://registry-1.docker.io", Some("secret"))
            .allow_token_hosts(&["auth.docker.io".into(), "other.example:8443".into()]);
        assert!(hub.may_send_credentials_to(&url("https://auth.docker.io/token")));
        assert!(hub.may_send_credentials_to(&url("https://other.example:8443/t")));
        assert!(!hub.may_send_credentials_to(&url("https://other.example/t")));
        assert!(!hub.may_send_credentials_to(&url("http://auth.docker.io/token")));

        let plain = registry("http://127.0.0.1:5000", Some("secret"));
        assert_eq!(
            plain.credentials, None,
            "never kept for a plain-http registry"
        );
        assert!(!plain.may_send_credentials_to(&url("http://127.0.0.1:5000/token")));
    }

    #[test]
    fn credentials_wait_for_a_basic_challenge() {
        let r = registry("https://registry.example", Some("secret"));
        assert_eq!(r.basic_credentials(), None, "nothing before a challenge");
        r.basic_challenged.store(true, Ordering::Relaxed);
        assert_eq!(r.basic_credentials(), Some("secret"));
    }

    #[test]
    fn token_lifetimes_are_clamped_whatever_the_endpoint_says() {
        assert_eq!(token_lifetime(None), Duration::from_secs(55));
        assert_eq!(token_lifetime(Some(300.0)), Duration::from_secs(295));
        assert_eq!(token_lifetime(Some(0.0)), Duration::from_secs(5));
        assert_eq!(token_lifetime(Some(-1e9)), Duration::from_secs(5));
        for huge in [u64::MAX as f64, 1e300] {
            let max = MAX_TOKEN_LIFETIME - Duration::from_secs(5);
            assert_eq!(token_lifetime(Some(huge)), max);
        }
        // Not JSON numbers, but never arithmetic trouble either: the default.
        for odd in [f64::INFINITY, f64::NAN] {
            assert_eq!(token_lifetime(Some(odd)), Duration::from_secs(55));
        }
        let answer: TokenAnswer =
            serde_json::from_str(r#"{"token":"t","expires_in":18446744073709551615}"#).unwrap();
        assert_eq!(answer.expires_in, Some(u64::MAX as f64));
    }

    #[test]
    fn only_outages_count_against_a_registry() {
        let status = |status| RegistryError::Status {
            what: "blob GET",
            status,
            detail: String::new(),
        };
        assert!(
            !status(404).is_outage(),
            "a missing blob is not a registry that is down"
        );
        assert!(!status(403).is_outage());
        assert!(status(500).is_outage());
        assert!(status(503).is_outage());
        assert!(status(429).is_outage());
        assert!(!RegistryError::Format("x".into()).is_outage());
    }
}
