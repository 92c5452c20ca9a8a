//! `nixcache warm` and `nixcache pins`: talk to a running appliance's admin endpoints (issue 16).
//!
//! `warm` posts the store paths, then follows the job with a progress bar (on a terminal; a summary
//! line otherwise) until it ends, and fails with the job's error.

use std::io::{IsTerminal, Read};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::cli::{AdminArgs, PinsArgs, WarmArgs};
use crate::metrics::human_bytes;

/// How often a job's progress is asked for.
const POLL: Duration = Duration::from_millis(300);

/// A client of the admin endpoints.
struct Admin {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Admin {
    fn new(args: &AdminArgs) -> anyhow::Result<Admin> {
        let token = match &args.token_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .with_context(|| format!("reading the admin token file {}", f.display()))?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        Ok(Admin {
            base: args.url.trim_end_matches('/').to_string(),
            token,
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .build()?,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// Sends a request; a non-success answer becomes an error quoting the appliance's reason.
    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let response = request
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .with_context(|| format!("cannot reach the appliance at {}", self.base))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        let reason = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| body.trim().to_string());
        bail!("the appliance answered {status}: {reason}")
    }

    /// Sends a request and reads its JSON answer.
    async fn json(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let body = self.send(request).await?.bytes().await?;
        serde_json::from_slice(&body).context("the appliance's answer is not JSON")
    }
}

/// Reads the store paths: arguments, `--file`, and stdin for `-`.
fn read_paths(args: &WarmArgs) -> anyhow::Result<Vec<String>> {
    let mut paths = Vec::new();
    let mut from_stdin = false;
    for p in &args.paths {
        if p == "-" {
            from_stdin = true;
        } else {
            paths.push(p.clone());
        }
    }
    let mut text = String::new();
    match args.file.as_deref() {
        Some(f) if f.as_os_str() == "-" => from_stdin = true,
        Some(f) => {
            text = std::fs::read_to_string(f)
                .with_context(|| format!("reading store paths from {}", f.display()))?;
        }
        None => {}
    }
    if from_stdin {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading store paths from stdin")?;
    }
    paths.extend(text.lines().map(str::to_string));
    Ok(paths)
}

/// `nixcache warm`.
pub async fn warm(args: WarmArgs) -> anyhow::Result<()> {
    let admin = Admin::new(&args.admin)?;
    let paths = read_paths(&args)?;
    let body = serde_json::json!({ "paths": paths, "pin": args.pin });
    let job: Value = admin
        .json(
            admin
                .request(reqwest::Method::POST, "/_warm")
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(serde_json::to_vec(&body)?),
        )
        .await?;
    let id = job["id"]
        .as_u64()
        .context("the appliance did not name the job")?;
    if args.no_wait {
        println!("warm job {id} started");
        return Ok(());
    }
    let bar = progress_bar();
    let last = loop {
        let p: Value = admin
            .json(admin.request(reqwest::Method::GET, &format!("/_warm/{id}")))
            .await?;
        show(&bar, &p);
        if p["finished_at"].as_u64().is_some() {
            break p;
        }
        tokio::time::sleep(POLL).await;
    };
    bar.finish_and_clear();
    let n = |k: &str| last[k].as_u64().unwrap_or(0);
    let summary = format!(
        "{} paths, {} NARs ({}): {} fetched, {} already stored, {} failed{}",
        n("paths"),
        n("nars"),
        human_bytes(n("bytes")),
        n("nars_fetched"),
        n("nars_already"),
        n("nars_failed"),
        args.pin
            .as_deref()
            .map(|p| format!("; pinned as {p}"))
            .unwrap_or_default(),
    );
    if last["state"] == "done" {
        println!("{summary}");
        return Ok(());
    }
    for f in last["failures"].as_array().into_iter().flatten() {
        eprintln!("  {}", f.as_str().unwrap_or_default());
    }
    bail!(
        "warm job {id} failed: {} ({summary})",
        last["error"].as_str().unwrap_or("unknown error")
    )
}

fn progress_bar() -> indicatif::ProgressBar {
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(0)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let style = indicatif::ProgressStyle::with_template(
        "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} ({eta})",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

fn show(bar: &indicatif::ProgressBar, p: &Value) {
    let n = |k: &str| p[k].as_u64().unwrap_or(0);
    if p["state"] == "resolving" {
        bar.set_message(format!("following references: {} paths", n("paths")));
        return;
    }
    bar.set_length(n("bytes"));
    bar.set_position(n("bytes_done"));
    bar.set_message(format!(
        "{}/{} NARs{}",
        n("nars_done"),
        n("nars"),
        match n("nars_failed") {
            0 => String::new(),
            f => format!(", {f} failed"),
        }
    ));
}

/// `nixcache pins`.
pub async fn pins(args: PinsArgs) -> anyhow::Result<()> {
    let admin = Admin::new(&args.admin)?;
    if let Some(name) = &args.remove {
        admin
            .send(admin.request(reqwest::Method::DELETE, &format!("/_pins/{name}")))
            .await?;
        println!("pin {name} removed");
        return Ok(());
    }
    let status: Value = admin
        .json(admin.request(reqwest::Method::GET, "/_pins"))
        .await?;
    let pins = status["pins"].as_array().cloned().unwrap_or_default();
    if pins.is_empty() {
        println!("no pins");
    } else {
        println!(
            "{:<24} {:>8} {:>12} {:>12}  set",
            "NAME", "PATHS", "NARS ON DISK", "SIZE"
        );
    }
    for p in &pins {
        let n = |k: &str| p[k].as_u64().unwrap_or(0);
        println!(
            "{:<24} {:>8} {:>12} {:>12}  {} ({})",
            p["name"].as_str().unwrap_or("?"),
            n("paths"),
            format!("{}/{}", n("nars_stored"), n("nars")),
            human_bytes(n("bytes")),
            crate::oci::format::timestamp(n("set_at")),
            p["origin"].as_str().unwrap_or("?"),
        );
    }
    println!(
        "protected: {} of at most {} for pins",
        human_bytes(status["protected_bytes"].as_u64().unwrap_or(0)),
        human_bytes(status["limit_bytes"].as_u64().unwrap_or(0)),
    );
    Ok(())
}
