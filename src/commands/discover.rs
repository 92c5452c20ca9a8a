//! `nixcache discover`: find appliances over mDNS, check that each answers as a Nix cache, and print them
//! as a table or as nix.conf lines.
//!
//! An mDNS advertisement is unauthenticated, so what it says is used only where a lie costs nothing: a
//! substituter URL (Nix checks every narinfo's signature against keys it already trusts). An advertised
//! key becomes an `extra-trusted-public-keys` line only when it equals a key pinned with `--trust`, or
//! when the user asked for trust on first use with `--trust-advertised`.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::cli::DiscoverArgs;
use crate::mdns::Advertised;
use crate::nix::signing::PublicKey;

/// How long one candidate address may take to answer `GET /nix-cache-info`.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Nix's priority for a cache that announces none; used only to order the list.
const NIX_DEFAULT_PRIORITY: u32 = 50;

/// Why an advertised key is, or is not, written as trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyTrust {
    /// No (usable) key advertised.
    NoKey,
    /// Equal to a key given with `--trust`.
    Pinned,
    /// Accepted because of `--trust-advertised`.
    OnFirstUse,
    /// Advertised, but neither pinned nor accepted.
    Untrusted,
}

/// A cache that was advertised and answered `/nix-cache-info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// `http://IP:PORT` (plus the advertised path when it is not `/`).
    pub url: String,
    /// The cache's priority: its `/nix-cache-info`, else the TXT record.
    pub priority: Option<u32>,
    /// The advertised key, when it is a well-formed Nix public key.
    pub key: Option<String>,
    /// What is made of that key.
    pub trust: KeyTrust,
}

impl Found {
    /// The `extra-substituters` entry: the URL with `?priority=N` when the priority is known.
    pub fn substituter(&self) -> String {
        match self.priority {
            Some(p) => format!("{}?priority={p}", self.url),
            None => self.url.clone(),
        }
    }

    fn is_trusted(&self) -> bool {
        matches!(self.trust, KeyTrust::Pinned | KeyTrust::OnFirstUse)
    }
}

/// Browses, checks, prints, writes; fails (exit status 1) when no cache with a trusted key was found.
pub async fn discover(args: DiscoverArgs) -> anyhow::Result<()> {
    let pinned = args
        .trust
        .iter()
        .map(|k| {
            PublicKey::parse(k)
                .map(|p| p.to_string())
                .map_err(|e| anyhow::anyhow!("--trust {k:?}: not a public key (name:base64): {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let advertised = crate::mdns::browse(Duration::from_secs(args.timeout.max(1)))
        .await
        .context("cannot browse mDNS")?;
    let client = reqwest::Client::builder()
        .timeout(CHECK_TIMEOUT)
        .no_proxy()
        .build()
        .context("cannot make an HTTP client")?;
    let checks = advertised
        .iter()
        .map(|ad| check(&client, ad, &pinned, args.trust_advertised));
    let mut found: Vec<Found> = futures_util::future::join_all(checks)
        .await
        .into_iter()
        .flatten()
        .collect();
    found.sort_by_key(order_key);
    found.dedup_by(|a, b| a.substituter() == b.substituter() && a.key == b.key);

    let lines = nix_conf_lines(&found);
    if args.nix_conf {
        for line in &lines {
            println!("{line}");
        }
    } else {
        print_table(&found);
    }
    if let Some(path) = &args.write {
        let mut text =
            String::from("# Written by `nixcache discover`: Nix caches found on the LAN.\n");
        for line in &lines {
            text.push_str(line);
            text.push('\n');
        }
        write_atomically(path, &text)?;
        eprintln!("wrote {}", path.display());
    }
    let trusted = found.iter().filter(|f| f.is_trusted()).count();
    match (found.len(), trusted) {
        (0, _) => bail!(
            "no Nix cache found over mDNS within {} s ({} advertisement(s) seen)",
            args.timeout.max(1),
            advertised.len()
        ),
        (n, 0) => bail!(
            "{n} cache(s) found, none with a trusted key: pin the appliance's key with --trust NAME:KEY \
             (its /public-key, read on a machine you trust), or accept advertised keys with --trust-advertised"
        ),
        _ => Ok(()),
    }
}

fn order_key(f: &Found) -> (u32, String, Option<String>) {
    (
        f.priority.unwrap_or(NIX_DEFAULT_PRIORITY),
        f.url.clone(),
        f.key.clone(),
    )
}

/// Checks one advertisement: its addresses in order of preference until one answers as a Nix cache.
async fn check(
    client: &reqwest::Client,
    ad: &Advertised,
    pinned: &[String],
    trust_advertised: bool,
) -> Option<Found> {
    if ad.txt.get("proto").is_some_and(|p| p != "http") {
        tracing::info!(service = ?ad.fullname, "skipped: advertises a protocol other than http");
        return None;
    }
    let path = ad.txt.get("path").map(String::as_str).unwrap_or("/");
    if !valid_path(path) {
        tracing::warn!(service = ?ad.fullname, path = ?path, "skipped: advertised path is not a plain URL path");
        return None;
    }
    for ip in candidates(&ad.addresses) {
        let url = cache_url(ip, ad.port, path);
        let Some(info_priority) = nix_cache_info(client, &url).await else {
            continue;
        };
        let priority =
            info_priority.or_else(|| ad.txt.get("priority").and_then(|p| parse_priority(p)));
        let key = ad.txt.get("pubkey").filter(|k| acceptable_key(k)).cloned();
        let trust = match &key {
            None => KeyTrust::NoKey,
            Some(k) if pinned.contains(k) => KeyTrust::Pinned,
            Some(_) if trust_advertised => KeyTrust::OnFirstUse,
            Some(_) => KeyTrust::Untrusted,
        };
        return Some(Found {
            url,
            priority,
            key,
            trust,
        });
    }
    tracing::warn!(service = ?ad.fullname, addresses = ?ad.addresses, "skipped: no address answers /nix-cache-info");
    None
}

/// `GET URL/nix-cache-info`: `Some(priority it announces)` when it is a cache of `/nix/store`.
async fn nix_cache_info(client: &reqwest::Client, url: &str) -> Option<Option<u32>> {
    let response = client
        .get(format!("{url}/nix-cache-info"))
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    // Whatever answers on the LAN may send an endless body: read a few KiB at most.
    let body =
        crate::oci::client::read_capped(response, "nix-cache-info", MAX_CACHE_INFO_BYTES, |_| {})
            .await
            .ok()?;
    parse_cache_info(&String::from_utf8_lossy(&body))
}

/// The most of a `/nix-cache-info` answer read.
pub const MAX_CACHE_INFO_BYTES: u64 = 16 << 10;

/// Reads a `/nix-cache-info` text: `Some(priority it announces, if any)` when it is a cache of
/// `/nix/store`, `None` otherwise.
pub fn parse_cache_info(body: &str) -> Option<Option<u32>> {
    let field = |name: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(str::trim))
    };
    if field("StoreDir") != Some(crate::nix::STORE_DIR) {
        return None;
    }
    Some(field("Priority").and_then(parse_priority))
}

/// A priority as nixcache-discover.sh reads it too: 1 to 9 decimal digits, nothing else.
pub fn parse_priority(text: &str) -> Option<u32> {
    let digits = (1..=9).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit());
    digits.then(|| text.parse().ok()).flatten()
}

/// Addresses worth trying, best first: IPv4, then global IPv6, then loopback (which works only on the
/// appliance itself). IPv6 link-local addresses are left out: a URL cannot carry their interface in
/// nix.conf. Ties are broken by the address as text, as nixcache-discover.sh does.
pub fn candidates(addresses: &[IpAddr]) -> Vec<IpAddr> {
    let rank = |ip: &IpAddr| match ip {
        _ if ip.is_loopback() => Some(2),
        IpAddr::V4(v4) if v4.is_unspecified() || v4.is_multicast() => None,
        IpAddr::V4(_) => Some(0),
        IpAddr::V6(v6) if v6.is_unicast_link_local() || v6.is_unspecified() => None,
        IpAddr::V6(_) => Some(1),
    };
    let mut ranked: Vec<(u8, String, IpAddr)> = addresses
        .iter()
        .filter_map(|ip| rank(ip).map(|r| (r, ip.to_string(), *ip)))
        .collect();
    ranked.sort();
    ranked.dedup();
    ranked.into_iter().map(|(_, _, ip)| ip).collect()
}

/// `http://IP:PORT` + path without its final `/`; IPv6 in brackets.
pub fn cache_url(ip: IpAddr, port: u16, path: &str) -> String {
    let host = match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    format!("http://{host}:{port}{}", path.trim_end_matches('/'))
}

/// A path that can go into a URL in nix.conf as it is: `/` then letters, digits and `/._~-`.
pub fn valid_path(path: &str) -> bool {
    path.starts_with('/')
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._~-".contains(c))
}

/// An advertised key usable in nix.conf: `name:base64` of an ed25519 key, written canonically, with a name
/// of letters, digits and `._+@-` (nothing that could break the line it is written on).
pub fn acceptable_key(key: &str) -> bool {
    let Some((name, _)) = key.split_once(':') else {
        return false;
    };
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._+@-".contains(c))
        && PublicKey::parse(key).is_ok_and(|k| k.to_string() == key)
}

/// The nix.conf lines for what was found: every cache as a substituter (ordered by priority, then URL),
/// and only trusted keys as trusted public keys. Nothing found, no lines.
pub fn nix_conf_lines(found: &[Found]) -> Vec<String> {
    let mut lines = Vec::new();
    let mut substituters: Vec<String> = Vec::new();
    for f in found {
        let s = f.substituter();
        if !substituters.contains(&s) {
            substituters.push(s);
        }
    }
    if !substituters.is_empty() {
        lines.push(format!("extra-substituters = {}", substituters.join(" ")));
    }
    let keys: BTreeSet<&str> = found
        .iter()
        .filter(|f| f.is_trusted())
        .filter_map(|f| f.key.as_deref())
        .collect();
    if !keys.is_empty() {
        let keys: Vec<&str> = keys.into_iter().collect();
        lines.push(format!("extra-trusted-public-keys = {}", keys.join(" ")));
    }
    lines
}

fn print_table(found: &[Found]) {
    for f in found {
        let priority = f
            .priority
            .map_or_else(|| "-".to_string(), |p| p.to_string());
        let (key, trust) = match (&f.key, f.trust) {
            (None, _) | (_, KeyTrust::NoKey) => ("-", "no key advertised"),
            (Some(k), KeyTrust::Pinned) => (k.as_str(), "trusted (pinned)"),
            (Some(k), KeyTrust::OnFirstUse) => {
                (k.as_str(), "trusted (advertised, trust on first use)")
            }
            (Some(k), KeyTrust::Untrusted) => (k.as_str(), "NOT trusted (not pinned)"),
        };
        println!("{}  priority {priority}  key {key}  {trust}", f.url);
    }
}

/// Writes `text` to `path` so that readers see the old file or the new one, never a part: a temp file in
/// the same folder, fsync, rename, fsync the folder. The temp file is removed on every early exit.
pub fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    struct TempGuard(Option<PathBuf>);
    impl Drop for TempGuard {
        fn drop(&mut self) {
            if let Some(p) = self.0.take() {
                let _ = std::fs::remove_file(p);
            }
        }
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("{}: not a file name", path.display()))?;
    let temp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let mut guard = TempGuard(Some(temp.clone()));
    let mut file = std::fs::File::create(&temp)
        .with_context(|| format!("cannot create {}", temp.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", temp.display()))?;
    std::fs::rename(&temp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    guard.0 = None;
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync folder {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "nixcache.lan-1:veQv4KKpmmHg7SlnFFbSRVLwWtRIi1N0nTJMfTpElKY=";
    const OTHER: &str = "b-1:t/3Ot7hf+gNG/a6McHNOxMkd+KYWh0qcQmMw/A4Hw+E=";

    fn found(url: &str, priority: Option<u32>, key: Option<&str>, trust: KeyTrust) -> Found {
        Found {
            url: url.into(),
            priority,
            key: key.map(str::to_string),
            trust,
        }
    }

    #[test]
    fn only_trusted_keys_become_trusted_key_lines() {
        let list = [
            found(
                "http://10.0.0.1:37515",
                Some(30),
                Some(KEY),
                KeyTrust::Pinned,
            ),
            found(
                "http://10.0.0.2:37515",
                Some(30),
                Some(OTHER),
                KeyTrust::Untrusted,
            ),
            found("http://10.0.0.3:37515", None, None, KeyTrust::NoKey),
        ];
        assert_eq!(
            nix_conf_lines(&list),
            [
                "extra-substituters = http://10.0.0.1:37515?priority=30 http://10.0.0.2:37515?priority=30 http://10.0.0.3:37515".to_string(),
                format!("extra-trusted-public-keys = {KEY}"),
            ]
        );
        let untrusted = [found(
            "http://10.0.0.2:1",
            Some(30),
            Some(OTHER),
            KeyTrust::Untrusted,
        )];
        assert_eq!(
            nix_conf_lines(&untrusted),
            ["extra-substituters = http://10.0.0.2:1?priority=30"]
        );
        assert!(nix_conf_lines(&[]).is_empty());
    }

    #[test]
    fn advertised_keys_cannot_inject_lines() {
        assert!(acceptable_key(KEY));
        for bad in [
            &format!("{KEY}\nextra-substituters = http://evil"),
            &format!("evil name{}", &KEY[KEY.find(':').unwrap()..]),
            "nixcache.lan-1:veQv4KKpmmHg7SlnFFbSRVLwWtRIi1N0nTJMfTpElKY",
            "nixcache.lan-1:AAAA",
            "no-colon",
            "",
        ] {
            assert!(!acceptable_key(bad), "{bad:?}");
        }
        assert!(valid_path("/"));
        assert!(valid_path("/cache/v1/"));
        for bad in [
            "",
            "cache",
            "/a b",
            "/x?priority=1",
            "/x\nextra-trusted-public-keys",
        ] {
            assert!(!valid_path(bad), "{bad:?}");
        }
    }

    #[test]
    fn addresses_are_tried_ipv4_first_and_never_link_local() {
        let ips: Vec<IpAddr> = [
            "::1",
            "fe80::1",
            "127.0.0.1",
            "2001:db8::5",
            "10.0.0.9",
            "10.0.0.10",
            "0.0.0.0",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let got: Vec<String> = candidates(&ips).iter().map(|ip| ip.to_string()).collect();
        assert_eq!(
            got,
            ["10.0.0.10", "10.0.0.9", "2001:db8::5", "127.0.0.1", "::1"]
        );
        assert_eq!(
            cache_url("2001:db8::5".parse().unwrap(), 80, "/"),
            "http://[2001:db8::5]:80"
        );
        assert_eq!(
            cache_url("10.0.0.1".parse().unwrap(), 1, "/c/"),
            "http://10.0.0.1:1/c"
        );
    }

    #[test]
    fn writes_replace_the_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("discovered.conf");
        std::fs::write(&path, "old\n").unwrap();
        write_atomically(&path, "new\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\n");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temp file left behind");
        assert!(write_atomically(&dir.path().join("missing/x.conf"), "x").is_err());
    }
}
