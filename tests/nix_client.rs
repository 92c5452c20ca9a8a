//! End to end with the real Nix client (Debian nix-bin): a fresh store substitutes a whole closure through
//! nixcache, whose upstream is a real HTTP server (Python's http.server) over a real binary cache folder;
//! then the upstream is stopped, nixcache restarted, and a third fresh store substitutes the same closure.

mod common;

use std::process::Command;

use common::*;

async fn substitute_through_nixcache(compression: &str) {
    let fx = fixture();
    let want = fx.closure_sorted();
    let work = tempfile::tempdir().unwrap();
    let (server, upstream) = http_server(Command::new("python3"), &fx.caches[compression]);
    let server = ChildGuard(server);
    let data = work.path().join("data");
    let cache = Nixcache::start(test_config(&data, &[&upstream])).await;

    // nix copy --from: HEAD and GET narinfos, then the NARs.
    let store_b = work.path().join("storeB");
    let url = cache.url.clone();
    let (ok, err) = fx.nix.try_run(
        "nix",
        &[
            "copy",
            "--store",
            store_b.to_str().unwrap(),
            "--from",
            &url,
            "--option",
            "trusted-public-keys",
            &fx.public_key,
            &fx.top,
        ],
    );
    assert!(ok, "nix copy --from nixcache ({compression}) failed: {err}");
    assert_eq!(fx.closure_in(&store_b), want);
    fx.nix.run(
        "nix-store",
        &[
            "--store",
            store_b.to_str().unwrap(),
            "--verify-path",
            &fx.top,
        ],
    );

    // nix-store -r with nixcache as the only substituter.
    let store_c = work.path().join("storeC");
    let (ok, err) = fx.realise(&store_c, &url, &fx.top, &fx.public_key);
    assert!(
        ok,
        "nix-store -r through nixcache ({compression}) failed: {err}"
    );
    assert_eq!(fx.closure_in(&store_c), want);

    // Upstream gone, nixcache restarted: the same closure is still served.
    drop(server);
    cache.stop().await;
    let cache = Nixcache::start(test_config(&data, &[&upstream])).await;
    let store_d = work.path().join("storeD");
    let (ok, err) = fx.realise(&store_d, &cache.url, &fx.top, &fx.public_key);
    assert!(
        ok,
        "offline restart ({compression}): nix-store -r failed: {err}"
    );
    assert_eq!(fx.closure_in(&store_d), want);

    // A client that trusts another key refuses the paths (signatures pass through untouched).
    let store_e = work.path().join("storeE");
    let (ok, err) = fx.realise(
        &store_e,
        &cache.url,
        &fx.top,
        "other-1:t/3Ot7hf+gNG/a6McHNOxMkd+KYWh0qcQmMw/A4Hw+E=",
    );
    assert!(!ok, "a client trusting another key must refuse the paths");
    assert!(
        err.contains("is not signed by any of the keys"),
        "refused for the signature: {err}"
    );
    cache.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nix_substitutes_xz_closure_and_again_offline_after_restart() {
    substitute_through_nixcache("xz").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nix_substitutes_zstd_closure_and_again_offline_after_restart() {
    substitute_through_nixcache("zstd").await;
}
