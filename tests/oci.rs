//! The OCI source and the publisher against a real registry on loopback (Debian docker-registry) with
//! GHCR-style token auth, paths built and substituted by the real Nix client.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::registry::{Front, RegistryPeer, push_fixture};
use common::*;
use nixcache::config::OciConfig;

const REPO: &str = "Test-Owner/cache-repo";

fn oci_config(data: &Path, registry: &str, ttl: Duration) -> nixcache::config::Config {
    let mut config = test_config(data, &[]);
    config.oci = Some(OciConfig {
        registry: registry.to_string(),
        repo: REPO.to_string(),
        index_ttl: ttl,
        trusted_keys: vec![fixture().public_key.clone()],
        accept_unsigned: false,
        token: None,
    });
    config
}

/// Runs `nixcache push --all` against `registry`, signing with the fixture's key.
fn push(registry: &str, paths: &[&str]) -> String {
    let (ok, out) = push_fixture(registry, REPO, &["--all"], paths);
    assert!(ok, "push failed: {out}");
    out
}

fn gc(registry: &str, extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_nixcache"))
        .args(["gc", "--oci-registry", registry, "--oci-repo", REPO])
        .args(extra)
        .output()
        .expect("run nixcache gc");
    assert!(
        out.status.success(),
        "gc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn wait_for_entries(cache: &Nixcache, n: u64) -> serde_json::Value {
    let mut status = cache.status().await;
    for _ in 0..200 {
        if status["oci"]["entries"] == n {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        status = cache.status().await;
    }
    panic!("the OCI index never reached {n} entries: {status}");
}

fn realise(fx: &Fixture, store: &Path, url: &str, path: &str) -> (bool, String) {
    fx.realise(store, url, path, &fx.public_key)
}

/// `POST /_refresh` from loopback; its JSON outcome.
async fn refresh(cache: &Nixcache) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/_refresh", cache.url))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body = r.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn pushed_paths_are_served_and_substituted_and_survive_the_registry_going_down() {
    let fx = fixture();
    let mut registry = RegistryPeer::start();
    let out = push(&registry.url, &[&fx.top]);
    assert!(
        out.contains(&format!("pushed {} paths", fx.closure.len())),
        "{out}"
    );

    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let cache = Nixcache::start(oci_config(&data, &registry.url, Duration::from_secs(3600))).await;
    let status = wait_for_entries(&cache, fx.closure.len() as u64).await;
    assert_eq!(status["oci"]["image"], "test-owner/cache-repo/nix-cache");
    assert!(
        status["oci"]["manifest_digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );

    let (ok, err) = realise(fx, &work.path().join("storeB"), &cache.url, &fx.top);
    assert!(ok, "nix-store -r through the OCI source: {err}");

    // A refresh with nothing new downloads nothing.
    let (status, outcome) = refresh(&cache).await;
    assert_eq!(
        (status, outcome["outcome"].as_str()),
        (200, Some("unchanged"))
    );

    // The registry goes down; a restart still answers every indexed path and serves the stored NARs.
    cache.stop().await;
    registry.stop_registry();
    let cache = Nixcache::start(oci_config(&data, &registry.url, Duration::from_secs(3600))).await;
    let (ok, err) = realise(fx, &work.path().join("storeC"), &cache.url, &fx.top);
    assert!(ok, "offline restart: {err}");
    let status = cache.status().await;
    assert!(
        status["oci"]["last_outcome"]
            .as_str()
            .unwrap_or("")
            .starts_with("failed"),
        "{status}"
    );
    cache.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn second_push_appears_after_refresh_and_gc_removes_only_unrooted_old_entries() {
    let fx = fixture();
    let registry = RegistryPeer::start();
    push(&registry.url, &[&fx.top]);
    let work = tempfile::tempdir().unwrap();
    let cache = Nixcache::start(oci_config(
        &work.path().join("data"),
        &registry.url,
        Duration::from_secs(3600),
    ))
    .await;
    wait_for_entries(&cache, fx.closure.len() as u64).await;
    let big = format!("{}/{}.narinfo", cache.url, hash_of(&fx.big));
    assert_eq!(reqwest::get(&big).await.unwrap().status(), 404);

    push(&registry.url, &[&fx.big]);
    // Not visible until a refresh (the TTL is an hour), then visible without a restart.
    assert_eq!(reqwest::get(&big).await.unwrap().status(), 404);
    let (_, outcome) = refresh(&cache).await;
    assert_eq!(outcome["outcome"], "applied", "{outcome}");
    assert_eq!(
        outcome["written"], 1,
        "only the new entry is checked and written"
    );
    assert_eq!(
        outcome["unchanged"],
        fx.closure.len() as u64,
        "the first push's entries are kept"
    );
    assert_eq!(reqwest::get(&big).await.unwrap().status(), 200);

    // gc: the second push made `big` the root; everything else is older than 0 days and unrooted.
    std::thread::sleep(Duration::from_millis(1100));
    let dry = gc(&registry.url, &["--retention-days", "0", "--dry-run"]);
    for path in &fx.closure {
        assert!(
            dry.contains(&format!("would remove {}", &path["/nix/store/".len()..])),
            "{dry}"
        );
    }
    assert!(!dry.contains(hash_of(&fx.big)), "{dry}");
    assert_eq!(
        refresh(&cache).await.1["outcome"],
        "unchanged",
        "dry run changes nothing"
    );
    gc(&registry.url, &["--retention-days", "0"]);
    let (_, outcome) = refresh(&cache).await;
    assert_eq!(
        (
            outcome["written"].as_u64(),
            outcome["unchanged"].as_u64(),
            outcome["removed"].as_u64()
        ),
        (Some(0), Some(1), Some(fx.closure.len() as u64)),
        "{outcome}"
    );
    assert_eq!(reqwest::get(&big).await.unwrap().status(), 200);
    let top = format!("{}/{}.narinfo", cache.url, hash_of(&fx.top));
    assert_eq!(reqwest::get(&top).await.unwrap().status(), 404);
    cache.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refresh_is_allowed_from_loopback_or_with_the_admin_token_only() {
    use axum::extract::connect_info::MockConnectInfo;
    use tower::ServiceExt;

    let fx = fixture();
    let registry = RegistryPeer::start();
    push(&registry.url, &[&fx.top]);
    let work = tempfile::tempdir().unwrap();
    let token_file = work.path().join("admin-token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let mut config = oci_config(
        &work.path().join("data"),
        &registry.url,
        Duration::from_secs(3600),
    );
    config.admin_token_file = Some(token_file);
    let app = nixcache::app::App::open(config).unwrap();
    // A router test: the peer address is injected, no traffic leaves loopback.
    let ask = |peer: &str, token: Option<&str>| {
        let router = nixcache::server::router(app.clone()).layer(MockConnectInfo(
            peer.parse::<std::net::SocketAddr>().unwrap(),
        ));
        let mut request = axum::http::Request::post("/_refresh");
        if let Some(t) = token {
            request = request.header("authorization", format!("Bearer {t}"));
        }
        router.oneshot(request.body(axum::body::Body::empty()).unwrap())
    };
    assert_eq!(ask("192.0.2.7:5000", None).await.unwrap().status(), 403);
    assert_eq!(
        ask("192.0.2.7:5000", Some("nope")).await.unwrap().status(),
        403
    );
    assert_eq!(
        ask("192.0.2.7:5000", Some("s3cret-token"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(ask("127.0.0.1:5000", None).await.unwrap().status(), 200);
    assert_eq!(ask("[::1]:5000", None).await.unwrap().status(), 200);
    app.shutdown.cancel();
    app.stopped.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn blobs_redirected_to_another_host_are_fetched_without_authorization() {
    let fx = fixture();
    let registry = RegistryPeer::start();
    push(&registry.url, &[&fx.big]);
    let front = Front::start(&registry).await;
    *front.expire_first.lock().unwrap() = true;
    let work = tempfile::tempdir().unwrap();
    let cache = Nixcache::start(oci_config(
        &work.path().join("data"),
        &front.url,
        Duration::from_secs(3600),
    ))
    .await;
    wait_for_entries(&cache, 1).await;
    let text = reqwest::get(format!("{}/{}.narinfo", cache.url, hash_of(&fx.big)))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let url = field(&text, "URL").unwrap();
    let bytes = reqwest::get(format!("{}/{url}", cache.url))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(nix_sha256(&bytes), field(&text, "FileHash").unwrap());
    assert_eq!(
        front.authorization_leaks.load(Ordering::SeqCst),
        0,
        "Authorization never follows the redirect"
    );
    // The index blob and the NAR blob were each refused once (expired) and asked for again.
    assert_eq!(front.storage_requests.load(Ordering::SeqCst), 4);
    cache.stop().await;
}

/// Pushes a cache exactly as nixcache-oci's publisher writes it, with plain HTTP calls (no nixcache code):
/// SRI NarHash, `URL: nar/<store hash>.nar.xz`, References omitted when empty.
async fn publish_like_nixcache_oci(registry: &str, cache_dir: &Path, paths: &[String]) {
    let http = reqwest::Client::new();
    let image = "test-owner/cache-repo/nix-cache";
    let challenge = http.get(format!("{registry}/v2/")).send().await.unwrap();
    let header = challenge.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    let param = |k: &str| {
        header
            .split(&format!("{k}=\""))
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap()
            .to_string()
    };
    let token_answer: serde_json::Value = serde_json::from_slice(
        &http
            .get(format!(
                "{}?service={}&scope=repository:{image}:pull,push",
                param("realm"),
                param("service")
            ))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    let token = token_answer["token"].as_str().unwrap().to_string();
    let upload = |bytes: Vec<u8>| {
        let (http, token) = (http.clone(), token.clone());
        async move {
            let digest = nixcache::oci::format::digest_of(&bytes);
            let start = http
                .post(format!("{registry}/v2/{image}/blobs/uploads/"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            assert_eq!(start.status(), 202);
            let location = start.headers()["location"].to_str().unwrap().to_string();
            let sep = if location.contains('?') { '&' } else { '?' };
            let put = http
                .put(format!("{location}{sep}digest={digest}"))
                .bearer_auth(&token)
                .body(bytes)
                .send()
                .await
                .unwrap();
            assert_eq!(put.status(), 201);
            digest
        }
    };
    let mut entries = serde_json::Map::new();
    for path in paths {
        let hash = hash_of(path);
        let original = std::fs::read_to_string(cache_dir.join(format!("{hash}.narinfo"))).unwrap();
        let nar = std::fs::read(cache_dir.join(field(&original, "URL").unwrap())).unwrap();
        let digest = upload(nar.clone()).await;
        let nar_hash =
            nixcache::nix::hash::Sha256Hash::parse(field(&original, "NarHash").unwrap()).unwrap();
        let mut narinfo = String::new();
        for line in original.lines() {
            let (k, v) = line
                .split_once(": ")
                .unwrap_or((line.trim_end_matches(':'), ""));
            match k {
                "URL" => narinfo.push_str(&format!("URL: nar/{hash}.nar.xz\n")),
                "NarHash" => narinfo.push_str(&format!("NarHash: {}\n", nar_hash.to_sri())),
                "References" if v.is_empty() => {}
                _ => narinfo.push_str(&format!("{line}\n")),
            }
        }
        entries.insert(
            hash.to_string(),
            serde_json::json!({
                "added": "2026-01-02T03:04:05Z",
                "name": &path["/nix/store/".len() + 33..],
                "nar_digest": digest,
                "nar_size": nar.len(),
                "narinfo": narinfo,
            }),
        );
    }
    let index = serde_json::json!({
        "version": 1, "generated": "2026-01-02T03:04:05Z", "repo": REPO, "registry": "ghcr.io",
        "image": image, "public_key": "", "gc_roots": [], "entries": entries,
    });
    let index_bytes = serde_json::to_vec_pretty(&index).unwrap();
    let index_digest = upload(index_bytes.clone()).await;
    let config_digest = upload(b"{}\n".to_vec()).await;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": 3},
        "layers": [{"mediaType": "application/vnd.nix.cache.index.v1+json", "digest": index_digest, "size": index_bytes.len()}],
    });
    let put = http
        .put(format!("{registry}/v2/{image}/manifests/cache-index"))
        .bearer_auth(&token)
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(serde_json::to_vec(&manifest).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_index_written_by_nixcache_oci_is_served() {
    let fx = fixture();
    let registry = RegistryPeer::start();
    publish_like_nixcache_oci(&registry.url, &fx.caches["xz"], &fx.closure).await;
    let work = tempfile::tempdir().unwrap();
    let cache = Nixcache::start(oci_config(
        &work.path().join("data"),
        &registry.url,
        Duration::from_secs(3600),
    ))
    .await;
    wait_for_entries(&cache, fx.closure.len() as u64).await;
    let dep = fx.closure.iter().find(|p| p.ends_with("-dep")).unwrap();
    let text = reqwest::get(format!("{}/{}.narinfo", cache.url, hash_of(dep)))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Served in Nix's own form: nix32 NarHash, canonical URL, an (empty) References line.
    assert!(
        field(&text, "NarHash").unwrap().starts_with("sha256:"),
        "{text}"
    );
    assert!(
        field(&text, "URL").unwrap().starts_with("nar/") && text.contains("References: \n"),
        "{text}"
    );
    let (ok, err) = realise(fx, &work.path().join("storeB"), &cache.url, &fx.top);
    assert!(ok, "substituting from a nixcache-oci index: {err}");
    cache.stop().await;
}

fn push_with(registry: &str, extra: &[&str], paths: &[&str]) -> (bool, String) {
    push_fixture(registry, REPO, extra, paths)
}

#[tokio::test(flavor = "multi_thread")]
async fn push_skips_what_the_upstream_already_has() {
    let fx = fixture();
    let registry = RegistryPeer::start();
    // The upstream has the closure except `top`.
    let work = tempfile::tempdir().unwrap();
    let copy = fx.copy_cache("xz", work.path());
    std::fs::remove_file(copy.join(format!("{}.narinfo", hash_of(&fx.top)))).unwrap();
    let up = TestUpstream::start(&copy).await;
    let (ok, out) = push_with(&registry.url, &["--upstream", &up.url], &[&fx.top]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "{} paths in the closure, 1 to publish",
            fx.closure.len()
        )),
        "{out}"
    );
    assert!(out.contains("pushed 1 paths"), "{out}");
    assert_eq!(
        up.narinfos(),
        fx.closure.len(),
        "every closure path was asked about"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn racing_publishers_keep_each_others_entries() {
    let fx = fixture();
    let registry = RegistryPeer::start();
    let url = registry.url.clone();
    let (top, big) = (fx.top.clone(), fx.big.clone());
    let a = std::thread::spawn({
        let url = url.clone();
        move || push_with(&url, &["--all"], &[&top])
    });
    let b = std::thread::spawn(move || push_with(&url, &["--all"], &[&big]));
    for (ok, out) in [a.join().unwrap(), b.join().unwrap()] {
        assert!(ok, "{out}");
    }
    let work = tempfile::tempdir().unwrap();
    let cache = Nixcache::start(oci_config(
        &work.path().join("data"),
        &registry.url,
        Duration::from_secs(3600),
    ))
    .await;
    wait_for_entries(&cache, fx.closure.len() as u64 + 1).await;
    cache.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_registry_fails_the_refresh_in_time_and_a_second_one_meanwhile_gets_429() {
    // A registry that accepts connections and never answers: a fake, since no real peer stalls on demand.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let work = tempfile::tempdir().unwrap();
    let cache = Nixcache::start(oci_config(
        &work.path().join("data"),
        &url,
        Duration::from_secs(3600),
    ))
    .await;
    let started = std::time::Instant::now();
    let first = tokio::spawn({
        let url = format!("{}/_refresh", cache.url);
        async move {
            let r = reqwest::Client::new().post(url).send().await.unwrap();
            r.status().as_u16()
        }
    });
    // While that refresh waits for the registry, another is refused, not queued behind it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = reqwest::Client::new()
        .post(format!("{}/_refresh", cache.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        second.status().as_u16(),
        429,
        "one forced refresh at a time"
    );
    assert!(second.headers().contains_key("retry-after"));
    assert_eq!(first.await.unwrap(), 502);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded by upstream_timeout (2 s here)"
    );
    let metrics = cache.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "nixcache_refreshes_refused_total 1"),
        "the refusal is counted"
    );
    let status = cache.status().await;
    assert_eq!(
        status["oci"]["last_outcome"], "failed: registry timed out",
        "{status}"
    );
    cache.stop().await;
    holder.abort();
}
