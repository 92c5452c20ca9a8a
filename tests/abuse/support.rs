//! What the abuse tests are built from: the real `nixcache serve` binary as a child process, nginx (Debian
//! `nginx-light`) as the reference server, the process figures both are judged by (`/proc`), the clients
//! that misbehave, and a registry that does (a fake written here, since no real registry answers with
//! endless bodies on demand).

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::ChildGuard;

/// The abuse tests measure time and memory: they run one at a time, not beside each other.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

/// `nixcache serve` as a child process on a port-0 loopback listener, its log in a file.
pub struct Daemon {
    pub url: String,
    pub addr: SocketAddr,
    pub pid: u32,
    log: PathBuf,
    child: ChildGuard,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts it with `config` (TOML) and `env`, and with the open-files limit `nofile` if given.
    pub fn start(config: &str, env: &[(&str, &str)], nofile: Option<u64>) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("nixcache.toml");
        std::fs::write(&conf, config).expect("write config");
        let log = dir.path().join("nixcache.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nixcache"));
        cmd.args(["serve", "--no-mdns", "--listen", "127.0.0.1:0", "--config"])
            .arg(&conf)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        for var in [
            "NIXCACHE_UPSTREAM",
            "NIXCACHE_LISTEN",
            "NIXCACHE_PORT",
            "NIXCACHE_REPO",
            "NIXCACHE_REGISTRY",
            "NIXCACHE_INDEX_TTL",
            "NIXCACHE_DATA_DIR",
            "GITHUB_TOKEN",
            "GH_TOKEN",
            "STATE_DIRECTORY",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("NIXCACHE_LOG", "info,nixcache=debug")
            .envs(env.iter().copied());
        if let Some(n) = nofile {
            // SAFETY: only setrlimit, which is async-signal-safe, runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = ChildGuard(cmd.spawn().expect("start nixcache"));
        let pid = child.0.id();
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            // "... nixcache serving listen=127.0.0.1:41234 data_dir=..."
            if let Some(addr) = text
                .split_whitespace()
                .find_map(|w| w.strip_prefix("listen="))
            {
                break addr.parse::<SocketAddr>().expect("a socket address");
            }
            assert!(
                Instant::now() < deadline,
                "nixcache did not log its address: {text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Daemon {
            url: format!("http://{addr}"),
            addr,
            pid,
            log,
            child,
            _dir: dir,
        }
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.0.try_wait(), Ok(None))
    }

    /// The value of one of its metrics (no labels, or the first series whose line starts with `series`).
    /// Asked from an address of its own (127.0.0.3), so that a test's other clients cannot crowd it out.
    pub async fn metric(&self, series: &str) -> f64 {
        let observer = reqwest::Client::builder()
            .local_address(std::net::IpAddr::from([127, 0, 0, 3]))
            .build()
            .expect("client");
        let text = observer
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body");
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with([' ', '{']))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in /metrics"))
    }
}

/// nginx serving `root` on a loopback port with one worker process, with the time limits given
/// (seconds). The listening socket is bound here and handed over (nginx's own inherited-socket
/// mechanism, the `NGINX` variable), so there is no port race.
pub struct Nginx {
    pub url: String,
    pub addr: SocketAddr,
    /// The master process.
    pub pid: u32,
    /// The worker process, which holds the connections.
    pub worker: u32,
    error_log: PathBuf,
    child: ChildGuard,
    _dir: tempfile::TempDir,
}

impl Nginx {
    pub fn start(root: &Path, header: u64, keepalive: u64, send: u64) -> Nginx {
        crate::common::require("nginx", "nginx-light");
        let dir = tempfile::tempdir().expect("tempdir");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        // The backlog `nixcache serve` asks for (4096), not std's 128: nginx keeps an inherited socket's
        // backlog as it finds it.
        // SAFETY: listen on a socket this function owns; Linux updates the backlog of a listening socket.
        let relisten = unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), 4096) };
        assert_eq!(relisten, 0, "listen");
        let d = dir.path().display();
        let mut temp_paths = format!("client_body_temp_path {d}/body;");
        let built = Command::new("nginx").arg("-V").output().expect("nginx -V");
        let built = String::from_utf8_lossy(&built.stderr).into_owned();
        for m in ["proxy", "fastcgi", "uwsgi", "scgi"] {
            if !built.contains(&format!("--without-http_{m}_module")) {
                temp_paths.push_str(&format!(" {m}_temp_path {d}/{m};"));
            }
        }
        // Workers run as `nobody` when started by root, and could not read a private folder.
        let root_user =
            std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0;
        let user = if root_user { "user root root;\n" } else { "" };
        let conf = format!(
            "daemon off;\n{user}worker_processes 1;\nworker_rlimit_nofile 16384;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\nevents {{ worker_connections 8192; }}\n\
             http {{\n  types {{ text/x-nix-narinfo narinfo; application/x-nix-nar nar; }}\n\
             default_type application/octet-stream;\n  sendfile on;\n  access_log off;\n  {temp_paths}\n\
             client_header_timeout {header}s;\n  keepalive_timeout {keepalive}s;\n  send_timeout {send}s;\n\
             server {{ listen {addr}; root {}; }}\n}}\n",
            root.display()
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let error_log = dir.path().join("error.log");
        let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
        let mut cmd = Command::new("nginx");
        cmd.arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(&error_log)
            .arg("-c")
            .arg(&conf_path)
            .env("NGINX", format!("{fd};"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: only fcntl, which is async-signal-safe, runs between fork and exec: the listening
        // socket stays open across exec in this child only.
        unsafe {
            cmd.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = ChildGuard(cmd.spawn().expect("start nginx"));
        drop(listener);
        let url = format!("http://{addr}");
        let pid = child.0.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        let worker = loop {
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            if let Some(w) = children.split_whitespace().next() {
                break w.parse().expect("a pid");
            }
            assert!(Instant::now() < deadline, "nginx did not start its worker");
            std::thread::sleep(Duration::from_millis(20));
        };
        Nginx {
            url,
            addr,
            pid,
            worker,
            error_log,
            child,
            _dir: dir,
        }
    }
}

impl Drop for Nginx {
    /// A fast shutdown (SIGTERM), so that the master stops its worker before it exits: the `ChildGuard`
    /// alone kills the master only, and its worker went on running, orphaned, after every test run.
    fn drop(&mut self) {
        // SAFETY: a signal to the child this struct started (not yet reaped: `child` still owns it).
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Nginx {
    /// Its error log (warnings and worse).
    pub fn errors(&self) -> String {
        std::fs::read_to_string(&self.error_log).unwrap_or_default()
    }
}

/// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0)
}

/// Resets the peak RSS (`VmHWM`) of a process to its current RSS.
pub fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset VmHWM");
}

/// Open sockets of a process (its listener, clients and peers).
pub fn sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// Open descriptors of a process.
pub fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The `q` quantile (0..=1) of some durations, in milliseconds.
pub fn quantile_ms(samples: &[Duration], q: f64) -> f64 {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    if ms.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * ms.len() as f64).ceil() as usize).clamp(1, ms.len());
    ms[rank - 1]
}

/// What a slowloris attack saw.
#[derive(Default)]
pub struct Attack {
    /// Connections opened.
    pub opened: AtomicUsize,
    /// Connections the server closed.
    pub dropped: AtomicUsize,
    /// The longest a connection lived before the server closed it, in ms.
    pub longest_ms: AtomicU64,
}

/// A TCP connection from `from` (a loopback address: 127.0.0.0/8 is all ours) to `to`.
pub async fn connect_from(
    from: std::net::IpAddr,
    to: SocketAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(to).await
}

/// `n` slowloris clients until `until`, spread over the source addresses `from`: each sends a request
/// line and two headers, then one more header line every `every`, never finishing; when the server
/// closes it, it connects again a moment later.
pub fn slowloris(
    to: SocketAddr,
    from: &[std::net::IpAddr],
    path: &str,
    n: usize,
    every: Duration,
    until: tokio::time::Instant,
) -> (Arc<Attack>, Vec<tokio::task::JoinHandle<()>>) {
    let attack = Arc::new(Attack::default());
    let tasks = (0..n)
        .map(|i| {
            let attack = attack.clone();
            let source = from[i % from.len()];
            let start =
                format!("GET {path} HTTP/1.1\r\nHost: cache\r\nUser-Agent: slowloris-{i}\r\n");
            tokio::spawn(async move {
                while tokio::time::Instant::now() < until {
                    let Ok(mut s) = connect_from(source, to).await else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    attack.opened.fetch_add(1, Ordering::Relaxed);
                    let opened = Instant::now();
                    let mut buf = [0u8; 512];
                    let mut alive = s.write_all(start.as_bytes()).await.is_ok();
                    while alive {
                        tokio::select! {
                            r = s.read(&mut buf) => alive = matches!(r, Ok(n) if n > 0),
                            () = tokio::time::sleep(every) => {
                                if tokio::time::Instant::now() >= until {
                                    return;
                                }
                                alive = s.write_all(b"X-Slow: 1\r\n").await.is_ok();
                            }
                        }
                    }
                    attack.dropped.fetch_add(1, Ordering::Relaxed);
                    let held = opened.elapsed().as_millis() as u64;
                    attack.longest_ms.fetch_max(held, Ordering::Relaxed);
                    // Spread out, as a tool opening connections at a steady rate would.
                    let pause = 100 + (i % 10) as u64 * 100;
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
            })
        })
        .collect();
    (attack, tasks)
}

/// How the fake registry misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hostile {
    /// The manifest body never ends (256 MiB).
    EndlessManifest,
    /// A 500 whose error body never ends.
    EndlessError,
    /// A Bearer challenge whose token endpoint answers an endless body.
    EndlessToken,
    /// A manifest announcing a 1000-byte index whose blob never ends.
    EndlessIndex,
    /// A manifest announcing an 8 GiB index.
    HugeIndex,
    /// A Bearer challenge whose token lives `u64::MAX` seconds; then a valid, empty index.
    HugeExpiry,
}

/// A registry written in the test, misbehaving as its mode says. Records every Authorization header.
pub struct FakeRegistry {
    pub url: String,
    pub mode: Arc<Mutex<Hostile>>,
    pub authorizations: Arc<Mutex<Vec<String>>>,
    /// Blob GETs (HEADs are not counted).
    pub blob_requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct FakeState {
    url: String,
    mode: Arc<Mutex<Hostile>>,
    authorizations: Arc<Mutex<Vec<String>>>,
    blob_requests: Arc<AtomicUsize>,
}

/// 256 MiB of junk, streamed as fast as the client takes it.
fn endless() -> Body {
    let chunk = bytes::Bytes::from(vec![b'{'; 64 << 10]);
    let chunks = futures_util::stream::repeat_with(move || Ok::<_, std::io::Error>(chunk.clone()));
    Body::from_stream(futures_util::StreamExt::take(chunks, 4096))
}

impl FakeRegistry {
    pub async fn start(mode: Hostile) -> FakeRegistry {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let state = FakeState {
            url: url.clone(),
            mode: Arc::new(Mutex::new(mode)),
            authorizations: Arc::default(),
            blob_requests: Arc::default(),
        };
        let router = axum::Router::new()
            .fallback(fake_registry)
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        FakeRegistry {
            url,
            mode: state.mode,
            authorizations: state.authorizations,
            blob_requests: state.blob_requests,
            task,
        }
    }

    pub fn set(&self, mode: Hostile) {
        *self.mode.lock().unwrap() = mode;
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A valid, empty index and its manifest.
fn empty_index() -> (Vec<u8>, Vec<u8>) {
    let index = nixcache::oci::format::CacheIndex::new("o/r", "127.0.0.1").to_bytes();
    let manifest = nixcache::oci::format::Manifest::for_index(&index);
    (index, serde_json::to_vec(&manifest).expect("manifest JSON"))
}

async fn fake_registry(
    State(s): State<FakeState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Some(a) = headers.get(header::AUTHORIZATION) {
        s.authorizations
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(a.as_bytes()).into_owned());
    }
    let mode = *s.mode.lock().unwrap();
    let path = uri.path();
    let challenge = || {
        let realm = format!("Bearer realm=\"{}/token\",service=\"fake\"", s.url);
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, realm)],
        )
            .into_response()
    };
    if path == "/token" {
        return match mode {
            Hostile::EndlessToken => endless().into_response(),
            _ => r#"{"token":"granted","expires_in":18446744073709551615}"#.into_response(),
        };
    }
    let granted = headers
        .get(header::AUTHORIZATION)
        .is_some_and(|a| a.as_bytes() == b"Bearer granted");
    if matches!(mode, Hostile::EndlessToken | Hostile::HugeExpiry) && !granted {
        return challenge();
    }
    let (index, manifest) = empty_index();
    if path.ends_with("/manifests/cache-index") {
        let announced = |digest: String| [("docker-content-digest", digest)];
        return match (mode, method == Method::HEAD) {
            (Hostile::HugeExpiry, _) => (
                announced(nixcache::oci::format::digest_of(&manifest)),
                [(
                    header::CONTENT_TYPE,
                    nixcache::oci::format::MANIFEST_MEDIA_TYPE,
                )],
                manifest,
            )
                .into_response(),
            (_, true) => announced(format!("sha256:{}", "0".repeat(64))).into_response(),
            (Hostile::EndlessManifest, false) => endless().into_response(),
            (Hostile::EndlessError, false) => {
                (StatusCode::INTERNAL_SERVER_ERROR, endless()).into_response()
            }
            (Hostile::EndlessIndex | Hostile::HugeIndex, false) => {
                let mut m = nixcache::oci::format::Manifest::for_index(b"x");
                m.layers[0].size = if mode == Hostile::HugeIndex {
                    8 << 30
                } else {
                    1000
                };
                serde_json::to_vec(&m)
                    .expect("manifest JSON")
                    .into_response()
            }
            (Hostile::EndlessToken, false) => StatusCode::NOT_FOUND.into_response(),
        };
    }
    if path.contains("/blobs/") {
        if method == Method::GET {
            s.blob_requests.fetch_add(1, Ordering::Relaxed);
        }
        return match mode {
            Hostile::HugeExpiry => index.into_response(),
            _ => endless().into_response(),
        };
    }
    StatusCode::NOT_FOUND.into_response()
}
