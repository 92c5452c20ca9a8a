//! Issue 16 end to end with the real Nix client (Debian nix-bin): NARs transcoded to zstd substitute
//! (for a client trusting only the upstream key too, and for a client that cached the narinfo from
//! before the switch), a twin whose file went is made again, OCI-source NARs are transcoded too;
//! `nixcache warm` fetches whole closures that then substitute with the upstream gone; pinned closures
//! survive eviction, a pin that cannot fit is refused; bad input to warm gets a clear error.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use axum::extract::connect_info::MockConnectInfo;
use common::*;
use nixcache::nix::nar_name::NarName;
use tower::ServiceExt;

/// A test configuration with transcoding on (level 3) and the appliance signing with its own key.
fn lan_config(dir: &Path, upstreams: &[&str]) -> (nixcache::config::Config, String) {
    let mut config = test_config(&dir.join("data"), upstreams);
    let (sk, pk) = keygen(dir, "lan-test-1");
    config.signing_key_file = Some(sk);
    config.transcode_level = Some(3);
    config.transcode_keep_original = Duration::from_secs(3600);
    (config, pk)
}

async fn narinfo_text(cache: &Nixcache, path: &str) -> String {
    let r = reqwest::get(format!("{}/{}.narinfo", cache.url, hash_of(path)))
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "narinfo of {path}");
    r.text().await.unwrap()
}

/// Waits until the narinfo of `path` names a zstd twin with its FileHash (not the original's name
/// before the twin exists, issue 14); returns it. Generous: the transcoding thread runs at nice 19,
/// and a loaded machine gives it little CPU.
async fn wait_transcoded(cache: &Nixcache, path: &str) -> String {
    for _ in 0..1800 {
        let text = narinfo_text(cache, path).await;
        if field(&text, "Compression") == Some("zstd") && field(&text, "FileHash").is_some() {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{path} was not transcoded in time: {}",
        cache.status().await["transcode"]
    );
}

async fn get_bytes(url: &str) -> (u16, Vec<u8>) {
    let r = reqwest::get(url).await.unwrap();
    let status = r.status().as_u16();
    (status, r.bytes().await.unwrap().to_vec())
}

/// Runs the nixcache binary; returns (success, stdout, stderr).
async fn cli(args: Vec<String>) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_nixcache"))
            .args(&args)
            .env_remove("NIXCACHE_URL")
            .output()
            .expect("run nixcache");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn stored(cache: &Nixcache, text: &str) -> bool {
    let name = nar_name(text);
    cache
        .app
        .index
        .nar(&name.file_hash)
        .unwrap()
        .is_some_and(|(_, s)| s)
}

fn nar_name(text: &str) -> NarName {
    field(text, "URL")
        .unwrap()
        .strip_prefix("nar/")
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn transcoded_nars_substitute_for_old_and_new_narinfos_and_either_key() {
    let fx = fixture();
    let work = tempfile::tempdir().unwrap();
    let upstream = TestUpstream::start(&fx.caches["xz"]).await;
    let (config, appliance_key) = lan_config(work.path(), &[&upstream.url]);
    let cache = Nixcache::start(config).await;

    // A client looks the path up before anything is stored or transcoded, and keeps the narinfo
    // (a persistent narinfo cache, as a nix-daemon has). Issue 14: it already names zstd, by the
    // upstream's xz FileHash, without FileHash or FileSize (the twin does not exist yet).
    let old = narinfo_text(&cache, &fx.big).await;
    let upstream_text = String::from_utf8(
        upstream.file(&fx.caches["xz"], &format!("{}.narinfo", hash_of(&fx.big))),
    )
    .unwrap();
    let xz_hash = field(&upstream_text, "FileHash").unwrap();
    let xz_name: NarName = format!("{}.nar.xz", &xz_hash["sha256:".len()..])
        .parse()
        .unwrap();
    assert_eq!(field(&old, "Compression"), Some("zstd"));
    assert_eq!(
        field(&old, "URL"),
        Some(format!("nar/{}.nar.zst", xz_name.file_hash.to_nix32()).as_str())
    );
    assert_eq!(field(&old, "FileHash"), None);
    assert_eq!(field(&old, "FileSize"), None);
    let old_xdg = work.path().join("old-client-xdg");
    let old_client = |store: &Path, op: &[&str]| {
        let mut c = fx.nix.cmd("nix");
        c.env("XDG_CACHE_HOME", &old_xdg)
            .args(op)
            .args(["--store", store.to_str().unwrap()])
            .args(["--option", "narinfo-cache-positive-ttl", "3600"])
            .args(["--option", "trusted-public-keys", &fx.public_key]);
        let out = c.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = old_client(Path::new(&cache.url), &["path-info", "--json", &fx.big]);
    assert!(ok, "the old client's lookup failed: {err}");

    // Another client substitutes the closures, cold: each fill makes the zstd twin beside the NAR
    // and the client gets zstd already; then the rows name the twin with its FileHash and FileSize.
    let (ok, err) = fx.realise(&work.path().join("s1"), &cache.url, &fx.big, &fx.public_key);
    assert!(ok, "first substitution failed: {err}");
    let (ok, err) = fx.realise(&work.path().join("s2"), &cache.url, &fx.top, &fx.public_key);
    assert!(ok, "first substitution of top failed: {err}");
    let new = wait_transcoded(&cache, &fx.big).await;
    for path in &fx.closure {
        wait_transcoded(&cache, path).await;
    }
    // Each NAR was fetched once (its twin came from the fill's own check, never from a second fetch).
    assert_eq!(upstream.nars(), fx.closure.len() + 1);
    // Only URL, Compression, FileHash and FileSize changed; every signature is still there.
    let strip = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| {
                !["URL:", "Compression:", "FileHash:", "FileSize:"]
                    .iter()
                    .any(|k| l.starts_with(k))
            })
            .map(str::to_string)
            .collect()
    };
    assert_eq!(strip(&old), strip(&new));
    assert!(new.contains("Sig: upstream-test-1:") && new.contains("Sig: lan-test-1:"));
    let name = nar_name(&new);
    let (status, twin_body) =
        get_bytes(&format!("{}/{}", cache.url, field(&new, "URL").unwrap())).await;
    assert_eq!(status, 200);
    assert_eq!(nix_sha256(&twin_body), field(&new, "FileHash").unwrap());
    assert_eq!(
        twin_body.len().to_string(),
        field(&new, "FileSize").unwrap()
    );

    // The new narinfo substitutes for a client trusting only the upstream key, and for one trusting
    // only the appliance's key.
    for (n, key) in [(3, &fx.public_key), (4, &appliance_key)] {
        let store = work.path().join(format!("s{n}"));
        let (ok, err) = fx.realise(&store, &cache.url, &fx.top, key);
        assert!(ok, "substituting transcoded top (key {key}) failed: {err}");
        let (ok, err) = fx.realise(&store, &cache.url, &fx.big, key);
        assert!(ok, "substituting transcoded big (key {key}) failed: {err}");
    }

    // The client holding the narinfo from before the switch still gets its URL: the twin's bytes.
    let (ok, err) = old_client(
        &work.path().join("s5"),
        &["copy", "--from", &cache.url, &fx.big],
    );
    assert!(ok, "the client with the old narinfo failed: {err}");
    let (status, body) = get_bytes(&format!("{}/{}", cache.url, field(&old, "URL").unwrap())).await;
    assert_eq!(status, 200);
    assert!(body == twin_body, "the first-ask URL is not the twin");
    // And the xz file itself, for clients holding a narinfo that names it (recorded while transcoding
    // was off), during the original's grace.
    let (status, body) = get_bytes(&format!("{}/{}", cache.url, xz_name.url_path())).await;
    assert_eq!(status, 200);
    assert_eq!(nix_sha256(&body), xz_hash);

    // The twin's file goes (evicted, damaged): it is made again, byte for byte, from the original.
    cache.app.index.unstore_nar(&name.file_hash).unwrap();
    cache.app.store.remove(&name).unwrap();
    upstream.set_fault(Fault::ServerError);
    let (status, again) =
        get_bytes(&format!("{}/{}", cache.url, field(&new, "URL").unwrap())).await;
    assert_eq!(status, 200, "the twin was not made again");
    assert!(
        again == twin_body,
        "the twin made again differs from the first one"
    );
    assert_eq!(nix_sha256(&again), field(&new, "FileHash").unwrap());

    // Counted: transcoded NARs, bytes before and after, CPU time.
    let status = cache.status().await;
    let t = &status["transcode"];
    assert!(t["transcoded"].as_u64().unwrap() >= 4, "{t}");
    // Every twin was made beside its fill (issue 14), none by the background transcoder.
    assert_eq!(t["beside_fill"].as_u64(), Some(4), "{t}");
    assert!(t["input_bytes"].as_u64().unwrap() > 0 && t["output_bytes"].as_u64().unwrap() > 0);
    assert!(t["cpu_seconds"].as_f64().unwrap() > 0.0, "{t}");
    let metrics = cache.metrics().await;
    assert!(metrics.contains("nixcache_transcode_cpu_seconds_total"));
    cache.stop().await;
}

/// Issue 14: clients of the first-ask URL during the download read the twin as it is made, and get
/// the twin file byte for byte; a NAR that fails its check gives them no complete body, and neither
/// file stays. The faults (a slow, a corrupt, a truncated body) are the test upstream's own: no real
/// server produces them on demand.
#[tokio::test(flavor = "multi_thread")]
async fn the_first_clients_read_the_twin_while_it_is_made_and_never_a_bad_one() {
    let fx = fixture();
    let upstream = TestUpstream::start(&fx.caches["xz"]).await;
    for fault in [Fault::SlowNar, Fault::CorruptNar, Fault::TruncateNar] {
        let work = tempfile::tempdir().unwrap();
        let (config, _) = lan_config(work.path(), &[&upstream.url]);
        let cache = Nixcache::start(config).await;
        upstream.set_fault(fault);
        let before = upstream.nars();
        let text = narinfo_text(&cache, &fx.big).await;
        let url = format!("{}/{}", cache.url, field(&text, "URL").unwrap());
        assert!(url.ends_with(".nar.zst") && field(&text, "FileHash").is_none());
        // Three clients at once, then one more while the (slow) download runs.
        let get = |url: String| async move {
            let r = reqwest::get(&url).await.ok()?;
            (r.status() == 200).then_some(())?;
            r.bytes().await.ok().map(|b| b.to_vec())
        };
        let first =
            futures_util::future::join3(get(url.clone()), get(url.clone()), get(url.clone()));
        let late = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            get(url.clone()).await
        };
        let ((a, b, c), d) = tokio::join!(first, late);
        if fault != Fault::SlowNar {
            // (The late client may start a fill of its own after the first one failed.)
            for body in [a, b, c, d] {
                assert!(body.is_none(), "{fault:?}: a client got a complete body");
            }
            assert_eq!(
                cache.status().await["store"]["nars"],
                0,
                "{fault:?}: stored"
            );
            assert_eq!(
                std::fs::read_dir(work.path().join("data/tmp"))
                    .unwrap()
                    .count(),
                0,
                "{fault:?}: a temp file stayed"
            );
            cache.stop().await;
            continue;
        }
        assert_eq!(upstream.nars() - before, 1, "fetched once for four clients");
        let body = a.expect("the first client got the twin");
        for other in [b, c, d] {
            assert!(
                other.as_ref() == Some(&body),
                "clients got different bodies"
            );
        }
        let nar = zstd::decode_all(&body[..]).unwrap();
        assert_eq!(nix_sha256(&nar), field(&text, "NarHash").unwrap());
        // What they read is the twin the rows name now, byte for byte.
        let new = wait_transcoded(&cache, &fx.big).await;
        assert_eq!(nix_sha256(&body), field(&new, "FileHash").unwrap());
        // Counted right after the rows switched.
        let mut counted = serde_json::Value::Null;
        for _ in 0..100 {
            counted = cache.status().await["transcode"]["beside_fill"].clone();
            if counted == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(counted, 1, "twins made beside the fill");
        cache.stop().await;
    }
    upstream.set_fault(Fault::None);
}

/// Issue 14: the first-ask URL of a NAR stored without a twin (fetched while transcoding was off, or
/// when there was no room for a twin beside its fill) is answered by making the twin from the stored
/// file at once, never by fetching again; also with transcoding off, for clients that kept a narinfo
/// from while it was on.
#[tokio::test(flavor = "multi_thread")]
async fn a_first_ask_url_of_a_nar_stored_without_a_twin_is_made_from_the_stored_file() {
    let fx = fixture();
    let upstream = TestUpstream::start(&fx.caches["xz"]).await;
    let work = tempfile::tempdir().unwrap();
    let (mut config, _) = lan_config(work.path(), &[&upstream.url]);
    config.transcode_level = None;
    let cache = Nixcache::start(config).await;
    let text = narinfo_text(&cache, &fx.big).await;
    assert_eq!(field(&text, "Compression"), Some("xz"));
    let (status, xz) = get_bytes(&format!("{}/{}", cache.url, field(&text, "URL").unwrap())).await;
    assert_eq!(status, 200);
    let name = nar_name(&text);
    // Made durable just after the client's last byte.
    nixcache::transcode::wait_stored(&cache.app, &name.file_hash)
        .await
        .unwrap();
    let first_ask = NarName {
        compression: nixcache::nix::narinfo::Compression::Zstd,
        ..name
    };
    let (status, body) = get_bytes(&format!("{}/{}", cache.url, first_ask.url_path())).await;
    assert_eq!(status, 200);
    let nar = zstd::decode_all(&body[..]).unwrap();
    assert_eq!(nix_sha256(&nar), field(&text, "NarHash").unwrap());
    assert_eq!(upstream.nars(), 1, "fetched again");
    // The twin is recorded: the rows name it, and the original's URL still answers its own bytes.
    let new = narinfo_text(&cache, &fx.big).await;
    assert_eq!(field(&new, "FileHash"), Some(nix_sha256(&body).as_str()));
    let (status, again) = get_bytes(&format!("{}/{}", cache.url, name.url_path())).await;
    assert_eq!((status, again == xz), (200, true));
    cache.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nars_of_the_oci_source_are_transcoded_too() {
    use common::registry::{RegistryPeer, push_fixture};
    let fx = fixture();
    let registry = RegistryPeer::start();
    let (ok, out) = push_fixture(&registry.url, "lan/test", &["--all"], &[&fx.top]);
    assert!(ok, "push failed: {out}");
    let work = tempfile::tempdir().unwrap();
    let (mut config, _) = lan_config(work.path(), &[]);
    config.oci = Some(nixcache::config::OciConfig {
        registry: registry.url.clone(),
        repo: "lan/test".into(),
        index_ttl: Duration::from_secs(3600),
        trusted_keys: vec![fx.public_key.clone()],
        accept_unsigned: false,
        token: None,
    });
    let cache = Nixcache::start(config).await;
    for _ in 0..200 {
        if cache.status().await["oci"]["entries"] == fx.closure.len() as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (ok, err) = fx.realise(&work.path().join("s1"), &cache.url, &fx.top, &fx.public_key);
    assert!(ok, "substituting from the OCI source failed: {err}");
    for path in &fx.closure {
        wait_transcoded(&cache, path).await;
    }
    let (ok, err) = fx.realise(&work.path().join("s2"), &cache.url, &fx.top, &fx.public_key);
    assert!(ok, "substituting transcoded OCI NARs failed: {err}");
    cache.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn warm_then_the_upstream_goes_and_the_whole_closure_substitutes() {
    let fx = fixture();
    let work = tempfile::tempdir().unwrap();
    let (server, upstream) = http_server(Command::new("python3"), &fx.caches["xz"]);
    let server = ChildGuard(server);
    let (config, _) = lan_config(work.path(), &[&upstream]);
    let cache = Nixcache::start(config).await;

    let (ok, out, err) = cli(args(&["warm", "--url", &cache.url, &fx.top])).await;
    assert!(ok, "warm failed: {out}{err}");
    assert!(
        out.contains(&format!("{} paths", fx.closure.len())) && out.contains("0 failed"),
        "{out}"
    );
    let status = cache.status().await;
    assert_eq!(status["warm"]["jobs"][0]["state"], "done", "{status}");
    assert_eq!(
        status["warm"]["jobs"][0]["nars_fetched"],
        fx.closure.len() as u64
    );

    drop(server); // the upstream is gone
    let store = work.path().join("offline");
    let (ok, err) = fx.realise(&store, &cache.url, &fx.top, &fx.public_key);
    assert!(ok, "substituting the warmed closure offline failed: {err}");
    assert_eq!(fx.closure_in(&store), fx.closure_sorted());

    // Running it again is cheap: everything is on disk (and the upstream is not needed).
    let list = work.path().join("paths");
    std::fs::write(&list, fx.closure.join("\n") + "\n").unwrap();
    let (ok, out, err) = cli(args(&[
        "warm",
        "--url",
        &cache.url,
        "--file",
        list.to_str().unwrap(),
    ]))
    .await;
    assert!(ok, "warm again failed: {out}{err}");
    assert!(
        out.contains(&format!("0 fetched, {} already stored", fx.closure.len())),
        "{out}"
    );
    let metrics = cache.metrics().await;
    assert!(
        metrics.contains("nixcache_warm_jobs_total{outcome=\"done\"} 2"),
        "{metrics}"
    );
    cache.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pinned_closures_survive_eviction_and_a_pin_that_cannot_fit_is_refused() {
    let fx = fixture();
    let work = tempfile::tempdir().unwrap();
    let upstream = TestUpstream::start(&fx.caches["xz"]).await;
    let mut config = test_config(&work.path().join("data"), &[&upstream.url]);
    config.transcode_level = None;
    let cache = Nixcache::start(config).await;
    let warm = |extra: &[&str]| {
        let mut a = args(&["warm", "--url", &cache.url]);
        a.extend(extra.iter().map(|s| s.to_string()));
        cli(a)
    };

    // top's closure warmed without a pin, big pinned.
    let (ok, out, err) = warm(&[&fx.top]).await;
    assert!(ok, "{out}{err}");
    let (ok, out, err) = warm(&["--pin", "base", &fx.big]).await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("pinned as base"), "{out}");
    let big = narinfo_text(&cache, &fx.big).await;
    let top = narinfo_text(&cache, &fx.top).await;
    assert!(stored(&cache, &big) && stored(&cache, &top));

    // Eviction pressure: everything evictable goes; the pinned NAR stays.
    nixcache::budget::evict(&cache.app, u64::MAX);
    assert!(stored(&cache, &big), "a pinned NAR was evicted");
    assert!(!stored(&cache, &top), "an unpinned NAR survived");
    let (ok, out, _) = cli(args(&["pins", "--url", &cache.url])).await;
    assert!(ok && out.contains("base") && out.contains("1/1"), "{out}");
    let status = cache.status().await;
    assert_eq!(status["pins"]["pins"][0]["name"], "base");
    assert!(status["pins"]["pins"][0]["bytes"].as_u64().unwrap() > 4_000_000);
    let page = reqwest::get(format!("{}/", cache.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("base"), "the status page shows pins");

    // The pinned path substitutes with the upstream gone.
    upstream.set_fault(Fault::ServerError);
    let (ok, err) = fx.realise(&work.path().join("s1"), &cache.url, &fx.big, &fx.public_key);
    assert!(ok, "the pinned path did not substitute offline: {err}");
    upstream.set_fault(Fault::None);

    // Replacing the pin releases what only the old one held.
    let (ok, out, err) = warm(&["--pin", "base", &fx.top]).await;
    assert!(ok, "{out}{err}");
    nixcache::budget::evict(&cache.app, u64::MAX);
    assert!(!stored(&cache, &big), "the replaced pin still holds big");
    assert!(stored(&cache, &top), "the new pin's NAR was evicted");
    let (ok, out, _) = cli(args(&["pins", "--url", &cache.url, "--remove", "base"])).await;
    assert!(ok, "{out}");
    nixcache::budget::evict(&cache.app, u64::MAX);
    assert!(!stored(&cache, &top));
    cache.stop().await;

    // A store too small for the pin: refused before anything is fetched, with the sizes.
    let work2 = tempfile::tempdir().unwrap();
    let mut config = test_config(&work2.path().join("data"), &[&upstream.url]);
    config.max_size = 4 << 20;
    let small = Nixcache::start(config).await;
    let before = upstream.nars();
    let (ok, out, err) = cli(args(&[
        "warm", "--url", &small.url, "--pin", "huge", &fx.big,
    ]))
    .await;
    assert!(!ok, "a pin larger than the store was accepted: {out}");
    assert!(err.contains("pin huge does not fit"), "{err}");
    assert_eq!(
        upstream.nars(),
        before,
        "NARs were fetched for a refused pin"
    );
    small.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn warm_refuses_bad_input_with_a_clear_error() {
    let fx = fixture();
    let work = tempfile::tempdir().unwrap();
    let upstream = TestUpstream::start(&fx.caches["xz"]).await;
    let token_file = work.path().join("admin-token");
    std::fs::write(&token_file, "t0ken\n").unwrap();
    let mut config = test_config(&work.path().join("data"), &[&upstream.url]);
    config.admin_token_file = Some(token_file.clone());
    let cache = Nixcache::start(config).await;

    let (ok, _, err) = cli(args(&[
        "warm",
        "--url",
        &cache.url,
        "/tmp/not-a-store-path",
    ]))
    .await;
    assert!(!ok);
    assert!(
        err.contains("400") && err.contains("not a store path: \"/tmp/not-a-store-path\""),
        "{err}"
    );
    let unknown = format!("/nix/store/{}-nowhere", "0".repeat(32));
    let (ok, _, err) = cli(args(&["warm", "--url", &cache.url, &unknown])).await;
    assert!(!ok);
    assert!(
        err.contains(&format!("not in any cache: {unknown}")),
        "{err}"
    );
    let (ok, _, err) = cli(args(&[
        "warm", "--url", &cache.url, "--pin", "a/b", &fx.top,
    ]))
    .await;
    assert!(!ok && err.contains("is not a pin name"), "{err}");

    // Authorization: as /_refresh — loopback, or the admin token.
    let ask = |peer: &str, token: Option<&str>| {
        let router = nixcache::server::router(cache.app.clone()).layer(MockConnectInfo(
            peer.parse::<std::net::SocketAddr>().unwrap(),
        ));
        let mut request = axum::http::Request::post("/_warm");
        if let Some(t) = token {
            request = request.header("authorization", format!("Bearer {t}"));
        }
        let body = serde_json::json!({ "paths": [fx.top] }).to_string();
        router.oneshot(request.body(axum::body::Body::from(body)).unwrap())
    };
    let refused = ask("192.0.2.7:5000", None).await.unwrap();
    assert_eq!(refused.status(), 403);
    let text = String::from_utf8(
        axum::body::to_bytes(refused.into_body(), 1 << 16)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    assert!(text.contains("loopback or with the admin token"), "{text}");
    assert_eq!(
        ask("192.0.2.7:5000", Some("wrong")).await.unwrap().status(),
        403
    );
    assert_eq!(
        ask("192.0.2.7:5000", Some("t0ken")).await.unwrap().status(),
        202
    );
    let delete = nixcache::server::router(cache.app.clone())
        .layer(MockConnectInfo(
            "192.0.2.7:5000".parse::<std::net::SocketAddr>().unwrap(),
        ))
        .oneshot(
            axum::http::Request::delete("/_pins/base")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(delete.status(), 403);
    // The CLI with the token file works against the same rules (from loopback it is not needed).
    let (ok, out, err) = cli(args(&[
        "warm",
        "--url",
        &cache.url,
        "--token-file",
        token_file.to_str().unwrap(),
        &fx.top,
    ]))
    .await;
    assert!(ok, "{out}{err}");
    cache.stop().await;
}
