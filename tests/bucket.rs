//! The shared bucket (issue 13) against a real S3-compatible server (SeaweedFS, `weed mini`): two
//! appliances on one bucket, concurrent fills of one path, a bucket that goes away, a restart with an
//! empty index, and the real Nix client reading through an appliance and from the bucket directly.

mod common;
#[path = "bucket/seaweed.rs"]
mod seaweed;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use nixcache::bucket::Written;
use reqwest::StatusCode;
use seaweed::Seaweed;

/// A store hash no cache has.
const ABSENT_HASH: &str = "00000000000000000000000000000000";

/// One appliance on the bucket, signing with its own key.
struct Appliance {
    cache: Nixcache,
    public_key: String,
    data: PathBuf,
}

async fn appliance(
    dir: &Path,
    name: &str,
    s3: &Seaweed,
    upstreams: &[&str],
    local_cache: bool,
    trusted: &[&str],
) -> Appliance {
    appliance_in(dir, name, s3, upstreams, local_cache, trusted, "").await
}

/// [`appliance`], keeping its objects under `prefix` in the bucket.
async fn appliance_in(
    dir: &Path,
    name: &str,
    s3: &Seaweed,
    upstreams: &[&str],
    local_cache: bool,
    trusted: &[&str],
    prefix: &str,
) -> Appliance {
    let data = dir.join(name);
    std::fs::create_dir_all(&data).unwrap();
    // The same name keeps its key across a restart.
    let (sk, public_key) = match std::fs::read_to_string(dir.join(format!("{name}-1.public"))) {
        Ok(public) => (
            dir.join(format!("{name}-1.secret")),
            public.trim().to_string(),
        ),
        Err(_) => keygen(dir, &format!("{name}-1")),
    };
    let mut config = test_config(&data, upstreams);
    config.signing_key_file = Some(sk);
    let mut bucket = s3.config(local_cache);
    bucket.trusted_keys = trusted.iter().map(|k| k.to_string()).collect();
    bucket.prefix = prefix.to_string();
    config.bucket = Some(bucket);
    Appliance {
        cache: Nixcache::start(config).await,
        public_key,
        data,
    }
}

async fn get(url: &str) -> reqwest::Response {
    reqwest::get(url).await.expect("request")
}

async fn body(url: &str) -> (StatusCode, Vec<u8>) {
    let r = get(url).await;
    let status = r.status();
    (
        status,
        r.bytes().await.map(|b| b.to_vec()).unwrap_or_default(),
    )
}

/// The narinfo of `path` and the bytes of its NAR file, as the upstream cache folder has them.
fn expected_nar(cache: &Path, path: &str) -> (String, Vec<u8>) {
    let narinfo =
        std::fs::read_to_string(cache.join(format!("{}.narinfo", hash_of(path)))).unwrap();
    let url = field(&narinfo, "URL").unwrap().to_string();
    (narinfo, std::fs::read(cache.join(url)).unwrap())
}

/// Waits until the bucket (read anonymously, as Nix would) has `key`.
async fn wait_in_bucket(s3: &Seaweed, key: &str) -> Vec<u8> {
    let url = format!("{}/{key}", s3.bucket_url());
    let started = Instant::now();
    loop {
        let (status, bytes) = body(&url).await;
        if status == StatusCode::OK {
            return bytes;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{key} never appeared in the bucket (last answer {status})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Fetches the narinfo and NAR of every path of `paths` through `cache`; returns the NAR URLs.
async fn fetch_all(cache: &Nixcache, paths: &[String]) -> Vec<String> {
    let mut urls = Vec::new();
    for path in paths {
        let (status, text) = body(&format!("{}/{}.narinfo", cache.url, hash_of(path))).await;
        assert_eq!(status, StatusCode::OK, "narinfo of {path}");
        let text = String::from_utf8(text).unwrap();
        let url = field(&text, "URL").unwrap().to_string();
        let (status, _) = body(&format!("{}/{url}", cache.url)).await;
        assert_eq!(status, StatusCode::OK, "NAR of {path}");
        urls.push(url);
    }
    urls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_path_fetched_by_one_appliance_is_served_by_the_other_with_the_upstream_gone() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let s3 = Seaweed::start(&dir.path().join("s3")).await;
    let upstream = TestUpstream::start(&f.caches["xz"]).await;
    let a = appliance(dir.path(), "a", &s3, &[&upstream.url], true, &[]).await;
    let b = appliance(
        dir.path(),
        "b",
        &s3,
        &[&upstream.url],
        true,
        &[&a.public_key],
    )
    .await;

    let urls = fetch_all(&a.cache, &f.closure).await;
    // NAR first, then its narinfo: once every narinfo is in the bucket, every NAR is.
    for (path, url) in f.closure.iter().zip(&urls) {
        let narinfo = wait_in_bucket(&s3, &format!("{}.narinfo", hash_of(path))).await;
        let narinfo = String::from_utf8(narinfo).unwrap();
        assert_eq!(field(&narinfo, "URL"), Some(url.as_str()));
        assert!(narinfo.contains("Sig: a-1:"), "signed by A: {narinfo}");
        let (_, want) = expected_nar(&f.caches["xz"], path);
        let (status, got) = body(&format!("{}/{url}", s3.bucket_url())).await;
        assert_eq!(
            (status, got == want),
            (StatusCode::OK, true),
            "{url} in the bucket"
        );
    }
    let info = String::from_utf8(wait_in_bucket(&s3, "nix-cache-info").await).unwrap();
    assert!(info.contains("StoreDir: /nix/store\n"), "{info}");

    // The upstream still answers here, so the counts below show that B asked the bucket, not it.
    let asked = (upstream.narinfos(), upstream.nars());
    for (path, url) in f.closure.iter().zip(&urls) {
        let (status, text) = body(&format!("{}/{}.narinfo", b.cache.url, hash_of(path))).await;
        assert_eq!(status, StatusCode::OK, "B serves the narinfo of {path}");
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("Sig: b-1:"), "B signs what it serves: {text}");
        let (_, want) = expected_nar(&f.caches["xz"], path);
        // A range first: read from the bucket, the NAR is not on B's disk yet.
        let ranged = reqwest::Client::new()
            .get(format!("{}/{url}", b.cache.url))
            .header("Range", "bytes=10-")
            .send()
            .await
            .unwrap();
        assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(
            ranged.headers()["content-range"].to_str().unwrap(),
            format!("bytes 10-{}/{}", want.len() - 1, want.len())
        );
        assert_eq!(ranged.bytes().await.unwrap(), want[10..]);
        let (status, got) = body(&format!("{}/{url}", b.cache.url)).await;
        assert_eq!(
            (status, got == want),
            (StatusCode::OK, true),
            "B serves {url}"
        );
    }
    assert_eq!(
        (upstream.narinfos(), upstream.nars()),
        asked,
        "B asked the upstream"
    );
    upstream.stop();
    // Each file is committed just after its client got the last byte: wait for the last one.
    let mut stored = 0;
    for _ in 0..100 {
        stored = b.cache.status().await["store"]["nars"].as_u64().unwrap();
        if stored == f.closure.len() as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        stored,
        f.closure.len() as u64,
        "B keeps what it read on its disk"
    );

    // The real Nix client: through B, and from the bucket directly as a plain binary cache.
    let store = dir.path().join("store-b");
    let (ok, err) = f.realise(&store, &b.cache.url, &f.top, &b.public_key);
    assert!(ok, "nix-store -r through B: {err}");
    let store = dir.path().join("store-direct");
    let (ok, err) = f.realise(&store, &s3.bucket_url(), &f.top, &a.public_key);
    assert!(ok, "nix-store -r from the bucket: {err}");
    b.cache.stop().await;
    a.cache.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_fills_of_one_path_from_two_appliances_end_with_one_good_object() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = Seaweed::start(&dir.path().join("s3")).await;
    let cache = large_path_cache(dir.path());
    let upstream = TestUpstream::start(&cache).await;
    // Slow bodies, so both downloads overlap.
    upstream.set_fault(Fault::SlowNar);
    let a = appliance(dir.path(), "a", &s3, &[&upstream.url], true, &[]).await;
    let b = appliance(dir.path(), "b", &s3, &[&upstream.url], true, &[]).await;
    let mut checked = 0;
    for entry in std::fs::read_dir(&cache).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let Some(hash) = name.strip_suffix(".narinfo") else {
            continue;
        };
        let narinfo = std::fs::read_to_string(cache.join(&name)).unwrap();
        let want = std::fs::read(cache.join(field(&narinfo, "URL").unwrap())).unwrap();
        let url_a = format!("{}/{hash}.narinfo", a.cache.url);
        let url_b = format!("{}/{hash}.narinfo", b.cache.url);
        let (ia, ib) = tokio::join!(body(&url_a), body(&url_b));
        assert_eq!((ia.0, ib.0), (StatusCode::OK, StatusCode::OK));
        let nar = field(std::str::from_utf8(&ia.1).unwrap(), "URL")
            .unwrap()
            .to_string();
        let (nar_a, nar_b) = (
            format!("{}/{nar}", a.cache.url),
            format!("{}/{nar}", b.cache.url),
        );
        let (na, nb) = tokio::join!(body(&nar_a), body(&nar_b));
        assert!(na.1 == want && nb.1 == want, "both clients got the file");
        let narinfo = wait_in_bucket(&s3, &format!("{hash}.narinfo")).await;
        assert_eq!(
            field(std::str::from_utf8(&narinfo).unwrap(), "URL"),
            Some(nar.as_str())
        );
        let (status, object) = body(&format!("{}/{nar}", s3.bucket_url())).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            object == want,
            "the bucket holds the one good file of {nar}"
        );
        checked += 1;
    }
    assert!(checked >= 2, "a small and a multipart NAR were filled");
    // What makes the single PUT safe between appliances: the server honours `If-None-Match: *`.
    let bucket = nixcache::bucket::Bucket::new(&s3.config(true), reqwest::Client::new()).unwrap();
    let first = bucket.put_small("probe", "one".into()).await.unwrap();
    let second = bucket.put_small("probe", "two".into()).await.unwrap();
    assert_eq!(
        (first, second),
        (Written::Created, Written::AlreadyThere),
        "conditional create"
    );
    assert_eq!(body(&format!("{}/probe", s3.bucket_url())).await.1, b"one");
    // The same through the streamed, presigned PUT that NARs up to the threshold take.
    let path = dir.path().join("probe-file");
    std::fs::write(&path, vec![7u8; 3 << 20]).unwrap();
    let file = std::sync::Arc::new(std::fs::File::open(&path).unwrap());
    let put = |f| bucket.put_file("probe-file", f, 3 << 20);
    assert_eq!(put(file.clone()).await.unwrap(), Written::Created);
    assert_eq!(put(file).await.unwrap(), Written::AlreadyThere);
    let (status, object) = body(&format!("{}/probe-file", s3.bucket_url())).await;
    assert!(status == StatusCode::OK && object == vec![7u8; 3 << 20]);
    a.cache.stop().await;
    b.cache.stop().await;
}

/// A binary cache with the fixture's `big` path (one PUT) and a 12 MiB path (above the 5 MiB
/// multipart threshold of the tests), uncompressed.
fn large_path_cache(dir: &Path) -> PathBuf {
    let f = fixture();
    let expr = dir.join("large.nix");
    std::fs::write(
        &expr,
        r#"derivation { name = "large"; system = builtins.currentSystem; builder = "/bin/sh";
             args = [ "-c" "/usr/bin/head -c 12582912 /dev/urandom > $out" ]; }"#,
    )
    .unwrap();
    let store = f.store.to_str().unwrap();
    let large = f.nix.run(
        "nix-build",
        &["--store", store, expr.to_str().unwrap(), "--no-out-link"],
    );
    let cache = dir.join("cache-large");
    let to = format!(
        "file://{}?compression=none&secret-key={}",
        cache.display(),
        f.secret_key_file.display()
    );
    f.nix.run(
        "nix",
        &["copy", "--store", store, "--to", &to, large.trim(), &f.big],
    );
    cache
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_bucket_unreachable_local_hits_are_served_and_misses_are_5xx() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let mut s3 = Seaweed::start(&dir.path().join("s3")).await;
    let upstream = TestUpstream::start(&f.caches["zstd"]).await;
    let a = appliance(dir.path(), "a", &s3, &[&upstream.url], true, &[]).await;
    let b = appliance(dir.path(), "b", &s3, &[], true, &[&a.public_key]).await;
    let urls = fetch_all(&a.cache, std::slice::from_ref(&f.top)).await;
    wait_in_bucket(&s3, &format!("{}.narinfo", hash_of(&f.top))).await;
    // B learns the narinfo from the bucket, but not the NAR.
    let top_narinfo = format!("{}/{}.narinfo", b.cache.url, hash_of(&f.top));
    assert_eq!(get(&top_narinfo).await.status(), StatusCode::OK);

    s3.stop();
    // A: hits from its disk.
    let (status, _) = body(&format!("{}/{}.narinfo", a.cache.url, hash_of(&f.top))).await;
    assert_eq!(status, StatusCode::OK);
    let (_, want) = expected_nar(&f.caches["zstd"], &f.top);
    let (status, got) = body(&format!("{}/{}", a.cache.url, urls[0])).await;
    assert_eq!((status, got == want), (StatusCode::OK, true));
    // A: a path no source has, while the bucket cannot say: never a 404.
    let status = get(&format!("{}/{ABSENT_HASH}.narinfo", a.cache.url))
        .await
        .status();
    assert!(
        matches!(status.as_u16(), 502 | 504),
        "absent upstream, bucket down: {status}"
    );
    // B: the NAR is only in the bucket; a whole read and a range.
    let status = get(&format!("{}/{}", b.cache.url, urls[0])).await.status();
    assert!(
        matches!(status.as_u16(), 502 | 504),
        "NAR in an unreachable bucket: {status}"
    );
    let status = reqwest::Client::new()
        .get(format!("{}/{}", b.cache.url, urls[0]))
        .header("Range", "bytes=5-")
        .send()
        .await
        .unwrap()
        .status();
    assert!(
        matches!(status.as_u16(), 502 | 504),
        "range in an unreachable bucket: {status}"
    );
    let (status, _) = body(&top_narinfo).await;
    assert_eq!(status, StatusCode::OK, "B's recorded narinfo is a hit");
    let status = get(&format!("{}/{}.narinfo", b.cache.url, hash_of(&f.big)))
        .await
        .status();
    assert!(
        matches!(status.as_u16(), 502 | 504),
        "narinfo miss with the bucket down: {status}"
    );
    a.cache.stop().await;
    b.cache.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_appliance_with_an_empty_index_serves_from_the_bucket() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let s3 = Seaweed::start(&dir.path().join("s3")).await;
    let upstream = TestUpstream::start(&f.caches["xz"]).await;
    let a = appliance(dir.path(), "a", &s3, &[&upstream.url], true, &[]).await;
    let paths: Vec<String> = f.closure.iter().chain([&f.big]).cloned().collect();
    let urls = fetch_all(&a.cache, &paths).await;
    for path in &paths {
        wait_in_bucket(&s3, &format!("{}.narinfo", hash_of(path))).await;
    }
    let public_key = a.public_key.clone();
    let data = a.data.clone();
    a.cache.stop().await;
    upstream.stop();
    std::fs::remove_dir_all(&data).unwrap();

    // The same appliance, its data folder gone, no local disk cache: everything streams from the bucket.
    let again = appliance(
        dir.path(),
        "a",
        &s3,
        &[&upstream.url],
        false,
        &[&public_key],
    )
    .await;
    for (path, url) in paths.iter().zip(&urls) {
        let (_, want) = expected_nar(&f.caches["xz"], path);
        let (status, _) = body(&format!("{}/{}.narinfo", again.cache.url, hash_of(path))).await;
        assert_eq!(status, StatusCode::OK, "narinfo of {path} from the bucket");
        let (status, got) = body(&format!("{}/{url}", again.cache.url)).await;
        assert_eq!((status, got == want), (StatusCode::OK, true), "{url}");
        let (first, last) = (want.len() / 3, want.len() / 2);
        let ranged = reqwest::Client::new()
            .get(format!("{}/{url}", again.cache.url))
            .header("Range", format!("bytes={first}-{last}"))
            .send()
            .await
            .unwrap();
        assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(ranged.bytes().await.unwrap(), want[first..=last]);
    }
    let status = again.cache.status().await;
    assert_eq!(status["store"]["nars"], 0, "nothing kept on the local disk");
    assert_eq!(status["bucket"]["local_cache"], false);
    assert_eq!(status["bucket"]["healthy"], true);
    assert!(
        status["bucket"]["id"]
            .as_str()
            .unwrap()
            .starts_with("bucket:http://127.0.0.1:")
    );
    let store = dir.path().join("store-again");
    let (ok, err) = f.realise(&store, &again.cache.url, &f.top, &again.public_key);
    assert!(ok, "nix-store -r through the restarted appliance: {err}");
    again.cache.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_elected_appliance_prunes_only_what_no_appliance_uses() {
    use nixcache::bucket::gc::{self, Doomed, Rules};
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let s3 = Seaweed::start(&dir.path().join("s3")).await;
    let upstream = TestUpstream::start(&f.caches["xz"]).await;
    let a = appliance(dir.path(), "a", &s3, &[&upstream.url], true, &[]).await;
    let b = appliance(dir.path(), "b", &s3, &[], false, &[&a.public_key]).await;
    let paths: Vec<String> = f.closure.iter().chain([&f.big]).cloned().collect();
    let urls = fetch_all(&a.cache, &paths).await;
    for path in &paths {
        wait_in_bucket(&s3, &format!("{}.narinfo", hash_of(path))).await;
    }
    let dep = f.closure.iter().position(|p| p.ends_with("-dep")).unwrap();
    let in_bucket = |i: usize| {
        let (narinfo, nar) = (
            format!("{}/{}.narinfo", s3.bucket_url(), hash_of(&paths[i])),
            format!("{}/{}", s3.bucket_url(), urls[i]),
        );
        async move { (get(&narinfo).await.status(), get(&nar).await.status()) }
    };
    // B uses `big`; A forgets everything, as its index GC does with rows nobody asked for.
    let big = paths.len() - 1;
    let url = |i: usize| format!("{}/{}.narinfo", b.cache.url, hash_of(&paths[i]));
    assert_eq!(get(&url(big)).await.status(), StatusCode::OK);
    let hashes: Vec<String> = paths.iter().map(|p| hash_of(p).to_string()).collect();
    a.cache.app.index.remove_narinfos(&hashes).unwrap();
    let bucket_a = a.cache.app.bucket.clone().unwrap();
    let bucket_b = b.cache.app.bucket.clone().unwrap();
    assert_eq!(
        gc::write_manifest(&a.cache.app, &bucket_a).await.unwrap(),
        0
    );
    assert_eq!(
        gc::write_manifest(&b.cache.app, &bucket_b).await.unwrap(),
        1
    );
    // B starts using `dep` after it wrote its manifest: the pass cannot know yet.
    assert_eq!(get(&url(dep)).await.status(), StatusCode::OK);

    let rules = Rules {
        max_size: 1,
        min_age: 0,
        stale_after: 3600,
        confirm_after: 1,
    };
    let mut doomed = Doomed::new();
    let first = gc::pass(&bucket_a, &rules, &mut doomed).await.unwrap();
    assert_eq!(
        (first.narinfos, first.nars),
        (f.closure.len(), 0),
        "unused narinfos go at once, their NARs only at a later pass"
    );
    assert_eq!(doomed.len(), f.closure.len());
    assert_eq!(
        gc::write_manifest(&b.cache.app, &bucket_b).await.unwrap(),
        2
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let second = gc::pass(&bucket_a, &rules, &mut doomed).await.unwrap();
    assert_eq!((second.narinfos, second.nars), (0, f.closure.len() - 1));
    assert!(second.bytes_before > second.bytes_freed && second.bytes_freed > 0);

    assert_eq!(in_bucket(big).await, (StatusCode::OK, StatusCode::OK));
    assert_eq!(
        in_bucket(dep).await,
        (StatusCode::NOT_FOUND, StatusCode::OK),
        "B's NAR stays"
    );
    for i in (0..f.closure.len()).filter(|i| *i != dep) {
        assert_eq!(
            in_bucket(i).await,
            (StatusCode::NOT_FOUND, StatusCode::NOT_FOUND),
            "{} unused",
            paths[i]
        );
    }
    for i in [dep, big] {
        let (_, want) = expected_nar(&f.caches["xz"], &paths[i]);
        let (status, got) = body(&format!("{}/{}", b.cache.url, urls[i])).await;
        assert_eq!(
            (status, got == want),
            (StatusCode::OK, true),
            "B serves {}",
            paths[i]
        );
    }
    a.cache.stop().await;
    b.cache.stop().await;
}

/// A team sharing a bucket with other data keeps its cache under a folder (`prefix = "team/nix"`): every
/// object the appliance writes is there and nothing at the bucket's top, another appliance on the same
/// prefix serves it with the upstream gone, and the real Nix client reads the folder as a binary cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_prefix_keeps_every_object_in_its_folder() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let s3 = Seaweed::start(&dir.path().join("s3")).await;
    let upstream = TestUpstream::start(&f.caches["xz"]).await;
    let prefix = "team/nix";
    let a = appliance_in(dir.path(), "a", &s3, &[&upstream.url], true, &[], prefix).await;
    let b = appliance_in(
        dir.path(),
        "b",
        &s3,
        &[&upstream.url],
        false,
        &[&a.public_key],
        prefix,
    )
    .await;

    let urls = fetch_all(&a.cache, &f.closure).await;
    for (path, url) in f.closure.iter().zip(&urls) {
        let hash = hash_of(path);
        wait_in_bucket(&s3, &format!("{prefix}/{hash}.narinfo")).await;
        let (_, want) = expected_nar(&f.caches["xz"], path);
        let (status, got) = body(&format!("{}/{prefix}/{url}", s3.bucket_url())).await;
        assert_eq!((status, got == want), (StatusCode::OK, true), "{url}");
        for outside in [format!("{hash}.narinfo"), url.clone()] {
            let (status, _) = body(&format!("{}/{outside}", s3.bucket_url())).await;
            assert_eq!(
                status,
                StatusCode::NOT_FOUND,
                "{outside} outside the prefix"
            );
        }
    }
    wait_in_bucket(&s3, &format!("{prefix}/nix-cache-info")).await;
    let (status, _) = body(&format!("{}/nix-cache-info", s3.bucket_url())).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "nix-cache-info outside the prefix"
    );

    upstream.stop();
    for (path, url) in f.closure.iter().zip(&urls) {
        let (status, _) = body(&format!("{}/{}.narinfo", b.cache.url, hash_of(path))).await;
        assert_eq!(status, StatusCode::OK, "B finds {path} under the prefix");
        let (_, want) = expected_nar(&f.caches["xz"], path);
        let (status, got) = body(&format!("{}/{url}", b.cache.url)).await;
        assert_eq!(
            (status, got == want),
            (StatusCode::OK, true),
            "B serves {url}"
        );
    }
    let store = dir.path().join("store-direct");
    let folder = format!("{}/{prefix}", s3.bucket_url());
    let (ok, err) = f.realise(&store, &folder, &f.top, &a.public_key);
    assert!(ok, "nix-store -r from the bucket's folder: {err}");
    b.cache.stop().await;
    a.cache.stop().await;
}
