//! Trust end to end with the real Nix client on input-addressed paths: the upstream signs with key U, the
//! appliance trusts U and signs with its own key A, and LAN clients trust only A. Tampered narinfos and
//! NARs are refused (the tampered caches are served by the test's static server).

mod common;

use std::io::Write;
use std::path::Path;

use common::*;
use nixcache::nix::hash::Sha256Hash;
use nixcache::nix::narinfo::NarInfo;
use nixcache::nix::signing::SecretKey;

fn signed_config(data: &Path, upstream: &str, key: &Path) -> nixcache::config::Config {
    let mut config = test_config(data, &[upstream]);
    config.signing_key_file = Some(key.to_path_buf());
    config
}

/// `nix-store -r` of the fixture's top path into a fresh store, trusting only `key`.
fn realise(fx: &Fixture, store: &Path, url: &str, key: &str) -> (bool, String) {
    fx.realise(store, url, &fx.top, key)
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_trusting_only_the_appliance_key_substitute() {
    let fx = fixture();
    let work = tempfile::tempdir().unwrap();
    let (a_secret, a_public) = keygen(work.path(), "appliance-1");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&a_secret).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the secret key file is private");
    let up = TestUpstream::start(&fx.caches["xz"]).await;
    let data = work.path().join("data");
    let cache = Nixcache::start(signed_config(&data, &up.url, &a_secret)).await;

    let public = reqwest::get(format!("{}/public-key", cache.url))
        .await
        .unwrap();
    assert_eq!(
        public.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
    assert_eq!(public.text().await.unwrap().trim(), a_public);
    let info = reqwest::get(format!("{}/nix-cache-info", cache.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(info.contains(&format!("PublicKey: {a_public}\n")), "{info}");
    assert_eq!(cache.status().await["signing_key"], "appliance-1");

    // Nix accepts the appliance's signatures (made with a key made by nixcache keygen).
    let store_b = work.path().join("storeB");
    let (ok, err) = fx.nix.try_run(
        "nix",
        &[
            "copy",
            "--store",
            store_b.to_str().unwrap(),
            "--from",
            &cache.url,
            "--option",
            "trusted-public-keys",
            &a_public,
            &fx.top,
        ],
    );
    assert!(ok, "nix copy trusting only the appliance key: {err}");
    let (ok, err) = realise(fx, &work.path().join("storeC"), &cache.url, &a_public);
    assert!(ok, "nix-store -r trusting only the appliance key: {err}");

    // A client that trusts neither the appliance nor the upstream is refused.
    let (ok, err) = realise(
        fx,
        &work.path().join("storeD"),
        &cache.url,
        "other-1:t/3Ot7hf+gNG/a6McHNOxMkd+KYWh0qcQmMw/A4Hw+E=",
    );
    assert!(
        !ok && err.contains("is not signed by any of the keys"),
        "{err}"
    );

    // The upstream signature is kept beside the appliance's.
    let text = reqwest::get(format!("{}/{}.narinfo", cache.url, hash_of(&fx.top)))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("Sig: "))
        .map(|s| s.split(':').next().unwrap())
        .collect();
    assert_eq!(names, ["upstream-test-1", "appliance-1"]);
    cache.stop().await;

    // A new key, made by Nix itself this time: old entries are served signed by it, not by the old key.
    let b_secret = work.path().join("nix-made.secret");
    let b_public_file = work.path().join("nix-made.public");
    fx.nix.run(
        "nix-store",
        &[
            "--generate-binary-cache-key",
            "appliance-2",
            b_secret.to_str().unwrap(),
            b_public_file.to_str().unwrap(),
        ],
    );
    let b_public = std::fs::read_to_string(&b_public_file).unwrap();
    let cache = Nixcache::start(signed_config(&data, &up.url, &b_secret)).await;
    let text = reqwest::get(format!("{}/{}.narinfo", cache.url, hash_of(&fx.top)))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !text.contains("appliance-1:"),
        "the old key's signature is gone: {text}"
    );
    assert!(text.contains("Sig: appliance-2:"), "{text}");
    let (ok, err) = realise(fx, &work.path().join("storeE"), &cache.url, &b_public);
    assert!(
        ok,
        "after the key change, clients trusting the new key substitute: {err}"
    );
    let (ok, _) = realise(fx, &work.path().join("storeF"), &cache.url, &a_public);
    assert!(!ok, "clients trusting only the old key are refused");
    cache.stop().await;
}

fn edit_narinfo(cache: &Path, store_path: &str, edit: impl FnOnce(&mut NarInfo)) {
    let path = cache.join(format!("{}.narinfo", hash_of(store_path)));
    let mut info = NarInfo::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut info);
    std::fs::write(&path, info.to_text()).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn altered_or_untrusted_narinfos_are_never_served() {
    let fx = fixture();
    let evil = SecretKey::generate("evil-1").unwrap();
    type Tamper = Box<dyn Fn(&mut NarInfo)>;
    let tampering: Vec<(&str, Tamper)> = vec![
        (
            "NarHash",
            Box::new(|i| i.nar_hash = Sha256Hash::digest(b"something else")),
        ),
        ("NarSize", Box::new(|i| i.nar_size += 1)),
        (
            "References",
            Box::new(|i| {
                i.references.pop();
            }),
        ),
        (
            "untrusted key",
            Box::new(move |i| {
                i.sigs.clear();
                i.sign_with(&evil);
            }),
        ),
        ("unsigned", Box::new(|i| i.sigs.clear())),
    ];
    for (what, tamper) in tampering {
        let work = tempfile::tempdir().unwrap();
        let cache_dir = fx.copy_cache("xz", work.path());
        edit_narinfo(&cache_dir, &fx.top, tamper);
        let up = TestUpstream::start(&cache_dir).await;
        let cache = Nixcache::start(test_config(&work.path().join("data"), &[&up.url])).await;
        let r = reqwest::get(format!("{}/{}.narinfo", cache.url, hash_of(&fx.top)))
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            404,
            "{what}: treated as absent from that source"
        );
        // The untouched paths of the same cache are served.
        let dep = fx.closure.iter().find(|p| p.ends_with("-dep")).unwrap();
        let r = reqwest::get(format!("{}/{}.narinfo", cache.url, hash_of(dep)))
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{what}");
        let status = cache.status().await;
        assert_eq!(
            status["index"]["narinfos"], 1,
            "{what}: the tampered one was not recorded"
        );
        assert_eq!(status["upstreams"][0]["rejected_narinfos"], 1, "{what}");
        cache.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn nar_not_matching_the_signed_nar_hash_is_never_stored() {
    let fx = fixture();
    let work = tempfile::tempdir().unwrap();
    let cache_dir = fx.copy_cache("xz", work.path());
    // Other content, compressed, with FileHash/FileSize/URL recomputed to match it: only the signed
    // NarHash can tell.
    let dump = fx
        .nix
        .cmd("nix")
        .args([
            "store",
            "dump-path",
            "--store",
            fx.store.to_str().unwrap(),
            &fx.big,
        ])
        .output()
        .unwrap();
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let mut nar = dump.stdout;
    let last = nar.len() - 200;
    nar[last] ^= 0xff; // inside the file contents
    let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 1);
    xz.write_all(&nar).unwrap();
    let file = xz.finish().unwrap();
    let file_hash = Sha256Hash::digest(&file);
    std::fs::write(
        cache_dir.join(format!("nar/{}.nar.xz", file_hash.to_nix32())),
        &file,
    )
    .unwrap();
    edit_narinfo(&cache_dir, &fx.big, |i| {
        i.file_hash = Some(file_hash);
        i.file_size = Some(file.len() as u64);
        i.url = format!("nar/{}.nar.xz", file_hash.to_nix32());
    });

    let up = TestUpstream::start(&cache_dir).await;
    let data = work.path().join("data");
    let cache = Nixcache::start(test_config(&data, &[&up.url])).await;
    let text = reqwest::get(format!("{}/{}.narinfo", cache.url, hash_of(&fx.big)))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let url = field(&text, "URL").unwrap();
    let response = reqwest::get(format!("{}/{url}", cache.url)).await.unwrap();
    // The source sent the file (headers went out) and only the NarHash check could refuse it.
    assert_eq!(response.status(), 200);
    assert!(
        response.bytes().await.is_err(),
        "the client's transfer is aborted"
    );
    assert_eq!(up.nars(), 1);
    let status = cache.status().await;
    assert_eq!(status["store"]["nars"], 0, "nothing stored");
    assert_eq!(std::fs::read_dir(data.join("tmp")).unwrap().count(), 0);
    assert!(!data.join("nar").join(&file_hash.to_nix32()[..2]).exists());
    // And the real client gets no path out of it.
    let store = work.path().join("storeB");
    let (ok, _) = fx.nix.try_run(
        "nix-store",
        &[
            "--store",
            store.to_str().unwrap(),
            "-r",
            &fx.big,
            "--option",
            "substituters",
            &cache.url,
            "--option",
            "trusted-public-keys",
            &fx.public_key,
        ],
    );
    assert!(!ok);
    assert_eq!(cache.status().await["store"]["nars"], 0);
    cache.stop().await;
}
