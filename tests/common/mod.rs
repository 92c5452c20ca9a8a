//! Shared test fixtures: a real Nix client making real binary caches, a static upstream that can count
//! requests and inject faults, and an in-process nixcache on a port-0 listener.
#![allow(dead_code)]

pub mod registry;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path as AxPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use nixcache::app::App;
use nixcache::config::Config;

/// Fails loudly when a peer is missing: the README's test command installs them all.
pub fn require(program: &str, package: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{program}` is missing: install Debian package `{package}` or run ./scripts/test.sh, which installs every peer"
    );
}

/// A private Nix environment (HOME, XDG cache, config) under one folder, as recipes/PEERS.md runs Nix.
pub struct NixEnv {
    pub dir: PathBuf,
}

impl NixEnv {
    pub fn new(dir: &Path) -> NixEnv {
        require("nix-store", "nix-bin");
        for d in ["home", "xdg"] {
            std::fs::create_dir_all(dir.join(d)).expect("create nix env folders");
        }
        NixEnv {
            dir: dir.to_path_buf(),
        }
    }

    /// A command with the private environment and a fresh cache folder (Nix caches lookups there).
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        let xdg = self
            .dir
            .join(format!("xdg-{}", COUNTER.fetch_add(1, Ordering::Relaxed)));
        c.env("HOME", self.dir.join("home"))
            .env("XDG_CACHE_HOME", xdg)
            .env(
                "NIX_CONFIG",
                "experimental-features = nix-command\nsandbox = false\nbuild-users-group =\nsubstituters =\n\
                 extra-sandbox-paths = /bin /usr /lib /lib64\nnarinfo-cache-positive-ttl = 0\nnarinfo-cache-negative-ttl = 0\n\
                 connect-timeout = 5\n",
            );
        c
    }

    /// Runs a command and returns its stdout; panics with stderr on failure.
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        let out = self
            .cmd(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// Runs a command and returns whether it succeeded, and its stderr.
    pub fn try_run(&self, program: &str, args: &[&str]) -> (bool, String) {
        let out = self
            .cmd(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Input-addressed paths built by the real Nix client and published to real binary cache folders.
pub struct Fixture {
    pub nix: NixEnv,
    /// The top path; its closure is `closure`.
    pub top: String,
    /// Every path of the closure of `top`.
    pub closure: Vec<String>,
    /// A path with a 4 MiB random file (big enough that a download takes many chunks).
    pub big: String,
    /// `nix copy --to file://` folders by compression: "xz", "zstd", "none".
    pub caches: HashMap<&'static str, PathBuf>,
    /// The key the caches are signed with (`name:base64`).
    pub public_key: String,
    pub secret_key_file: PathBuf,
    /// The store the paths were built in.
    pub store: PathBuf,
}

const FIXTURE_NIX: &str = r#"
let
  sh = args: name: derivation { inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" args ]; };
  dep = sh "echo dep > $out" "dep";
  mid = sh "/bin/mkdir $out; echo ${dep} > $out/dep; echo mid > $out/data" "mid";
  top = sh "echo ${mid} ${dep} > $out" "top";
  big = sh "/usr/bin/head -c 4194304 /dev/urandom > $out" "big";
in { inherit top big; }
"#;

/// The fixture, built once per test binary.
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(build_fixture)
}

fn build_fixture() -> Fixture {
    // Kept for the whole test binary (statics are never dropped), so under the target's temp folder,
    // where each new fixture removes those older than an hour: runs do not pile up on a developer's disk.
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fixtures");
    std::fs::create_dir_all(&base).expect("fixtures folder");
    remove_stale_fixtures(&base, Duration::from_secs(3600));
    let dir = tempfile::Builder::new()
        .prefix("nixcache-fixture-")
        .tempdir_in(&base)
        .expect("tempdir")
        .keep();
    let nix = NixEnv::new(&dir);
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).expect("keys folder");
    let sk = keys.join("sk");
    let pk = keys.join("pk");
    nix.run(
        "nix-store",
        &[
            "--generate-binary-cache-key",
            "upstream-test-1",
            sk.to_str().unwrap(),
            pk.to_str().unwrap(),
        ],
    );
    let expr = dir.join("fixture.nix");
    std::fs::write(&expr, FIXTURE_NIX).expect("write fixture.nix");
    let store = dir.join("store");
    let out = nix.run(
        "nix-build",
        &[
            "--store",
            store.to_str().unwrap(),
            expr.to_str().unwrap(),
            "--no-out-link",
        ],
    );
    let outs: Vec<String> = out.lines().map(str::to_string).collect();
    let (big, top) = (outs[0].clone(), outs[1].clone());
    let closure: Vec<String> = nix
        .run(
            "nix-store",
            &["--store", store.to_str().unwrap(), "-qR", &top],
        )
        .lines()
        .map(str::to_string)
        .collect();
    let mut caches = HashMap::new();
    for compression in ["xz", "zstd", "none"] {
        let cache = dir.join(format!("cache-{compression}"));
        let to = format!(
            "file://{}?compression={compression}&secret-key={}",
            cache.display(),
            sk.display()
        );
        nix.run(
            "nix",
            &[
                "copy",
                "--store",
                store.to_str().unwrap(),
                "--to",
                &to,
                &top,
                &big,
            ],
        );
        caches.insert(compression, cache);
    }
    Fixture {
        top,
        closure,
        big,
        caches,
        public_key: std::fs::read_to_string(&pk)
            .expect("read pk")
            .trim()
            .to_string(),
        secret_key_file: sk,
        store,
        nix,
    }
}

/// Removes fixture folders under `base` last changed more than `age` ago (a Nix store in them is
/// read-only: made writable first).
fn remove_stale_fixtures(base: &Path, age: Duration) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.map_while(Result::ok) {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|e| e > age);
        if old {
            let _ = Command::new("chmod")
                .arg("-R")
                .arg("u+w")
                .arg(entry.path())
                .status();
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl Fixture {
    /// The closure of `top` as `store` holds it, sorted.
    pub fn closure_in(&self, store: &Path) -> Vec<String> {
        let mut paths: Vec<String> = self
            .nix
            .run(
                "nix-store",
                &["--store", store.to_str().unwrap(), "-qR", &self.top],
            )
            .lines()
            .map(str::to_string)
            .collect();
        paths.sort();
        paths
    }

    /// `closure`, sorted.
    pub fn closure_sorted(&self) -> Vec<String> {
        let mut paths = self.closure.clone();
        paths.sort();
        paths
    }

    /// A copy of the cache folder of `compression` in `dir`, to tamper with or thin out.
    pub fn copy_cache(&self, compression: &str, dir: &Path) -> PathBuf {
        let copy = dir.join(format!("cache-{compression}"));
        let status = Command::new("cp")
            .arg("-r")
            .arg(&self.caches[compression])
            .arg(&copy)
            .status()
            .expect("run cp");
        assert!(status.success(), "copying the cache folder failed");
        copy
    }

    /// `nix-store -r PATH` into a fresh store with `url` as the only substituter, trusting only `key`
    /// (signatures required, Nix's default). Returns whether it succeeded, and stderr.
    pub fn realise(&self, store: &Path, url: &str, path: &str, key: &str) -> (bool, String) {
        self.nix.try_run(
            "nix-store",
            &[
                "--store",
                store.to_str().expect("UTF-8 store path"),
                "-r",
                path,
                "--option",
                "substituters",
                url,
                "--option",
                "trusted-public-keys",
                key,
                "--option",
                "require-sigs",
                "true",
            ],
        )
    }
}

/// The 32-char hash part of a store path.
pub fn hash_of(path: &str) -> &str {
    &path["/nix/store/".len().."/nix/store/".len() + 32]
}

/// What a [`TestUpstream`] does to its answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Serve files as they are.
    None,
    /// Flip one byte in the middle of every NAR.
    CorruptNar,
    /// Send only half of every NAR, as a well-formed chunked body (looks complete on the wire).
    TruncateNar,
    /// Answer 500 to everything.
    ServerError,
    /// Never answer.
    Stall,
    /// Send NARs slowly (64 KiB every 20 ms), so concurrent clients overlap.
    SlowNar,
    /// Answer narinfos after 300 ms, so concurrent requests overlap.
    SlowNarinfo,
    /// Narinfo URLs made absolute (`http://host/nar/...`).
    AbsoluteNarUrl,
    /// Narinfo URLs in another folder, from the root (`/files/nar/...`; `/files/` serves the same folder).
    OtherFolderNarUrl,
    /// Narinfo URLs with a query string (`nar/...?hash=...`, as harmonia writes them).
    QueryNarUrl,
    /// Send NARs at one byte per second (a source that trickles).
    Trickle,
}

/// A static file server over a binary cache folder, written in the test so it can count requests and
/// inject faults no real server produces (corrupt, truncated, stalled bodies).
pub struct TestUpstream {
    pub url: String,
    pub narinfo_requests: Arc<AtomicUsize>,
    pub nar_requests: Arc<AtomicUsize>,
    fault: Arc<Mutex<Fault>>,
    overrides: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct UpstreamState {
    url: String,
    root: PathBuf,
    narinfo_requests: Arc<AtomicUsize>,
    nar_requests: Arc<AtomicUsize>,
    fault: Arc<Mutex<Fault>>,
    /// Request path (`<hash>.narinfo`, `nar/...`) → body served instead of the file: hostile answers a
    /// test writes itself.
    overrides: Arc<Mutex<HashMap<String, Vec<u8>>>>,
}

impl TestUpstream {
    pub async fn start(root: &Path) -> TestUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = UpstreamState {
            url: url.clone(),
            root: root.to_path_buf(),
            narinfo_requests: Arc::default(),
            nar_requests: Arc::default(),
            fault: Arc::new(Mutex::new(Fault::None)),
            overrides: Arc::default(),
        };
        let router = axum::Router::new()
            .route("/{*path}", axum::routing::get(serve_upstream))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        TestUpstream {
            url,
            narinfo_requests: state.narinfo_requests,
            nar_requests: state.nar_requests,
            fault: state.fault,
            overrides: state.overrides,
            task,
        }
    }

    /// Serves `body` for `path` (relative to the cache root) instead of the file there.
    pub fn set_override(&self, path: &str, body: Vec<u8>) {
        self.overrides
            .lock()
            .unwrap()
            .insert(path.to_string(), body);
    }

    /// The file at `path` in the cache folder as this upstream serves it.
    pub fn file(&self, root: &Path, path: &str) -> Vec<u8> {
        std::fs::read(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    pub fn set_fault(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }

    pub fn narinfos(&self) -> usize {
        self.narinfo_requests.load(Ordering::SeqCst)
    }

    pub fn nars(&self) -> usize {
        self.nar_requests.load(Ordering::SeqCst)
    }

    pub fn stop(&self) {
        self.task.abort();
    }
}

async fn serve_upstream(State(s): State<UpstreamState>, AxPath(path): AxPath<String>) -> Response {
    let path = path.strip_prefix("files/").unwrap_or(&path).to_string();
    let is_nar = path.starts_with("nar/");
    if path.ends_with(".narinfo") {
        s.narinfo_requests.fetch_add(1, Ordering::SeqCst);
    } else if is_nar {
        s.nar_requests.fetch_add(1, Ordering::SeqCst);
    }
    let fault = *s.fault.lock().unwrap();
    match fault {
        Fault::ServerError => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        Fault::Stall => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        _ => {}
    }
    if path.contains("..") {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let overridden = s.overrides.lock().unwrap().get(&path).cloned();
    let mut bytes = match overridden {
        Some(b) => b,
        None => match tokio::fs::read(s.root.join(&path)).await {
            Ok(b) => b,
            Err(_) => return StatusCode::NOT_FOUND.into_response(),
        },
    };
    if !is_nar {
        if fault == Fault::SlowNarinfo {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let text = String::from_utf8_lossy(&bytes);
        let rewritten = match fault {
            Fault::AbsoluteNarUrl => text.replace("URL: nar/", &format!("URL: {}/nar/", s.url)),
            Fault::OtherFolderNarUrl => text.replace("URL: nar/", "URL: /files/nar/"),
            Fault::QueryNarUrl => text
                .lines()
                .map(|l| match l.strip_prefix("URL: ") {
                    Some(u) => format!("URL: {u}?hash=abc\n"),
                    None => format!("{l}\n"),
                })
                .collect(),
            _ => return bytes.into_response(),
        };
        return rewritten.into_response();
    }
    match fault {
        Fault::CorruptNar => {
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0xff;
            bytes.into_response()
        }
        Fault::TruncateNar => {
            bytes.truncate(bytes.len() / 2);
            let stream = futures_util::stream::iter([Ok::<_, std::io::Error>(bytes)]);
            Body::from_stream(stream).into_response()
        }
        Fault::SlowNar => {
            let chunks: Vec<Vec<u8>> = bytes.chunks(64 * 1024).map(<[u8]>::to_vec).collect();
            let stream = futures_util::stream::unfold(chunks.into_iter(), |mut it| async move {
                let chunk = it.next()?;
                tokio::time::sleep(Duration::from_millis(20)).await;
                Some((Ok::<_, std::io::Error>(chunk), it))
            });
            Body::from_stream(stream).into_response()
        }
        Fault::Trickle => {
            let stream = futures_util::stream::unfold(bytes.into_iter(), |mut it| async move {
                let byte = it.next()?;
                tokio::time::sleep(Duration::from_secs(1)).await;
                Some((Ok::<_, std::io::Error>(vec![byte]), it))
            });
            Body::from_stream(stream).into_response()
        }
        _ => bytes.into_response(),
    }
}

/// An in-process nixcache on a port-0 listener.
pub struct Nixcache {
    pub url: String,
    pub app: Arc<App>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// A configuration for tests: the defaults, with loopback, short time-outs and the given upstreams.
pub fn test_config(data_dir: &Path, upstreams: &[&str]) -> Config {
    let overrides = nixcache::config::Overrides {
        data_dir: Some(data_dir.to_path_buf()),
        ..Default::default()
    };
    let mut c = Config::resolve(&overrides, &|_| None).expect("the defaults resolve");
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.max_size = 1 << 30;
    c.min_free = 0;
    c.upstream_timeout = Duration::from_secs(2);
    c.stall_timeout = Duration::from_secs(2);
    c.upstreams = upstreams
        .iter()
        .map(|u| nixcache::config::UpstreamConfig {
            url: format!("{u}/"),
            trusted_keys: vec![fixture().public_key.clone()],
            accept_unsigned: false,
        })
        .collect();
    c.mdns = false;
    // Background transcoding to zstd (issue 16) rewrites narinfos and adds files a while after a fill;
    // tests of other parts assert exact texts and counts, so it is on only where a test asks for it.
    c.transcode_level = None;
    // Fetching ahead (issue 14) makes upstream requests no client made; tests count those exactly, so
    // it is on only where a test asks for it (tests/prefetch.rs).
    c.prefetch = false;
    c
}

impl Nixcache {
    pub async fn start(config: Config) -> Nixcache {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .expect("bind nixcache");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = App::open(config).expect("open app");
        let task = tokio::spawn(nixcache::server::run(listener, app.clone()));
        Nixcache { url, app, task }
    }

    /// Shuts down cleanly and waits until the index is closed.
    pub async fn stop(self) {
        self.app.shutdown.cancel();
        self.task.await.expect("join").expect("server result");
        let app = self.app;
        // The index closes when the last handle goes; wait for background fills to let go.
        for _ in 0..100 {
            if Arc::strong_count(&app) == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("nixcache still referenced after shutdown");
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn status(&self) -> serde_json::Value {
        status_at(&self.url).await
    }
}

/// The `/_status` JSON of the appliance at `url`.
pub async fn status_at(url: &str) -> serde_json::Value {
    let body = reqwest::get(format!("{url}/_status"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    serde_json::from_slice(&body).expect("status is JSON")
}

/// sha256 of bytes as `sha256:<nix32>`.
pub fn nix_sha256(bytes: &[u8]) -> String {
    nixcache::nix::hash::Sha256Hash::digest(bytes).to_string()
}

/// The value of `key` in a narinfo text.
pub fn field<'a>(narinfo: &'a str, key: &str) -> Option<&'a str> {
    narinfo
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(": ")))
}

/// Ends a child process (by its PID) when dropped, so no process outlives a failing test.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts the `nixcache` binary serving `data` from `upstream` (trusting the fixture's key), with
/// `extra` arguments; returns it with the address it logged, and its stderr lines.
pub fn start_daemon(
    data: &Path,
    upstream: &str,
    extra: &[&str],
) -> (ChildGuard, String, std::sync::mpsc::Receiver<String>) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_nixcache"))
        .env_remove("NIXCACHE_LISTEN")
        .env_remove("NIXCACHE_PORT")
        .env_remove("NIXCACHE_UPSTREAM")
        .env_remove("NIXCACHE_DATA_DIR")
        .env_remove("STATE_DIRECTORY")
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--no-mdns",
            "--upstream",
            upstream,
        ])
        .args(["--trusted-key", &fixture().public_key, "--data-dir"])
        .arg(data)
        .args(extra)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start nixcache");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    loop {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(10)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("nixcache did not log its address");
        };
        if let Some(rest) = line.split("listen=").nth(1) {
            let addr = rest.split_whitespace().next().unwrap().to_string();
            return (ChildGuard(child), format!("http://{addr}"), rx);
        }
    }
}

/// Starts `python3` (given as a command, so that it can run inside a network namespace) as
/// `python3 -m http.server` on 127.0.0.1 port 0 over `dir`: a real, independent HTTP server. Returns the
/// child, already started, and its URL.
pub fn http_server(mut python3: Command, dir: &Path) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    require("python3", "python3");
    let mut child = python3
        .args([
            "-u",
            "-m",
            "http.server",
            "0",
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start python3 -m http.server");
    let mut line = String::new();
    let read = BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line);
    // "Serving HTTP on 127.0.0.1 port 40123 (http://127.0.0.1:40123/) ..."
    let port = line
        .split_whitespace()
        .skip_while(|w| *w != "port")
        .nth(1)
        .map(str::to_string);
    match (read, port) {
        (Ok(_), Some(port)) => (child, format!("http://127.0.0.1:{port}")),
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("unexpected http.server banner {line:?}");
        }
    }
}

/// A signing key pair made with `nixcache keygen` in `dir`; returns (secret key file, public key).
pub fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    // File names have limits that key names do not.
    let stem: String = name.chars().take(40).collect();
    let sk = dir.join(format!("{stem}.secret"));
    let pk = dir.join(format!("{stem}.public"));
    let out = Command::new(env!("CARGO_BIN_EXE_nixcache"))
        .args(["keygen", name, "--secret-key-file"])
        .arg(&sk)
        .arg("--public-key-file")
        .arg(&pk)
        .output()
        .expect("run nixcache keygen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = std::fs::read_to_string(&pk).expect("read public key");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        public.trim(),
        "keygen prints the public key"
    );
    (sk, public.trim().to_string())
}

/// A store path that exists only as a narinfo and a NAR a test serves itself (through
/// [`TestUpstream::set_override`]), signed with the fixture's key: many distinct NARs without building
/// them with Nix. The verifier only hashes NAR bytes, so any content is a valid NAR for it.
pub struct Synthetic {
    /// `/nix/store/<hash>-synthetic-<i>`.
    pub store_path: String,
    /// Its narinfo, signed, `Compression: none`.
    pub narinfo: String,
    /// Where the NAR is, relative to the cache root (`nar/<FileHash>.nar`).
    pub nar_path: String,
    /// The NAR.
    pub nar: Vec<u8>,
}

impl Synthetic {
    /// Path number `i` with a NAR of `size` bytes of content derived from `i`.
    pub fn new(i: u64, size: usize) -> Synthetic {
        use nixcache::nix::hash::Sha256Hash;
        use nixcache::nix::narinfo::{Compression, NarInfo};
        let nar: Vec<u8> = (0..size as u64)
            .map(|j| (j.wrapping_mul(31).wrapping_add(i.wrapping_mul(7919)) >> 3) as u8)
            .collect();
        let seed = Sha256Hash::digest(format!("synthetic {i}").as_bytes());
        let hash = nixcache::nix::nix32::encode(&seed.0[..20]);
        let store_path = format!("/nix/store/{hash}-synthetic-{i}");
        let file_hash = Sha256Hash::digest(&nar);
        let nar_path = format!("nar/{}.nar", file_hash.to_nix32());
        let mut info = NarInfo {
            store_path: store_path.parse().expect("store path"),
            url: nar_path.clone(),
            compression: Compression::None,
            file_hash: Some(file_hash),
            file_size: Some(nar.len() as u64),
            nar_hash: file_hash,
            nar_size: nar.len() as u64,
            references: Vec::new(),
            deriver: None,
            sigs: Vec::new(),
            ca: None,
        };
        let key = std::fs::read_to_string(&fixture().secret_key_file).expect("secret key");
        info.sign_with(&nixcache::nix::signing::SecretKey::parse(&key).expect("key"));
        Synthetic {
            store_path,
            narinfo: info.to_text(),
            nar_path,
            nar,
        }
    }

    /// The 32-char hash part of its store path.
    pub fn hash(&self) -> &str {
        hash_of(&self.store_path)
    }

    /// Serves it from `up`.
    pub fn serve_from(&self, up: &TestUpstream) {
        up.set_override(
            &format!("{}.narinfo", self.hash()),
            self.narinfo.clone().into_bytes(),
        );
        up.set_override(&self.nar_path, self.nar.clone());
    }
}
