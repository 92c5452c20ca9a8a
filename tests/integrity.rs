//! What the appliance keeps and serves when a source lies or the disk rots: padded and oversized files,
//! a narinfo claiming another path's file, a flipped byte in a stored NAR, and trust taken away.
//!
//! The hostile answers are written by the test itself and served by its own upstream
//! (`common::TestUpstream::set_override`): no real server produces them on demand. The narinfos stay
//! validly signed, because the fields a hostile mirror can change (URL, FileHash, FileSize) are not
//! covered by the signature.

mod common;

use std::time::Duration;

use common::*;
use nixcache::nix::hash::Sha256Hash;
use reqwest::StatusCode;

async fn get(url: &str) -> reqwest::Response {
    reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e:?}"))
}

fn original_narinfo(compression: &str, path: &str) -> String {
    let fx = fixture();
    std::fs::read_to_string(fx.caches[compression].join(format!("{}.narinfo", hash_of(path))))
        .unwrap()
}

/// `text` with FileHash, FileSize and URL replaced (the signature stays valid).
fn retarget(text: &str, file_hash: &Sha256Hash, file_size: Option<u64>, url: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        match line.split_once(": ").map(|(k, _)| k) {
            Some("FileHash") => out.push_str(&format!("FileHash: {file_hash}\n")),
            Some("FileSize") => {
                if let Some(size) = file_size {
                    out.push_str(&format!("FileSize: {size}\n"));
                }
            }
            Some("URL") => out.push_str(&format!("URL: {url}\n")),
            _ => out.push_str(&format!("{line}\n")),
        }
    }
    out
}

async fn metric(cache: &Nixcache, name: &str, label: &str) -> f64 {
    let m = get(&format!("{}/metrics", cache.url))
        .await
        .text()
        .await
        .unwrap();
    m.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn padded_concatenated_or_oversized_files_for_a_small_nar_are_never_stored() {
    let fx = fixture();
    let up = TestUpstream::start(&fx.caches["xz"]).await;
    let text = original_narinfo("xz", &fx.top);
    let file = up.file(&fx.caches["xz"], field(&text, "URL").unwrap());
    let nar_size: u64 = field(&text, "NarSize").unwrap().parse().unwrap();
    let hostile: [(&str, Vec<u8>); 3] = [
        // Valid for `xz -d`: stream padding, and a second stream.
        ("padded", [file.clone(), vec![0; 4]].concat()),
        ("twice", [file.clone(), file.clone()].concat()),
        // Without FileSize, the file may only be as large as a NAR of NarSize can compress to.
        ("huge", [file.clone(), vec![0; 32 << 20]].concat()),
    ];
    // Transcoding on too (issue 14): the narinfo names the zstd twin made beside the fill, whose
    // stream a client may read while the hostile file arrives; it must break off as well, and neither
    // file may stay.
    for ((label, bytes), transcode) in hostile
        .into_iter()
        .flat_map(|h| [(h.clone(), None), (h, Some(3))])
    {
        let data = tempfile::tempdir().unwrap();
        let mut config = test_config(data.path(), &[&up.url]);
        config.transcode_level = transcode;
        let cache = Nixcache::start(config).await;
        let label = format!("{label}, transcode {transcode:?}");
        let url = format!("nar/{}.nar.xz", label.split(',').next().unwrap());
        up.set_override(&url, bytes.clone());
        let lie = retarget(&text, &Sha256Hash::digest(&bytes), None, &url);
        up.set_override(&format!("{}.narinfo", hash_of(&fx.top)), lie.into_bytes());
        let r = get(&format!("{}/{}.narinfo", cache.url, hash_of(&fx.top))).await;
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "{label}: the narinfo itself is validly signed"
        );
        let served = r.text().await.unwrap();
        let twin = transcode.is_some();
        assert_eq!(
            field(&served, "Compression"),
            Some(if twin { "zstd" } else { "xz" }),
            "{label}"
        );
        // The download fails during the body, or — when it fails before the first chunk was written —
        // the connection closes before the response head: either way no complete body.
        let complete =
            match reqwest::get(format!("{}/{}", cache.url, field(&served, "URL").unwrap())).await {
                Ok(nar) => nar.status() == StatusCode::OK && nar.bytes().await.is_ok(),
                Err(_) => false,
            };
        assert!(!complete, "{label}: a client got a complete body");
        let status = cache.status().await;
        assert_eq!(status["store"]["nars"], 0, "{label}: stored");
        let fetched = metric(&cache, "nixcache_fetched_bytes_total", &up.url).await as u64;
        // Stopped at the bound (NarSize + 1/128 + 64 KiB), give or take one write batch.
        let bound = nar_size + nar_size / 128 + (64 << 10) + (1 << 20);
        assert!(
            fetched <= bound,
            "{label}: downloaded {fetched} bytes, bound {bound}"
        );
        assert_eq!(
            std::fs::read_dir(data.path().join("tmp")).unwrap().count(),
            0
        );
        cache.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_narinfo_claiming_a_known_file_cannot_break_the_path_already_there() {
    let fx = fixture();
    let up = TestUpstream::start(&fx.caches["xz"]).await;
    let data = tempfile::tempdir().unwrap();
    let cache = Nixcache::start(test_config(data.path(), &[&up.url])).await;
    let dep = fx.closure.iter().find(|p| p.ends_with("-dep")).unwrap();
    let top = get(&format!("{}/{}.narinfo", cache.url, hash_of(&fx.top)))
        .await
        .text()
        .await
        .unwrap();
    // The mirror now says dep's NAR is top's file (dep's own NarHash and signature stay).
    let top_file_hash = Sha256Hash::parse(field(&top, "FileHash").unwrap()).unwrap();
    let original = original_narinfo("xz", &fx.top);
    let lie = retarget(
        &original_narinfo("xz", dep),
        &top_file_hash,
        field(&top, "FileSize").map(|s| s.parse().unwrap()),
        field(&original, "URL").unwrap(),
    );
    up.set_override(&format!("{}.narinfo", hash_of(dep)), lie.into_bytes());
    let r = get(&format!("{}/{}.narinfo", cache.url, hash_of(dep))).await;
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "the swapping narinfo is refused"
    );
    assert!(
        metric(
            &cache,
            "nixcache_narinfo_rejected_total",
            "reason=\"file_hash\""
        )
        .await
            >= 1.0
    );
    // top's path is intact: its NAR is fetched and verified against top's own record.
    let nar = get(&format!("{}/{}", cache.url, field(&top, "URL").unwrap())).await;
    assert_eq!(nar.status(), StatusCode::OK);
    assert_eq!(
        nix_sha256(&nar.bytes().await.unwrap()),
        field(&top, "FileHash").unwrap()
    );
    cache.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flipped_byte_in_a_stored_nar_is_found_and_the_path_fetched_again() {
    let fx = fixture();
    let up = TestUpstream::start(&fx.caches["zstd"]).await;
    let data = tempfile::tempdir().unwrap();
    let mut config = test_config(data.path(), &[&up.url]);
    config.scrub_interval = Some(Duration::from_secs(1));
    let cache = Nixcache::start(config.clone()).await;
    let text = get(&format!("{}/{}.narinfo", cache.url, hash_of(&fx.big)))
        .await
        .text()
        .await
        .unwrap();
    let url = field(&text, "URL").unwrap().to_string();
    get(&format!("{}/{url}", cache.url))
        .await
        .bytes()
        .await
        .unwrap();
    let file = data.path().join("nar").join(&url[4..6]).join(&url[4..]);
    for _ in 0..50 {
        if file.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    flip_byte(&file);
    // The scrub (every second here) finds it and drops it.
    let mut dropped = false;
    for _ in 0..100 {
        if cache.status().await["store"]["nars"] == 0 {
            dropped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(dropped, "the damaged NAR is still listed as stored");
    assert_eq!(
        metric(&cache, "nixcache_store_damaged_total", "").await,
        1.0
    );
    let before = up.nars();
    let body = get(&format!("{}/{url}", cache.url))
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(nix_sha256(&body), field(&text, "FileHash").unwrap());
    assert_eq!(up.nars(), before + 1, "fetched again from the source");
    cache.stop().await;

    // `nixcache verify` on the stopped data folder: finds a flipped byte, repairs, then finds nothing.
    for _ in 0..50 {
        if file.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    flip_byte(&file);
    let verify = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_nixcache"))
            .args(["verify", "--data-dir"])
            .arg(data.path())
            .args(extra)
            .output()
            .unwrap()
    };
    let out = verify(&["--nar-hash"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "damage is a failure: {stdout}");
    assert!(
        stdout.contains("damaged") && stdout.contains("1 damaged"),
        "{stdout}"
    );
    assert!(!file.exists(), "the damaged file was removed");
    let out = verify(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn flip_byte(file: &std::path::Path) {
    let mut bytes = std::fs::read(file).expect("stored NAR file");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(file, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn taking_trust_away_stops_serving_what_was_recorded_under_it() {
    let fx = fixture();
    let up = TestUpstream::start(&fx.caches["xz"]).await;
    let data = tempfile::tempdir().unwrap();
    let trusted = test_config(data.path(), &[&up.url]);
    let cache = Nixcache::start(trusted.clone()).await;
    let hit = |cache: &Nixcache| {
        let url = format!("{}/{}.narinfo", cache.url, hash_of(&fx.top));
        async move { get(&url).await.status() }
    };
    assert_eq!(hit(&cache).await, StatusCode::OK);
    cache.stop().await;

    // 1. The key is no longer trusted: the recorded narinfo is not served, and the upstream's is refused.
    let (_, other_key) = keygen(data.path(), "other-1");
    let mut untrusted = trusted.clone();
    untrusted.upstreams[0].trusted_keys = vec![other_key];
    let cache = Nixcache::start(untrusted).await;
    assert_eq!(hit(&cache).await, StatusCode::NOT_FOUND);
    let dropped = metric(&cache, "nixcache_trust_dropped_total", "refused").await;
    assert!(dropped >= 1.0, "counted: {dropped}");
    cache.stop().await;

    // 2. Back to trusted, recorded again; then the upstream is removed from the configuration.
    let cache = Nixcache::start(trusted.clone()).await;
    assert_eq!(hit(&cache).await, StatusCode::OK);
    cache.stop().await;
    let mut gone = trusted.clone();
    gone.upstreams.clear();
    let cache = Nixcache::start(gone).await;
    assert_eq!(hit(&cache).await, StatusCode::NOT_FOUND);
    cache.stop().await;

    // 3. An unsigned narinfo accepted with accept_unsigned is not served once that is turned off.
    let unsigned: String = original_narinfo("xz", &fx.top)
        .lines()
        .filter(|l| !l.starts_with("Sig: "))
        .map(|l| format!("{l}\n"))
        .collect();
    up.set_override(
        &format!("{}.narinfo", hash_of(&fx.top)),
        unsigned.into_bytes(),
    );
    let data = tempfile::tempdir().unwrap();
    let mut open = test_config(data.path(), &[&up.url]);
    open.upstreams[0].accept_unsigned = true;
    let cache = Nixcache::start(open.clone()).await;
    assert_eq!(hit(&cache).await, StatusCode::OK);
    cache.stop().await;
    open.upstreams[0].accept_unsigned = false;
    let cache = Nixcache::start(open).await;
    assert_eq!(hit(&cache).await, StatusCode::NOT_FOUND);
    cache.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stored_nar_whose_file_vanished_is_fetched_again_not_a_500() {
    let fx = fixture();
    let up = TestUpstream::start(&fx.caches["xz"]).await;
    let data = tempfile::tempdir().unwrap();
    let cache = Nixcache::start(test_config(data.path(), &[&up.url])).await;
    let text = get(&format!("{}/{}.narinfo", cache.url, hash_of(&fx.top)))
        .await
        .text()
        .await
        .unwrap();
    let url = field(&text, "URL").unwrap().to_string();
    get(&format!("{}/{url}", cache.url))
        .await
        .bytes()
        .await
        .unwrap();
    let file = data.path().join("nar").join(&url[4..6]).join(&url[4..]);
    for _ in 0..100 {
        if cache.status().await["store"]["nars"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Gone between the index's answer and the open (an eviction, or a hand): fetched again.
    std::fs::remove_file(&file).unwrap();
    let before = up.nars();
    let r = get(&format!("{}/{url}", cache.url)).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        nix_sha256(&r.bytes().await.unwrap()),
        field(&text, "FileHash").unwrap()
    );
    assert_eq!(up.nars(), before + 1);
    cache.stop().await;
}
