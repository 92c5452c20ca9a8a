//! The serving path against an upstream serving real binary caches made by the real Nix client.
//!
//! The upstream is a static file server written in the test (`common::TestUpstream`) so that it can count
//! requests and produce faults no real server would (corrupt, truncated, stalled bodies).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;

fn narinfo_path(cache: &std::path::Path, store_path: &str) -> std::path::PathBuf {
    cache.join(format!("{}.narinfo", hash_of(store_path)))
}

async fn get(url: &str) -> reqwest::Response {
    reqwest::get(url).await.expect("request")
}

/// Fetches the narinfo of `path` through nixcache and returns (text, NAR URL relative to the cache).
async fn narinfo(cache: &Nixcache, path: &str) -> (String, String) {
    let r = get(&format!("{}/{}.narinfo", cache.url, hash_of(path))).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "text/x-nix-narinfo");
    let text = r.text().await.unwrap();
    let url = field(&text, "URL").expect("URL").to_string();
    (text, url)
}

#[tokio::test(flavor = "multi_thread")]
async fn narinfo_and_nar_fill_once_then_from_disk() {
    let fx = fixture();
    let up = TestUpstream::start(&fx.caches["xz"]).await;
    let data = tempfile::tempdir().unwrap();
    let cache = Nixcache::start(test_config(data.path(), &[&up.url])).await;

    let (text, url) = narinfo(&cache, &fx.top).await;
    let original = std::fs::read_to_string(narinfo_path(&fx.caches["xz"], &fx.top)).unwrap();
    // Everything signed is kept; the URL is the canonical content-addressed one.
    for key in [
        "StorePath",
        "NarHash",
        "NarSize",
        "References",
        "Sig",
        "FileHash",
        "FileSize",
    ] {
        assert_eq!(field(&text, key), field(&original, key), "{key}");
    }
    let file_hash = field(&text, "FileHash").unwrap();
    assert_eq!(url, format!("nar/{}.nar.xz", &file_hash["sha256:".len()..]));

    // Second lookup: from the index.
    narinfo(&cache, &fx.top).await;
    assert_eq!(up.narinfos(), 1);

    let nar = get(&format!("{}/{url}", cache.url)).await;
    assert_eq!(nar.status(), StatusCode::OK);
    assert!(nar.headers().get("content-encoding").is_none());
    let bytes = nar.bytes().await.unwrap();
    assert_eq!(nix_sha256(&bytes), file_hash);
    let upstream_file =
        std::fs::read(fx.caches["xz"].join(field(&original, "URL").unwrap())).unwrap();
    assert_eq!(bytes.as_ref(), upstream_file.as_slice());
    assert_eq!(up.nars(), 1);

    // From disk now: same bytes, no upstream request, Content-Length and ranges.
    let again = get(&format!("{}/{url}", cache.url)).await;
    assert_eq!(again.headers()["accept-ranges"], "bytes");
    assert_eq!(again.content_length(), Some(bytes.len() as u64));
    assert_eq!(again.bytes().await.unwrap(), bytes);
    assert_eq!(up.nars(), 1);

    let client = reqwest::Client::new();
    let part = client
        .get(format!("{}/{url}", cache.url))
        .header("Range", "bytes=10-")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 10-{}/{}", bytes.len() - 1, bytes.len()).as_str()
    );
    assert_eq!(part.bytes().await.unwrap(), bytes.slice(10..));
    let past = client
        .get(format!("{}/{url}", cache.url))
        .header("Range", format!("bytes={}-", bytes.len()))
        .send()
        .await
        .unwrap();
    assert_eq!(past.status(), StatusCode::RANGE_NOT_SATISFIABLE);

    let status = cache.status().await;
    assert_eq!(status["store"]["nars"], 1);
    assert_eq!(status["store"]["bytes"], bytes.len() as u64);
    assert_eq!(status["index"]["narinfos"], 1);
    cache.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn head_answers_like_get_without_body() {
    let fx = fixture();
    let up = TestUpstream::start(&fx.caches["zstd"]).await;
    let data = tempfile::tempdir().unwrap();
    let cache = Nixcache::start(test_config(data.path(), &[&up.url])).await;
    let client = reqwest::Client::new();
    let (text, url) = narinfo(&cache, &fx.big).await;
    for path in [
        "/nix-cache-info".to_string(),
        format!("/{}.narinfo", hash_of(&fx.big)),
        format!("/{}.narinfo", "0".repeat(32)),
        format!("/{url}"),
        "/_status".to_string(),
    ] {
        let head = client
            .head(format!("{}{path}", cache.url))
            .send()
            .await
            .unwrap();
        let get = client
            .get(format!("{}{path}", cache.url))
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), get.status(), "{path}");
        assert_eq!(
            head.headers().get("content-type"),
            get.headers().get("content-type"),
            "{path}"
        );
        if path != "/_status" {
            assert_eq!(
                head.headers().get("content-length"),
                get.headers().get("content-length"),
                "{path}"
            );
        }
        assert!(head.bytes().await.unwrap().is_empty());
    }
    // HEAD on a NAR that was not stored yet must not start a download.
    assert_eq!(up.nars(), 1, "only the GET above fetched the NAR");
    assert_eq!(field(&text, "Compression"), Some("zstd"));
    let info = get(&format!("{}/nix-cache-info", cache.url)).await;
    assert_eq!(info.headers()["content-type"], "text/x-nix-cache-info");
    assert_eq!(
        info.text().await.unwrap(),
        "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n"
    );
    cache.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_are_4xx_and_touch_nothing() {
    let fx = fixture();
    let up = TestUpstream::start(&fx.caches["xz"]).await;
    let data = tempfile::tempdir().unwrap();
    let cache = Nixcache::start(test_config(data.path(), &[&up.url])).await;
    let good = "1".repeat(52);
    for (path, want) in [
        ("/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee.narinfo", 400),
        ("/short.narinfo", 400),
        ("/ABCDEFGHIJKLMNOPQRSTUVWXYZ012345.narinfo", 400),
        ("/nar/..%2f..%2fetc%2fpasswd", 400),
        ("/nar/%2e%2e", 200), // the client already resolves it to "/": the status page
        (
            &format!("/nar/{good}.nar.xz%2f..%2f..%2findex.redb") as &str,
            400,
        ),
        (&format!("/nar/{good}.nar.exe"), 400),
        (&format!("/nar/{good}.nar.xz"), 404),
        ("/nar/../index.redb", 404),
        ("/index.redb", 404),
    ] {
        let r = get(&format!("{}{path}", cache.url)).await;
        assert_eq!(r.status().as_u16(), want, "{path}");
        let body = r.text().await.unwrap();
        assert!(
            !body.contains(data.path().to_str().unwrap()),
            "{path}: {body}"
        );
    }
    assert_eq!(
        up.narinfos() + up.nars(),
        0,
        "no upstream request for malformed input"
    );
    cache.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn absent_everywhere_is_404_and_remembered() {
    let fx = fixture();
    let up = TestUpstream::start(&fx.caches["xz"]).await;
    let data = tempfile::tempdir().unwrap();
    let cache = Nixcache::start(test_config(data.path(), &[&up.url])).await;
    let missing = format!("{}/{}.narinfo", cache.url, "2".repeat(32));
    assert_eq!(get(&missing).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(get(&missing).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        up.narinfos(),
        1,
        "the second 404 comes from the negative entry"
    );
    cache.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_failure_is_502_or_504_never_404() {
    let fx = fixture();
    let up = TestUpstream::start(&fx.caches["xz"]).await;
    let data = tempfile::tempdir().unwrap();
    let cache = Nixcache::start(test_config(data.path(), &[&up.url])).await;
    let url = format!("{}/{}.narinfo", cache.url, hash_of(&fx.top));

    up.set_fault(Fault::ServerError);
    assert_eq!(get(&url).await.status(), StatusCode::BAD_GATEWAY);
    up.set_fault(Fault::Stall);
    assert_eq!(get(&url).await.status(), StatusCode::GATEWAY_TIMEOUT);
    // Failures are not remembered as absence: once the upstream is back, the path is served.
    up.set_fault(Fault::None);
    assert_eq!(get(&url).await.status(), StatusCode::OK);
    assert_eq!(up.narinfos(), 3);

    // A NAR whose download fails before its first byte is a 502, not a 200 that breaks off.
    let (_, nar) = narinfo(&cache, &fx.top).await;
    up.set_fault(Fault::ServerError);
    assert_eq!(
        get(&format!("{}/{nar}", cache.url)).await.status(),
        StatusCode::BAD_GATEWAY
    );
    up.set_fault(Fault::None);
    assert_eq!(
        get(&format!("{}/{nar}", cache.url)).await.status(),
        StatusCode::OK
    );
    cache.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_upstream_is_backed_off() {
    let fx = fixture();
    let up = TestUpstream::start(&fx.caches["xz"]).await;
    let data = tempfile::tempdir().unwrap();
    let cache = Nixcache::start(test_config(data.path(), &[&up.url])).await;
    up.set_fault(Fault::Stall);
    for i in 0..3 {
        let url = format!("{}/{}.narinfo", cache.url, i.to_string().repeat(32));
        assert_eq!(get(&url).await.status(), StatusCode::GATEWAY_TIMEOUT);
    }
    // Backed off: answered at once, without asking the upstream.
    let started = Instant::now();
    let url = format!("{}/{}.narinfo", cache.url, "3".repeat(32));
    assert_eq!(get(&url).await.status(), StatusCode::BAD_GATEWAY);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(up.narinfos(), 3);
    let status = cache.status().await;
    assert_eq!(status["upstreams"][0]["healthy"], false);
    assert_eq!(status["upstreams"][0]["consecutive_failures"], 3);
    cache.stop().await;
}

/// A missing NAR (404) says "this file is missing", not "this source is down": it used to count towards
/// the back-off, so three of them made every path of the source answer 502 for a while.
#[tokio::test(flavor = "multi_thread")]
async fn missing_nar_files_do_not_back_off_their_source() {
    let fx = fixture();
    let work = tempfile::tempdir().unwrap();
    let folder = fx.copy_cache("xz", work.path());
    std::fs::remove_dir_all(folder.join("nar")).unwrap();
    let up = TestUpstream::start(&folder).await;
    let data = work.path().join("data");
    let cache = Nixcache::start(test_config(&data, &[&up.url])).await;
    let mut nar_urls = Vec::new();
    for path in &fx.closure {
        nar_urls.push(narinfo(&cache, path).await.1);
    }
    for url in nar_urls.iter().cycle().take(4) {
        let status = get(&format!("{}/{url}", cache.url)).await.status();
        assert_eq!(
            status,
            StatusCode::BAD_GATEWAY,
            "the file is missing upstream"
        );
    }
    let status = cache.status().await;
    assert_eq!(status["upstreams"][0]["healthy"], true, "{status}");
    assert_eq!(status["upstreams"][0]["consecutive_failures"], 0);
    // Still asked: a narinfo it has is fetched, not refused as backed off.
    narinfo(&cache, &fx.big).await;
    cache.stop().await;
}

/// `max_upstream_lookups` slots, all taken for the whole time limit: the request is answered 503
/// (retry), no source is asked, and the source's health is not touched by it.
#[tokio::test(flavor = "multi_thread")]
async fn lookups_past_max_upstream_lookups_wait_then_get_503() {
    let fx = fixture();
    let up = TestUpstream::start(&fx.caches["xz"]).await;
    up.set_fault(Fault::Stall);
    let data = tempfile::tempdir().unwrap();
    let mut config = test_config(data.path(), &[&up.url]);
    config.limits.max_upstream_lookups = 1;
    let cache = Nixcache::start(config).await;
    // One slot, held up to upstream_timeout (2 s) by each request: the first holds it until 2.0 s, the
    // second (waiting from 0.1 s) gets it then and holds it until 4.0 s, the third (waiting from 0.2 s)
    // gives up at 2.2 s.
    let mut clients = Vec::new();
    for i in 0..3 {
        let url = format!("{}/{}.narinfo", cache.url, i.to_string().repeat(32));
        clients.push(tokio::spawn(async move { get(&url).await }));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut statuses = Vec::new();
    for c in clients {
        let r = c.await.unwrap();
        statuses.push((r.status(), r.headers().contains_key("retry-after")));
    }
    assert_eq!(
        statuses,
        [
            (StatusCode::GATEWAY_TIMEOUT, true),
            (StatusCode::GATEWAY_TIMEOUT, true),
            (StatusCode::SERVICE_UNAVAILABLE, true),
        ]
    );
    assert_eq!(up.narinfos(), 2, "the third was never sent");
    let status = cache.status().await;
    assert_eq!(status["upstreams"][0]["consecutive_failures"], 2);
    cache.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_nar_is_never_stored_and_the_client_sees_a_failure() {
    let fx = fixture();
    for fault in [Fault::CorruptNar, Fault::TruncateNar] {
        let up = TestUpstream::start(&fx.caches["xz"]).await;
        let data = tempfile::tempdir().unwrap();
        let cache = Nixcache::start(test_config(data.path(), &[&up.url])).await;
        let (text, url) = narinfo(&cache, &fx.big).await;
        up.set_fault(fault);
        let response = get(&format!("{}/{url}", cache.url)).await;
        // Headers may already be out; the body must not arrive complete.
        assert!(
            response.bytes().await.is_err(),
            "{fault:?}: the transfer must fail"
        );
        let status = cache.status().await;
        assert_eq!(status["store"]["nars"], 0, "{fault:?}");
        let leftovers = std::fs::read_dir(data.path().join("tmp")).unwrap().count();
        assert_eq!(leftovers, 0, "{fault:?}: temp file removed");

        up.set_fault(Fault::None);
        let bytes = get(&format!("{}/{url}", cache.url))
            .await
            .bytes()
            .await
            .unwrap();
        assert_eq!(nix_sha256(&bytes), field(&text, "FileHash").unwrap());
        assert_eq!(up.nars(), 2, "{fault:?}: fetched again after the failure");
        cache.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_clients_share_one_download_and_stream_early() {
    let fx = fixture();
    let up = TestUpstream::start(&fx.caches["none"]).await;
    let data = tempfile::tempdir().unwrap();
    let cache = Nixcache::start(test_config(data.path(), &[&up.url])).await;
    let (text, url) = narinfo(&cache, &fx.big).await;
    up.set_fault(Fault::SlowNar);
    let url = Arc::new(format!("{}/{url}", cache.url));
    let started = Instant::now();
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut response = reqwest::get(url.as_str()).await.unwrap();
                let first = response.chunk().await.unwrap().unwrap();
                let first_at = Instant::now();
                let mut body = first.to_vec();
                while let Some(c) = response.chunk().await.unwrap() {
                    body.extend_from_slice(&c);
                }
                (first_at, Instant::now(), body)
            })
        })
        .collect();
    let mut results = Vec::new();
    for c in clients {
        results.push(c.await.unwrap());
    }
    assert_eq!(up.nars(), 1, "8 clients, one upstream download");
    let want = field(&text, "FileHash").unwrap();
    for (first, done, body) in &results {
        assert_eq!(nix_sha256(body), want);
        assert_eq!(body, &results[0].2);
        // 64 chunks at 20 ms: the first byte comes long before the end.
        assert!(
            *first < *done - Duration::from_millis(300),
            "streamed, not buffered"
        );
    }
    assert!(started.elapsed() > Duration::from_millis(600));
    cache.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_leaves_does_not_break_the_fill() {
    let fx = fixture();
    let up = TestUpstream::start(&fx.caches["none"]).await;
    let data = tempfile::tempdir().unwrap();
    let cache = Nixcache::start(test_config(data.path(), &[&up.url])).await;
    let (_, url) = narinfo(&cache, &fx.big).await;
    up.set_fault(Fault::SlowNar);
    let url = format!("{}/{url}", cache.url);
    let mut quitter = get(&url).await;
    quitter.chunk().await.unwrap();
    drop(quitter);
    let bytes = get(&url).await.bytes().await.unwrap();
    let want = std::fs::read_to_string(narinfo_path(&fx.caches["none"], &fx.big)).unwrap();
    assert_eq!(nix_sha256(&bytes), field(&want, "NarHash").unwrap());
    assert_eq!(up.nars(), 1);
    // Stored.
    for _ in 0..50 {
        if cache.status().await["store"]["nars"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(cache.status().await["store"]["nars"], 1);
    cache.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_with_upstream_gone_serves_the_same_bytes() {
    let fx = fixture();
    let up = TestUpstream::start(&fx.caches["xz"]).await;
    let data = tempfile::tempdir().unwrap();
    let cache = Nixcache::start(test_config(data.path(), &[&up.url])).await;
    let mut before = Vec::new();
    for path in fx.closure.iter().chain([&fx.big]) {
        let (text, url) = narinfo(&cache, path).await;
        let nar = get(&format!("{}/{url}", cache.url))
            .await
            .bytes()
            .await
            .unwrap();
        before.push((path.clone(), text, nar));
    }
    cache.stop().await;
    up.stop();

    let cache = Nixcache::start(test_config(data.path(), &[&up.url])).await;
    for (path, text, nar) in &before {
        let (again, url) = narinfo(&cache, path).await;
        assert_eq!(&again, text);
        let bytes = get(&format!("{}/{url}", cache.url))
            .await
            .bytes()
            .await
            .unwrap();
        assert_eq!(&bytes, nar);
    }
    cache.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn least_recently_used_nars_are_evicted_over_the_cap() {
    let fx = fixture();
    let up = TestUpstream::start(&fx.caches["none"]).await;
    let data = tempfile::tempdir().unwrap();
    let big_info = std::fs::read_to_string(narinfo_path(&fx.caches["none"], &fx.big)).unwrap();
    let big_size: u64 = field(&big_info, "NarSize").unwrap().parse().unwrap();
    // The index file counts against the cap too: measure what it grows to for this traffic first.
    let index_bytes = {
        let rehearsal = tempfile::tempdir().unwrap();
        let cache = Nixcache::start(test_config(rehearsal.path(), &[&up.url])).await;
        for path in std::iter::once(&fx.big).chain(&fx.closure) {
            let (_, url) = narinfo(&cache, path).await;
            get(&format!("{}/{url}", cache.url))
                .await
                .bytes()
                .await
                .unwrap();
        }
        let status = cache.status().await;
        cache.stop().await;
        status["store"]["index_bytes"].as_u64().unwrap()
    };
    let mut config = test_config(data.path(), &[&up.url]);
    // The big NAR fits, not with the small ones beside it.
    config.max_size = big_size + index_bytes + 100;
    let cache = Nixcache::start(config).await;
    let (_, big) = narinfo(&cache, &fx.big).await;
    get(&format!("{}/{big}", cache.url))
        .await
        .bytes()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await; // access times have one-second resolution
    let mut small = Vec::new();
    for path in &fx.closure {
        let (_, url) = narinfo(&cache, path).await;
        get(&format!("{}/{url}", cache.url))
            .await
            .bytes()
            .await
            .unwrap();
        small.push(url);
    }
    let mut status = cache.status().await;
    for _ in 0..50 {
        if status["store"]["nars"] == fx.closure.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        status = cache.status().await;
    }
    assert_eq!(status["store"]["nars"], fx.closure.len(), "{status}");
    assert!(status["store"]["bytes"].as_u64().unwrap() < big_size);
    // The small ones, used last, stay; the big one, least recently used, went.
    let before = up.nars();
    for url in &small {
        get(&format!("{}/{url}", cache.url))
            .await
            .bytes()
            .await
            .unwrap();
    }
    assert_eq!(up.nars(), before, "recent NARs are still on disk");
    get(&format!("{}/{big}", cache.url))
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(up.nars(), before + 1, "the evicted NAR is fetched again");
    cache.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn any_upstream_nar_url_shape_becomes_the_canonical_url() {
    let fx = fixture();
    for shape in [
        Fault::AbsoluteNarUrl,
        Fault::OtherFolderNarUrl,
        Fault::QueryNarUrl,
    ] {
        let up = TestUpstream::start(&fx.caches["xz"]).await;
        up.set_fault(shape);
        let data = tempfile::tempdir().unwrap();
        let cache = Nixcache::start(test_config(data.path(), &[&up.url])).await;
        let (text, url) = narinfo(&cache, &fx.top).await;
        let file_hash = field(&text, "FileHash").unwrap();
        assert_eq!(
            url,
            format!("nar/{}.nar.xz", &file_hash["sha256:".len()..]),
            "{shape:?}"
        );
        let bytes = get(&format!("{}/{url}", cache.url))
            .await
            .bytes()
            .await
            .unwrap();
        assert_eq!(nix_sha256(&bytes), file_hash, "{shape:?}");
        assert_eq!(up.nars(), 1, "{shape:?}");
        cache.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn best_priority_hit_wins_and_a_failed_upstream_does_not_hide_another() {
    let fx = fixture();
    let data = tempfile::tempdir().unwrap();
    // The second upstream serves a copy of the zstd cache that lacks `mid`.
    let copy = fx.copy_cache("zstd", data.path());
    let mid = fx.closure.iter().find(|p| p.ends_with("-mid")).unwrap();
    std::fs::remove_file(copy.join(format!("{}.narinfo", hash_of(mid)))).unwrap();
    let first = TestUpstream::start(&fx.caches["xz"]).await;
    let second = TestUpstream::start(&copy).await;
    let cache = Nixcache::start(test_config(data.path(), &[&first.url, &second.url])).await;

    // Both have it: the first listed wins.
    let (text, _) = narinfo(&cache, &fx.top).await;
    assert_eq!(field(&text, "Compression"), Some("xz"));

    // The first is failing: the second's copy is served, not a 502.
    first.set_fault(Fault::ServerError);
    let (text, url) = narinfo(&cache, &fx.big).await;
    assert_eq!(field(&text, "Compression"), Some("zstd"));
    let bytes = get(&format!("{}/{url}", cache.url))
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(nix_sha256(&bytes), field(&text, "FileHash").unwrap());
    assert_eq!(second.nars(), 1);
    assert_eq!(first.nars(), 0);

    // The first has it and the second does not: the first's answer.
    first.set_fault(Fault::None);
    let (text, _) = narinfo(&cache, mid).await;
    assert_eq!(field(&text, "Compression"), Some("xz"));
    cache.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_for_one_missing_narinfo_ask_upstream_once() {
    let fx = fixture();
    let up = TestUpstream::start(&fx.caches["xz"]).await;
    up.set_fault(Fault::SlowNarinfo);
    let data = tempfile::tempdir().unwrap();
    let cache = Nixcache::start(test_config(data.path(), &[&up.url])).await;
    for (path, want) in [
        (fx.top.clone(), 200),
        ("/nix/store/".to_string() + &"3".repeat(32) + "-x", 404),
    ] {
        let url = Arc::new(format!("{}/{}.narinfo", cache.url, hash_of(&path)));
        let before = up.narinfos();
        let clients: Vec<_> = (0..8)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move {
                    let r = reqwest::get(url.as_str()).await.unwrap();
                    (r.status().as_u16(), r.text().await.unwrap())
                })
            })
            .collect();
        let mut answers = Vec::new();
        for c in clients {
            answers.push(c.await.unwrap());
        }
        assert!(
            answers.iter().all(|a| *a == answers[0] && a.0 == want),
            "{answers:?}"
        );
        assert_eq!(up.narinfos() - before, 1, "8 clients, one upstream lookup");
    }
    assert_eq!(cache.app.lookups.in_flight(), 0, "nothing left behind");
    cache.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn orphan_nar_files_left_by_a_crash_are_swept_after_start() {
    let fx = fixture();
    let up = TestUpstream::start(&fx.caches["xz"]).await;
    let data = tempfile::tempdir().unwrap();
    let cache = Nixcache::start(test_config(data.path(), &[&up.url])).await;
    let (_, url) = narinfo(&cache, &fx.top).await;
    let stored = get(&format!("{}/{url}", cache.url))
        .await
        .bytes()
        .await
        .unwrap();
    cache.stop().await;
    // What a crash between a file's rename and its index row leaves: a file the index does not know.
    let orphan_name = format!("{}.nar.xz", "0".repeat(52));
    let orphan = data.path().join("nar").join("00").join(&orphan_name);
    std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    std::fs::write(&orphan, b"left over").unwrap();
    let stray = data.path().join("nar").join("00").join("notes.txt");
    std::fs::write(&stray, b"not a NAR name: left alone").unwrap();

    let cache = Nixcache::start(test_config(data.path(), &[&up.url])).await;
    for _ in 0..100 {
        if !orphan.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!orphan.exists(), "the orphan is removed");
    assert!(
        stray.exists(),
        "files that are not NAR names are not touched"
    );
    let again = get(&format!("{}/{url}", cache.url))
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(again, stored, "stored NARs stay");
    assert_eq!(up.nars(), 1);
    cache.stop().await;
}

/// One response read off a raw connection: status code, headers (lower-case names), body.
async fn read_response(
    conn: &mut tokio::io::BufReader<tokio::net::TcpStream>,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let mut line = String::new();
    conn.read_line(&mut line).await.unwrap();
    let status: u16 = line
        .split(' ')
        .nth(1)
        .expect("status line")
        .parse()
        .unwrap();
    let mut headers = Vec::new();
    loop {
        line.clear();
        conn.read_line(&mut line).await.unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').expect("header");
        headers.push((k.to_ascii_lowercase(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0; len];
    conn.read_exact(&mut body).await.unwrap();
    (status, headers, body)
}

/// Stored NARs larger than a few hundred KiB go out with `sendfile` (`server/sendfile.rs`): the bytes
/// must be the file's, whole, in ranges that cross its 2 MiB chunks, and in order when requests are
/// pipelined on one connection (each response's chunks queue behind the last's). A stored file whose
/// size is not the recorded one is fetched again, never served.
#[tokio::test(flavor = "multi_thread")]
async fn stored_large_nars_are_sent_whole_in_ranges_and_pipelined() {
    use tokio::io::AsyncWriteExt;
    let up = TestUpstream::start(tempfile::tempdir().unwrap().path()).await;
    // 5 MiB and a bit (three chunks, the last one short), and just over the size read inline.
    let big = Synthetic::new(30_000, (5 << 20) + 123);
    let small = Synthetic::new(30_001, (256 << 10) + 1);
    big.serve_from(&up);
    small.serve_from(&up);
    let data = tempfile::tempdir().unwrap();
    let cache = Nixcache::start(test_config(data.path(), &[&up.url])).await;
    for p in [&big, &small] {
        let r = get(&format!("{}/{}.narinfo", cache.url, p.hash())).await;
        assert_eq!(r.status(), StatusCode::OK);
        let filled = get(&format!("{}/{}", cache.url, p.nar_path)).await;
        assert_eq!(filled.bytes().await.unwrap(), p.nar, "the fill");
    }
    assert_eq!(up.nars(), 2);
    let served_before = cache.metrics().await;

    // From disk: whole, and two ranges, one across the first chunk boundary.
    let client = reqwest::Client::new();
    let url = format!("{}/{}", cache.url, big.nar_path);
    let whole = client.get(&url).send().await.unwrap();
    assert_eq!(whole.content_length(), Some(big.nar.len() as u64));
    assert_eq!(
        nix_sha256(&whole.bytes().await.unwrap()),
        nix_sha256(&big.nar)
    );
    let (from, to) = ((2 << 20) - 5, (4 << 20) + 17);
    let part = client
        .get(&url)
        .header("Range", format!("bytes={from}-{to}"))
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.bytes().await.unwrap(), big.nar[from..=to]);
    let tail = client
        .get(&url)
        .header("Range", "bytes=3000000-")
        .send()
        .await
        .unwrap();
    assert_eq!(tail.bytes().await.unwrap(), big.nar[3_000_000..]);

    // Pipelined on one connection: two large NARs, a narinfo and a range between them.
    let mut conn = tokio::io::BufReader::new(
        tokio::net::TcpStream::connect(cache.url.trim_start_matches("http://"))
            .await
            .unwrap(),
    );
    let requests = [
        format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", big.nar_path),
        format!("GET /{}.narinfo HTTP/1.1\r\nHost: x\r\n\r\n", small.hash()),
        format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", small.nar_path),
        format!(
            "GET /{} HTTP/1.1\r\nHost: x\r\nRange: bytes=100-\r\n\r\n",
            big.nar_path
        ),
    ];
    conn.get_mut()
        .write_all(requests.concat().as_bytes())
        .await
        .unwrap();
    let (status, _, body) = read_response(&mut conn).await;
    assert_eq!((status, body == big.nar), (200, true));
    let (status, _, body) = read_response(&mut conn).await;
    assert_eq!(status, 200);
    assert!(String::from_utf8(body).unwrap().contains(&small.store_path));
    let (status, _, body) = read_response(&mut conn).await;
    assert_eq!((status, body == small.nar), (200, true));
    let (status, _, body) = read_response(&mut conn).await;
    assert_eq!((status, body == big.nar[100..]), (206, true));
    drop(conn);

    // Every byte handed out counted as served from disk, as before.
    let sent = 2 * big.nar.len()
        + (to - from + 1)
        + (big.nar.len() - 3_000_000)
        + small.nar.len()
        + (big.nar.len() - 100);
    let disk = |m: &str| -> u64 {
        m.lines()
            .find(|l| l.starts_with(r#"nixcache_served_bytes_total{from="disk"}"#))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(
        disk(&cache.metrics().await) - disk(&served_before),
        sent as u64
    );
    assert_eq!(up.nars(), 2, "all of it from disk");

    // Damaged on disk (cut short): never served as it is; fetched again, whole.
    let name = big.nar_path.trim_start_matches("nar/");
    let stored = data.path().join("nar").join(&name[..2]).join(name);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&stored)
        .unwrap();
    file.set_len(4 << 20).unwrap();
    drop(file);
    let again = client.get(&url).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.bytes().await.unwrap(), big.nar);
    assert_eq!(up.nars(), 3, "fetched again");
    // The new file replaces the damaged one once it is made durable, just after its client got it.
    let started = Instant::now();
    while std::fs::metadata(&stored).map_or(0, |m| m.len()) != big.nar.len() as u64 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the damaged file is replaced"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fresh = client.get(&url).send().await.unwrap();
    assert_eq!(fresh.bytes().await.unwrap(), big.nar, "from disk again");
    assert_eq!(up.nars(), 3);
    cache.stop().await;
}
