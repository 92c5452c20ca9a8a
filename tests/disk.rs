//! A real full disk: the data folder on a 48 MiB tmpfs that another file fills to the last byte while
//! a download is running. Hits keep being served, new fills get a clear 503, `/healthz` says why, and
//! once the other file is gone new fills work again — without a restart.
//!
//! Needs root (to mount the tmpfs), as the README's test command runs.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;

/// A size-limited tmpfs, unmounted when dropped.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount(size: &str) -> SmallFs {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs failed: this test needs root (run ./scripts/test.sh as root)"
        );
        SmallFs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let unmounted = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        // Still busy (a test that failed before stopping its daemon): detach it now, so no mount
        // outlives the test.
        if !unmounted {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// Writes a file until the filesystem is full (ENOSPC); returns its path.
fn fill_up(dir: &Path) -> PathBuf {
    let path = dir.join("someone-elses-file");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0x5a; 64 << 10];
    loop {
        match f.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc_enospc()) => break,
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
    // The last bytes, one at a time, so that not even a page is left.
    while f.write(&[0]).is_ok_and(|n| n == 1) {}
    let _ = f.sync_all();
    path
}

fn libc_enospc() -> i32 {
    28
}

async fn get(url: &str) -> reqwest::Response {
    reqwest::get(url).await.expect("request")
}

async fn wait_for(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_keeps_hits_served_refuses_fills_and_heals_without_a_restart() {
    let fx = fixture();
    let fs = SmallFs::mount("48m");
    let up = TestUpstream::start(&fx.caches["none"]).await;
    let mut config = test_config(&fs.path().join("data"), &[&up.url]);
    config.min_free = 1 << 20;
    let cache = Nixcache::start(config).await;
    let dep = fx.closure.iter().find(|p| p.ends_with("-dep")).unwrap();
    let mid = fx.closure.iter().find(|p| p.ends_with("-mid")).unwrap();

    // Stored before the disk fills: top's NAR, dep's narinfo.
    let top = get(&format!("{}/{}.narinfo", cache.url, hash_of(&fx.top)))
        .await
        .text()
        .await
        .unwrap();
    let top_nar = format!("{}/{}", cache.url, field(&top, "URL").unwrap());
    get(&top_nar).await.bytes().await.unwrap();
    assert_eq!(
        get(&format!("{}/{}.narinfo", cache.url, hash_of(dep)))
            .await
            .status(),
        StatusCode::OK
    );
    let big = get(&format!("{}/{}.narinfo", cache.url, hash_of(&fx.big)))
        .await
        .text()
        .await
        .unwrap();
    let big_nar = format!("{}/{}", cache.url, field(&big, "URL").unwrap());

    // Mid-fill: the big NAR downloads slowly; another file takes every byte meanwhile.
    up.set_fault(Fault::SlowNar);
    let mut download = get(&big_nar).await;
    download.chunk().await.unwrap();
    let filler = fill_up(fs.path());
    let mut body_ok = true;
    loop {
        match download.chunk().await {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => {
                body_ok = false;
                break;
            }
        }
    }
    assert!(
        !body_ok,
        "a fill that hit ENOSPC still gave a complete body"
    );
    up.set_fault(Fault::None);

    // Mid-commit: new narinfos are recorded until the index must grow and cannot; that one is a 503
    // (the index file's existing pages still take writes, so it takes a few hundred rows to get there).
    let mut refused_at = None;
    for i in 0..4000 {
        let p = Synthetic::new(i, 64);
        p.serve_from(&up);
        let status = get(&format!("{}/{}.narinfo", cache.url, p.hash()))
            .await
            .status();
        match status {
            StatusCode::OK => {}
            StatusCode::SERVICE_UNAVAILABLE => {
                eprintln!("narinfo {i} was the first one refused on the full disk");
                refused_at = Some(p);
                break;
            }
            other => panic!("narinfo {i} on a full disk answered {other}"),
        }
    }
    let refused_at = refused_at.expect("the index never ran out of room");
    // Unhealthy, and why (it may heal in between if evicting made a little room: ask until seen).
    let mut health = String::new();
    wait_for(
        "/healthz to say why it is unhealthy",
        Duration::from_secs(10),
        async || {
            let r = get(&format!("{}/healthz", cache.url)).await;
            let unhealthy = r.status() == StatusCode::SERVICE_UNAVAILABLE;
            health = r.text().await.unwrap();
            unhealthy
        },
    )
    .await;
    assert!(health.contains("index cannot be written"), "{health}");

    // Hits are still served, with the right bytes.
    let hit = get(&format!("{}/{}.narinfo", cache.url, hash_of(&fx.top))).await;
    assert_eq!(hit.status(), StatusCode::OK);
    let body = get(&top_nar).await.bytes().await.unwrap();
    assert_eq!(nix_sha256(&body), field(&top, "FileHash").unwrap());
    assert_eq!(
        get(&format!("{}/{}.narinfo", cache.url, hash_of(dep)))
            .await
            .status(),
        StatusCode::OK
    );
    // New fills are refused clearly, not broken off.
    let refused = get(&big_nar).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(
        std::fs::read_dir(fs.path().join("data/tmp"))
            .unwrap()
            .count(),
        0
    );

    // Space is back: the index heals by itself and new fills work, without a restart.
    std::fs::remove_file(&filler).unwrap();
    wait_for("/healthz to recover", Duration::from_secs(15), async || {
        get(&format!("{}/healthz", cache.url)).await.status() == StatusCode::OK
    })
    .await;
    for path in [refused_at.hash(), hash_of(mid)] {
        let r = get(&format!("{}/{path}.narinfo", cache.url)).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    let r = get(&big_nar).await;
    let status = r.status();
    let body = r.bytes().await.unwrap();
    assert_eq!(
        (status, nix_sha256(&body)),
        (StatusCode::OK, field(&big, "FileHash").unwrap().to_string()),
        "{}",
        String::from_utf8_lossy(&body[..body.len().min(300)])
    );
    wait_for(
        "the big NAR to be stored",
        Duration::from_secs(10),
        async || cache.status().await["store"]["nars"] == 2,
    )
    .await;
    cache.stop().await;
    drop(fs);
}

#[tokio::test(flavor = "multi_thread")]
async fn min_free_is_kept_by_evicting_whoever_fills_the_disk() {
    let fx = fixture();
    let fs = SmallFs::mount("48m");
    let up = TestUpstream::start(&fx.caches["none"]).await;
    let mut config = test_config(&fs.path().join("data"), &[&up.url]);
    config.min_free = 16 << 20;
    let cache = Nixcache::start(config).await;
    let big = get(&format!("{}/{}.narinfo", cache.url, hash_of(&fx.big)))
        .await
        .text()
        .await
        .unwrap();
    let big_nar = format!("{}/{}", cache.url, field(&big, "URL").unwrap());
    get(&big_nar).await.bytes().await.unwrap();
    wait_for(
        "the big NAR to be stored",
        Duration::from_secs(10),
        async || cache.status().await["store"]["nars"] == 1,
    )
    .await;
    // Someone else leaves less than min_free: the next fill makes room by evicting the big NAR.
    let free = nixcache::store::free_bytes(fs.path()).unwrap();
    let other = fs.path().join("other");
    std::fs::write(&other, vec![1u8; (free - (14 << 20)) as usize]).unwrap();
    let text = get(&format!("{}/{}.narinfo", cache.url, hash_of(&fx.top)))
        .await
        .text()
        .await
        .unwrap();
    let r = get(&format!("{}/{}", cache.url, field(&text, "URL").unwrap())).await;
    assert_eq!(r.status(), StatusCode::OK);
    r.bytes().await.unwrap();
    let status = cache.status().await;
    assert_eq!(status["store"]["nars"], 1, "{status}");
    assert!(
        status["store"]["fs_free_bytes"].as_u64().unwrap() >= 16 << 20,
        "{status}"
    );
    cache.stop().await;
    drop(fs);
}
