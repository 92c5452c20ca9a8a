//! The `nixcache` binary as users run it: configuration errors, clean shutdown on SIGTERM, and a
//! `kill -9` in the middle of a download.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;

fn nixcache() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nixcache"));
    c.env_remove("NIXCACHE_LISTEN")
        .env_remove("NIXCACHE_PORT")
        .env_remove("NIXCACHE_UPSTREAM")
        .env_remove("NIXCACHE_DATA_DIR")
        .env_remove("STATE_DIRECTORY");
    c
}

fn fails_with(args: &[&str], needle: &str) {
    let out = nixcache().args(args).output().expect("run nixcache");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} should fail");
    assert!(
        err.contains(needle),
        "{args:?}: {err:?} should name {needle:?}"
    );
}

#[test]
fn bad_configuration_stops_start_up_naming_the_culprit() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("bad.toml");
    std::fs::write(&conf, "listen = \"0.0.0.0:1\"\nmax_sise = \"1G\"\n").unwrap();
    fails_with(&["serve", "--config", conf.to_str().unwrap()], "max_sise");
    std::fs::write(&conf, "priority = \"high\"\n").unwrap();
    fails_with(&["serve", "--config", conf.to_str().unwrap()], "priority");
    fails_with(
        &["serve", "--max-size", "lots", "--check-config"],
        "--max-size",
    );
    fails_with(
        &["serve", "--listen", "nowhere", "--check-config"],
        "--listen",
    );
    fails_with(
        &["serve", "--config", "/nonexistent/nixcache.toml"],
        "/nonexistent/nixcache.toml",
    );

    // An admin token file that cannot be read is named as such.
    let conf = dir.path().join("token.toml");
    std::fs::write(&conf, "admin_token_file = \"/nonexistent/admin-token\"\n").unwrap();
    let data = dir.path().join("token-data");
    fails_with(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--no-mdns",
            "--config",
            conf.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        "admin token file /nonexistent/admin-token",
    );

    // A data folder that cannot be created: its parent is a regular file.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let data = file.join("data");
    fails_with(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        data.to_str().unwrap(),
    );
}

#[test]
fn shipped_config_file_is_accepted() {
    let conf = concat!(env!("CARGO_MANIFEST_DIR"), "/config/nixcache.toml");
    let out = nixcache()
        .args(["serve", "--config", conf, "--check-config"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("37515"));
}

fn start(data: &std::path::Path, upstream: &str) -> (ChildGuard, String, mpsc::Receiver<String>) {
    start_daemon(data, upstream, &[])
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_and_closes_the_index() {
    let fx = fixture();
    let up = TestUpstream::start(&fx.caches["none"]).await;
    let data = tempfile::tempdir().unwrap();
    let (mut child, url, logs) = start(data.path(), &up.url);
    let text = reqwest::get(format!("{url}/{}.narinfo", hash_of(&fx.big)))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let nar = field(&text, "URL").unwrap().to_string();
    // A slow download is in flight when SIGTERM arrives: it is allowed to finish.
    up.set_fault(Fault::SlowNar);
    let download = tokio::spawn(async move {
        reqwest::get(format!("{url}/{nar}"))
            .await
            .unwrap()
            .bytes()
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = child.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let body = download
        .await
        .unwrap()
        .expect("in-flight download completes");
    assert_eq!(nix_sha256(&body), field(&text, "FileHash").unwrap());
    let status = tokio::task::spawn_blocking(move || child.0.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "clean exit: {status:?}");
    let logged: Vec<String> = logs.try_iter().collect();
    assert!(logged.iter().any(|l| l.contains("stopped")), "{logged:?}");
    // The index is closed (its lock released) and reopens.
    nixcache::index::Index::open(&data.path().join("index.redb"), None).expect("reopen index");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_download_leaves_only_verified_data() {
    let fx = fixture();
    let up = TestUpstream::start(&fx.caches["none"]).await;
    let data = tempfile::tempdir().unwrap();
    let (mut child, url, _logs) = start(data.path(), &up.url);
    // Slow from the start: the appliance fetches the NAR ahead as soon as the narinfo is asked for
    // (`prefetch`, on by default), and the request below must find that download still running (64 KiB
    // every 20 ms: 1.3 s for the 4 MiB NAR).
    up.set_fault(Fault::SlowNar);
    let text = reqwest::get(format!("{url}/{}.narinfo", hash_of(&fx.big)))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let nar = field(&text, "URL").unwrap().to_string();
    // Longer than the group commit's interval (250 ms): the narinfo's row is durable by now.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut response = reqwest::get(format!("{url}/{nar}")).await.unwrap();
    response.chunk().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    child.0.kill().unwrap(); // SIGKILL
    child.0.wait().unwrap();
    assert!(
        response.bytes().await.is_err(),
        "the client sees the transfer break"
    );
    assert!(
        std::fs::read_dir(data.path().join("tmp")).unwrap().count() > 0,
        "a partial temp file is what a crash leaves"
    );

    up.set_fault(Fault::None);
    let (child, url, _logs) = start(data.path(), &up.url);
    assert_eq!(
        std::fs::read_dir(data.path().join("tmp")).unwrap().count(),
        0,
        "cleaned at start"
    );
    let status: serde_json::Value = serde_json::from_slice(
        &reqwest::get(format!("{url}/_status"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(status["store"]["nars"], 0, "nothing unverified was kept");
    // The narinfo survived the crash (made durable by the group commit before it) and the NAR is
    // fetched and verified again.
    assert_eq!(status["index"]["narinfos"], 1);
    let bytes = reqwest::get(format!("{url}/{nar}"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(nix_sha256(&bytes), field(&text, "FileHash").unwrap());
    drop(child);
}

#[test]
fn a_signing_key_readable_by_others_is_warned_about_and_never_logged() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.secret");
    let made = nixcache()
        .args(["keygen", "warn-1", "--secret-key-file"])
        .arg(&key)
        .arg("--public-key-file")
        .arg(dir.path().join("key.public"))
        .output()
        .unwrap();
    assert!(made.status.success());
    let secret = std::fs::read_to_string(&key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut child = ChildGuard(
        nixcache()
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--no-mdns",
                "--upstream",
                "http://127.0.0.1:9",
            ])
            .arg("--signing-key-file")
            .arg(&key)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.0.stderr.take().unwrap();
    let mut seen = Vec::new();
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        let done = line.contains("nixcache serving");
        seen.push(line);
        if done {
            break;
        }
    }
    let log = seen.join("\n");
    assert!(
        log.contains("nixcache serving"),
        "it starts all the same: {log}"
    );
    assert!(log.contains("readable by group or others"), "{log}");
    assert!(
        !log.contains(&secret[7..]),
        "the secret never appears in logs"
    );
}
