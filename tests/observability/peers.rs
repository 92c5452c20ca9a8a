//! The real peers of the observability tests, each ended by its PID: Prometheus (Debian `prometheus`)
//! and headless Chromium (Debian `chromium`).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use super::common::require;

/// A process started by a test, ended by its PID when dropped.
pub struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A real Prometheus scraping `target` every second.
pub struct Prometheus {
    url: String,
    _peer: Peer,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    pub async fn start(target: &str) -> Prometheus {
        require("prometheus", "prometheus");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n- job_name: nixcache\n  static_configs:\n  - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        // Prometheus cannot report a port it chose itself: take a free one, retry if it was taken meanwhile.
        for attempt in 0..5 {
            let port = free_port();
            let log_path = dir.path().join(format!("prometheus-{attempt}.log"));
            let child = Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log_path).unwrap())
                .spawn()
                .expect("start prometheus");
            let mut peer = Peer(child);
            let url = format!("http://127.0.0.1:{port}");
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = peer.0.try_wait() {
                    break;
                }
                if let Ok(r) = reqwest::get(format!("{url}/-/ready")).await
                    && r.status() == StatusCode::OK
                {
                    return Prometheus {
                        url,
                        _peer: peer,
                        _dir: dir,
                    };
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            if !log.contains("address already in use") {
                panic!("prometheus did not start:\n{log}");
            }
        }
        panic!("prometheus found no free port");
    }

    /// An instant query through the HTTP API; panics unless Prometheus says success.
    pub async fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        let url = format!("{}/api/v1/query?query={}", self.url, percent_encode(expr));
        let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
        let body: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["status"], "success", "{expr}: {body}");
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs headless Chromium on `url` with `args`, ended by PID if it takes longer than a minute.
pub fn chromium(args: &[String], url: &str, out: &Path) -> String {
    require("chromium", "chromium");
    let profile = tempfile::tempdir().unwrap();
    let stdout = out.with_extension("stdout");
    let child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .env("HOME", profile.path())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let mut peer = Peer(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = peer.0.try_wait() {
            assert!(status.success(), "chromium {args:?} failed: {status}");
            break;
        }
        assert!(Instant::now() < deadline, "chromium {args:?} hung");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::read_to_string(&stdout).unwrap()
}
