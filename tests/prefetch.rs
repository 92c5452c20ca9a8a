//! Fetching ahead (issue 14, `src/prefetch.rs`): what a client is about to ask for is fetched before it
//! asks, each thing once, verified like any fill; and nothing is fetched ahead that no client asked for.
//!
//! The upstream is the test's own server (`common::TestUpstream`): it counts requests, and serves NARs
//! slowly when asked to (a fault no real server produces on demand), so a client can be made to join
//! a fill that was fetching ahead. The client of the last test is the real Nix client.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;

/// The value of one sample (`name{labels}`) in a Prometheus text page, 0 when absent.
fn sample(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// The nice values of this process's `nixcache-verify` threads (Linux keeps one per thread).
fn verifier_nice_values() -> Vec<i64> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| {
            let t = t.ok()?.path();
            let comm = std::fs::read_to_string(t.join("comm")).ok()?;
            if comm.trim() != "nixcache-verify" {
                return None;
            }
            let stat = std::fs::read_to_string(t.join("stat")).ok()?;
            // After "pid (comm) ", the fields from the state on; nice is the 19th field of the line.
            let rest = stat.rsplit_once(") ")?.1;
            rest.split_whitespace().nth(16)?.parse().ok()
        })
        .collect()
}

/// Waits until `done` holds, for at most five seconds.
async fn until(what: &str, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn prefetching(data: &std::path::Path, upstream: &str) -> nixcache::config::Config {
    let mut config = test_config(data, &[upstream]);
    config.prefetch = true;
    config
}

async fn narinfo(cache: &Nixcache, path: &str) -> String {
    let r = reqwest::get(format!("{}/{}.narinfo", cache.url, hash_of(path)))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{path}");
    r.text().await.unwrap()
}

/// The NAR of `narinfo`, checked against its FileHash.
async fn nar(cache: &Nixcache, narinfo: &str) -> Vec<u8> {
    let url = format!("{}/{}", cache.url, field(narinfo, "URL").unwrap());
    let r = reqwest::get(url).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body = r.bytes().await.unwrap().to_vec();
    assert_eq!(
        nix_sha256(&body),
        field(narinfo, "FileHash").unwrap(),
        "the NAR served is the one its narinfo names"
    );
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fetched_narinfo_brings_its_references_narinfos_and_an_asked_one_its_nar() {
    let fx = fixture();
    let up = TestUpstream::start(&fx.caches["xz"]).await;
    let data = tempfile::tempdir().unwrap();
    let cache = Nixcache::start(prefetching(data.path(), &up.url)).await;
    let others: Vec<&String> = fx.closure.iter().filter(|p| **p != fx.top).collect();
    assert_eq!(others.len(), 2, "the fixture's top has two paths below it");

    // The client asks for the top: its references' narinfos (and theirs) and its own NAR follow.
    let top = narinfo(&cache, &fx.top).await;
    until("every narinfo of the closure and the top's NAR", || {
        up.narinfos() == fx.closure.len() && up.nars() == 1 && cache.app.fills.in_flight() == 0
    })
    .await;

    // The references' narinfos are index hits now; a NAR is fetched ahead only once a client asked
    // for its narinfo.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(up.nars(), 1, "no NAR of a narinfo no client asked for");
    let mid = narinfo(&cache, others[0]).await;
    assert_eq!(
        up.narinfos(),
        fx.closure.len(),
        "a narinfo fetched ahead is a hit"
    );
    until("the asked narinfo's NAR", || {
        up.nars() == 2 && cache.app.fills.in_flight() == 0
    })
    .await;

    // Served from disk, each downloaded once.
    nar(&cache, &top).await;
    nar(&cache, &mid).await;
    assert_eq!((up.narinfos(), up.nars()), (fx.closure.len(), 2));
    let page = cache.metrics().await;
    assert_eq!(
        sample(
            &page,
            r#"nixcache_prefetch_total{kind="narinfo",result="fetched"}"#
        ),
        2.0
    );
    assert_eq!(
        sample(
            &page,
            r#"nixcache_prefetch_total{kind="nar",result="fetched"}"#
        ),
        2.0
    );
    // What was fetched ahead is not counted as clients' requests: two narinfos fetched (the top's
    // and none other), two hits, and no NAR miss.
    let source = format!("{}/", up.url);
    let narinfos = |result: &str| {
        sample(
            &page,
            &format!(r#"nixcache_narinfo_requests_total{{result="{result}",source="{source}"}}"#),
        )
    };
    assert_eq!((narinfos("fetched"), narinfos("hit")), (1.0, 1.0));
    let nars = |result: &str| {
        sample(
            &page,
            &format!(r#"nixcache_nar_requests_total{{result="{result}",source="{source}"}}"#),
        )
    };
    assert_eq!((nars("miss"), nars("hit")), (0.0, 2.0));
    cache.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_joins_a_nar_being_fetched_ahead_and_gets_it_verified_once() {
    let fx = fixture();
    let up = TestUpstream::start(&fx.caches["xz"]).await;
    // 64 KiB every 20 ms: the 4 MiB NAR takes over a second, so the client's request below arrives
    // while the fill that fetches it ahead (checked at the lowest priority) is running.
    up.set_fault(Fault::SlowNar);
    let data = tempfile::tempdir().unwrap();
    let cache = Nixcache::start(prefetching(data.path(), &up.url)).await;
    let big = narinfo(&cache, &fx.big).await;
    until("the NAR fetched ahead to start", || up.nars() == 1).await;
    assert!(
        cache.app.fills.in_flight() == 1,
        "the fill is still running"
    );
    // No client reads it yet: its check runs on a thread of its own at nice 19.
    until("a verifying thread at nice 19", || {
        verifier_nice_values().contains(&19)
    })
    .await;
    let body = nar(&cache, &big).await;
    assert_eq!(
        body.len().to_string(),
        field(&big, "FileSize").unwrap(),
        "whole"
    );
    assert_eq!(up.nars(), 1, "downloaded once");
    let page = cache.metrics().await;
    let source = format!("{}/", up.url);
    assert_eq!(
        sample(
            &page,
            &format!(r#"nixcache_nar_requests_total{{result="coalesced",source="{source}"}}"#)
        ),
        1.0,
        "the client joined the running fill"
    );
    cache.stop().await;
}

/// A HEAD asks only whether the path is here (`nix copy --to` sends one for every path before a push):
/// the references' narinfos follow, the NAR waits for a GET.
#[tokio::test(flavor = "multi_thread")]
async fn a_head_brings_narinfos_and_no_nar_until_a_get() {
    let fx = fixture();
    let up = TestUpstream::start(&fx.caches["xz"]).await;
    let data = tempfile::tempdir().unwrap();
    let cache = Nixcache::start(prefetching(data.path(), &up.url)).await;
    let client = reqwest::Client::new();
    let url = format!("{}/{}.narinfo", cache.url, hash_of(&fx.top));
    let head = client.head(&url).send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    until("every narinfo of the closure", || {
        up.narinfos() == fx.closure.len()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(up.nars(), 0, "no NAR for a HEAD");
    narinfo(&cache, &fx.top).await;
    until("the NAR after the GET", || up.nars() == 1).await;
    assert_eq!(up.narinfos(), fx.closure.len(), "the GET was a hit");
    cache.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_prefetch_off_only_what_clients_ask_for_is_fetched() {
    let fx = fixture();
    let up = TestUpstream::start(&fx.caches["xz"]).await;
    let data = tempfile::tempdir().unwrap();
    let mut config = prefetching(data.path(), &up.url);
    config.prefetch = false;
    let cache = Nixcache::start(config).await;
    narinfo(&cache, &fx.top).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!((up.narinfos(), up.nars()), (1, 0));
    cache.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nar_larger_than_prefetch_max_size_waits_for_a_client() {
    let fx = fixture();
    let up = TestUpstream::start(&fx.caches["xz"]).await;
    let data = tempfile::tempdir().unwrap();
    let mut config = prefetching(data.path(), &up.url);
    config.prefetch_max_size = 1 << 20;
    let cache = Nixcache::start(config).await;
    let big = narinfo(&cache, &fx.big).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(up.nars(), 0, "the 4 MiB NAR is over the 1 MiB limit");
    nar(&cache, &big).await;
    assert_eq!(up.nars(), 1);
    let page = cache.metrics().await;
    assert_eq!(
        sample(
            &page,
            r#"nixcache_prefetch_total{kind="nar",result="skipped"}"#
        ),
        1.0
    );
    cache.stop().await;
}

/// The real Nix client copies the closure through a cold appliance that fetches ahead: everything
/// arrives (Nix checks every NarHash), and the upstream was asked for each narinfo and each NAR once.
#[tokio::test(flavor = "multi_thread")]
async fn a_cold_nix_copy_gets_the_closure_with_each_path_fetched_once() {
    let fx = fixture();
    let up = TestUpstream::start(&fx.caches["xz"]).await;
    let data = tempfile::tempdir().unwrap();
    let cache = Nixcache::start(prefetching(data.path(), &up.url)).await;
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    let (ok, err) = fx.nix.try_run(
        "nix",
        &[
            "copy",
            "--store",
            store.to_str().unwrap(),
            "--from",
            &cache.url,
            "--option",
            "trusted-public-keys",
            &fx.public_key,
            &fx.top,
        ],
    );
    assert!(ok, "nix copy --from a prefetching nixcache failed: {err}");
    assert_eq!(fx.closure_in(&store), fx.closure_sorted());
    assert_eq!(
        (up.narinfos(), up.nars()),
        (fx.closure.len(), fx.closure.len()),
        "each narinfo and each NAR fetched once"
    );
    cache.stop().await;
}
