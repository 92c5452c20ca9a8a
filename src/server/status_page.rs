//! `GET /`: the status page for a person — is the appliance earning its place, is anything wrong, and how
//! do I point a machine at it.
//!
//! Server-rendered from the same figures as `/_status`, with no script and no external asset (it works on
//! a LAN without internet), laid out for a phone as well as a desktop. Every string it prints goes through
//! [`Esc`]: source URLs, error messages, refused narinfos' reasons, key names and the Host header can all
//! carry text someone else chose. The Content-Security-Policy forbids scripts as a second line of defence.

mod html;
mod lan;
mod pushes;

use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::{Status, collect_status};
use crate::activity::Event;
use crate::app::App;
use crate::clock::unix_now;
use crate::metrics::human_bytes;
use crate::sources::HealthSnapshot;
use html::{Esc, ago, duration, put, utc};

/// The handler.
pub async fn page(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let status = collect_status(&app).await?;
    let url = substituter_url(headers.get(header::HOST), app.config.listen);
    let ttl = app.config.oci.as_ref().map(|o| o.index_ttl.as_secs());
    let mut response = render(&status, &url, ttl).into_response();
    let h = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    Ok(response)
}

/// The URL clients should use: the address the browser reached this page at (its Host header), when
/// that is a plausible host[:port]; otherwise the listen address, with a placeholder for a wildcard.
fn substituter_url(host: Option<&HeaderValue>, listen: SocketAddr) -> String {
    let plausible = |h: &str| {
        !h.is_empty()
            && h.len() <= 255
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-_:[]".contains(&b))
    };
    match host.and_then(|v| v.to_str().ok()) {
        Some(h) if plausible(h) => format!("http://{h}"),
        _ if listen.ip().is_unspecified() => format!("http://SERVER:{}", listen.port()),
        _ => format!("http://{listen}"),
    }
}

const STYLE: &str = include_str!("status_page/style.css");

/// The whole page.
fn render(status: &Status, url: &str, index_ttl: Option<u64>) -> String {
    let mut out = String::with_capacity(16 * 1024);
    put(
        &mut out,
        format_args!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>nixcache status</title><style>{STYLE}</style></head><body><main>\n"
        ),
    );
    header(&mut out, status);
    cards(&mut out, status);
    sources(&mut out, status);
    freshness(&mut out, status, index_ttl);
    pushes::section(&mut out, status);
    lan::section(&mut out, status); // issue 16
    activity(&mut out, &status.recent_activity);
    client_setup(&mut out, status, url);
    counters(&mut out, status);
    out.push_str(
        "<footer>Machine-readable: <a href=\"/_status\">/_status</a> (JSON), \
         <a href=\"/metrics\">/metrics</a> (Prometheus), <a href=\"/nix-cache-info\">/nix-cache-info</a>.\
         </footer>\n</main></body></html>\n",
    );
    out
}

/// A figure shown to people whose exact value is in `/_status` at `pointer` (tests compare the two).
fn figure(pointer: &str, exact: impl Display, shown: &str) -> String {
    format!(
        "<span data-field=\"{}\" data-value=\"{}\">{}</span>",
        Esc(pointer),
        Esc(&exact.to_string()),
        Esc(shown)
    )
}

fn percent(ratio: Option<f64>) -> String {
    ratio.map_or("–".into(), |r| format!("{:.0}%", r * 100.0))
}

fn health_list(status: &Status) -> Vec<(&str, &HealthSnapshot)> {
    let mut all: Vec<(&str, &HealthSnapshot)> = status
        .upstreams
        .iter()
        .map(|u| (u.url.as_str(), &u.health))
        .collect();
    if let Some(o) = &status.oci {
        all.push((o.image.as_str(), &o.health));
    }
    all
}

fn header(out: &mut String, status: &Status) {
    let all = health_list(status);
    let failing = all.iter().filter(|(_, h)| !h.healthy).count();
    let badge = match (all.len(), failing) {
        _ if !status.healthy => format!(
            "<span class=\"badge warn\">Unhealthy: {} — stored paths are still served</span>",
            Esc(status.unhealthy_reason.as_deref().unwrap_or("unknown"))
        ),
        (0, _) => {
            "<span class=\"badge warn\">No sources configured: serving only what is stored</span>"
                .to_string()
        }
        (_, 0) => "<span class=\"badge ok\">All sources healthy</span>".to_string(),
        (n, f) => format!(
            "<span class=\"badge warn\">{f} of {n} sources failing: stored paths are still served</span>"
        ),
    };
    put(
        out,
        format_args!(
            "<header><h1>nixcache</h1><p class=\"sub\">The Nix binary cache of this network · version {} · up {}</p>\
             <p>{badge}</p></header>\n",
            Esc(status.version),
            duration(status.uptime_secs)
        ),
    );
}

fn cards(out: &mut String, status: &Status) {
    let t = &status.traffic;
    let s = &status.store;
    out.push_str("<div class=\"cards\">\n");
    put(
        out,
        format_args!(
            "<div class=\"card\"><h2>Hit ratio</h2><p class=\"big\">{}</p>\
             <p class=\"dim\">of the narinfos clients asked for that exist were answered from the index \
             ({} hits, {} fetched)</p></div>\n",
            figure(
                "/traffic/narinfo_hit_ratio",
                opt(t.narinfo_hit_ratio),
                &percent(t.narinfo_hit_ratio)
            ),
            figure(
                "/traffic/narinfo_hits",
                t.narinfo_hits,
                &t.narinfo_hits.to_string()
            ),
            figure(
                "/traffic/narinfo_fetched",
                t.narinfo_fetched,
                &t.narinfo_fetched.to_string()
            ),
        ),
    );
    put(
        out,
        format_args!(
            "<div class=\"card\"><h2>Served from this disk</h2><p class=\"big\">{}</p>\
             <p class=\"dim\">{} of {} of NARs sent to clients came from the LAN disk; \
             {} was fetched from the internet.</p></div>\n",
            figure(
                "/traffic/served_from_disk_bytes",
                t.served_from_disk_bytes,
                &human_bytes(t.served_from_disk_bytes)
            ),
            figure(
                "/traffic/disk_byte_ratio",
                opt(t.disk_byte_ratio),
                &percent(t.disk_byte_ratio)
            ),
            figure(
                "/traffic/served_bytes",
                t.served_bytes,
                &human_bytes(t.served_bytes)
            ),
            figure(
                "/traffic/fetched_bytes",
                t.fetched_bytes,
                &human_bytes(t.fetched_bytes)
            ),
        ),
    );
    let used = if s.max_bytes > 0 {
        (s.bytes + s.index_bytes + s.reserved_bytes) as f64 / s.max_bytes as f64
    } else {
        0.0
    };
    put(
        out,
        format_args!(
            "<div class=\"card\"><h2>Disk</h2><p class=\"big\">{} <small>of {}</small></p>\
             <meter min=\"0\" max=\"1\" low=\"0.8\" high=\"0.95\" optimum=\"0\" value=\"{used:.4}\">{:.0}%</meter>\
             <p class=\"dim\">NAR files on disk: {}. The cap also counts the index ({}) and the room reserved by \
             running downloads ({}); {} free on the filesystem, of which {} are kept free. Past the cap, \
             the least recently used NARs go first.</p></div>\n",
            figure("/store/bytes", s.bytes, &human_bytes(s.bytes)),
            figure("/store/max_bytes", s.max_bytes, &human_bytes(s.max_bytes)),
            used * 100.0,
            figure("/store/nars", s.nars, &s.nars.to_string()),
            figure(
                "/store/index_bytes",
                s.index_bytes,
                &human_bytes(s.index_bytes)
            ),
            figure(
                "/store/reserved_bytes",
                s.reserved_bytes,
                &human_bytes(s.reserved_bytes)
            ),
            // Not a figure: the filesystem changes between this page and a `/_status` read.
            human_bytes(s.fs_free_bytes),
            figure(
                "/store/min_free_bytes",
                s.min_free_bytes,
                &human_bytes(s.min_free_bytes)
            ),
        ),
    );
    put(
        out,
        format_args!(
            "<div class=\"card\"><h2>Index</h2><p class=\"big\">{}</p>\
             <p class=\"dim\">narinfos known. Downloads running now: {}.</p></div>\n</div>\n",
            figure(
                "/index/narinfos",
                status.index.narinfos,
                &status.index.narinfos.to_string()
            ),
            figure(
                "/fills_in_flight",
                status.fills_in_flight,
                &status.fills_in_flight.to_string()
            ),
        ),
    );
}

/// A ratio's exact value as `/_status` has it (`null` when there was nothing to divide).
fn opt(v: Option<f64>) -> String {
    v.map_or("null".into(), |v| v.to_string())
}

fn health_cell(h: &HealthSnapshot) -> String {
    if h.healthy {
        return "<span class=\"ok\">healthy</span>".into();
    }
    let mut cell = format!(
        "<span class=\"bad\">failing</span> ({} in a row",
        h.consecutive_failures
    );
    if let Some(secs) = h.backed_off_secs {
        put(&mut cell, format_args!("; asked again in {secs} s"));
    }
    cell.push(')');
    if let Some(e) = &h.last_error {
        put(
            &mut cell,
            format_args!("<br><span class=\"dim\">{}</span>", Esc(e)),
        );
    }
    cell
}

fn sources(out: &mut String, status: &Status) {
    out.push_str(
        "<section><h2>Sources</h2><div class=\"scroll\"><table class=\"stack\"><thead><tr><th>Source</th><th>Kind</th>\
         <th>Health</th><th class=\"n\">Refused</th></tr></thead><tbody>\n",
    );
    if let Some(o) = &status.oci {
        put(
            out,
            format_args!(
                "<tr><td class=\"url\">{}/{}{}</td><td data-label=\"Kind\">OCI registry (mirrored index)</td>\
                 <td data-label=\"Health\">{}</td><td class=\"n\" data-label=\"Refused\">{}</td></tr>\n",
                Esc(&o.registry),
                Esc(&o.image),
                unsigned_note(o.accept_unsigned),
                health_cell(&o.health),
                o.rejected_entries
            ),
        );
    }
    for u in &status.upstreams {
        put(
            out,
            format_args!(
                "<tr><td class=\"url\">{}{}</td><td data-label=\"Kind\">upstream cache, priority {}</td>\
                 <td data-label=\"Health\">{}</td><td class=\"n\" data-label=\"Refused\">{}</td></tr>\n",
                Esc(&u.url),
                unsigned_note(u.accept_unsigned),
                u.priority,
                health_cell(&u.health),
                u.rejected_narinfos
            ),
        );
    }
    if status.oci.is_none() && status.upstreams.is_empty() {
        out.push_str("<tr><td colspan=\"4\">none configured</td></tr>\n");
    }
    out.push_str("</tbody></table></div></section>\n");
}

fn unsigned_note(accept_unsigned: bool) -> &'static str {
    if accept_unsigned {
        "<br><span class=\"warn\">accepts unsigned narinfos</span>"
    } else {
        ""
    }
}

fn freshness(out: &mut String, status: &Status, ttl: Option<u64>) {
    out.push_str("<section><h2>Index freshness</h2>");
    let Some(o) = &status.oci else {
        put(
            out,
            format_args!(
                "<p>No OCI source: narinfos are recorded as clients ask for them.</p>\
                 <p class=\"dim\">Narinfos recorded: {} · NAR records: {} · remembered misses: {}</p></section>\n",
                status.index.narinfos, status.index.nars_known, status.index.negative
            ),
        );
        return;
    };
    let now = unix_now();
    let state = &o.index;
    let (class, when) = match state.last_success {
        Some(at) => {
            let age = now.saturating_sub(at);
            let stale = ttl.is_some_and(|t| age > 3 * t.max(1));
            let class = if stale { "warn" } else { "ok" };
            (class, format!("{} ({})", ago(age), utc(at)))
        }
        None => ("bad", "never".to_string()),
    };
    put(
        out,
        format_args!(
            "<p>Last successful refresh: <span class=\"{class}\">{}</span>. Last outcome: {}.</p>\
             <p>{} entries mirrored{}{}. Checked every {} s.</p></section>\n",
            Esc(&when),
            Esc(state.last_outcome.as_deref().unwrap_or("no refresh yet")),
            figure("/oci/entries", state.entries, &state.entries.to_string()),
            state
                .generated
                .as_deref()
                .map(|g| format!(", published {}", Esc(g)))
                .unwrap_or_default(),
            state
                .manifest_digest
                .as_deref()
                .map(|d| format!(" (manifest <code>{}</code>)", Esc(d)))
                .unwrap_or_default(),
            ttl.unwrap_or(0),
        ),
    );
}

fn activity(out: &mut String, events: &[Event]) {
    out.push_str("<section><h2>Recent activity</h2>");
    if events.is_empty() {
        out.push_str("<p class=\"dim\">Nothing yet since the start.</p></section>\n");
        return;
    }
    out.push_str("<ol class=\"activity\">\n");
    let now = unix_now();
    for e in events.iter().take(25) {
        let class = match e.kind {
            crate::activity::EventKind::Rejected | crate::activity::EventKind::Failed => "bad",
            crate::activity::EventKind::Evicted => "warn",
            _ => "ok",
        };
        put(
            out,
            format_args!(
                "<li><span class=\"dim\" title=\"{}\">{}</span> <span class=\"kind {class}\">{}</span> {}</li>\n",
                Esc(&utc(e.at)),
                Esc(&ago(now.saturating_sub(e.at))),
                e.kind.as_str(),
                Esc(&e.message)
            ),
        );
    }
    out.push_str("</ol></section>\n");
}

fn client_setup(out: &mut String, status: &Status, url: &str) {
    let key = status.public_key.as_deref();
    let mut conf = format!("extra-substituters = {url}\n");
    let mut nixos = format!("nix.settings = {{\n  extra-substituters = [ \"{url}\" ];\n");
    if let Some(k) = key {
        put(&mut conf, format_args!("extra-trusted-public-keys = {k}\n"));
        put(
            &mut nixos,
            format_args!("  extra-trusted-public-keys = [ \"{k}\" ];\n"),
        );
    }
    nixos.push_str("};\n");
    put(
        out,
        format_args!(
            "<section><h2>Use this cache</h2><p>On each machine, add to <code>/etc/nix/nix.conf</code> \
             (then restart <code>nix-daemon</code>):</p><pre>{}</pre>\
             <p>On NixOS, in <code>configuration.nix</code>:</p><pre>{}</pre>",
            Esc(&conf),
            Esc(&nixos)
        ),
    );
    match (key, status.signing_key.as_deref()) {
        (Some(k), Some(name)) => put(
            out,
            format_args!(
                "<p class=\"dim\">Narinfos are signed with this appliance's key <code>{}</code>; check it \
                 against <a href=\"/public-key\">/public-key</a> on a machine you trust. Its full value: \
                 <code>{}</code></p>",
                Esc(name),
                Esc(k)
            ),
        ),
        _ => out.push_str(
            "<p class=\"dim\">This appliance does not sign: narinfos keep their upstream signatures, which \
             clients already trust for cache.nixos.org. To have clients trust one key for everything, run \
             <code>nixcache keygen NAME</code> and serve with <code>--signing-key-file</code>.</p>",
        ),
    }
    out.push_str("</section>\n");
}

fn counters(out: &mut String, status: &Status) {
    let t = &status.traffic;
    let rows: [(&str, &str, u64); 15] = [
        ("Narinfos from the index", "narinfo_hits", t.narinfo_hits),
        ("Narinfos fetched", "narinfo_fetched", t.narinfo_fetched),
        (
            "Narinfos in no cache (404)",
            "narinfo_misses",
            t.narinfo_misses,
        ),
        (
            "Remembered misses (404)",
            "narinfo_negative",
            t.narinfo_negative,
        ),
        (
            "Narinfo failures (502/504)",
            "narinfo_errors",
            t.narinfo_errors,
        ),
        ("Narinfos refused", "narinfo_rejected", t.narinfo_rejected),
        ("NARs from disk", "nar_hits", t.nar_hits),
        ("NAR downloads started", "nar_misses", t.nar_misses),
        (
            "NAR requests sharing a download",
            "nar_coalesced",
            t.nar_coalesced,
        ),
        (
            "NAR downloads failed at once (502)",
            "nar_errors",
            t.nar_errors,
        ),
        (
            "Downloads verified and stored",
            "fills_stored",
            t.fills_stored,
        ),
        ("Downloads failed", "fills_failed", t.fills_failed),
        (
            "Downloads refused by a hash check",
            "fills_rejected",
            t.fills_rejected,
        ),
        ("NARs evicted", "evicted_nars", t.evicted_nars),
        ("Bytes evicted", "evicted_bytes", t.evicted_bytes),
    ];
    out.push_str("<section><h2>Since the start</h2><div class=\"scroll\"><table><tbody>\n");
    for (label, field, value) in rows {
        put(
            out,
            format_args!(
                "<tr><td>{label}</td><td class=\"n\">{}</td></tr>\n",
                figure(&format!("/traffic/{field}"), value, &value.to_string())
            ),
        );
    }
    out.push_str("</tbody></table></div></section>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_header_only_when_plausible() {
        let listen: SocketAddr = "0.0.0.0:37515".parse().unwrap();
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(
            substituter_url(Some(&h("nixcache.lan:37515")), listen),
            "http://nixcache.lan:37515"
        );
        assert_eq!(
            substituter_url(Some(&h("[fe80::1]:37515")), listen),
            "http://[fe80::1]:37515"
        );
        assert_eq!(
            substituter_url(Some(&h("x\"><script>")), listen),
            "http://SERVER:37515"
        );
        assert_eq!(
            substituter_url(None, "192.168.1.5:80".parse().unwrap()),
            "http://192.168.1.5:80"
        );
    }
}
