//! Fills under abuse: clients that leave at once, a source that trickles, more downloads than slots.
//!
//! The upstream is the test's own server (`common::TestUpstream`): a source that sends one byte per
//! second is a fault no real server produces on demand. The NARs are synthetic (`common::Synthetic`):
//! hundreds of distinct signed paths without building them with Nix.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;

/// Records every synthetic path's narinfo in the appliance (so its NAR URL is known), 32 lookups at a
/// time as a Nix client walking a closure would, and returns the appliance's NAR URLs.
async fn record_all(cache: &Nixcache, paths: &[Synthetic]) -> Vec<String> {
    use futures_util::StreamExt;
    let client = reqwest::Client::new();
    futures_util::stream::iter(paths)
        .map(|p| {
            let client = client.clone();
            let url = format!("{}/{}.narinfo", cache.url, p.hash());
            async move {
                let r = client.get(url).send().await.unwrap();
                assert_eq!(r.status(), StatusCode::OK, "{}", p.store_path);
                let text = r.text().await.unwrap();
                format!("{}/{}", cache.url, field(&text, "URL").unwrap())
            }
        })
        .buffered(32)
        .collect()
        .await
}

/// Waits until no fill is running and returns how long that took.
async fn settle(cache: &Nixcache, limit: Duration) -> Duration {
    let started = Instant::now();
    while cache.app.fills.in_flight() > 0 {
        assert!(
            started.elapsed() < limit,
            "{} fills still running after {limit:?}",
            cache.app.fills.in_flight()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

fn temp_files(data: &std::path::Path) -> usize {
    std::fs::read_dir(data.join("tmp")).unwrap().count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_abandoned_nar_requests_cause_a_bounded_number_of_downloads() {
    let empty = tempfile::tempdir().unwrap();
    let up = TestUpstream::start(empty.path()).await;
    let paths: Vec<Synthetic> = (0..1000).map(|i| Synthetic::new(i, 4096)).collect();
    for p in &paths {
        p.serve_from(&up);
    }
    let data = tempfile::tempdir().unwrap();
    let mut config = test_config(data.path(), &[&up.url]);
    config.fill_abandon_grace = Duration::from_secs(1);
    let (max_fills, queue) = (config.max_fills, config.fill_queue);
    let cache = Nixcache::start(config).await;
    let urls = record_all(&cache, &paths).await;
    up.set_fault(Fault::Trickle);

    // Fifty clients at a time, each leaving after 0.2 s, as `curl -m0.2` in a loop would.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let started = Instant::now();
    let mut refused = 0;
    for batch in urls.chunks(50) {
        let answers =
            futures_util::future::join_all(batch.iter().map(|u| client.get(u).send())).await;
        refused += answers
            .iter()
            .filter(|a| {
                a.as_ref()
                    .is_ok_and(|r| r.status() == StatusCode::SERVICE_UNAVAILABLE)
            })
            .count();
    }
    let attack = started.elapsed();
    let settled = settle(&cache, Duration::from_secs(10)).await;
    // Every fill either waited for a slot or downloaded, and stopped one grace after its client left:
    // at most `max_fills` downloads per grace period of the attack, never one per request.
    let bound = max_fills * (attack.as_secs() as usize + 3);
    let downloads = up.nars();
    assert!(
        downloads <= bound,
        "{downloads} upstream downloads for 1000 abandoned requests (bound {bound}, attack {attack:?})"
    );
    assert!(
        refused > 0,
        "the queue of {} was never full",
        max_fills + queue
    );
    assert_eq!(
        temp_files(data.path()),
        0,
        "temp files outlived their fills"
    );
    let m = cache.metrics().await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("nixcache_fill_failures_total")
                && l.contains("reason=\"abandoned\"")
                && !l.ends_with(" 0")),
        "abandoned fills are counted"
    );
    eprintln!(
        "1000 abandoned requests: {downloads} downloads (bound {bound}), {refused} refused with 503, settled in {settled:?}"
    );
    cache.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trickling_source_cannot_block_other_fills() {
    let fx = fixture();
    let empty = tempfile::tempdir().unwrap();
    let slow = TestUpstream::start(empty.path()).await;
    let trickled: Vec<Synthetic> = (0..2)
        .map(|i| Synthetic::new(10_000 + i, 64 * 1024))
        .collect();
    for p in &trickled {
        p.serve_from(&slow);
    }
    let good = TestUpstream::start(&fx.caches["xz"]).await;
    let data = tempfile::tempdir().unwrap();
    let mut config = test_config(data.path(), &[&slow.url, &good.url]);
    config.max_fills = 2;
    config.fill_min_rate = 1024;
    config.fill_rate_window = Duration::from_secs(2);
    config.stall_timeout = Duration::from_secs(30);
    let cache = Nixcache::start(config).await;
    let urls = record_all(&cache, &trickled).await;
    slow.set_fault(Fault::Trickle);
    // Both download slots taken by a source sending one byte per second.
    let hogs: Vec<_> = urls
        .iter()
        .map(|u| tokio::spawn(reqwest::get(u.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = reqwest::get(format!("{}/{}.narinfo", cache.url, hash_of(&fx.top)))
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    let started = Instant::now();
    let nar = reqwest::get(format!("{}/{}", cache.url, field(&text, "URL").unwrap()))
        .await
        .unwrap();
    assert_eq!(nar.status(), StatusCode::OK);
    let bytes = nar.bytes().await.unwrap();
    let waited = started.elapsed();
    assert_eq!(nix_sha256(&bytes), field(&text, "FileHash").unwrap());
    assert!(
        waited < Duration::from_secs(8),
        "a good NAR waited {waited:?} behind trickling downloads"
    );
    for hog in hogs {
        // The trickled downloads were dropped: their clients see a failure, never a full body.
        if let Ok(Ok(r)) = hog.await {
            assert!(r.status() != StatusCode::OK || r.bytes().await.is_err());
        }
    }
    let m = cache.metrics().await;
    assert!(
        m.lines()
            .any(|l| l.contains("reason=\"too_slow\"") && !l.ends_with(" 0")),
        "slow fills are counted"
    );
    eprintln!("a good NAR behind two trickling downloads: {waited:?}");
    cache.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_fill_queue_answers_503_with_retry_after() {
    let empty = tempfile::tempdir().unwrap();
    let up = TestUpstream::start(empty.path()).await;
    let paths: Vec<Synthetic> = (0..3).map(|i| Synthetic::new(20_000 + i, 4096)).collect();
    for p in &paths {
        p.serve_from(&up);
    }
    let data = tempfile::tempdir().unwrap();
    let mut config = test_config(data.path(), &[&up.url]);
    config.max_fills = 1;
    config.fill_queue = 1;
    let cache = Nixcache::start(config).await;
    let urls = record_all(&cache, &paths).await;
    up.set_fault(Fault::Trickle);
    let _first = tokio::spawn(reqwest::get(urls[0].clone()));
    let _second = tokio::spawn(reqwest::get(urls[1].clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let third = reqwest::get(&urls[2]).await.unwrap();
    assert_eq!(third.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(third.headers().contains_key("retry-after"));
    cache.stop().await;
}
