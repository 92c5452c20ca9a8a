//! A registry client for one image: manifests and blobs, following the registry's auth challenge
//! (`WWW-Authenticate: Bearer realm=...` → token endpoint, anonymously or with Basic credentials), with
//! tokens cached until they expire. Blob GETs follow redirects to other hosts (GHCR's presigned URLs)
//! without the Authorization header, and ask the registry again when a presigned URL has expired.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;

use super::format::{INDEX_TAG, MANIFEST_MEDIA_TYPE, Manifest, digest_of};

/// Manifest types asked for (a registry answers 404 when the stored type is not accepted).
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// Failures talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The connection or transfer failed.
    #[error("request failed: {0}")]
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
}

impl RegistryError {
    /// Whether the failure is a time-out.
    pub fn is_timeout(&self) -> bool {
        matches!(self, RegistryError::Http(e) if e.is_timeout())
    }
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
    /// A GitHub token or registry password, sent only to the token endpoint as Basic credentials.
    credentials: Option<String>,
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
    expires_in: Option<u64>,
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
        let mut base = Url::parse(base).map_err(|e| format!("{base:?}: {e}"))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(format!("{base}: only http and https registries"));
        }
        base.set_path("/");
        Ok(Registry {
            base,
            image: image.to_string(),
            client,
            credentials,
            token: Mutex::new(None),
        })
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
        let guard = self.token.lock().ok()?;
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
                "unreadable challenge {challenge:?}"
            )));
        };
        if scheme == "basic" {
            // A registry asking for Basic directly: send the credentials with each request.
            return Ok(None);
        }
        if scheme != "bearer" {
            return Err(RegistryError::Auth(format!(
                "unsupported scheme {scheme:?}"
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
        let mut request = self.client.get(url);
        if let Some(secret) = &self.credentials {
            request = request.basic_auth("token", Some(secret));
        }
        let response = request.send().await?;
        if !response.status().is_success() {
            return Err(RegistryError::Auth(format!(
                "token endpoint answered HTTP {}",
                response.status().as_u16()
            )));
        }
        let body = response.bytes().await?;
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|e| RegistryError::Auth(format!("token answer: {e}")))?;
        let value = answer
            .token
            .or(answer.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| RegistryError::Auth("token answer without a token".into()))?;
        // Renew a little early; 60 s is the spec's default lifetime.
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(60).max(10) - 5);
        if let Ok(mut t) = self.token.lock() {
            *t = Some(Token {
                value: value.clone(),
                scope: default_scope.to_string(),
                expires: Instant::now() + lifetime,
            });
        }
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
            } else if basic && let Some(secret) = &self.credentials {
                r = r.basic_auth("token", Some(secret));
            }
            if let Some(b) = body {
                r = r.body(b());
            }
            r
        };
        let cached = self.cached_token(&scope);
        let response = build(cached.as_deref(), false).send().await?;
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

    async fn error(what: &'static str, response: reqwest::Response) -> RegistryError {
        let status = response.status().as_u16();
        let detail = response
            .text()
            .await
            .ok()
            .and_then(|t| {
                let v: serde_json::Value = serde_json::from_str(&t).ok()?;
                let e = v.get("errors")?.get(0)?;
                Some(format!(
                    "{} {}",
                    e.get("code")?.as_str().unwrap_or(""),
                    e.get("message").and_then(|m| m.as_str()).unwrap_or("")
                ))
            })
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
        let body = r.bytes().await?;
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
            } else if let Some(secret) = &self.credentials {
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
                    if let Ok(mut t) = self.token.lock() {
                        *t = None;
                    }
                    last = Some(Self::error("blob GET", r).await);
                }
                _ => return Err(Self::error("blob GET", r).await),
            }
        }
        Err(last.unwrap_or(RegistryError::Auth("blob GET kept failing".into())))
    }

    /// A whole blob, at most `cap` bytes, checked against its digest.
    pub async fn blob_bytes(&self, digest: &str, cap: u64) -> Result<Vec<u8>, RegistryError> {
        let r = self.blob(digest, None).await?;
        if r.content_length().is_some_and(|n| n > cap) {
            return Err(RegistryError::Format(format!(
                "blob {digest} larger than {cap} bytes"
            )));
        }
        let body = r.bytes().await?;
        if body.len() as u64 > cap {
            return Err(RegistryError::Format(format!(
                "blob {digest} larger than {cap} bytes"
            )));
        }
        let got = digest_of(&body);
        if got != digest {
            return Err(RegistryError::Digest {
                expected: digest.to_string(),
                got,
            });
        }
        Ok(body.to_vec())
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
}
