//! `kill -9` at random moments while a few hundred mixed requests are in flight, twenty times in a row
//! on the same data folder. After every restart: every NAR served hashes to its FileHash, no temp file
//! is left, and no orphan NAR file outlives the sweep after start. At the end, `nixcache verify
//! --nar-hash` finds nothing wrong.
//!
//! The upstream is the test's own server (`common::TestUpstream`, with synthetic paths and slowed NARs
//! so that kills land mid-download).

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use reqwest::StatusCode;

/// A small deterministic generator (the seed is printed, so a failure can be replayed).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

fn count_files(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .map_while(Result::ok)
        .map(|e| {
            if e.path().is_dir() {
                count_files(&e.path())
            } else {
                1
            }
        })
        .sum()
}

/// Fetches `hash`'s narinfo and NAR; checks the bytes when it got a complete body.
async fn fetch(client: &reqwest::Client, url: &str, hash: &str) -> Result<bool, String> {
    let r = client
        .get(format!("{url}/{hash}.narinfo"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status() != StatusCode::OK {
        return Ok(false);
    }
    let text = r.text().await.map_err(|e| e.to_string())?;
    let nar_url = field(&text, "URL").ok_or("no URL")?;
    let r = client
        .get(format!("{url}/{nar_url}"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status() != StatusCode::OK {
        return Ok(false);
    }
    let Ok(body) = r.bytes().await else {
        return Ok(false);
    };
    // A narinfo naming the zstd twin before it exists has no FileHash (issue 14): then the NAR inside
    // must be the signed one.
    match field(&text, "FileHash") {
        Some(want) if nix_sha256(&body) != want => {
            Err(format!("{nar_url}: served bytes do not hash to {want}"))
        }
        Some(_) => Ok(true),
        None => {
            let nar = zstd::decode_all(&body[..])
                .map_err(|e| format!("{nar_url}: a complete body that is not zstd: {e}"))?;
            let want = field(&text, "NarHash").ok_or("no NarHash")?;
            if nix_sha256(&nar) != want {
                return Err(format!("{nar_url}: the NAR inside does not hash to {want}"));
            }
            Ok(true)
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_twenty_times_under_load_leaves_only_verified_data() {
    let fx = fixture();
    let up = TestUpstream::start(&fx.caches["xz"]).await;
    let synthetic: Vec<Synthetic> = (0..200)
        .map(|i| Synthetic::new(50_000 + i, 48 << 10))
        .collect();
    for p in &synthetic {
        p.serve_from(&up);
    }
    let mut hashes: Vec<String> = synthetic.iter().map(|p| p.hash().to_string()).collect();
    hashes.extend(
        fx.closure
            .iter()
            .chain([&fx.big])
            .map(|p| hash_of(p).to_string()),
    );
    up.set_fault(Fault::SlowNar);
    let data = tempfile::tempdir().unwrap();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("seed {seed}");
    let mut rng = Lcg(seed);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut served = 0;
    for round in 0..20 {
        let (mut daemon, url, _logs) = start_daemon(data.path(), &up.url, &[]);
        // After the start: nothing unverified in tmp/, and within one sweep no orphan in nar/.
        let started = Instant::now();
        loop {
            let body = client
                .get(format!("{url}/_status"))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let stored = status["store"]["nars"].as_u64().unwrap() as usize;
            let files = count_files(&data.path().join("nar"));
            if files == stored {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "round {round}: {files} NAR files for {stored} stored NARs after the sweep"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // A few hundred mixed requests (narinfos, NARs stored or not), then SIGKILL at a random moment.
        let picks: Vec<String> = (0..300)
            .map(|_| hashes[rng.next(hashes.len() as u64) as usize].clone())
            .collect();
        let load = futures_util::stream::iter(picks)
            .map(|h| {
                let (client, url) = (client.clone(), url.clone());
                async move { fetch(&client, &url, &h).await }
            })
            .buffer_unordered(64)
            .collect::<Vec<_>>();
        let kill_after = Duration::from_millis(100 + rng.next(900));
        let results = tokio::select! {
            r = load => r,
            () = tokio::time::sleep(kill_after) => Vec::new(),
        };
        for r in &results {
            if let Err(e) = r {
                panic!("round {round}: {e}");
            }
        }
        daemon.0.kill().unwrap();
        daemon.0.wait().unwrap();
        // What the clients that were cut off got is checked by `fetch`: never a complete wrong body.
        let (daemon, url, _logs) = start_daemon(data.path(), &up.url, &[]);
        assert_eq!(
            std::fs::read_dir(data.path().join("tmp")).unwrap().count(),
            0,
            "round {round}: temp files survived the start"
        );
        // Every NAR served after the restart hashes correctly.
        for _ in 0..20 {
            let h = &hashes[rng.next(hashes.len() as u64) as usize];
            if fetch(&client, &url, h)
                .await
                .unwrap_or_else(|e| panic!("round {round}: {e}"))
            {
                served += 1;
            }
        }
        drop(daemon);
    }
    assert!(served > 0, "no NAR was served in twenty rounds");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nixcache"))
        .args(["verify", "--nar-hash", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The last daemon was killed: its orphans and temp files are what the next start or verify cleans.
    assert!(
        !stdout.contains("damaged "),
        "a stored NAR is damaged after the crashes: {stdout}"
    );
    eprintln!(
        "after 20 kills: {served} NARs served and checked; verify: {}",
        stdout.trim()
    );
}
