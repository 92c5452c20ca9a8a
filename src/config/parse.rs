//! Parsing the values the configuration takes: addresses, sizes, URLs. Each error says what is wrong
//! with the value; the caller adds where it came from.

use std::net::{IpAddr, SocketAddr};

/// `ghcr.io` → `https://ghcr.io`; a URL is kept (tests use `http://127.0.0.1:5000`).
pub fn normalize_registry(value: &str) -> Result<String, String> {
    let value = value.trim().trim_end_matches('/');
    let url = if value.contains("://") {
        value.to_string()
    } else {
        format!("https://{value}")
    };
    // Messages name the URL with its credentials hidden.
    let shown = crate::redact::url(value);
    let value = shown.as_str();
    let parsed =
        reqwest::Url::parse(&url).map_err(|e| format!("{value:?} is not a registry URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(format!(
            "{value:?}: give https://HOST (or http://HOST:PORT for a local registry)"
        ));
    }
    if parsed.path() != "/" || parsed.query().is_some() {
        return Err(format!(
            "{value:?}: give the registry's base URL without a path"
        ));
    }
    Ok(url)
}

/// Parses `ADDR:PORT`, or a bare address when `default_port` is given (nixcache-oci's `NIXCACHE_LISTEN=0.0.0.0`).
pub fn parse_listen(value: &str, default_port: Option<u16>) -> Result<SocketAddr, String> {
    let value = value.trim();
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Some(port) = default_port {
        let bare = value.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
    }
    Err(format!(
        "{value:?} is not an ADDRESS:PORT such as 0.0.0.0:37515 or [::]:37515"
    ))
}

/// Parses a size: bytes, or a number with K/M/G/T (powers of 1024, also written KiB...) or KB/MB/GB/TB (powers of 1000).
pub fn parse_size(value: &str) -> Result<u64, String> {
    let v = value.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{value:?} is not a size such as 20GiB or 500M"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => {
            return Err(format!(
                "{value:?}: unknown unit {unit:?} (use K, M, G, T, KiB..., KB...)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{value:?} is too large"))
}

/// Checks an upstream URL (http or https, no query or fragment) and gives it a trailing `/`.
pub fn normalize_upstream(raw: &str) -> Result<String, String> {
    // Messages name the URL with its credentials hidden.
    let url = crate::redact::url(raw);
    let parsed =
        reqwest::Url::parse(raw.trim()).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "{url:?}: only http and https upstreams are supported"
        ));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() || parsed.host_str().is_none() {
        return Err(format!(
            "{url:?}: give a plain base URL without query or fragment"
        ));
    }
    let mut s = parsed.to_string();
    if !s.ends_with('/') {
        s.push('/');
    }
    Ok(s)
}
