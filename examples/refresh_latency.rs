//! Does refreshing a large OCI index slow down requests? Publishes a synthetic nixcache-oci index of N
//! signed entries to a registry, lets nixcache mirror it, then measures narinfo hit latency while idle and
//! while a changed index is being fetched, checked and applied.
//!
//! `scripts/bench-oci.sh` runs it against a local docker-registry:
//! `cargo run --release --example refresh_latency -- REGISTRY_URL [ENTRIES] [SECONDS]`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nixcache::app::App;
use nixcache::config::{Config, OciConfig};
use nixcache::nix::hash::Sha256Hash;
use nixcache::nix::narinfo::{Compression, NarInfo};
use nixcache::nix::nix32;
use nixcache::nix::signing::SecretKey;
use nixcache::nix::store_path::StorePath;
use nixcache::oci::client::Registry;
use nixcache::oci::format::{CacheIndex, IndexEntry, image_name, timestamp};
use nixcache::oci::publish::update_index;

const REPO: &str = "bench/refresh";

/// Entry `i`; `bump` changes its blob size, so a new `bump` makes every entry "changed" for a refresh.
fn entry(i: u64, key: &SecretKey, bump: u64) -> (String, IndexEntry) {
    let seed = Sha256Hash::digest(&i.to_le_bytes());
    let hash = nix32::encode(&seed.0[..20]);
    let nar_hash = Sha256Hash::digest(&seed.0);
    let file_hash = Sha256Hash::digest(&nar_hash.0);
    let mut info = NarInfo {
        store_path: StorePath::parse(&format!("/nix/store/{hash}-package-{i}")).unwrap(),
        url: format!("nar/{hash}.nar.xz"),
        compression: Compression::Xz,
        file_hash: Some(file_hash),
        file_size: Some(1000 + i + bump),
        nar_hash,
        nar_size: 4000 + i,
        references: Vec::new(),
        deriver: None,
        sigs: Vec::new(),
        ca: None,
    };
    info.sign_with(key);
    (
        hash,
        IndexEntry {
            added: timestamp(1_795_000_000),
            name: format!("package-{i}"),
            nar_digest: format!("sha256:{}", file_hash.to_hex()),
            nar_size: 1000 + i + bump,
            narinfo: info.to_text(),
        },
    )
}

struct Latencies {
    samples: Vec<Duration>,
    elapsed: Duration,
}

impl Latencies {
    fn report(&mut self, label: &str) -> (f64, f64) {
        self.samples.sort();
        let q = |p: f64| {
            self.samples[((self.samples.len() as f64 * p) as usize).min(self.samples.len() - 1)]
        };
        let rate = self.samples.len() as f64 / self.elapsed.as_secs_f64();
        println!(
            "| {label} | {:.0} | {:.2} | {:.2} | {:.2} |",
            rate,
            q(0.5).as_secs_f64() * 1e3,
            q(0.99).as_secs_f64() * 1e3,
            q(1.0).as_secs_f64() * 1e3
        );
        (q(0.5).as_secs_f64(), q(0.99).as_secs_f64())
    }
}

/// Four clients asking for random known narinfos, one request at a time each, until `stop`.
async fn load(url: String, hashes: Arc<Vec<String>>, until: Instant) -> Latencies {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..4u64 {
        let (url, hashes) = (url.clone(), hashes.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut samples = Vec::new();
            let mut x = c.wrapping_mul(0x9e3779b97f4a7c15) | 1;
            while Instant::now() < until {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let h = &hashes[(x % hashes.len() as u64) as usize];
                let t = Instant::now();
                let r = client
                    .get(format!("{url}/{h}.narinfo"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                r.bytes().await.unwrap();
                samples.push(t.elapsed());
            }
            samples
        }));
    }
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await.unwrap());
    }
    Latencies {
        samples,
        elapsed: started.elapsed(),
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let registry_url = args
        .next()
        .expect("usage: refresh_latency REGISTRY_URL [ENTRIES] [SECONDS]");
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let secs: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let key = SecretKey::generate("bench-1").unwrap();
    let registry = Registry::new(
        &registry_url,
        &image_name(REPO),
        None,
        reqwest::Client::new(),
    )
    .unwrap();

    let t = Instant::now();
    let hashes: Arc<Vec<String>> = Arc::new((0..n).map(|i| entry(i, &key, 0).0).collect());
    // Publishes entries 0..count, all with the same `bump`.
    let publish = |count: u64, bump: u64| {
        let key = &key;
        let registry = &registry;
        async move {
            let entries: Vec<(String, IndexEntry)> =
                (0..count).map(|i| entry(i, key, bump)).collect();
            update_index(registry, REPO, 1_795_000_000, &|index: &mut CacheIndex| {
                index.entries.clear();
                index.entries.extend(entries.iter().cloned());
            })
            .await
            .unwrap()
        }
    };
    publish(n, 0).await;
    eprintln!("published {n} entries in {:.1}s", t.elapsed().as_secs_f64());

    let data = tempfile::tempdir().unwrap();
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data.path().to_path_buf(),
        max_size: 1 << 30,
        priority: 30,
        negative_ttl: Duration::from_secs(60),
        upstream_timeout: Duration::from_secs(10),
        stall_timeout: Duration::from_secs(10),
        upstreams: Vec::new(),
        signing_key_file: None,
        oci: Some(OciConfig {
            registry: registry_url.clone(),
            repo: REPO.into(),
            index_ttl: Duration::from_secs(3600),
            trusted_keys: vec![key.public_key().to_string()],
            accept_unsigned: false,
            token: None,
        }),
        admin_token_file: None,
        mdns: false,
        mdns_interfaces: Vec::new(),
        limits: nixcache::config::Limits::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = App::open(config).unwrap();
    let server = tokio::spawn(nixcache::server::run(listener, app.clone()));
    let t = Instant::now();
    loop {
        if app.sources.oci().map(|o| o.state().entries) == Some(n) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first_refresh = t.elapsed();

    println!("| phase | requests/s | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|");
    let idle = load(
        url.clone(),
        hashes.clone(),
        Instant::now() + Duration::from_secs(secs),
    )
    .await
    .report("idle");
    let mut results = Vec::new();
    // One more entry (a typical publish), then every entry changed (the worst case).
    for (label, count, bump) in [
        ("refresh, 1 new entry", n + 1, 0),
        ("refresh, every entry changed", n + 1, 1),
    ] {
        publish(count, bump).await;
        let refresh_app = app.clone();
        let refreshing = tokio::spawn(async move {
            let t = Instant::now();
            let outcome = refresh_app
                .sources
                .oci()
                .unwrap()
                .refresh_once(&refresh_app)
                .await
                .unwrap();
            (t.elapsed(), outcome)
        });
        let during = load(
            url.clone(),
            hashes.clone(),
            Instant::now() + Duration::from_secs(secs),
        )
        .await
        .report(label);
        let (took, outcome) = refreshing.await.unwrap();
        results.push((label, during, took, outcome));
    }
    println!(
        "\nentries: {n}; first refresh at start (download + check + apply, no load): {:.1}s",
        first_refresh.as_secs_f64()
    );
    for (label, during, took, outcome) in results {
        let applied = match outcome {
            nixcache::sources::oci::Refreshed::Applied { applied, .. } => {
                format!(
                    "{} written, {} unchanged",
                    applied.written, applied.unchanged
                )
            }
            other => format!("{other:?}"),
        };
        println!(
            "{label}: took {:.1}s under load ({applied}); p50 x{:.2}, p99 x{:.2} of idle",
            took.as_secs_f64(),
            during.0 / idle.0,
            during.1 / idle.1
        );
    }
    app.shutdown.cancel();
    let _ = server.await;
}
