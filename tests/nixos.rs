//! The NixOS side evaluated against a real nixpkgs, with a Nix new enough for it: the package, the server,
//! client and nixcache-proxy modules, the appliance, its images and the VM tests are instantiated to
//! `.drv` files, and what the options promise is checked in what they render (the unit, the config file,
//! nix.conf, the firewall). `scripts/nixos-eval.sh` provides Nix and nixpkgs (a Debian trixie chroot
//! with Nix 2.26 and a nixpkgs tree, cached per machine; see its header for the `NIXCACHE_NIXPKGS`
//! parameter); `tests/nixos/eval.nix` says what is evaluated. Building and booting (KVM) are
//! `nix flake check`'s, not this file's.
//!
//! Each defect the first evaluation found has a test here named after it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn root() -> &'static Path {
    Path::new(ROOT)
}

/// `scripts/nixos-eval.sh ARGS` (nix-instantiate in the chroot), from the repository.
fn nixos_eval(args: &[&str]) -> Output {
    Command::new(root().join("scripts/nixos-eval.sh"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("run scripts/nixos-eval.sh")
}

/// The line that says what went wrong: the first `error:` line with a message (Nix prints a bare
/// `error:` above its trace), else the last line (scripts/nixos-eval.sh ends with its reason).
fn first_error_line(stderr: &str) -> String {
    let lines = || stderr.lines().map(str::trim);
    lines()
        .find(|l| l.starts_with("error:") && l.len() > "error:".len())
        .or_else(|| lines().rfind(|l| !l.is_empty()))
        .unwrap_or("(no output)")
        .to_string()
}

/// Evaluates `attr` of tests/nixos/eval.nix to JSON, or the first error line.
fn eval_json(attr: &str) -> Result<Value, String> {
    let out = nixos_eval(&[
        "--eval",
        "--strict",
        "--json",
        "tests/nixos/eval.nix",
        "-A",
        attr,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(25).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!(
            "evaluating {attr} failed: {}\n\n{}",
            first_error_line(&stderr),
            tail.join("\n")
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("{attr}: not JSON: {e}"))
}

/// The groups of tests/nixos/eval.nix, each evaluated by a process of its own (one for all peaks near
/// 10 GB), once for all the tests of this file.
const GROUPS: [&str; 4] = ["servers", "clients", "appliances", "outputs"];

fn group(name: &str) -> &'static Value {
    static CELLS: [OnceLock<Result<Value, String>>; GROUPS.len()] =
        [const { OnceLock::new() }; GROUPS.len()];
    let i = GROUPS
        .iter()
        .position(|g| *g == name)
        .unwrap_or_else(|| panic!("no group {name}"));
    match CELLS[i].get_or_init(|| eval_json(&format!("groups.{name}"))) {
        Ok(facts) => facts,
        Err(e) => panic!("{e}"),
    }
}

/// What the flake provides besides systems: packages, VM tests, options, type tables, refusals.
fn outputs() -> &'static Value {
    group("outputs")
}

/// The facts of one NixOS system of tests/nixos/eval.nix.
fn system(name: &str) -> &'static Value {
    let group_name = match name {
        "server-default"
        | "server-full"
        | "server-port-80"
        | "server-and-client-one-package"
        | "overlay" => "servers",
        "client-manual" | "client-discovery" | "client-avahi" | "client-builder"
        | "proxy-default" | "proxy-lan-address" => "clients",
        "appliance" | "appliance-aarch64" => "appliances",
        _ => panic!("no system {name} in tests/nixos/eval.nix"),
    };
    let s = &group(group_name)["systems"][name];
    assert!(s.is_object(), "no system {name} in group {group_name}");
    s
}

fn text<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not text: {value}"))
}

/// The values of `key=` in a rendered unit, in order (a key may repeat).
fn unit_values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

fn unit_value<'a>(unit: &'a str, key: &str) -> &'a str {
    match unit_values(unit, key).as_slice() {
        [one] => one,
        other => panic!("{key}= appears {} times in\n{unit}", other.len()),
    }
}

fn server_unit(name: &str) -> &'static str {
    text(&system(name)["unit"], &format!("{name}: nixcache.service"))
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"))
        .iter()
        .map(|v| v.as_str().unwrap_or_else(|| panic!("not text: {v}")))
        .collect()
}

fn ports(value: &Value) -> Vec<u64> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"))
        .iter()
        .map(|v| v.as_u64().expect("a port"))
        .collect()
}

/// `nixcache serve --check-config` on `settings` rendered as the config file: the daemon's verdict.
fn check_config(settings: &Value) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nixcache.toml");
    let rendered = toml::to_string(settings).expect("settings render as TOML");
    std::fs::write(&file, &rendered).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_nixcache"))
        .env_clear()
        .arg("serve")
        .arg("--config")
        .arg(&file)
        .arg("--check-config")
        .output()
        .expect("run nixcache");
    assert!(
        out.status.success(),
        "the daemon refuses what the module rendered:\n{rendered}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn store_root() -> PathBuf {
    let out = nixos_eval(&["--root"]);
    assert!(out.status.success());
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

#[test]
fn every_output_instantiates_to_a_derivation() {
    let mut drvs = serde_json::Map::new();
    for name in GROUPS {
        drvs.extend(group(name)["drvs"].as_object().expect("drvs").clone());
    }
    for wanted in [
        "package-x86_64-linux",
        "package-aarch64-linux",
        "cache-proxy",
        "system-server-default",
        "system-server-full",
        "system-client-manual",
        "system-client-discovery",
        "system-client-avahi",
        "system-client-builder",
        "system-proxy-default",
        "system-proxy-lan-address",
        "system-appliance",
        "system-appliance-aarch64",
        "image-appliance-qemu-efi",
        "image-appliance-iso",
        "image-appliance-sd-card",
        "check-appliance",
        "check-discovery",
        "check-proxy-compat",
    ] {
        assert!(drvs.contains_key(wanted), "{wanted} was not instantiated");
    }
    let store = store_root();
    for (name, drv) in &drvs {
        let drv = text(drv, name);
        assert!(drv.ends_with(".drv"), "{name}: {drv}");
        let file = store.join(drv.trim_start_matches('/'));
        assert!(file.is_file(), "{name}: {} was not written", file.display());
    }
}

#[test]
fn option_types_accept_what_the_daemon_accepts() {
    let mismatches = strings(&outputs()["typeMismatches"]);
    assert!(
        mismatches.is_empty(),
        "nixos-appliance/lib.nix types disagree with tests/nixos/types.nix:\n{}",
        mismatches.join("\n")
    );
}

#[test]
fn server_defaults_render_a_config_the_daemon_resolves_to_its_defaults() {
    let settings = &system("server-default")["settings"];
    let no_file = Command::new(env!("CARGO_BIN_EXE_nixcache"))
        .env_clear()
        .args(["serve", "--check-config"])
        .output()
        .unwrap();
    assert_eq!(
        check_config(settings),
        String::from_utf8(no_file.stdout).unwrap()
    );
    let unit = server_unit("server-default");
    assert_eq!(unit_value(unit, "DynamicUser"), "true");
    assert_eq!(unit_value(unit, "StateDirectory"), "nixcache");
    assert!(unit_values(unit, "LoadCredential").is_empty());
    assert_eq!(unit_value(unit, "LimitNOFILE"), "65536");
    assert!(system("server-default")["warmUnit"].is_null());
    let firewall = &system("server-default")["firewall"];
    assert!(
        ports(&firewall["tcp"]).is_empty(),
        "openFirewall is off by default"
    );
}

#[test]
fn server_full_settings_reach_the_daemon_the_unit_and_the_firewall() {
    let s = system("server-full");
    let resolved = check_config(&s["settings"]);
    for expected in [
        "listen: [::]:8080",
        "data_dir: \"/srv/nixcache\"",
        "max_size: 214748364800",
        "priority: 10",
        "negative_ttl: 120s",
        "http://builder.lan:5000/",
        "https://cache.example.org/nix/",
        "repo: \"my-org/my-cache\"",
        "index_ttl: 600s",
        "\"192.168.1.10\"",
        "signing_key_file: Some(\n        \"/run/credentials/nixcache.service/signing-key\"",
        "admin_token_file: Some(\n        \"/run/credentials/nixcache.service/admin-token\"",
        // Disk budget, fills, index.
        "min_free: 1073741824",
        "max_fills: 8",
        "fill_queue: 0",
        "fill_abandon_grace: 10s",
        "fill_min_rate: 0",
        "fill_rate_window: 30s",
        "index_retention: 86400s",
        "scrub_interval: None",
        "index_cache_size: 67108864",
        "prefetch: false",
        "prefetch_max_size: 1048576",
        // Limits.
        "header_timeout: 30s",
        "keepalive_timeout: 20s",
        "send_timeout: 45s",
        "max_connections: 40000",
        "max_connections_per_client: 0",
        "max_upstream_lookups: 32",
        "trust_loopback: false",
        "oci_token_hosts: [\n            \"auth.docker.io\"",
        // Transcoding, warm, pins.
        "transcode_level: None",
        "transcode_workers: 2",
        "transcode_keep_original: 0ns",
        "warm_concurrency: 8",
        "\"desktop\": [\n            \"/nix/store/",
        // LAN pushes.
        "name: \"builder\",\n                token_file: \"/run/credentials/nixcache.service/push-builder\"",
        "name: \"ci\",\n                token_file: \"/run/credentials/nixcache.service/push-ci\",\n                paths: [\n                    \"myproject-*\",\n                ],\n                quota: Some(\n                    21474836480,\n                ),\n                sign: true,",
        "max_size: 5368709120,\n        lru: true,\n        pending_max: 16,\n        pending_timeout: 300s,",
        // The shared bucket.
        "endpoint: Some(\n                \"http://garage.lan:3900\"",
        "region: \"garage\"",
        "bucket: \"nixcache\"",
        "prefix: \"team/nix\"",
        "path_style: false",
        "access_key_id: File(\n                \"/run/credentials/nixcache.service/s3-access-key-id\"",
        "secret_access_key: File(\n                \"/run/credentials/nixcache.service/s3-secret-access-key\"",
        "session_token: Some(\n                File(\n                    \"/run/credentials/nixcache.service/s3-session-token\"",
        "local_cache: false",
        "timeout: 20s,\n            multipart_threshold: 67108864",
        "gc_max_size: Some(\n                2199023255552",
    ] {
        assert!(
            resolved.contains(expected),
            "`{expected}` not in the daemon's resolved configuration:\n{resolved}"
        );
    }

    // What the config file names stays out of the system's closure (it is fetched, not built).
    assert_eq!(s["settingsContext"], serde_json::json!([]));

    // Every secret is handed over with LoadCredential; the config file names the service's copies.
    let unit = server_unit("server-full");
    assert_eq!(
        unit_values(unit, "LoadCredential"),
        [
            "admin-token:/etc/nixcache/admin-token",
            "push-builder:/var/lib/nixcache-push/builder",
            "push-ci:/var/lib/nixcache-push/ci",
            "s3-access-key-id:/var/lib/nixcache-s3/key-id",
            "s3-secret-access-key:/var/lib/nixcache-s3/secret",
            "s3-session-token:/var/lib/nixcache-s3/session",
            "signing-key:/var/lib/nixcache-key/secret",
        ]
    );
    // 2 descriptors per connection plus 256, so that the daemon need not lower max_connections.
    assert_eq!(unit_value(unit, "LimitNOFILE"), "80256");
    assert_eq!(
        unit_value(unit, "EnvironmentFile"),
        "/etc/nixcache/secrets.env"
    );
    let exec = unit_value(unit, "ExecStart");
    assert!(
        exec.contains("/bin/nixcache serve --config /nix/store/"),
        "{exec}"
    );
    assert!(exec.contains("-nixcache-checked.toml"), "{exec}");
    assert!(exec.ends_with(" --mdns-interface eth0"), "{exec}");

    assert_eq!(ports(&s["firewall"]["tcp"]), [8080]);
    assert_eq!(
        ports(&s["firewall"]["udp"]),
        [5353],
        "mDNS answers need UDP 5353"
    );
}

/// Defect 7: against nixpkgs' harmonia and ncps modules the service lacked PrivateUsers, ProcSubset,
/// PrivateMounts, DevicePolicy and ~@resources, and was a plain service where harmonia uses
/// Type=notify with a watchdog.
#[test]
fn service_is_notify_with_watchdog_and_hardened_like_harmonia_and_ncps() {
    for name in ["server-default", "server-full", "appliance"] {
        let unit = server_unit(name);
        for (key, value) in [
            ("Type", "notify"),
            ("WatchdogSec", "30"),
            ("Restart", "on-failure"),
            ("PrivateUsers", "true"),
            ("ProcSubset", "pid"),
            ("PrivateMounts", "true"),
            ("DevicePolicy", "closed"),
            ("ProtectSystem", "strict"),
            ("NoNewPrivileges", "true"),
            ("CapabilityBoundingSet", ""),
        ] {
            assert_eq!(unit_value(unit, key), value, "{name}: {key}");
        }
        assert_eq!(
            unit_values(unit, "SystemCallFilter"),
            ["@system-service", "~@privileged", "~@resources"],
            "{name}"
        );
        assert!(
            unit_values(unit, "AmbientCapabilities").is_empty(),
            "{name}"
        );
    }
    // A port below 1024 needs the capability, which a user namespace would void.
    let unit = server_unit("server-port-80");
    assert_eq!(unit_value(unit, "PrivateUsers"), "false");
    assert_eq!(
        unit_value(unit, "CapabilityBoundingSet"),
        "CAP_NET_BIND_SERVICE"
    );
    assert_eq!(
        unit_value(unit, "AmbientCapabilities"),
        "CAP_NET_BIND_SERVICE"
    );
    assert_eq!(ports(&system("server-port-80")["firewall"]["tcp"]), [80]);
    assert!(
        ports(&system("server-port-80")["firewall"]["udp"]).is_empty(),
        "no mDNS, no UDP 5353"
    );
}

/// Evaluates a configuration that must fail, and checks that the message names `option`.
fn assert_refused(case: &str) {
    let option = text(&outputs()["negative"][case], case);
    let attr = format!("negative.{case}.value");
    let out = nixos_eval(&["--eval", "--strict", "tests/nixos/eval.nix", "-A", &attr]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{case}: evaluated, but must fail naming {option}"
    );
    let line = first_error_line(&stderr);
    // `OPTION' or, for an element of a list, `OPTION."[definition 1-entry 1]"'.
    assert!(
        line.contains(&format!("`{option}'")) || line.contains(&format!("`{option}.")),
        "{case}: the error does not name {option}: {line}\n{stderr}"
    );
}

/// Every negative case of eval.nix, among them defect 1 (`listen-without-port`: `settings.listen =
/// "0.0.0.0"` failed with `toInt: Could not convert "0.0.0.0" to int`).
#[test]
fn values_the_daemon_would_refuse_fail_evaluation_naming_the_option() {
    let cases = outputs()["negative"].as_object().expect("negative cases");
    assert!(cases.len() >= 10, "{cases:?}");
    assert!(cases.contains_key("listen-without-port"), "{cases:?}");
    for case in cases.keys() {
        assert_refused(case);
    }
}

/// Defect 2: nixcache-proxy with `listenAddress = "192.168.1.10"` pointed Nix at `http://localhost:37515`.
#[test]
fn proxy_on_a_lan_address_points_nix_at_that_address() {
    let lan = system("proxy-lan-address");
    assert_eq!(
        text(&lan["settings"]["listen"], "listen"),
        "192.168.1.10:37515"
    );
    assert_eq!(
        strings(&lan["nixSettings"]["extra-substituters"]),
        ["http://192.168.1.10:37515"]
    );
    let conf = text(&lan["nixConf"], "nix.conf");
    assert!(
        conf.contains("extra-substituters = http://192.168.1.10:37515\n"),
        "{conf}"
    );
    assert!(conf.contains("require-sigs = false\n"), "{conf}");
    assert_eq!(lan["settings"]["oci_accept_unsigned"], Value::Bool(true));

    // nixcache-oci's own setting keeps nixcache-oci's URL.
    let default = system("proxy-default");
    assert_eq!(
        text(&default["settings"]["listen"], "listen"),
        "127.0.0.1:37515"
    );
    let conf = text(&default["nixConf"], "nix.conf");
    assert!(
        conf.contains("extra-substituters = http://localhost:37515\n"),
        "{conf}"
    );
    assert!(
        conf.contains("appliance.test-1:lD58R+wZePKiatluv6lzJZ9QkmXYizzIC4Hzf/VR3v8="),
        "{conf}"
    );
    check_config(&default["settings"]);
    check_config(&lan["settings"]);
}

/// Defect 3: a custom `settings.data_dir` could not work with DynamicUser (ReadWritePaths lifted the
/// read-only mount, but only StateDirectory is handed to a dynamic user).
#[test]
fn custom_data_dir_is_created_for_and_owned_by_the_service_user() {
    let s = system("server-full");
    let unit = server_unit("server-full");
    assert_eq!(unit_value(unit, "DynamicUser"), "false");
    assert_eq!(unit_value(unit, "User"), "nixcache");
    assert_eq!(unit_value(unit, "Group"), "nixcache");
    assert_eq!(unit_value(unit, "ReadWritePaths"), "/srv/nixcache");
    assert_eq!(unit_value(unit, "RequiresMountsFor"), "/srv/nixcache");
    assert!(unit_values(unit, "StateDirectory").is_empty(), "{unit}");
    assert_eq!(
        s["nixcacheUser"],
        serde_json::json!({ "isSystemUser": true, "group": "nixcache" })
    );
    let rule = &s["tmpfiles"]["/srv/nixcache"]["d"];
    assert_eq!(
        (&rule["user"], &rule["group"], &rule["mode"]),
        (
            &Value::from("nixcache"),
            &Value::from("nixcache"),
            &Value::from("0750")
        ),
        "{rule}"
    );
    // Where ProtectHome hides the folder, evaluation says so.
    let failed = strings(&outputs()["failedAssertions"]["data-dir-under-home"]);
    assert!(
        failed
            .iter()
            .any(|m| m.contains("settings.data_dir") && m.contains("ProtectHome")),
        "{failed:?}"
    );
}

/// Defect 4: the sd-card image turned ZFS on (the installer's base profile), with the forceImportRoot warning.
#[test]
fn appliance_images_have_no_zfs_and_no_warnings() {
    let images = group("appliances")["images"].as_object().expect("images");
    assert_eq!(images.len(), 3);
    for (name, image) in images {
        assert_eq!(image["zfs"], Value::Bool(false), "{name}: ZFS is on");
        assert!(
            strings(&image["warnings"]).is_empty(),
            "{name}: {}",
            image["warnings"]
        );
    }
    for name in ["appliance", "appliance-aarch64"] {
        assert_eq!(system(name)["zfs"], Value::Bool(false), "{name}");
        assert!(strings(&system(name)["warnings"]).is_empty(), "{name}");
    }
}

/// Defect 5: no root flake.lock, so every `nix flake check` evaluated against that day's nixos-unstable.
#[test]
fn flake_lock_pins_the_nixos_unstable_input() {
    let lock: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("flake.lock")).expect("flake.lock"),
    )
    .expect("flake.lock is JSON");
    let root_node = text(&lock["root"], "root");
    let input = text(
        &lock["nodes"][root_node]["inputs"]["nixpkgs"],
        "nixpkgs input",
    );
    let node = &lock["nodes"][input];
    let locked = &node["locked"];
    assert_eq!(locked["type"], "github");
    assert_eq!(
        (&locked["owner"], &locked["repo"]),
        (&Value::from("NixOS"), &Value::from("nixpkgs"))
    );
    let rev = text(&locked["rev"], "rev");
    assert!(
        rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit()),
        "{rev}"
    );
    let nar_hash = text(&locked["narHash"], "narHash");
    assert!(
        nar_hash.starts_with("sha256-") && nar_hash.len() == 51,
        "{nar_hash}"
    );
    assert!(locked["lastModified"].as_u64().is_some());
    assert_eq!(node["original"]["ref"], "nixos-unstable");
    let flake = std::fs::read_to_string(root().join("flake.nix")).unwrap();
    assert!(
        flake.contains("inputs.nixpkgs.url = \"github:NixOS/nixpkgs/nixos-unstable\";"),
        "flake.nix's nixpkgs input is not the one flake.lock locks"
    );
}

/// Defect 6: the package default ignored the overlay's `pkgs.nixcache`, its defaultText was prose in
/// literalExpression, and the client had a package option of its own (overriding one built the daemon
/// twice).
#[test]
fn one_package_option_follows_the_overlay_and_serves_server_and_client() {
    assert_eq!(outputs()["options"]["packageDefaultText"], "literalMD");

    let exec = unit_value(server_unit("overlay"), "ExecStart");
    assert!(exec.contains("-nixcache-overlay-"), "{exec}");

    let both = system("server-and-client-one-package");
    let exec = unit_value(server_unit("server-and-client-one-package"), "ExecStart");
    assert!(exec.contains("-nixcache-marked-"), "{exec}");
    let discover = text(&both["discoverScript"], "discover script");
    assert!(discover.contains("-nixcache-marked-"), "{discover}");

    let client: BTreeSet<&str> = outputs()["options"]["client"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| text(&o["name"], "name"))
        .collect();
    assert!(
        !client.contains("services.nixcache-client.package"),
        "{client:?}"
    );
}

/// The keys of config/nixcache.toml, set or commented out (`# key = ...`); those of a table as
/// `table.key` (the file's tables come last, as TOML needs).
fn shipped_config_keys() -> BTreeSet<String> {
    let shipped = std::fs::read_to_string(root().join("config/nixcache.toml")).unwrap();
    let mut table: Option<String> = None;
    let mut keys = BTreeSet::new();
    for line in shipped.lines() {
        let line = line.strip_prefix("# ").unwrap_or(line);
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            table = Some(name.to_string());
            continue;
        }
        let Some((key, _)) = line.split_once(" = ") else {
            continue;
        };
        if key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            keys.insert(match &table {
                Some(t) => format!("{t}.{key}"),
                None => key.to_string(),
            });
        }
    }
    keys
}

/// `access_key_id_file` → `accessKeyIdFile`: a table's key as its NixOS option is named.
fn camel_case(key: &str) -> String {
    let mut parts = key.split('_');
    let mut out = parts.next().unwrap_or("").to_string();
    for part in parts {
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            out.push(first.to_ascii_uppercase());
            out.extend(chars);
        }
    }
    out
}

fn is_typed(ty: &str) -> bool {
    !ty.contains("anything") && !ty.contains("unspecified") && !ty.starts_with("TOML")
}

/// Defect 6 (oci_trusted_keys and oci_accept_unsigned were written but not declared), and what keeps
/// it from coming back: every key of the daemon's config file is a typed option, or has a typed option
/// standing for it.
#[test]
fn every_key_of_the_shipped_config_is_a_typed_option() {
    let declared = outputs()["options"]["settingsKeys"]
        .as_object()
        .expect("settings keys");
    let server: std::collections::BTreeMap<&str, &str> = outputs()["options"]["server"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let name = text(&o["name"], "name");
            (name, text(&o["type"], name))
        })
        .collect();
    let keys = shipped_config_keys();
    assert!(keys.len() >= 60, "{keys:?}");
    assert!(keys.contains("bucket.access_key_id_file"), "{keys:?}");
    for key in &keys {
        // Secrets are files handed over with LoadCredential: top-level options stand for them, and
        // the `[bucket]` table is services.nixcache.bucket.
        let standing_in = match key.as_str() {
            "signing_key_file" => Some("services.nixcache.signingKeyFile".to_string()),
            "admin_token_file" => Some("services.nixcache.adminTokenFile".to_string()),
            "push_tokens" => Some("services.nixcache.pushTokens".to_string()),
            _ => key
                .strip_prefix("bucket.")
                .map(|k| format!("services.nixcache.bucket.{}", camel_case(k))),
        };
        match standing_in {
            Some(option) => {
                let ty = server.get(option.as_str()).unwrap_or_else(|| {
                    panic!("config/nixcache.toml has `{key}`, for which {option} is missing (nixos-appliance/options/)")
                });
                assert!(is_typed(ty), "{option} is not typed: {ty}");
            }
            None => {
                let ty = declared.get(key.as_str()).unwrap_or_else(|| {
                    panic!("config/nixcache.toml has `{key}`, which services.nixcache.settings does not declare (nixos-appliance/options/settings-*.nix)")
                });
                let ty = text(ty, key);
                assert!(is_typed(ty), "settings.{key} is not typed: {ty}");
            }
        }
    }
}

#[test]
fn every_option_is_documented() {
    for group in ["server", "proxy", "client"] {
        let options = outputs()["options"][group].as_array().expect("options");
        assert!(!options.is_empty(), "{group}");
        for o in options {
            let name = text(&o["name"], "name");
            let description = o["description"].as_str().unwrap_or("");
            assert!(!description.trim().is_empty(), "{name} has no description");
            let ty = text(&o["type"], name);
            assert!(!ty.contains("unspecified"), "{name}: {ty}");
        }
    }
}

#[test]
fn clients_get_the_substituters_and_keys_they_were_given() {
    let key = "appliance.test-1:lD58R+wZePKiatluv6lzJZ9QkmXYizzIC4Hzf/VR3v8=";
    let manual = system("client-manual");
    let conf = text(&manual["nixConf"], "nix.conf");
    for line in [
        "extra-substituters = http://192.168.1.10:37515\n",
        &format!("extra-trusted-public-keys = {key}\n"),
        "fallback = true\n",
        "connect-timeout = 5\n",
    ] {
        assert!(
            conf.contains(line),
            "client-manual nix.conf lacks {line:?}:\n{conf}"
        );
    }
    assert!(!conf.contains("!include"), "{conf}");
    assert!(manual["discoverUnit"].is_null());

    let include = "!include /var/lib/nixcache-client/nix.conf";
    for (name, avahi) in [("client-discovery", false), ("client-avahi", true)] {
        let s = system(name);
        let conf = text(&s["nixConf"], "nix.conf");
        assert!(conf.contains(include), "{name}:\n{conf}");
        assert!(conf.contains(key), "{name}: the pinned key is trusted");
        assert_eq!(s["avahi"], Value::Bool(avahi), "{name}");
        let script = text(&s["discoverScript"], "discover script");
        assert!(script.contains(&format!("--trust '{key}'")), "{script}");
        assert!(
            script.contains(if avahi {
                "nixcache-discover.sh"
            } else {
                "/bin/nixcache discover"
            }),
            "{name}: {script}"
        );
        let unit = text(&s["discoverUnit"], "nixcache-discover.service");
        assert_eq!(unit_value(unit, "Type"), "oneshot");
        assert_eq!(unit_value(unit, "SuccessExitStatus"), "1");
    }
    assert_eq!(
        ports(&system("client-discovery")["firewall"]["udp"]),
        [5353]
    );
}

#[test]
fn appliance_opens_its_ports_signs_with_its_own_key_and_substitutes_through_itself() {
    for name in ["appliance", "appliance-aarch64"] {
        let s = system(name);
        assert_eq!(ports(&s["firewall"]["tcp"]), [22, 37515], "{name}");
        assert_eq!(ports(&s["firewall"]["udp"]), [5353], "{name}");
        assert_eq!(
            strings(&s["nixSettings"]["extra-substituters"]),
            ["http://127.0.0.1:37515"],
            "{name}"
        );
        let unit = server_unit(name);
        assert_eq!(
            unit_value(unit, "LoadCredential"),
            "signing-key:/var/lib/nixcache-key/secret"
        );
        let after: BTreeSet<&str> = unit_value(unit, "After").split(' ').collect();
        assert_eq!(
            after,
            BTreeSet::from(["network-online.target", "nixcache-keygen.service"])
        );
        let keygen = text(&s["keygenUnit"], "nixcache-keygen.service");
        assert_eq!(
            unit_value(keygen, "ConditionPathExists"),
            "!/var/lib/nixcache-key/secret"
        );
        assert_eq!(
            s["settings"]["signing_key_file"],
            "/run/credentials/nixcache.service/signing-key"
        );
        check_config(&s["settings"]);
    }
}

#[test]
fn warm_job_runs_after_the_daemon_on_a_persistent_timer_with_the_admin_token() {
    let s = system("server-full");
    let unit = text(&s["warmUnit"], "nixcache-warm.service");
    assert_eq!(unit_value(unit, "Type"), "oneshot");
    assert_eq!(unit_value(unit, "Requires"), "nixcache.service");
    assert_eq!(unit_value(unit, "After"), "nixcache.service");
    assert_eq!(unit_value(unit, "DynamicUser"), "true");
    // trust_loopback is off there: the job carries the admin token, from its own credential.
    assert_eq!(
        unit_value(unit, "LoadCredential"),
        "admin-token:/etc/nixcache/admin-token"
    );
    let exec = unit_value(unit, "ExecStart");
    assert!(
        exec.contains(
            "/bin/nixcache warm --url 'http://[::1]:8080' --pin lab --file /var/lib/ci/roots.txt \
             --token-file %d/admin-token /nix/store/"
        ),
        "{exec}"
    );
    assert!(exec.contains("-hello-"), "{exec}");
    // The path is named, not built: the job depends on the nixcache package alone.
    let context = strings(&s["warmContext"]);
    assert!(
        context.len() == 1 && context[0].contains("-nixcache-"),
        "{context:?}"
    );

    let timer = text(&s["warmTimer"], "nixcache-warm.timer");
    assert_eq!(unit_value(timer, "OnCalendar"), "*-*-* 03:00");
    assert_eq!(unit_value(timer, "Persistent"), "true");
    assert_eq!(unit_value(timer, "WantedBy"), "timers.target");
}

#[test]
fn builders_push_every_build_and_report_their_system_after_activation() {
    let s = system("client-builder");
    assert!(strings(&s["warnings"]).is_empty(), "{}", s["warnings"]);

    // The post-build hook: nixcache-push-hook.sh with every variable it reads set by the wrapper.
    let conf = text(&s["nixConf"], "nix.conf");
    assert!(conf.contains("post-build-hook = /nix/store/"), "{conf}");
    let wrapper = text(&s["pushHookScript"], "push hook wrapper");
    for line in [
        "export NIXCACHE_PUSH_URL=http://192.168.1.10:37515\n",
        "export NIXCACHE_PUSH_TOKEN_FILE=/var/lib/nixcache-push/token\n",
        "export NIXCACHE_PUSH_LOGIN=builder\n",
        "export NIXCACHE_PUSH_COMPRESSION=zstd\n",
        "export NIXCACHE_PUSH_STRICT=1\n",
        "export NIXCACHE_PUSH_SECRET_KEY_FILE=/var/lib/nixcache-push/builder.secret\n",
    ] {
        assert!(wrapper.contains(line), "{line:?} not in\n{wrapper}");
    }
    assert!(
        wrapper.contains("/bin/nix\n"),
        "NIXCACHE_PUSH_NIX: {wrapper}"
    );
    assert!(wrapper.contains("-coreutils-"), "PATH: {wrapper}");
    assert!(
        wrapper.contains("/bin/dash /nix/store/") && wrapper.contains("-nixcache-push-hook.sh"),
        "{wrapper}"
    );
    let hook =
        std::fs::read_to_string(root().join("nixos-appliance/nixcache-push-hook.sh")).unwrap();
    let read: BTreeSet<&str> = hook
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("NIXCACHE_PUSH_"))
        .collect();
    assert!(read.len() >= 7, "{read:?}");
    for variable in read {
        assert!(
            wrapper.contains(&format!("export {variable}=")),
            "the hook reads {variable}, which the client module does not set:\n{wrapper}"
        );
    }

    // The system just activated is reported; the activation does not wait for the appliance.
    let unit = text(&s["reportUnit"], "nixcache-report-system.service");
    assert_eq!(unit_value(unit, "Type"), "oneshot");
    assert_eq!(unit_value(unit, "WantedBy"), "multi-user.target");
    assert_eq!(unit_value(unit, "DynamicUser"), "true");
    assert_eq!(
        unit_value(unit, "LoadCredential"),
        "admin-token:/var/lib/nixcache/admin-token"
    );
    let script = text(&s["reportScript"], "report script");
    assert!(
        script.contains(
            "/bin/nixcache warm --no-wait --url http://192.168.1.10:37515 --pin host-builder \
             --token-file \"$CREDENTIALS_DIRECTORY/admin-token\" \"$system\""
        ),
        "{script}"
    );
    let activation = text(&s["reportActivation"], "activation snippet");
    assert!(
        activation.contains("readlink -f \"$systemConfig\" > /run/nixcache-report-system"),
        "{activation}"
    );
    assert!(
        activation.contains("systemctl start --no-block nixcache-report-system.service || true"),
        "{activation}"
    );
}

#[test]
fn secrets_in_the_store_and_options_that_need_another_fail_evaluation_saying_so() {
    let failed = strings(&outputs()["failedAssertions"]["misconfigured"]);
    for expected in [
        "services.nixcache.pushTokens.ci.tokenFile is in the Nix store",
        "services.nixcache.pushTokens.ci.sign needs services.nixcache.signingKeyFile",
        "services.nixcache.bucket.secretAccessKeyFile is in the Nix store",
        "services.nixcache-client.push.tokenFile is in the Nix store",
        "services.nixcache.warm: give paths or pathsFile",
        "services.nixcache.warm: the daemon takes warm requests from this machine only with the admin token",
        "set pushTokens, not settings.push_tokens",
        "set bucket, not settings.bucket",
    ] {
        assert!(
            failed.iter().any(|m| m.contains(expected)),
            "no assertion says {expected:?}: {failed:?}"
        );
    }
    assert_eq!(failed.len(), 8, "{failed:?}");
}
