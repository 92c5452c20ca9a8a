//! Observability end to end: exact counters after known traffic; a real Prometheus (Debian `prometheus`)
//! scraping nixcache under load, with every expression of every panel of `dashboards/nixcache.json`
//! evaluated through its HTTP API; and the status page loaded in real headless Chromium (Debian
//! `chromium`), its figures checked against `/_status`, hostile strings checked escaped, screenshots kept.

mod common;
#[path = "observability/peers.rs"]
mod peers;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::registry::RegistryPeer;
use common::*;
use nixcache::config::OciConfig;
use peers::{Prometheus, chromium};
use reqwest::StatusCode;

/// A narinfo an upstream serves whose Compression is markup: refused, and quoted in the refusal.
const HOSTILE: &str = "<script>document.title='pwned'</script><img src=x onerror=alert(1)>";
/// The store hash of that narinfo.
const HOSTILE_HASH: &str = "11111111111111111111111111111111";
/// A store hash no cache has.
const ABSENT_HASH: &str = "00000000000000000000000000000000";

/// A copy of one of the fixture's binary caches plus a narinfo with markup in it.
fn cache_with_hostile_narinfo(compression: &str, into: &Path) -> PathBuf {
    let root = into.join("upstream");
    copy_dir(&fixture().caches[compression], &root);
    std::fs::write(
        root.join(format!("{HOSTILE_HASH}.narinfo")),
        format!(
            "StorePath: /nix/store/{HOSTILE_HASH}-hostile\nURL: nar/x.nar\nCompression: {HOSTILE}\n\
             NarHash: sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s\nNarSize: 1\n"
        ),
    )
    .unwrap();
    root
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

async fn get(url: &str) -> reqwest::Response {
    reqwest::get(url).await.expect("request")
}

async fn text(url: &str) -> String {
    get(url).await.text().await.unwrap()
}

/// Fetches a narinfo through nixcache; returns its NAR URL and FileSize.
async fn narinfo(cache: &Nixcache, path: &str) -> (String, u64) {
    let r = get(&format!("{}/{}.narinfo", cache.url, hash_of(path))).await;
    assert_eq!(r.status(), StatusCode::OK, "narinfo of {path}");
    let body = r.text().await.unwrap();
    let url = field(&body, "URL").unwrap().to_string();
    let size = field(&body, "FileSize").unwrap().parse().unwrap();
    (url, size)
}

/// The value of the series `name{labels}` in a Prometheus text exposition (label order as written by
/// the encoder does not matter).
fn sample(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
        if metric != name {
            return None;
        }
        let found: BTreeSet<String> = rest
            .trim_end_matches('}')
            .split("\",")
            .filter(|l| !l.is_empty())
            .map(|l| l.trim_end_matches('"').replacen("=\"", "=", 1))
            .collect();
        let wanted: BTreeSet<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        (found == wanted).then(|| value.parse().unwrap())
    })
}

fn assert_sample(exposition: &str, name: &str, labels: &[(&str, &str)], want: f64) {
    assert_eq!(
        sample(exposition, name, labels),
        Some(want),
        "{name}{labels:?} in\n{exposition}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn counters_say_exactly_what_happened() {
    let fx = fixture();
    let work = tempfile::tempdir().unwrap();
    let up = TestUpstream::start(&cache_with_hostile_narinfo("none", work.path())).await;
    let cache = Nixcache::start(test_config(&work.path().join("data"), &[&up.url])).await;
    let source = format!("{}/", up.url);
    let src = source.as_str();
    let dep = fx.closure.iter().find(|p| p.ends_with("-dep")).unwrap();
    let mid = fx.closure.iter().find(|p| p.ends_with("-mid")).unwrap();

    // 1 narinfo fetched, then 3 hits; 1 miss, then the same answered from the negative cache.
    let (top_nar, top_size) = narinfo(&cache, &fx.top).await;
    for _ in 0..3 {
        narinfo(&cache, &fx.top).await;
    }
    let absent = format!("{}/{ABSENT_HASH}.narinfo", cache.url);
    assert_eq!(get(&absent).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(get(&absent).await.status(), StatusCode::NOT_FOUND);
    // 2 NAR fills (one more narinfo fetched), then one NAR from disk.
    let (dep_nar, dep_size) = narinfo(&cache, dep).await;
    for nar in [&top_nar, &dep_nar, &top_nar] {
        let r = get(&format!("{}/{nar}", cache.url)).await;
        assert_eq!(r.status(), StatusCode::OK);
        r.bytes().await.unwrap();
    }
    let m = text(&format!("{}/metrics", cache.url)).await;
    let downloaded = (top_size + dep_size) as f64;
    assert_sample(
        &m,
        "nixcache_served_bytes_total",
        &[("from", "disk")],
        top_size as f64,
    );
    assert_sample(
        &m,
        "nixcache_served_bytes_total",
        &[("from", src)],
        downloaded,
    );
    assert_sample(
        &m,
        "nixcache_fetched_bytes_total",
        &[("source", src)],
        downloaded,
    );
    assert_sample(&m, "nixcache_store_bytes", &[], downloaded);
    assert_sample(&m, "nixcache_store_nars", &[], 2.0);

    // 1 NAR refused by its hash check (one more narinfo fetched); 1 narinfo refused (a 404 miss).
    let (mid_nar, _) = narinfo(&cache, mid).await;
    up.set_fault(Fault::CorruptNar);
    let r = get(&format!("{}/{mid_nar}", cache.url)).await;
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "headers go out before the verdict"
    );
    assert!(
        r.bytes().await.is_err(),
        "a refused NAR aborts the transfer"
    );
    up.set_fault(Fault::None);
    let hostile = format!("{}/{HOSTILE_HASH}.narinfo", cache.url);
    assert_eq!(get(&hostile).await.status(), StatusCode::NOT_FOUND);

    let m = text(&format!("{}/metrics", cache.url)).await;
    let narinfos = "nixcache_narinfo_requests_total";
    assert_sample(&m, narinfos, &[("result", "hit"), ("source", src)], 3.0);
    assert_sample(&m, narinfos, &[("result", "fetched"), ("source", src)], 3.0);
    assert_sample(&m, narinfos, &[("result", "miss"), ("source", "none")], 2.0);
    assert_sample(
        &m,
        narinfos,
        &[("result", "negative"), ("source", "none")],
        1.0,
    );
    assert_sample(
        &m,
        narinfos,
        &[("result", "error"), ("source", "none")],
        0.0,
    );
    let refused = [("source", src), ("reason", "invalid")];
    assert_sample(&m, "nixcache_narinfo_rejected_total", &refused, 1.0);
    let nars = "nixcache_nar_requests_total";
    assert_sample(&m, nars, &[("result", "miss"), ("source", src)], 3.0);
    assert_sample(&m, nars, &[("result", "hit"), ("source", src)], 1.0);
    assert_sample(&m, nars, &[("result", "coalesced"), ("source", src)], 0.0);
    assert_sample(&m, nars, &[("result", "error"), ("source", src)], 0.0);
    let fills = "nixcache_fills_total";
    assert_sample(&m, fills, &[("source", src), ("result", "stored")], 2.0);
    assert_sample(&m, fills, &[("source", src), ("result", "rejected")], 1.0);
    assert_sample(&m, fills, &[("source", src), ("result", "failed")], 0.0);
    let checks = "nixcache_verification_failures_total";
    assert_sample(&m, checks, &[("source", src), ("check", "file_hash")], 1.0);
    assert_sample(&m, checks, &[("source", src), ("check", "signature")], 0.0);
    let asked = "nixcache_source_requests_total";
    assert_sample(&m, asked, &[("source", src), ("kind", "narinfo")], 5.0);
    assert_sample(&m, asked, &[("source", src), ("kind", "nar")], 3.0);
    assert_eq!((up.narinfos(), up.nars()), (5, 3));
    let http = "nixcache_http_requests_total";
    let narinfo_route = [("route", "/{hash}.narinfo"), ("method", "GET")];
    assert_sample(
        &m,
        http,
        &[narinfo_route[0], narinfo_route[1], ("status", "200")],
        6.0,
    );
    assert_sample(
        &m,
        http,
        &[narinfo_route[0], narinfo_route[1], ("status", "404")],
        3.0,
    );
    let nar_ok = [
        ("route", "/nar/{name}"),
        ("method", "GET"),
        ("status", "200"),
    ];
    assert_sample(&m, http, &nar_ok, 4.0);
    assert_sample(&m, "nixcache_fills_in_flight", &[], 0.0);
    assert_sample(&m, "nixcache_store_nars", &[], 2.0);
    assert_sample(&m, "nixcache_store_max_bytes", &[], (1u64 << 30) as f64);
    assert_sample(&m, "nixcache_source_up", &[("source", src)], 1.0);
    assert_sample(
        &m,
        "nixcache_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    // Labels never carry a path or a hash.
    for path in fx.closure.iter().chain([&fx.big]) {
        assert!(!m.contains(hash_of(path)), "{path} leaked into the metrics");
    }
    assert!(!m.contains(ABSENT_HASH) && !m.contains(HOSTILE_HASH) && !m.contains("/nix/store"));

    // /_status says the same, in its added fields (the old ones are unchanged).
    let s = cache.status().await;
    let t = &s["traffic"];
    assert_eq!(t["narinfo_hits"], 3);
    assert_eq!(t["narinfo_fetched"], 3);
    assert_eq!(t["narinfo_misses"], 2);
    assert_eq!(t["narinfo_negative"], 1);
    assert_eq!(t["narinfo_rejected"], 1);
    assert_eq!(t["narinfo_hit_ratio"], 0.5);
    assert_eq!(
        (t["nar_hits"].as_u64(), t["nar_misses"].as_u64()),
        (Some(1), Some(3))
    );
    assert_eq!(
        (t["fills_stored"].as_u64(), t["fills_rejected"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(t["served_from_disk_bytes"], top_size);
    assert!(t["fetched_bytes"].as_u64().unwrap() > top_size + dep_size);
    assert_eq!(s["store"]["nars"], 2);
    assert_eq!(s["upstreams"][0]["rejected_narinfos"], 1);
    let activity = s["recent_activity"].as_array().unwrap();
    assert_eq!(activity[0]["kind"], "rejected");
    assert!(activity[0]["message"].as_str().unwrap().contains(HOSTILE));
    assert!(activity.iter().any(|e| e["kind"] == "stored"));
    cache.stop().await;
}

/// Every query of the dashboard: panel targets (rows included) and template variables.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    fn walk(panels: &[serde_json::Value], out: &mut Vec<(String, String)>) {
        for p in panels {
            let title = p["title"].as_str().unwrap_or("?").to_string();
            assert!(p["id"].is_u64(), "panel {title} has no id");
            if p["type"] != "row" {
                assert_eq!(
                    p["datasource"]["uid"], "${datasource}",
                    "panel {title} must use the datasource variable"
                );
            }
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().expect("a target with an expr");
                out.push((title.clone(), expr.to_string()));
            }
            walk(p["panels"].as_array().map_or(&[], Vec::as_slice), out);
        }
    }
    let mut out = Vec::new();
    walk(dashboard["panels"].as_array().unwrap(), &mut out);
    out
}

/// Grafana's variables as a single instant query sees them.
fn grafana_to_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$instance", ".*")
}

/// A small, bounded load on every path a dashboard draws: index hits (OCI and upstream), fetches,
/// failures, NAR fills (evicted again under a tiny cap) and disk hits, the page and the JSON.
async fn load(cache: &Nixcache, fx: &Fixture, seconds: u64) {
    let until = Instant::now() + Duration::from_secs(seconds);
    let client = reqwest::Client::new();
    let mut round = 0u32;
    while Instant::now() < until && round < 10_000 {
        round += 1;
        let mut urls = vec![
            format!("{}/", cache.url),
            format!("{}/_status", cache.url),
            format!("{}/{}.narinfo", cache.url, hash_of(&fx.big)),
            format!("{}/{:032}.narinfo", cache.url, round),
        ];
        for p in &fx.closure {
            urls.push(format!("{}/{}.narinfo", cache.url, hash_of(p)));
        }
        for url in urls {
            let _ = client.get(&url).send().await.map(|r| r.bytes());
        }
        for path in [&fx.top, &fx.big] {
            let r = client
                .get(format!("{}/{}.narinfo", cache.url, hash_of(path)))
                .send()
                .await
                .unwrap();
            let body = r.text().await.unwrap();
            if let Some(nar) = field(&body, "URL") {
                if let Ok(r) = client.get(format!("{}/{nar}", cache.url)).send().await {
                    let _ = r.bytes().await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `nixcache push --all` of the fixture's paths to `registry`, signed with the fixture's key.
fn push(registry: &str, repo: &str, paths: &[&str]) {
    let (ok, out) = common::registry::push_fixture(registry, repo, &["--all"], paths);
    assert!(ok, "push failed: {out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_and_every_dashboard_panel_has_data() {
    let fx = fixture();
    let registry = RegistryPeer::start();
    let repo = "Test-Owner/metrics-repo";
    push(&registry.url, repo, &[&fx.top]);
    let good = TestUpstream::start(&fx.caches["zstd"]).await;
    let bad = TestUpstream::start(&fx.caches["zstd"]).await;
    bad.set_fault(Fault::ServerError);
    let work = tempfile::tempdir().unwrap();
    let mut config = test_config(&work.path().join("data"), &[&bad.url, &good.url]);
    config.oci = Some(OciConfig {
        registry: registry.url.clone(),
        repo: repo.to_string(),
        index_ttl: Duration::from_secs(1),
        trusted_keys: vec![fx.public_key.clone()],
        accept_unsigned: false,
        token: None,
    });
    // A LAN push token (issue 12), so that the per-token push metrics are exported too.
    let token_file = work.path().join("push.token");
    std::fs::write(&token_file, "observability-push-token-0123456789\n").unwrap();
    config.push.tokens = vec![nixcache::config::PushTokenConfig {
        name: "ci".into(),
        token_file,
        paths: vec!["*".into()],
        quota: None,
        sign: false,
    }];
    // First the 4 MiB NAR is stored; then the appliance restarts with a cap below it: it is evicted at
    // start (so evictions have data), and passed through, verified, when asked for again.
    let cache = Nixcache::start(config.clone()).await;
    let (big, _) = narinfo(&cache, &fx.big).await;
    get(&format!("{}/{big}", cache.url))
        .await
        .bytes()
        .await
        .unwrap();
    cache.stop().await;
    config.max_size = 3 << 20;
    let cache = Nixcache::start(config).await;
    let prometheus = Prometheus::start(cache.url.trim_start_matches("http://")).await;

    load(&cache, fx, 10).await;
    // Enough scrapes of the load for every rate() window.
    let scraped = prometheus
        .query("count_over_time(up{job=\"nixcache\"}[1m])")
        .await;
    let up = prometheus.query("up{job=\"nixcache\"}").await;
    assert_eq!(up[0]["value"][1], "1", "the target is up: {up:?}");
    let count: f64 = scraped[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(count >= 5.0, "only {count} scrapes");

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/dashboards/nixcache.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(
        variables.iter().any(|v| v["type"] == "datasource"
            && v["name"] == "datasource"
            && v["query"] == "prometheus"),
        "a datasource variable, so that the dashboard works imported and provisioned"
    );
    for v in variables.iter().filter(|v| v["type"] == "query") {
        // label_values(METRIC, LABEL): the metric has series carrying the label.
        let def = v["definition"].as_str().unwrap();
        let inner = def
            .trim_start_matches("label_values(")
            .trim_end_matches(')');
        let (metric, label) = inner.split_once(',').unwrap();
        let series = prometheus.query(metric.trim()).await;
        assert!(
            series.iter().any(|s| s["metric"][label.trim()].is_string()),
            "variable {def} has no values"
        );
    }
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 20, "{} queries", queries.len());
    let mut empty = Vec::new();
    for (panel, expr) in &queries {
        let result = prometheus.query(&grafana_to_promql(expr)).await;
        let finite = result.iter().any(|r| {
            r["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(f64::is_finite)
        });
        if !finite {
            empty.push(format!("{panel}: {expr} -> {result:?}"));
        }
    }
    assert!(
        empty.is_empty(),
        "panels without data:\n{}",
        empty.join("\n")
    );

    // docs/metrics.md lists exactly the metrics /metrics exports.
    let exported: BTreeSet<String> = text(&format!("{}/metrics", cache.url))
        .await
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect();
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md")).unwrap();
    let documented: BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|m| m.starts_with("nixcache_"))
        .map(str::to_string)
        .collect();
    assert_eq!(documented, exported, "docs/metrics.md and /metrics differ");
    let m = text(&format!("{}/metrics", cache.url)).await;
    assert!(sample(&m, "nixcache_evictions_total", &[]).unwrap() > 0.0);
    cache.stop().await;
}

/// The `data-field`/`data-value` pairs of the page: figures whose exact value is in `/_status`.
fn figures(dom: &str) -> Vec<(String, String)> {
    dom.split("data-field=\"")
        .skip(1)
        .map(|rest| {
            let (field, rest) = rest.split_once('"').unwrap();
            let value = rest
                .split_once("data-value=\"")
                .and_then(|(_, v)| v.split_once('"'))
                .map(|(v, _)| v)
                .unwrap();
            (field.to_string(), value.to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn status_page_in_chromium_matches_status_and_escapes_what_it_shows() {
    let fx = fixture();
    let work = tempfile::tempdir().unwrap();
    let up = TestUpstream::start(&cache_with_hostile_narinfo("xz", work.path())).await;
    // A key name is free text too (no colon, no space).
    let hostile_name = "<script>document.title='key'</script>";
    let key = nixcache::nix::signing::SecretKey::generate(hostile_name).unwrap();
    let key_file = work.path().join("key.secret");
    std::fs::write(&key_file, key.to_file_text()).unwrap();
    let owner_only = std::os::unix::fs::PermissionsExt::from_mode(0o600);
    std::fs::set_permissions(&key_file, owner_only).unwrap();
    let registry = RegistryPeer::start();
    let repo = "Test-Owner/page-repo";
    push(&registry.url, repo, &[&fx.top]);
    let mut config = test_config(&work.path().join("data"), &[&up.url]);
    config.signing_key_file = Some(key_file);
    config.oci = Some(OciConfig {
        registry: registry.url.clone(),
        repo: repo.to_string(),
        index_ttl: Duration::from_secs(3600),
        trusted_keys: vec![fx.public_key.clone()],
        accept_unsigned: false,
        token: None,
    });
    let cache = Nixcache::start(config).await;
    let entries = fx.closure.len() as u64;
    for _ in 0..200 {
        if cache.status().await["oci"]["entries"] == entries {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 3 hits from the OCI index and 1 narinfo fetched from the upstream; a NAR filled, then from disk.
    let (top_nar, _) = narinfo(&cache, &fx.top).await;
    narinfo(&cache, &fx.top).await;
    narinfo(&cache, &fx.top).await;
    narinfo(&cache, &fx.big).await;
    for _ in 0..2 {
        get(&format!("{}/{top_nar}", cache.url))
            .await
            .bytes()
            .await
            .unwrap();
        // The client has its last byte before the file is committed: wait for it to be on disk.
        for _ in 0..100 {
            if cache.status().await["store"]["nars"] == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let hostile = format!("{}/{HOSTILE_HASH}.narinfo", cache.url);
    assert_eq!(get(&hostile).await.status(), StatusCode::NOT_FOUND);

    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("observability");
    std::fs::create_dir_all(&shots).unwrap();
    let page = format!("{}/", cache.url);
    let dom = chromium(&["--dump-dom".to_string()], &page, &shots.join("dom.html"));
    let status = cache.status().await;
    for (shot, size) in [
        ("status-page.png", "1280,2400"),
        ("status-page-phone.png", "412,4000"),
    ] {
        let path = shots.join(shot);
        let _ = std::fs::remove_file(&path);
        chromium(
            &[
                format!("--screenshot={}", path.display()),
                format!("--window-size={size}"),
            ],
            &page,
            &path,
        );
        let png = std::fs::read(&path).expect("chromium wrote the screenshot");
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{shot}");
        println!("screenshot: {}", path.display());
    }

    // The figures the page shows are those of /_status.
    let shown = figures(&dom);
    for required in [
        "/traffic/narinfo_hit_ratio",
        "/traffic/narinfo_hits",
        "/traffic/served_from_disk_bytes",
        "/traffic/fetched_bytes",
        "/store/bytes",
        "/store/max_bytes",
        "/store/nars",
        "/index/narinfos",
        "/oci/entries",
    ] {
        assert!(
            shown.iter().any(|(f, _)| f == required),
            "{required} not on the page"
        );
    }
    for (pointer, value) in &shown {
        let want = status
            .pointer(pointer)
            .unwrap_or_else(|| panic!("{pointer} not in /_status"));
        match want {
            serde_json::Value::Null => assert_eq!(value, "null", "{pointer}"),
            v => {
                let got: f64 = value.parse().unwrap();
                assert!(
                    (got - v.as_f64().unwrap()).abs() < 1e-9,
                    "{pointer}: page {got}, /_status {v}"
                );
            }
        }
    }
    assert_eq!(status["oci"]["entries"], entries);
    assert_eq!(status["traffic"]["narinfo_hits"], 3);
    assert_eq!(status["traffic"]["nar_hits"], 1);
    assert!(dom.contains(">75%<"), "hit ratio 3 of 4 shown as 75%");
    assert!(dom.contains(&format!("extra-substituters = {}", cache.url)));

    // Hostile text is shown as text: no element came from it, and the page has no script at all.
    assert!(dom.contains("<title>nixcache status</title>"));
    assert!(
        !dom.to_lowercase().contains("<script"),
        "a script element on the page"
    );
    assert!(
        !dom.to_lowercase().contains("<img"),
        "an img element on the page"
    );
    assert!(dom.contains(
        "&lt;script&gt;document.title='pwned'&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;"
    ));
    assert!(dom.contains(
        "extra-trusted-public-keys = &lt;script&gt;document.title='key'&lt;/script&gt;:"
    ));

    // A hostile Host header is not echoed (only a plausible host[:port] is).
    let addr = cache.url.trim_start_matches("http://");
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    write!(
        tcp,
        "GET / HTTP/1.1\r\nHost: x\"><script>alert(1)</script>\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.contains("content-security-policy: default-src 'none'"));
    assert!(!raw.contains("<script"), "the Host header was echoed");
    cache.stop().await;
}
