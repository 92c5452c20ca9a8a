//! A real OCI registry on loopback (Debian `docker-registry`, distribution 2.8) behind GHCR-style token
//! auth (`tests/peers/token-server.py`), and a front written in the test that answers blob GETs with a
//! 307 to another port, as GHCR does with its storage URLs — something a filesystem registry cannot do.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::require;

/// The registry and its token server, ended by PID when dropped.
pub struct RegistryPeer {
    pub url: String,
    pub root: PathBuf,
    registry: Child,
    token: Child,
    _dir: tempfile::TempDir,
}

impl Drop for RegistryPeer {
    fn drop(&mut self) {
        self.stop_registry();
        let _ = self.token.kill();
        let _ = self.token.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl RegistryPeer {
    pub fn start() -> RegistryPeer {
        require("docker-registry", "docker-registry");
        require("openssl", "openssl");
        let dir = tempfile::tempdir().unwrap();
        let (key, cert) = (dir.path().join("token.key"), dir.path().join("token.crt"));
        let status = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .args(["-days", "2", "-subj", "/CN=test"])
            .stderr(Stdio::null())
            .status()
            .expect("run openssl");
        assert!(
            status.success(),
            "openssl could not make the token certificate"
        );
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/token-server.py");
        let mut token = Command::new("python3")
            .arg(script)
            .arg(&key)
            .arg(&cert)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the token server (python3)");
        let mut lines = BufReader::new(token.stdout.take().unwrap()).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        let Some(token_port) = first.strip_prefix("PORT ").map(str::to_string) else {
            let _ = token.kill();
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(&mut token.stderr.take().unwrap(), &mut err);
            let _ = token.wait();
            panic!(
                "token server did not start (is Python's cryptography installed? scripts/install-peers.sh installs it): {err}"
            );
        };
        std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
        let root = dir.path().join("storage");
        // distribution cannot report a port it chose itself: take a free one, retry if it was taken meanwhile.
        for _ in 0..5 {
            let port = free_port();
            let config = dir.path().join("registry.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog: {{level: warn}}\nstorage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\n\
                     http: {{addr: \"127.0.0.1:{port}\"}}\n\
                     auth: {{token: {{realm: \"http://127.0.0.1:{token_port}/token\", service: test-registry, issuer: test-issuer, rootcertbundle: {}}}}}\n",
                    root.display(),
                    cert.display()
                ),
            )
            .unwrap();
            let mut registry = Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start docker-registry");
            let url = format!("http://127.0.0.1:{port}");
            for _ in 0..100 {
                if let Ok(Some(_)) = registry.try_wait() {
                    break;
                }
                if let Ok(r) = reqwest::blocking_get(&format!("{url}/v2/")) {
                    if r == 401 {
                        return RegistryPeer {
                            url,
                            root,
                            registry,
                            token,
                            _dir: dir,
                        };
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = registry.kill();
            let _ = registry.wait();
        }
        panic!("docker-registry did not start");
    }

    /// Stops the registry (the token server stays): "the registry is down".
    pub fn stop_registry(&mut self) {
        if let Ok(None) = self.registry.try_wait() {
            let _ = self.registry.kill();
            let _ = self.registry.wait();
        }
    }

    /// Where distribution keeps a blob's bytes.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.root
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

/// Blocking GET returning the status, for start-up polling without a runtime.
mod reqwest {
    pub fn blocking_get(url: &str) -> std::io::Result<u16> {
        use std::io::{Read, Write};
        let rest = url.trim_start_matches("http://");
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let mut s = std::net::TcpStream::connect(host)?;
        write!(s, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf)?;
        std::str::from_utf8(&buf[9..12])
            .ok()
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other("bad status line"))
    }
}

/// The 307 front: proxies everything to the registry, except blob GETs, which it redirects to its
/// "storage" listener on another port. The storage serves the blob from the registry's files and records
/// whether an Authorization header followed the redirect; the first request for each blob can be
/// refused with 403, like an expired presigned URL.
pub struct Front {
    pub url: String,
    pub storage_requests: Arc<AtomicUsize>,
    pub authorization_leaks: Arc<AtomicUsize>,
    pub expire_first: Arc<Mutex<bool>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Front {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[derive(Clone)]
struct FrontState {
    registry: String,
    storage: String,
    client: ::reqwest::Client,
}

#[derive(Clone)]
struct StorageState {
    root: PathBuf,
    requests: Arc<AtomicUsize>,
    leaks: Arc<AtomicUsize>,
    expire_first: Arc<Mutex<bool>>,
    seen: Arc<Mutex<std::collections::HashSet<String>>>,
}

impl Front {
    pub async fn start(registry: &RegistryPeer) -> Front {
        let storage_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let storage_url = format!("http://{}", storage_listener.local_addr().unwrap());
        let storage = StorageState {
            root: registry.root.clone(),
            requests: Arc::default(),
            leaks: Arc::default(),
            expire_first: Arc::new(Mutex::new(false)),
            seen: Arc::default(),
        };
        let storage_app = axum::Router::new()
            .route("/blob/{hex}", axum::routing::get(serve_storage))
            .with_state(storage.clone());
        let front_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", front_listener.local_addr().unwrap());
        let front = FrontState {
            registry: registry.url.clone(),
            storage: storage_url,
            client: ::reqwest::Client::builder()
                .redirect(::reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        };
        let front_app = axum::Router::new().fallback(proxy).with_state(front);
        let tasks = vec![
            tokio::spawn(async move {
                let _ = axum::serve(storage_listener, storage_app).await;
            }),
            tokio::spawn(async move {
                let _ = axum::serve(front_listener, front_app).await;
            }),
        ];
        Front {
            url,
            storage_requests: storage.requests,
            authorization_leaks: storage.leaks,
            expire_first: storage.expire_first,
            tasks,
        }
    }
}

async fn serve_storage(
    State(s): State<StorageState>,
    axum::extract::Path(hex): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    s.requests.fetch_add(1, Ordering::SeqCst);
    if headers.contains_key("authorization") {
        s.leaks.fetch_add(1, Ordering::SeqCst);
        return StatusCode::BAD_REQUEST.into_response();
    }
    let first = s.seen.lock().unwrap().insert(hex.clone());
    if first && *s.expire_first.lock().unwrap() {
        return (StatusCode::FORBIDDEN, "Request has expired").into_response();
    }
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let path = blob_file(&s.root, &hex);
    match tokio::fs::read(path).await {
        Ok(bytes) => bytes.into_response(),
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

fn blob_file(root: &Path, hex: &str) -> PathBuf {
    root.join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

async fn proxy(State(f): State<FrontState>, request: Request) -> Response {
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let is_blob_get = request.method() == axum::http::Method::GET
        && path.contains("/blobs/sha256:")
        && !path.contains("/uploads/");
    if is_blob_get {
        // Like GHCR: the registry checks the token, then sends the client elsewhere.
        if !request.headers().contains_key("authorization") {
            return (
                StatusCode::UNAUTHORIZED,
                [(
                    "www-authenticate",
                    format!("Bearer realm=\"{}\"", "http://127.0.0.1:1/unused"),
                )],
            )
                .into_response();
        }
        let hex = path.rsplit("sha256:").next().unwrap_or("").to_string();
        return (
            StatusCode::TEMPORARY_REDIRECT,
            [("location", format!("{}/blob/{hex}", f.storage))],
        )
            .into_response();
    }
    let method = request.method().clone();
    let headers = request.headers().clone();
    let body = axum::body::to_bytes(request.into_body(), usize::MAX)
        .await
        .unwrap_or_default();
    let mut forward = f
        .client
        .request(method, format!("{}{path}", f.registry))
        .body(body);
    for (k, v) in &headers {
        if k != "host" {
            forward = forward.header(k, v);
        }
    }
    let Ok(answer) = forward.send().await else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let mut response = Response::builder().status(answer.status().as_u16());
    for (k, v) in answer.headers() {
        response = response.header(k, v);
    }
    let bytes = answer.bytes().await.unwrap_or_default();
    response.body(Body::from(bytes)).unwrap()
}

/// Runs `nixcache push` of fixture paths to `registry` (`OWNER/REPO` = `repo`), signed with the fixture's
/// key, with `extra` arguments. Returns whether it succeeded, and its stdout then stderr.
pub fn push_fixture(registry: &str, repo: &str, extra: &[&str], paths: &[&str]) -> (bool, String) {
    let fx = super::fixture();
    let out = Command::new(env!("CARGO_BIN_EXE_nixcache"))
        .args(["push", "--oci-registry", registry, "--oci-repo", repo])
        .arg("--signing-key-file")
        .arg(&fx.secret_key_file)
        .arg("--store")
        .arg(&fx.store)
        .args(extra)
        .args(paths)
        .env("HOME", fx.nix.dir.join("home"))
        .env(
            "NIX_CONFIG",
            "experimental-features = nix-command\nbuild-users-group =\n",
        )
        .env_remove("GITHUB_TOKEN")
        .env_remove("GH_TOKEN")
        .output()
        .expect("run nixcache push");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}
