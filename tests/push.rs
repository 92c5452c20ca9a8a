//! LAN pushes (issue 12) end to end: builders publish with the real Nix client (`nix copy --to
//! http://appliance`, the token in a netrc file, as Debian's Nix 2.8 sends it), and other machines
//! substitute what they pushed through the appliance. Where the real client cannot be made to
//! misbehave (tampered files, an upload cut off or stalled midway, several at once), the test sends
//! the requests itself and says so.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use nixcache::config::{Config, PushTokenConfig};
use nixcache::nix::narinfo::NarInfo;
use nixcache::nix::signing::SecretKey;

/// A LAN builder: its own store and signing key, and derivations no upstream has.
struct Builder {
    store: PathBuf,
    secret_key: PathBuf,
    public_key: String,
}

impl Builder {
    fn new(work: &Path, name: &str) -> Builder {
        let (secret_key, public_key) = keygen(work, &format!("{name}-1"));
        Builder {
            store: work.join(format!("store-{name}")),
            secret_key,
            public_key,
        }
    }

    /// Builds `name` (a path whose content depends on `salt`) and a dependency of it; returns
    /// (top, dep). Input-addressed, so signatures matter.
    fn build(&self, fx: &Fixture, name: &str, salt: &str) -> (String, String) {
        let expr = format!(
            r#"let sh = args: name: derivation {{ inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" args ]; }};
                   dep = sh "echo {salt} > $out" "{name}-dep";
               in sh "echo ${{dep}} {salt} > $out" "{name}""#
        );
        let top = self.build_expr(fx, &expr);
        let refs = fx.nix.run(
            "nix-store",
            &[
                "--store",
                self.store.to_str().unwrap(),
                "-q",
                "--references",
                &top,
            ],
        );
        (top, refs.trim().to_string())
    }

    /// Builds a path of `bytes` random bytes named `name`.
    fn build_big(&self, fx: &Fixture, name: &str, bytes: usize) -> String {
        let expr = format!(
            r#"derivation {{ name = "{name}"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "/usr/bin/head -c {bytes} /dev/urandom > $out" ]; }}"#
        );
        self.build_expr(fx, &expr)
    }

    fn build_expr(&self, fx: &Fixture, expr: &str) -> String {
        let out = fx.nix.run(
            "nix-build",
            &[
                "--store",
                self.store.to_str().unwrap(),
                "--no-out-link",
                "-E",
                expr,
            ],
        );
        out.trim().to_string()
    }

    /// `nix copy --to URL` of `paths`, signed by the builder when `sign`, with `netrc` when given.
    fn copy_to(
        &self,
        fx: &Fixture,
        url: &str,
        netrc: Option<&Path>,
        sign: bool,
        paths: &[&str],
    ) -> (bool, String) {
        let mut to = url.to_string();
        if sign {
            to = format!("{url}?secret-key={}", self.secret_key.display());
        }
        let mut args = vec!["copy", "--store", self.store.to_str().unwrap(), "--to", &to];
        let netrc_text;
        if let Some(n) = netrc {
            netrc_text = n.to_str().unwrap().to_string();
            args.extend(["--option", "netrc-file", &netrc_text]);
        }
        args.extend(paths);
        fx.nix.try_run("nix", &args)
    }

    /// A `file://` cache of `paths` (xz, signed by the builder): files to upload by hand.
    fn file_cache(&self, fx: &Fixture, dir: &Path, paths: &[&str]) -> PathBuf {
        let to = format!(
            "file://{}?compression=xz&secret-key={}",
            dir.display(),
            self.secret_key.display()
        );
        let mut args = vec!["copy", "--store", self.store.to_str().unwrap(), "--to", &to];
        args.extend(paths);
        fx.nix.run("nix", &args);
        dir.to_path_buf()
    }
}

/// A push token: its secret in a mode-600 file, and a netrc file for 127.0.0.1 holding it.
struct TokenFiles {
    secret: String,
    file: PathBuf,
    netrc: PathBuf,
}

fn token_files(dir: &Path, name: &str) -> TokenFiles {
    use std::os::unix::fs::PermissionsExt;
    let secret = format!("{name}-{}", hex_bytes(16));
    let file = dir.join(format!("{name}.token"));
    std::fs::write(&file, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let netrc = dir.join(format!("{name}.netrc"));
    std::fs::write(
        &netrc,
        format!("machine 127.0.0.1\nlogin {name}\npassword {secret}\n"),
    )
    .unwrap();
    TokenFiles {
        secret,
        file,
        netrc,
    }
}

fn hex_bytes(n: usize) -> String {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).unwrap();
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn token(name: &str, files: &TokenFiles) -> PushTokenConfig {
    PushTokenConfig {
        name: name.into(),
        token_file: files.file.clone(),
        paths: vec!["*".into()],
        quota: None,
        sign: false,
    }
}

/// An appliance signing with its own key, trusting `builder_keys` for pushes, with `tokens`.
fn push_config(
    data: &Path,
    upstreams: &[&str],
    appliance_key: &Path,
    builder_keys: &[&str],
    tokens: Vec<PushTokenConfig>,
) -> Config {
    let mut c = test_config(data, upstreams);
    c.signing_key_file = Some(appliance_key.to_path_buf());
    c.push.trusted_keys = builder_keys.iter().map(|k| k.to_string()).collect();
    c.push.tokens = tokens;
    c
}

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn put(url: &str, auth: Option<&str>, body: Vec<u8>) -> (u16, String) {
    let mut req = reqwest::Client::new().put(url).body(body);
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The narinfo of `path` as the appliance serves it (status, text).
async fn narinfo(cache: &Nixcache, path: &str) -> (u16, String) {
    get(&format!("{}/{}.narinfo", cache.url, hash_of(path))).await
}

/// Waits until the appliance holds no temp file (uploads running or waiting for their narinfo).
async fn no_temp_files(cache: &Nixcache) {
    for _ in 0..100 {
        if cache.app.store.temp_files().unwrap().is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "temp files left: {:?}",
        cache.app.store.temp_files().unwrap()
    );
}

/// The value of a sample in a Prometheus text exposition.
fn sample(metrics: &str, name_and_labels: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels))
        .and_then(|rest| rest.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name_and_labels} not in /metrics"))
}

#[tokio::test(flavor = "multi_thread")]
async fn nix_copy_to_with_a_token_then_another_store_substitutes_it_with_the_upstream_gone() {
    let fx = fixture();
    let work = tempfile::tempdir().unwrap();
    let builder = Builder::new(work.path(), "builder");
    let (top, dep) = builder.build(fx, "pushed", "published-1");
    let (appliance_key, appliance_public) = keygen(work.path(), "appliance-1");
    let tok = token_files(work.path(), "ci");
    let up = TestUpstream::start(&fx.caches["xz"]).await;
    let data = work.path().join("data");
    let config = push_config(
        &data,
        &[&up.url],
        &appliance_key,
        &[&builder.public_key],
        vec![token("ci", &tok)],
    );
    let cache = Nixcache::start(config.clone()).await;

    // The upstream fails meanwhile: a client is told 502, a pusher "absent", so its nix copy uploads.
    up.set_fault(Fault::ServerError);
    assert_eq!(narinfo(&cache, &top).await.0, 502);
    let (ok, err) = builder.copy_to(fx, &cache.url, Some(&tok.netrc), true, &[&top]);
    assert!(ok, "nix copy --to the appliance failed: {err}");
    let (status, text) = narinfo(&cache, &top).await;
    assert_eq!(status, 200);
    let sigs: Vec<&str> = text.lines().filter(|l| l.starts_with("Sig: ")).collect();
    assert_eq!(
        sigs.len(),
        2,
        "the builder's and the appliance's signatures: {text}"
    );
    assert!(field(&text, "URL").unwrap().starts_with("nar/"));
    let status = cache.status().await;
    assert_eq!(status["pushes"]["tokens"][0]["stored_paths"], 2);
    assert_eq!(status["index"]["nars_protected"], 2, "pushed NARs are kept");
    let metrics = get(&format!("{}/metrics", cache.url)).await.1;
    let accepted = r#"nixcache_push_uploads_total{kind="narinfo",result="accepted",token="ci"}"#;
    assert_eq!(sample(&metrics, accepted), 2.0);

    // The upstream goes away: a fresh store, trusting only the appliance, substitutes the closure.
    up.stop();
    let store_b = work.path().join("storeB");
    let (ok, err) = fx.realise(&store_b, &cache.url, &top, &appliance_public);
    assert!(ok, "substituting the pushed path failed: {err}");
    for p in [&top, &dep] {
        fx.nix.run(
            "nix-store",
            &["--store", store_b.to_str().unwrap(), "--verify-path", p],
        );
    }

    // And again after a restart: the push was durable, and is still trusted.
    cache.stop().await;
    let cache = Nixcache::start(config).await;
    let store_c = work.path().join("storeC");
    let (ok, err) = fx.realise(&store_c, &cache.url, &top, &appliance_public);
    assert!(ok, "substituting after a restart failed: {err}");
    // Pushing again is a no-op: Nix finds the paths there and uploads nothing.
    let (ok, err) = builder.copy_to(fx, &cache.url, Some(&tok.netrc), true, &[&top]);
    assert!(ok, "{err}");
    assert_eq!(cache.status().await["pushes"]["tokens"][0]["accepted"], 0);
    cache.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_or_with_a_wrong_token_nothing_is_stored() {
    let fx = fixture();
    let work = tempfile::tempdir().unwrap();
    let builder = Builder::new(work.path(), "builder");
    let (top, _) = builder.build(fx, "unwelcome", "token-test");
    let (appliance_key, _) = keygen(work.path(), "appliance-1");
    let tok = token_files(work.path(), "ci");
    let config = push_config(
        &work.path().join("data"),
        &[],
        &appliance_key,
        &[&builder.public_key],
        vec![token("ci", &tok)],
    );
    let cache = Nixcache::start(config).await;

    let (ok, err) = builder.copy_to(fx, &cache.url, None, true, &[&top]);
    assert!(!ok && err.contains("401"), "no token: {err}");
    let wrong = work.path().join("wrong.netrc");
    std::fs::write(
        &wrong,
        "machine 127.0.0.1\nlogin ci\npassword not-the-token-at-all\n",
    )
    .unwrap();
    let (ok, err) = builder.copy_to(fx, &cache.url, Some(&wrong), true, &[&top]);
    assert!(!ok && err.contains("403"), "wrong token: {err}");

    // The same by hand, with the files Nix would send.
    let files = builder.file_cache(fx, &work.path().join("files"), &[&top]);
    let info_path = files.join(format!("{}.narinfo", hash_of(&top)));
    let info = std::fs::read_to_string(&info_path).unwrap();
    let nar_url = format!("{}/{}", cache.url, field(&info, "URL").unwrap());
    let nar = std::fs::read(files.join(field(&info, "URL").unwrap())).unwrap();
    let r = reqwest::Client::new()
        .put(&nar_url)
        .body(nar.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
    assert_eq!(
        put(
            &nar_url,
            Some("Bearer wrong-token-wrong-token"),
            nar.clone()
        )
        .await
        .0,
        403
    );
    assert_eq!(put(&nar_url, Some("Basic !!"), nar.clone()).await.0, 403);
    let (status, _) = narinfo(&cache, &top).await;
    assert_eq!(status, 404);
    no_temp_files(&cache).await;
    let stats = cache.app.index.stats().unwrap();
    assert_eq!((stats.narinfos, stats.nars_stored), (0, 0));
    let status = cache.status().await;
    assert_eq!(status["pushes"]["refused_without_token"], 5);

    // A Bearer token works as well as the netrc password.
    let bearer = format!("Bearer {}", tok.secret);
    let (code, body) = put(&nar_url, Some(&bearer), nar).await;
    assert_eq!(code, 200, "{body}");
    let info_url = format!("{}/{}.narinfo", cache.url, hash_of(&top));
    let (code, body) = put(&info_url, Some(&bearer), info.into_bytes()).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(narinfo(&cache, &top).await.0, 200);
    cache.stop().await;
}

/// Re-signs `narinfo` (after a change) with `key`, replacing the signatures it had.
fn resign(narinfo: &mut NarInfo, key: &Path) {
    let key = SecretKey::parse(&std::fs::read_to_string(key).unwrap()).unwrap();
    narinfo.sigs.clear();
    narinfo.sign_with(&key);
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_nars_and_narinfos_are_refused() {
    let fx = fixture();
    let work = tempfile::tempdir().unwrap();
    let builder = Builder::new(work.path(), "builder");
    let (top, dep) = builder.build(fx, "tampered", "tamper-test");
    let (appliance_key, _) = keygen(work.path(), "appliance-1");
    let tok = token_files(work.path(), "ci");
    let up = TestUpstream::start(&fx.caches["xz"]).await;
    let config = push_config(
        &work.path().join("data"),
        &[&up.url],
        &appliance_key,
        &[&builder.public_key],
        vec![token("ci", &tok)],
    );
    let cache = Nixcache::start(config).await;
    let auth = format!("Bearer {}", tok.secret);
    // Files as Nix uploads them, made by Nix itself; tampered by hand (the real client will not).
    let files = builder.file_cache(fx, &work.path().join("files"), &[&top, &dep]);
    let read = |path: &str| {
        let text =
            std::fs::read_to_string(files.join(format!("{}.narinfo", hash_of(path)))).unwrap();
        let nar = std::fs::read(files.join(field(&text, "URL").unwrap())).unwrap();
        (NarInfo::parse(&text).unwrap(), nar)
    };
    let (info, nar) = read(&top);
    let (dep_info, dep_nar) = read(&dep);
    let nar_url = format!("{}/{}", cache.url, info.url);
    let info_url = format!("{}/{}.narinfo", cache.url, hash_of(&top));

    // A NAR whose bytes are not its name.
    let mut flipped = nar.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0xff;
    let (code, body) = put(&nar_url, Some(&auth), flipped).await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("does not match its name"), "{body}");

    // The right NAR, then narinfos that lie about it.
    assert_eq!(put(&nar_url, Some(&auth), nar.clone()).await.0, 200);
    let mut other_refs = info.clone();
    other_refs.references.clear();
    let (code, body) = put(&info_url, Some(&auth), other_refs.to_text().into_bytes()).await;
    assert_eq!((code, body.contains("signature")), (403, true), "{body}");
    // (A refused narinfo takes its waiting upload with it: upload the NAR again.)
    assert_eq!(put(&nar_url, Some(&auth), nar.clone()).await.0, 200);
    let mut wrong_hash = info.clone();
    wrong_hash.nar_hash = dep_info.nar_hash;
    resign(&mut wrong_hash, &builder.secret_key);
    let (code, body) = put(&info_url, Some(&auth), wrong_hash.to_text().into_bytes()).await;
    assert_eq!(code, 400, "a signed NarHash that is not the NAR's: {body}");
    assert!(body.contains("does not match the narinfo"), "{body}");
    let other_url = format!("{}/{}.narinfo", cache.url, hash_of(&dep));
    let (code, body) = put(&other_url, Some(&auth), info.to_text().into_bytes()).await;
    assert_eq!(code, 400, "a StorePath that is not the URL's: {body}");
    assert!(body.contains("does not have the hash of the URL"), "{body}");

    // A path the upstream has, claimed with another NAR (signed by a trusted builder key): refused.
    assert_eq!(
        narinfo(&cache, &fx.top).await.0,
        200,
        "recorded from the upstream"
    );
    assert_eq!(
        put(
            &format!("{}/{}", cache.url, dep_info.url),
            Some(&auth),
            dep_nar
        )
        .await
        .0,
        200
    );
    let mut claim = dep_info.clone();
    claim.store_path = NarInfo::parse(&narinfo(&cache, &fx.top).await.1)
        .unwrap()
        .store_path;
    claim.references.clear();
    resign(&mut claim, &builder.secret_key);
    let claim_url = format!("{}/{}.narinfo", cache.url, hash_of(&fx.top));
    let (code, body) = put(&claim_url, Some(&auth), claim.to_text().into_bytes()).await;
    assert_eq!(code, 409, "{body}");
    let served = narinfo(&cache, &fx.top).await.1;
    assert!(
        !served.contains(&dep_info.nar_hash.to_string()),
        "the upstream's narinfo stays"
    );

    assert_eq!(
        narinfo(&cache, &top).await.0,
        404,
        "nothing of the tampered uploads is served"
    );
    no_temp_files(&cache).await;
    let status = cache.status().await;
    assert_eq!(status["pushes"]["tokens"][0]["stored_paths"], 0);
    assert_eq!(status["pushes"]["pending"], 0);
    cache.stop().await;
}

/// Sends the head of a `PUT /nar/...` and the first half of its body by hand (the real client cannot
/// be cut off at will), then gives the socket to the caller.
async fn half_an_upload(
    cache: &Nixcache,
    path: &str,
    auth: &str,
    nar: &[u8],
) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let addr = cache.url.strip_prefix("http://").unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PUT /{path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {auth}\r\nContent-Type: application/x-nix-nar\r\nContent-Length: {}\r\n\r\n",
        nar.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&nar[..nar.len() / 2]).await.unwrap();
    s.flush().await.unwrap();
    s
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_cut_off_or_stalled_midway_leaves_nothing() {
    let fx = fixture();
    let work = tempfile::tempdir().unwrap();
    let builder = Builder::new(work.path(), "builder");
    let big = builder.build_big(fx, "cut-off", 2 << 20);
    let (appliance_key, _) = keygen(work.path(), "appliance-1");
    let tok = token_files(work.path(), "ci");
    let config = push_config(
        &work.path().join("data"),
        &[],
        &appliance_key,
        &[&builder.public_key],
        vec![token("ci", &tok)],
    );
    let cache = Nixcache::start(config).await;
    let auth = format!("Bearer {}", tok.secret);
    let files = builder.file_cache(fx, &work.path().join("files"), &[&big]);
    let info = std::fs::read_to_string(files.join(format!("{}.narinfo", hash_of(&big)))).unwrap();
    let nar_path = field(&info, "URL").unwrap();
    let nar = std::fs::read(files.join(nar_path)).unwrap();

    // Cut off: half the body, then the connection closes.
    let socket = half_an_upload(&cache, nar_path, &auth, &nar).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(socket);
    no_temp_files(&cache).await;
    let info_url = format!("{}/{}.narinfo", cache.url, hash_of(&big));
    let (code, body) = put(&info_url, Some(&auth), info.clone().into_bytes()).await;
    assert_eq!(code, 400, "a narinfo without its NAR: {body}");

    // Stalled: half the body, then nothing for longer than stall_timeout (2 s in tests).
    let socket = half_an_upload(&cache, nar_path, &auth, &nar).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        cache.app.store.temp_files().unwrap().len(),
        1,
        "the upload is being received"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    no_temp_files(&cache).await;
    drop(socket);

    assert_eq!(narinfo(&cache, &big).await.0, 404);
    let stats = cache.app.index.stats().unwrap();
    assert_eq!(
        (stats.narinfos, stats.nars_stored, stats.store_bytes),
        (0, 0, 0)
    );
    let metrics = get(&format!("{}/metrics", cache.url)).await.1;
    let cut = r#"nixcache_push_refused_total{reason="cut_off",token="ci"}"#;
    assert_eq!(sample(&metrics, cut), 2.0);
    cache.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_uploads_of_the_same_path_end_with_one_good_copy() {
    let fx = fixture();
    let work = tempfile::tempdir().unwrap();
    // Two builders build the same derivation: the same output, the same NAR, the same file.
    let one = Builder::new(work.path(), "one");
    let two = Builder::new(work.path(), "two");
    let (top, _) = one.build(fx, "twice", "concurrent-test");
    assert_eq!(two.build(fx, "twice", "concurrent-test").0, top);
    let (appliance_key, appliance_public) = keygen(work.path(), "appliance-1");
    let (tok_one, tok_two) = (
        token_files(work.path(), "one"),
        token_files(work.path(), "two"),
    );
    let config = push_config(
        &work.path().join("data"),
        &[],
        &appliance_key,
        &[&one.public_key, &two.public_key],
        vec![token("one", &tok_one), token("two", &tok_two)],
    );
    let cache = Nixcache::start(config).await;

    let url = cache.url.clone();
    let copies = [(&one, &tok_one), (&two, &tok_two)].map(|(b, t)| {
        let (url, top, netrc) = (url.clone(), top.clone(), t.netrc.clone());
        let (store, key) = (b.store.clone(), b.secret_key.clone());
        std::thread::spawn(move || {
            let b = Builder {
                store,
                secret_key: key,
                public_key: String::new(),
            };
            let first = b.copy_to(fixture(), &url, Some(&netrc), true, &[&top]);
            // Nix 2.8 fails with "coroutine has finished" when a path it is about to upload becomes
            // valid at the destination meanwhile (the other builder's push won): its own bug on an
            // answer that is right. Running it again finds everything there.
            match first {
                (false, err) if err.contains("coroutine has finished") => {
                    b.copy_to(fixture(), &url, Some(&netrc), true, &[&top])
                }
                other => other,
            }
        })
    });
    for c in copies {
        let (ok, err) = c.join().unwrap();
        assert!(ok, "a concurrent nix copy failed: {err}");
    }

    // And four uploads of one more path at once, by hand, racing from the first byte.
    let big = one.build_big(fx, "raced", 1 << 20);
    let files = one.file_cache(fx, &work.path().join("files"), &[&big]);
    let info = std::fs::read_to_string(files.join(format!("{}.narinfo", hash_of(&big)))).unwrap();
    let nar = std::fs::read(files.join(field(&info, "URL").unwrap())).unwrap();
    let auth = format!("Bearer {}", tok_one.secret);
    let races = (0..4).map(|_| {
        let (nar_url, info_url) = (
            format!("{}/{}", cache.url, field(&info, "URL").unwrap()),
            format!("{}/{}.narinfo", cache.url, hash_of(&big)),
        );
        let (nar, info, auth) = (nar.clone(), info.clone(), auth.clone());
        tokio::spawn(async move {
            let a = put(&nar_url, Some(&auth), nar).await;
            let b = put(&info_url, Some(&auth), info.into_bytes()).await;
            (a, b)
        })
    });
    for r in futures_util::future::join_all(races).await {
        let (a, b) = r.unwrap();
        assert_eq!((a.0, b.0), (200, 200), "{a:?} {b:?}");
    }

    let stats = cache.app.index.stats().unwrap();
    assert_eq!(
        (stats.narinfos, stats.nars_stored),
        (3, 3),
        "one copy of each path"
    );
    assert_eq!(cache.app.store.files().unwrap().len(), 3);
    no_temp_files(&cache).await;
    let store_c = work.path().join("storeC");
    for p in [&top, &big] {
        let (ok, err) = fx.realise(&store_c, &cache.url, p, &appliance_public);
        assert!(ok, "{err}");
    }
    cache.stop().await;
}

/// Nix sends every upload with `Expect: 100-continue`. An upload answered before its body was asked
/// for (a NAR already waiting or stored, a refusal) closes the connection: curl, told the final status
/// first, sends no body and would send its next request on the same connection, where hyper would take
/// its first bytes for the body it still waits for and answer the rest 400 — once in about fifteen runs of
/// `concurrent_uploads_of_the_same_path_end_with_one_good_copy` before (seen in a packet capture). That
/// needs curl's next request to arrive before hyper gives up on the body, a race; what is checked here,
/// with none, is what keeps curl off the connection: the answer says `Connection: close`, and it ends.
#[tokio::test(flavor = "multi_thread")]
async fn an_upload_answered_before_its_body_closes_the_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let work = tempfile::tempdir().unwrap();
    let tok = token_files(work.path(), "ci");
    let mut config = test_config(&work.path().join("data"), &[]);
    config.push.tokens = vec![token("ci", &tok)];
    let cache = Nixcache::start(config).await;
    let nar = b"any bytes: a NAR upload is checked against its name first".to_vec();
    let name = format!(
        "nar/{}.nar",
        nixcache::nix::hash::Sha256Hash::digest(&nar).to_nix32()
    );
    let auth = format!("Bearer {}", tok.secret);
    // The NAR, uploaded whole: it waits for its narinfo.
    let (status, text) = put(&format!("{}/{name}", cache.url), Some(&auth), nar.clone()).await;
    assert_eq!(status, 200, "{text}");

    let addr = cache.url.trim_start_matches("http://").to_string();
    for (auth_line, want) in [
        (format!("Authorization: {auth}\r\n"), "200"),
        (String::new(), "401"),
    ] {
        let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "PUT /{name} HTTP/1.1\r\nHost: {addr}\r\n{auth_line}Content-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            nar.len()
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        // The answer's head, then (as curl does, not having sent the body) the next request: a GET with a
        // header long enough to fill the announced body and leave a broken request behind it.
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before answering: {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
        let answer = String::from_utf8_lossy(&got).to_lowercase();
        assert!(answer.starts_with(&format!("http/1.1 {want}")), "{answer}");
        assert!(
            answer.contains("connection: close"),
            "{want} kept the connection: {answer}"
        );
        let next = format!(
            "GET /nix-cache-info HTTP/1.1\r\nHost: {addr}\r\nX-Pad: {}\r\n\r\n",
            "p".repeat(nar.len())
        );
        let _ = tcp.write_all(next.as_bytes()).await;
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut rest)).await;
        let rest = String::from_utf8_lossy(&rest).to_string();
        assert!(read.is_ok(), "{want}: the connection stayed open");
        assert!(!rest.contains("400 Bad Request"), "{want}: {rest}");
        assert!(
            !rest.contains("nix-cache-info") && !rest.contains("StoreDir"),
            "{want}: {rest}"
        );
    }
    cache.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn scope_and_quota_are_enforced() {
    let fx = fixture();
    let work = tempfile::tempdir().unwrap();
    let builder = Builder::new(work.path(), "builder");
    let (allowed, _) = builder.build(fx, "allowed-tool", "scope-test");
    let (denied, _) = builder.build(fx, "denied-tool", "scope-test");
    let big = builder.build_big(fx, "allowed-big", 256 << 10);
    let (appliance_key, _) = keygen(work.path(), "appliance-1");
    let tok = token_files(work.path(), "scoped");
    let scoped = PushTokenConfig {
        paths: vec!["allowed-*".into()],
        quota: Some(64 << 10),
        ..token("scoped", &tok)
    };
    let config = push_config(
        &work.path().join("data"),
        &[],
        &appliance_key,
        &[&builder.public_key],
        vec![scoped],
    );
    let cache = Nixcache::start(config).await;

    let (ok, err) = builder.copy_to(fx, &cache.url, Some(&tok.netrc), true, &[&denied]);
    assert!(
        !ok && err.contains("403") && err.contains("may not publish"),
        "{err}"
    );
    assert_eq!(narinfo(&cache, &denied).await.0, 404);
    let (ok, err) = builder.copy_to(fx, &cache.url, Some(&tok.netrc), true, &[&allowed]);
    assert!(ok, "{err}");
    assert_eq!(narinfo(&cache, &allowed).await.0, 200);
    let (ok, err) = builder.copy_to(fx, &cache.url, Some(&tok.netrc), true, &[&big]);
    assert!(!ok && err.contains("413") && err.contains("quota"), "{err}");
    assert_eq!(narinfo(&cache, &big).await.0, 404);
    no_temp_files(&cache).await;
    let status = cache.status().await;
    assert_eq!(
        status["pushes"]["tokens"][0]["stored_paths"], 2,
        "allowed-tool and its dep"
    );
    cache.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unsigned_uploads_need_a_token_that_lets_the_appliance_sign() {
    let fx = fixture();
    let work = tempfile::tempdir().unwrap();
    let builder = Builder::new(work.path(), "builder");
    let (top, _) = builder.build(fx, "unsigned", "sign-test");
    let (appliance_key, appliance_public) = keygen(work.path(), "appliance-1");
    let (plain, signer) = (
        token_files(work.path(), "plain"),
        token_files(work.path(), "signer"),
    );
    let signing = PushTokenConfig {
        sign: true,
        ..token("signer", &signer)
    };
    let data = work.path().join("data");
    let config = push_config(
        &data,
        &[],
        &appliance_key,
        &[],
        vec![token("plain", &plain), signing],
    );
    let cache = Nixcache::start(config.clone()).await;

    let (ok, err) = builder.copy_to(fx, &cache.url, Some(&plain.netrc), false, &[&top]);
    assert!(
        !ok && err.contains("403") && err.contains("signature"),
        "{err}"
    );
    let (ok, err) = builder.copy_to(fx, &cache.url, Some(&signer.netrc), false, &[&top]);
    assert!(ok, "{err}");
    let text = narinfo(&cache, &top).await.1;
    let sigs: Vec<&str> = text.lines().filter(|l| l.starts_with("Sig: ")).collect();
    assert_eq!(sigs.len(), 1, "only the appliance's: {text}");
    assert!(sigs[0].starts_with("Sig: appliance-1:"));
    let (ok, err) = fx.realise(
        &work.path().join("storeB"),
        &cache.url,
        &top,
        &appliance_public,
    );
    assert!(ok, "{err}");

    // The token goes: what it vouched for is no longer served (the trust re-check).
    cache.stop().await;
    let mut without = config;
    without.push.tokens.retain(|t| t.name != "signer");
    let cache = Nixcache::start(without).await;
    assert_eq!(narinfo(&cache, &top).await.0, 404);
    cache.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_post_build_hook_pushes_what_nix_builds() {
    let fx = fixture();
    let work = tempfile::tempdir().unwrap();
    let builder = Builder::new(work.path(), "builder");
    let hook = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/nixos-appliance/nixcache-push-hook.sh"
    );
    require("shellcheck", "shellcheck");
    let lint = std::process::Command::new("shellcheck")
        .arg(hook)
        .output()
        .unwrap();
    assert!(
        lint.status.success(),
        "{}",
        String::from_utf8_lossy(&lint.stdout)
    );
    let (appliance_key, appliance_public) = keygen(work.path(), "appliance-1");
    let tok = token_files(work.path(), "hook");
    let config = push_config(
        &work.path().join("data"),
        &[],
        &appliance_key,
        &[&builder.public_key],
        vec![token("hook", &tok)],
    );
    let cache = Nixcache::start(config).await;

    // nix-build runs the hook after the build; the hook's own nix copy reads the same store.
    let expr = r#"derivation { name = "hooked"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo built-with-a-hook > $out" ]; }"#;
    let mut cmd = fx.nix.cmd("nix-build");
    let nix_config = format!(
        "experimental-features = nix-command\nsandbox = false\nbuild-users-group =\nsubstituters =\nextra-sandbox-paths = /bin /usr /lib /lib64\n\
         narinfo-cache-positive-ttl = 0\nnarinfo-cache-negative-ttl = 0\nstore = {}\npost-build-hook = {hook}\n",
        builder.store.display()
    );
    let out = cmd
        .env("NIX_CONFIG", nix_config)
        .env("NIXCACHE_PUSH_URL", &cache.url)
        .env("NIXCACHE_PUSH_TOKEN_FILE", &tok.file)
        .env("NIXCACHE_PUSH_SECRET_KEY_FILE", &builder.secret_key)
        .env("NIXCACHE_PUSH_STRICT", "1")
        .args(["--no-out-link", "-E", expr])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(
        narinfo(&cache, &path).await.0,
        200,
        "the hook pushed {path}"
    );
    let (ok, err) = fx.realise(
        &work.path().join("storeB"),
        &cache.url,
        &path,
        &appliance_public,
    );
    assert!(ok, "{err}");
    cache.stop().await;
}
