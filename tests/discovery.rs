//! mDNS discovery between two hosts: network namespaces joined by a veth pair (recipes/PEERS.md).
//! `nixcache serve` advertises in one; in the other, `nixcache discover`, avahi (an independent mDNS
//! stack) and nixos-appliance/nixcache-discover.sh find it, and the real Nix client substitutes through
//! the URL they found. Advertised keys are trusted only when pinned, or with `--trust-advertised`.
//! Needs root (scripts/test.sh runs as root and installs avahi, dbus and curl).

mod common;
#[path = "common/netns.rs"]
mod netns;

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use common::*;
use netns::{Avahi, NetnsPair, Proc};

const BIN: &str = env!("CARGO_BIN_EXE_nixcache");
const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/nixos-appliance/nixcache-discover.sh"
);

/// `nixcache serve` in namespace `ns` with its own host name (a UTS namespace: each "host" has one).
struct Serve {
    proc: Proc,
    port: u16,
}

fn serve(ns: &str, hostname: &str, data: &Path, args: &[&str]) -> Serve {
    let mut cmd = NetnsPair::cmd(ns, "unshare");
    cmd.args([
        "-u",
        "sh",
        "-c",
        "hostname \"$1\" && shift && exec \"$@\"",
        "sh",
    ])
    .arg(hostname)
    .arg(BIN)
    .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
    .arg(data)
    .args(args)
    .env("NIXCACHE_LOG", "info")
    .env_remove("NIXCACHE_LISTEN")
    .env_remove("NIXCACHE_PORT")
    .env_remove("NIXCACHE_UPSTREAM")
    .env_remove("NIXCACHE_DATA_DIR")
    .env_remove("STATE_DIRECTORY")
    .stdout(Stdio::null());
    let mut proc = Proc::spawn(&format!("nixcache serve ({hostname})"), &mut cmd);
    let line = proc.wait_for_log("nixcache serving", Duration::from_secs(20));
    // "... nixcache serving listen=0.0.0.0:41234 data_dir=..."
    let port = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("listen="))
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        .map(|a| a.port())
        .unwrap_or_else(|| panic!("no listen address in {line:?}"));
    Serve { proc, port }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `nixcache discover --timeout 3 ARGS` in namespace `ns`.
fn discover(ns: &str, args: &[&str]) -> Output {
    NetnsPair::cmd(ns, BIN)
        .args(["discover", "--timeout", "3"])
        .args(args)
        .output()
        .expect("run nixcache discover")
}

/// The discovery script with `args`, run where avahi runs.
fn script(avahi: &Avahi, args: &[&str]) -> Output {
    avahi
        .cmd("sh")
        .arg(SCRIPT)
        .args(args)
        .output()
        .expect("run nixcache-discover.sh")
}

/// Lines of `text` that are not comments.
fn conf_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// avahi's resolved (`=`) lines for the instance `name`.
fn resolved<'a>(browse: &'a str, name: &str) -> Vec<&'a str> {
    browse
        .lines()
        .filter(|l| l.starts_with("=;") && l.split(';').nth(3) == Some(name))
        .collect()
}

/// `python3 -m http.server` on 127.0.0.1 port 0 inside `ns`, over `dir`; returns it and its URL.
fn ns_http_server(ns: &str, dir: &Path) -> (Proc, String) {
    let (child, url) = common::http_server(NetnsPair::cmd(ns, "python3"), dir);
    (Proc::adopt("http.server", child), url)
}

#[test]
fn discover_finds_the_appliance_across_a_veth_and_nix_substitutes_from_it() {
    let fx = fixture();
    let work = tempfile::tempdir().unwrap();
    let net = NetnsPair::new();
    let avahi = Avahi::start(&net.b, &net.veth_b, &work.path().join("avahi"));

    let (upstream_proc, upstream) = ns_http_server(&net.a, &fx.caches["xz"]);
    let (sk, pk) = keygen(work.path(), "nixcache.lan-1");
    let mut appliance = serve(
        &net.a,
        "appliance",
        &work.path().join("data"),
        &[
            "--upstream",
            &upstream,
            "--trusted-key",
            &fx.public_key,
            "--signing-key-file",
            sk.to_str().unwrap(),
        ],
    );
    appliance
        .proc
        .wait_for_log("advertised over mDNS", Duration::from_secs(10));
    let url = format!("http://{}:{}", net.ip_a, appliance.port);

    // nixcache discover, from the other host, with the appliance's key pinned.
    let conf = work.path().join("nix.conf.d/discovered.conf");
    std::fs::create_dir_all(conf.parent().unwrap()).unwrap();
    let out = discover(
        &net.b,
        &[
            "--trust",
            &pk,
            "--nix-conf",
            "--write",
            conf.to_str().unwrap(),
        ],
    );
    let lines = conf_lines(&stdout(&out));
    assert!(
        out.status.success(),
        "discover: {}\nserve log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        appliance.proc.log()
    );
    assert_eq!(
        lines,
        [
            format!("extra-substituters = {url}?priority=30"),
            format!("extra-trusted-public-keys = {pk}"),
        ]
    );
    assert_eq!(
        conf_lines(&std::fs::read_to_string(&conf).unwrap()),
        lines,
        "--write writes the same lines"
    );

    // The table says where, which priority, which key, and why it is trusted.
    let out = discover(&net.b, &["--trust", &pk]);
    let table = stdout(&out);
    assert!(
        table.contains(&url)
            && table.contains("priority 30")
            && table.contains(&pk)
            && table.contains("trusted (pinned)"),
        "{table}"
    );

    // avahi, an independent mDNS stack, sees the same service and TXT record, at the veth address only.
    let browse = avahi.browse_until(Duration::from_secs(10), |b| {
        !resolved(b, "appliance").is_empty()
    });
    let found = resolved(&browse, "appliance");
    assert!(
        !found.is_empty(),
        "avahi does not see the appliance:\n{browse}"
    );
    for line in &found {
        let fields: Vec<&str> = line.split(';').collect();
        assert_eq!(fields[4], "_nix-cache._tcp", "{line}");
        assert_eq!(
            fields[7], net.ip_a,
            "only the interface's own address goes to other hosts: {line}"
        );
        assert_eq!(
            fields[8],
            appliance.port.to_string(),
            "the bound port: {line}"
        );
        for txt in [
            "\"txtvers=1\"",
            "\"path=/\"",
            "\"proto=http\"",
            "\"priority=30\"",
            &format!("\"pubkey={pk}\""),
        ] {
            assert!(fields[9].contains(txt), "{txt} missing: {line}");
        }
    }
    assert!(
        !browse.contains(";127.") && !browse.contains(";0.0.0.0;"),
        "loopback or unspecified address advertised:\n{browse}"
    );

    // The script gives the same lines, and writes them too.
    let script_conf = work.path().join("nix.conf.d/script.conf");
    let out = script(
        &avahi,
        &["--trust", &pk, "--write", script_conf.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "script: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(conf_lines(&stdout(&out)), lines);
    assert_eq!(
        conf_lines(&std::fs::read_to_string(&script_conf).unwrap()),
        lines
    );

    // The real Nix client in the other namespace substitutes the closure with exactly the discovered lines.
    let store = work.path().join("store-b");
    let mut nix = fx.nix.cmd("ip");
    let base = nix
        .get_envs()
        .find(|(k, _)| *k == "NIX_CONFIG")
        .and_then(|(_, v)| v.map(|v| v.to_string_lossy().into_owned()))
        .expect("NixEnv sets NIX_CONFIG");
    let out = nix
        .env(
            "NIX_CONFIG",
            format!("{base}{}\n", std::fs::read_to_string(&conf).unwrap()),
        )
        .args(["netns", "exec", &net.b, "nix-store", "--store"])
        .arg(&store)
        .args(["-r", &fx.top])
        .output()
        .expect("run nix-store");
    assert!(
        out.status.success(),
        "nix-store -r through the discovered URL: {}\nserve log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        appliance.proc.log()
    );
    for path in &fx.closure {
        let real = store.join(path.trim_start_matches('/'));
        assert!(real.exists(), "{path} not substituted");
    }

    // SIGTERM withdraws the advertisement: avahi drops it at once instead of keeping it for its TTL.
    let status = appliance.proc.terminate();
    assert!(
        status.success(),
        "serve exited with {status}:\n{}",
        appliance.proc.log()
    );
    assert!(
        appliance
            .proc
            .log()
            .contains("mDNS advertisement withdrawn")
    );
    let browse = avahi.browse_until(Duration::from_secs(3), |b| {
        resolved(b, "appliance").is_empty()
    });
    assert!(
        resolved(&browse, "appliance").is_empty(),
        "still advertised after shutdown:\n{browse}"
    );
    drop(upstream_proc);
}

#[test]
fn advertised_keys_are_trusted_only_when_pinned_or_explicitly_accepted() {
    let work = tempfile::tempdir().unwrap();
    let net = NetnsPair::new();
    let avahi = Avahi::start(&net.b, &net.veth_b, &work.path().join("avahi"));
    let (sk, pk) = keygen(work.path(), "nixcache.lan-1");
    let (spoof_sk, spoof_pk) = keygen(work.path(), "spoof-1");
    // Upstreams are never asked here: nothing is requested but /nix-cache-info.
    let none: &[&str] = &["--upstream", "http://127.0.0.1:9"];
    fn signed<'a>(none: &[&'a str], key: &'a Path) -> Vec<&'a str> {
        [none, &["--signing-key-file", key.to_str().unwrap()]].concat()
    }

    let mut genuine = serve(
        &net.a,
        "appliance",
        &work.path().join("d1"),
        &signed(none, &sk),
    );
    // Another process, same service type, a key nobody pinned.
    let mut spoof = serve(
        &net.a,
        "impostor",
        &work.path().join("d2"),
        &signed(none, &spoof_sk),
    );
    // Two that must not be seen from the other host: turned off, and advertising on loopback only.
    let mut quiet = serve(
        &net.a,
        "quiet",
        &work.path().join("d3"),
        &[none, &["--no-mdns"]].concat(),
    );
    let mut lo_only = serve(
        &net.a,
        "lo-only",
        &work.path().join("d4"),
        &[none, &["--mdns-interface", "lo"]].concat(),
    );
    for s in [&mut genuine, &mut spoof, &mut lo_only] {
        s.proc
            .wait_for_log("advertised over mDNS", Duration::from_secs(10));
    }
    quiet
        .proc
        .wait_for_log("mDNS advertisement turned off", Duration::from_secs(10));
    let genuine_url = format!("http://{}:{}?priority=30", net.ip_a, genuine.port);
    let spoof_url = format!("http://{}:{}?priority=30", net.ip_a, spoof.port);
    let mut both = [genuine_url.clone(), spoof_url.clone()];
    both.sort();
    let substituters = format!("extra-substituters = {}", both.join(" "));

    // Let avahi see both before comparing it with nixcache discover.
    let browse = avahi.browse_until(Duration::from_secs(10), |b| {
        !resolved(b, "appliance").is_empty() && !resolved(b, "impostor").is_empty()
    });
    assert!(
        resolved(&browse, "quiet").is_empty() && resolved(&browse, "lo-only").is_empty(),
        "{browse}"
    );

    let mut keys = [pk.clone(), spoof_pk.clone()];
    keys.sort();
    let unrelated = "someone-else-1:veQv4KKpmmHg7SlnFFbSRVLwWtRIi1N0nTJMfTpElKY=";
    let cases: [(&[&str], Vec<String>, bool); 4] = [
        (
            &["--trust", &pk],
            vec![
                substituters.clone(),
                format!("extra-trusted-public-keys = {pk}"),
            ],
            true,
        ),
        (&[], vec![substituters.clone()], false),
        (&["--trust", unrelated], vec![substituters.clone()], false),
        (
            &["--trust-advertised"],
            vec![
                substituters.clone(),
                format!("extra-trusted-public-keys = {}", keys.join(" ")),
            ],
            true,
        ),
    ];
    for (args, want, trusted) in cases {
        let out = discover(&net.b, &[args, &["--nix-conf"]].concat());
        let got = conf_lines(&stdout(&out));
        assert_eq!(
            got,
            want,
            "nixcache discover {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            out.status.success(),
            trusted,
            "exit status of nixcache discover {args:?}"
        );
        assert!(
            !stdout(&out).contains(&spoof_pk) || args.contains(&"--trust-advertised"),
            "{args:?}"
        );

        let out = script(&avahi, args);
        assert_eq!(
            conf_lines(&stdout(&out)),
            want,
            "script {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            out.status.success(),
            trusted,
            "exit status of the script {args:?}"
        );
    }

    // The table shows the impostor's key as not trusted.
    let out = discover(&net.b, &["--trust", &pk]);
    let table = stdout(&out);
    let impostor = table
        .lines()
        .find(|l| l.contains(&spoof_pk))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(impostor.contains("NOT trusted"), "{impostor}");

    // Control for the withdrawal test above: a cache killed without its goodbye stays in avahi's cache.
    spoof.proc.kill();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !resolved(&avahi.browse(), "impostor").is_empty(),
        "avahi forgot a service without a goodbye"
    );
    for s in [&mut genuine, &mut quiet, &mut lo_only] {
        assert!(s.proc.terminate().success(), "{}", s.proc.log());
    }
}

#[test]
fn a_failure_to_advertise_does_not_stop_the_cache() {
    let work = tempfile::tempdir().unwrap();
    let net = NetnsPair::new();
    // A key name so long that the TXT record cannot hold it (255 bytes at most).
    let (sk, pk) = keygen(work.path(), &"k".repeat(250));
    let mut s = serve(
        &net.a,
        "appliance",
        &work.path().join("data"),
        &[
            "--upstream",
            "http://127.0.0.1:9",
            "--signing-key-file",
            sk.to_str().unwrap(),
        ],
    );
    s.proc
        .wait_for_log("cannot advertise over mDNS", Duration::from_secs(10));
    let out = NetnsPair::cmd(&net.b, "curl")
        .args(["-fsS", "--noproxy", "*", "--max-time", "5"])
        .arg(format!("http://{}:{}/nix-cache-info", net.ip_a, s.port))
        .output()
        .expect("run curl");
    let body = stdout(&out);
    assert!(
        out.status.success() && body.contains("StoreDir: /nix/store"),
        "{body}"
    );
    assert!(body.contains(&pk), "the cache serves on: {body}");
    assert!(s.proc.terminate().success(), "{}", s.proc.log());
}
