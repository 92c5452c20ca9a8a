//! Configuration: the TOML file, the environment and the flags, merged into one checked [`Config`].
//!
//! Precedence is flag > environment > file > default. Every problem names the key (or variable or flag)
//! it came from, so a bad value stops start-up with a message the user can act on.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cli::ServeArgs;

mod limits;
pub use limits::Limits;

/// The port nixcache listens on unless told otherwise (the one nixcache-oci used).
pub const DEFAULT_PORT: u16 = 37515;
/// The listen address unless told otherwise.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:37515";
/// The upstream cache used when none is configured.
pub const DEFAULT_UPSTREAM: &str = "https://cache.nixos.org";
/// The data folder when neither a flag, a variable, a config key nor `$STATE_DIRECTORY` names one.
pub const DEFAULT_DATA_DIR: &str = "./nixcache-data";
/// The NAR store's size cap unless told otherwise.
pub const DEFAULT_MAX_SIZE: &str = "20GiB";
/// `Priority:` in `/nix-cache-info` (lower is preferred by clients; cache.nixos.org says 40).
pub const DEFAULT_PRIORITY: u32 = 30;
/// How long "absent everywhere" is remembered, in seconds.
pub const DEFAULT_NEGATIVE_TTL_SECS: u64 = 60;
/// How long one upstream narinfo request may take, in seconds.
pub const DEFAULT_UPSTREAM_TIMEOUT_SECS: u64 = 10;
/// How long a NAR download may go without receiving a byte, in seconds.
pub const DEFAULT_STALL_TIMEOUT_SECS: u64 = 60;
/// The registry of the OCI source unless told otherwise.
pub const DEFAULT_OCI_REGISTRY: &str = "https://ghcr.io";
/// Seconds between refreshes of the OCI index (nixcache-oci's `NIXCACHE_INDEX_TTL`).
pub const DEFAULT_INDEX_TTL_SECS: u64 = 300;
/// The upstream keys trusted unless told otherwise: cache.nixos.org's.
pub const DEFAULT_TRUSTED_KEYS: &[&str] =
    &["cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="];
/// Whether `serve` advertises itself over mDNS unless told otherwise.
pub const DEFAULT_MDNS: bool = true;
/// The interfaces mDNS advertises on unless told otherwise: none named means all.
pub const DEFAULT_MDNS_INTERFACES: &[&str] = &[];

/// Errors that stop start-up; each names where the bad value came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has an unknown key or a value of the wrong type.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What toml said (it names the key and the line).
        message: String,
    },
    /// A value was read but makes no sense.
    #[error("{origin}: {message}")]
    Invalid {
        /// Where it came from: `--listen`, `NIXCACHE_PORT`, `max_size in FILE`, ...
        origin: String,
        /// What is wrong with it.
        message: String,
    },
}

/// The config file as written: every key optional, unknown keys rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `ADDR:PORT` to listen on.
    pub listen: Option<String>,
    /// Folder for the index and NAR files.
    pub data_dir: Option<PathBuf>,
    /// Size cap of the NAR store (`20GiB`, `500M`, or a number of bytes).
    pub max_size: Option<SizeValue>,
    /// `Priority:` announced in `/nix-cache-info`.
    pub priority: Option<u32>,
    /// Seconds a "not found anywhere" answer is remembered.
    pub negative_ttl: Option<u64>,
    /// Seconds one upstream narinfo request may take.
    pub upstream_timeout: Option<u64>,
    /// Seconds a NAR download may stall before it is abandoned.
    pub stall_timeout: Option<u64>,
    /// Upstream caches, most preferred first: URLs, or tables with per-source trust.
    pub upstreams: Option<Vec<UpstreamEntry>>,
    /// Secret key (Nix format) the appliance signs what it serves with.
    pub signing_key_file: Option<PathBuf>,
    /// Public keys (`name:base64`) whose signatures make an upstream narinfo acceptable.
    pub trusted_keys: Option<Vec<String>>,
    /// Advertise the cache over mDNS.
    pub mdns: Option<bool>,
    /// Interfaces (names or addresses) to advertise on; empty means all.
    pub mdns_interfaces: Option<Vec<String>>,
    /// Registry of the OCI source (`https://ghcr.io`).
    pub oci_registry: Option<String>,
    /// `OWNER/REPO` whose cache (`<owner>/<repo>/nix-cache`) is the OCI source.
    pub oci_repo: Option<String>,
    /// Seconds between OCI index refreshes.
    pub index_ttl: Option<u64>,
    /// Keys trusted for the OCI source instead of the global `trusted_keys`.
    pub oci_trusted_keys: Option<Vec<String>>,
    /// Accept the OCI source's narinfos without a valid signature.
    pub oci_accept_unsigned: Option<bool>,
    /// File with the token that allows `POST /_refresh` from other hosts than loopback.
    pub admin_token_file: Option<PathBuf>,
    // Limits and trust boundaries (see `limits.rs`), kept together.
    /// Seconds a client may take to send a request's headers.
    pub header_timeout: Option<u64>,
    /// Seconds a kept-alive connection may be idle between requests.
    pub keepalive_timeout: Option<u64>,
    /// Seconds a response may wait for the client to accept a byte.
    pub send_timeout: Option<u64>,
    /// Connections served at once.
    pub max_connections: Option<usize>,
    /// Connections served at once from one client address (0: no such cap).
    pub max_connections_per_client: Option<usize>,
    /// Upstream narinfo requests in flight at once.
    pub max_upstream_lookups: Option<usize>,
    /// Whether loopback clients may `POST /_refresh` without the admin token.
    pub trust_loopback: Option<bool>,
    /// Token realm hosts besides the registry's own that may receive the registry credentials.
    pub oci_token_hosts: Option<Vec<String>>,
}

/// A secret (registry token): never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The OCI source (a cache published in the nixcache-oci format). Its debug output hides credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct OciConfig {
    /// Registry base URL.
    pub registry: String,
    /// `OWNER/REPO`.
    pub repo: String,
    /// Time between index refreshes.
    pub index_ttl: Duration,
    /// Keys whose signature makes one of its narinfos acceptable.
    pub trusted_keys: Vec<String>,
    /// Accept its narinfos unsigned.
    pub accept_unsigned: bool,
    /// `GITHUB_TOKEN` / `GH_TOKEN`, for private packages.
    pub token: Option<Secret>,
}

/// One `upstreams` element: a URL, or a table.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum UpstreamEntry {
    /// Just the URL: the global `trusted_keys` apply.
    Url(String),
    /// A URL with its own trust settings.
    Table(UpstreamTable),
}

/// An upstream with its own trust settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTable {
    /// Base URL.
    pub url: String,
    /// Keys trusted for this source instead of the global `trusted_keys`.
    pub trusted_keys: Option<Vec<String>>,
    /// Accept this source's narinfos without a valid signature (a private publisher without keys).
    #[serde(default)]
    pub accept_unsigned: bool,
}

/// A resolved upstream. Its debug output hides credentials in the URL.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// Base URL ending in `/`.
    pub url: String,
    /// Keys whose signature makes a narinfo from it acceptable (checked to parse).
    pub trusted_keys: Vec<String>,
    /// Narinfos are accepted without a signature: an explicit, visible choice.
    pub accept_unsigned: bool,
}

impl std::fmt::Debug for OciConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OciConfig")
            .field("registry", &crate::redact::url(&self.registry))
            .field("repo", &self.repo)
            .field("index_ttl", &self.index_ttl)
            .field("trusted_keys", &self.trusted_keys)
            .field("accept_unsigned", &self.accept_unsigned)
            .field("token", &self.token)
            .finish()
    }
}

impl std::fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("url", &crate::redact::url(&self.url))
            .field("trusted_keys", &self.trusted_keys)
            .field("accept_unsigned", &self.accept_unsigned)
            .finish()
    }
}

/// A size written either as a number of bytes or as a string with a unit.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum SizeValue {
    /// Plain bytes.
    Bytes(u64),
    /// `"20GiB"`, `"500M"`, ...
    Text(String),
}

/// The resolved configuration the daemon runs with. Plain data: no runtime handles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Socket address to bind.
    pub listen: SocketAddr,
    /// Folder holding `index.redb`, `nar/` and `tmp/`.
    pub data_dir: PathBuf,
    /// Size cap of the NAR store in bytes.
    pub max_size: u64,
    /// `Priority:` in `/nix-cache-info`.
    pub priority: u32,
    /// How long a negative entry lives.
    pub negative_ttl: Duration,
    /// Time limit of one upstream narinfo request.
    pub upstream_timeout: Duration,
    /// Time a NAR download may go without a byte.
    pub stall_timeout: Duration,
    /// Upstream caches, most preferred first.
    pub upstreams: Vec<UpstreamConfig>,
    /// The appliance's secret key file, if it signs.
    pub signing_key_file: Option<PathBuf>,
    /// Whether `serve` advertises itself over mDNS.
    pub mdns: bool,
    /// Interfaces (names or addresses) mDNS advertises on; empty means all.
    pub mdns_interfaces: Vec<String>,
    /// The OCI source, when a repository is configured.
    pub oci: Option<OciConfig>,
    /// File holding the admin token for `POST /_refresh` from other hosts.
    pub admin_token_file: Option<PathBuf>,
    /// Connection limits, time-outs, the upstream lookup cap and trust boundaries.
    pub limits: Limits,
}

impl Config {
    /// Merges flags, environment (read through `env`) and the config file (named by `--config`) over the defaults.
    pub fn resolve(
        args: &ServeArgs,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let (file, file_name) = match &args.config {
            Some(path) => (read_file(path)?, path.display().to_string()),
            None => (FileConfig::default(), String::new()),
        };
        let in_file = |key: &str| format!("{key} in {file_name}");
        let env_nonempty = |name: &str| env(name).filter(|v| !v.trim().is_empty());

        let listen = if let Some(flag) = &args.listen {
            parse_listen(flag, None).map_err(|m| invalid("--listen", m))?
        } else {
            let base = match &file.listen {
                Some(v) => parse_listen(v, None).map_err(|m| invalid(&in_file("listen"), m))?,
                None => DEFAULT_LISTEN
                    .parse()
                    .expect("default listen address parses"),
            };
            let port = match env_nonempty("NIXCACHE_PORT") {
                Some(p) => Some(p.trim().parse::<u16>().map_err(|_| {
                    invalid("NIXCACHE_PORT", format!("{p:?} is not a port number"))
                })?),
                None => None,
            };
            match env_nonempty("NIXCACHE_LISTEN") {
                Some(v) => parse_listen(&v, Some(port.unwrap_or(base.port())))
                    .map_err(|m| invalid("NIXCACHE_LISTEN", m))?,
                None => SocketAddr::new(base.ip(), port.unwrap_or(base.port())),
            }
        };

        let data_dir = args
            .data_dir
            .clone()
            .or_else(|| env_nonempty("NIXCACHE_DATA_DIR").map(PathBuf::from))
            .or_else(|| file.data_dir.clone())
            .or_else(|| {
                // systemd may list several folders separated by ':'; the first is ours.
                env_nonempty("STATE_DIRECTORY").and_then(|v| v.split(':').next().map(PathBuf::from))
            })
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));

        let max_size = match (&args.max_size, &file.max_size) {
            (Some(flag), _) => parse_size(flag).map_err(|m| invalid("--max-size", m))?,
            (None, Some(SizeValue::Bytes(n))) => *n,
            (None, Some(SizeValue::Text(t))) => {
                parse_size(t).map_err(|m| invalid(&in_file("max_size"), m))?
            }
            (None, None) => parse_size(DEFAULT_MAX_SIZE).expect("default size parses"),
        };
        if max_size == 0 {
            return Err(invalid("max_size", "must be larger than 0".into()));
        }

        let global_keys: Vec<(String, String)> = if !args.trusted_keys.is_empty() {
            args.trusted_keys
                .iter()
                .map(|k| ("--trusted-key".to_string(), k.clone()))
                .collect()
        } else if let Some(keys) = &file.trusted_keys {
            keys.iter()
                .map(|k| (in_file("trusted_keys"), k.clone()))
                .collect()
        } else {
            DEFAULT_TRUSTED_KEYS
                .iter()
                .map(|k| ("default trusted key".to_string(), k.to_string()))
                .collect()
        };
        let global_keys = check_keys(global_keys)?;

        let plain = |origin: String, url: &str| (origin, url.to_string(), None, false);
        let upstreams: Vec<(String, String, Option<Vec<String>>, bool)> =
            if !args.upstreams.is_empty() {
                args.upstreams
                    .iter()
                    .map(|u| plain("--upstream".into(), u))
                    .collect()
            } else if let Some(v) = env("NIXCACHE_UPSTREAM") {
                // Set but empty means "no upstream" (a cache serving only what it has).
                v.split_whitespace()
                    .map(|u| plain("NIXCACHE_UPSTREAM".into(), u))
                    .collect()
            } else if let Some(list) = &file.upstreams {
                list.iter()
                    .map(|entry| match entry {
                        UpstreamEntry::Url(u) => plain(in_file("upstreams"), u),
                        UpstreamEntry::Table(t) => (
                            in_file("upstreams"),
                            t.url.clone(),
                            t.trusted_keys.clone(),
                            t.accept_unsigned,
                        ),
                    })
                    .collect()
            } else {
                vec![plain("default upstream".into(), DEFAULT_UPSTREAM)]
            };
        let mut checked: Vec<UpstreamConfig> = Vec::with_capacity(upstreams.len());
        for (origin, url, keys, accept_unsigned) in upstreams {
            let url = normalize_upstream(&url).map_err(|m| invalid(&origin, m))?;
            if checked.iter().any(|u| u.url == url) {
                return Err(invalid(&origin, format!("{url} is listed twice")));
            }
            let trusted_keys = match keys {
                Some(keys) => check_keys(keys.into_iter().map(|k| (origin.clone(), k)).collect())?,
                None => global_keys.clone(),
            };
            checked.push(UpstreamConfig {
                url,
                trusted_keys,
                accept_unsigned,
            });
        }
        let signing_key_file = args
            .signing_key_file
            .clone()
            .or_else(|| file.signing_key_file.clone());
        let oci = resolve_oci(args, env, &file, &in_file, &global_keys)?;
        let mdns_interfaces = resolve_mdns_interfaces(args, &file, &in_file)?;

        let secs = |v: Option<u64>, key: &str, default: u64| -> Result<Duration, ConfigError> {
            match v {
                Some(0) => Err(invalid(&in_file(key), "must be at least 1 second".into())),
                Some(n) => Ok(Duration::from_secs(n)),
                None => Ok(Duration::from_secs(default)),
            }
        };
        Ok(Config {
            listen,
            data_dir,
            max_size,
            priority: file.priority.unwrap_or(DEFAULT_PRIORITY),
            negative_ttl: secs(file.negative_ttl, "negative_ttl", DEFAULT_NEGATIVE_TTL_SECS)?,
            upstream_timeout: secs(
                file.upstream_timeout,
                "upstream_timeout",
                DEFAULT_UPSTREAM_TIMEOUT_SECS,
            )?,
            stall_timeout: secs(
                file.stall_timeout,
                "stall_timeout",
                DEFAULT_STALL_TIMEOUT_SECS,
            )?,
            upstreams: checked,
            signing_key_file,
            mdns: !args.no_mdns && file.mdns.unwrap_or(DEFAULT_MDNS),
            mdns_interfaces,
            oci,
            admin_token_file: file.admin_token_file.clone(),
            limits: Limits::resolve(&file, &in_file)?,
        })
    }
}

fn invalid(origin: &str, message: String) -> ConfigError {
    ConfigError::Invalid {
        origin: origin.to_string(),
        message,
    }
}

/// `--mdns-interface` > `mdns_interfaces` > all; each an interface name (as `ip link` shows it) or address.
fn resolve_mdns_interfaces(
    args: &ServeArgs,
    file: &FileConfig,
    in_file: &dyn Fn(&str) -> String,
) -> Result<Vec<String>, ConfigError> {
    let (origin, list) = if !args.mdns_interfaces.is_empty() {
        ("--mdns-interface".to_string(), args.mdns_interfaces.clone())
    } else if let Some(list) = &file.mdns_interfaces {
        (in_file("mdns_interfaces"), list.clone())
    } else {
        let defaults = DEFAULT_MDNS_INTERFACES.iter().map(|s| s.to_string());
        ("default".to_string(), defaults.collect())
    };
    list.into_iter()
        .map(|name| {
            let name = name.trim().to_string();
            let is_ifname = (1..=15).contains(&name.len())
                && !name.contains(|c: char| c.is_whitespace() || c == '/' || c == ':');
            if is_ifname || name.parse::<IpAddr>().is_ok() {
                Ok(name)
            } else {
                Err(invalid(
                    &origin,
                    format!("{name:?} is not an interface name (such as eth0) or address"),
                ))
            }
        })
        .collect()
}

/// The OCI source: `--oci-repo` > `NIXCACHE_REPO` > `oci_repo`; none configured means no OCI source.
fn resolve_oci(
    args: &ServeArgs,
    env: &dyn Fn(&str) -> Option<String>,
    file: &FileConfig,
    in_file: &dyn Fn(&str) -> String,
    global_keys: &[String],
) -> Result<Option<OciConfig>, ConfigError> {
    let env_nonempty = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let repo = match (
        &args.oci_repo,
        env_nonempty("NIXCACHE_REPO"),
        &file.oci_repo,
    ) {
        (Some(r), _, _) => Some(("--oci-repo".to_string(), r.clone())),
        (None, Some(r), _) => Some(("NIXCACHE_REPO".to_string(), r)),
        (None, None, Some(r)) => Some((in_file("oci_repo"), r.clone())),
        (None, None, None) => None,
    };
    let Some((origin, repo)) = repo else {
        return Ok(None);
    };
    let repo = repo.trim().to_string();
    crate::oci::format::check_repo(&repo).map_err(|m| invalid(&origin, m))?;
    let (origin, registry) = match (
        &args.oci_registry,
        env_nonempty("NIXCACHE_REGISTRY"),
        &file.oci_registry,
    ) {
        (Some(r), _, _) => ("--oci-registry".to_string(), r.clone()),
        (None, Some(r), _) => ("NIXCACHE_REGISTRY".to_string(), r),
        (None, None, Some(r)) => (in_file("oci_registry"), r.clone()),
        (None, None, None) => (
            "default registry".to_string(),
            DEFAULT_OCI_REGISTRY.to_string(),
        ),
    };
    let registry = normalize_registry(&registry).map_err(|m| invalid(&origin, m))?;
    let index_ttl = match (env_nonempty("NIXCACHE_INDEX_TTL"), file.index_ttl) {
        (Some(v), _) => v
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                invalid(
                    "NIXCACHE_INDEX_TTL",
                    format!("{v:?} is not a number of seconds"),
                )
            })?,
        (None, Some(0)) => {
            return Err(invalid(
                &in_file("index_ttl"),
                "must be at least 1 second".into(),
            ));
        }
        (None, Some(n)) => n,
        (None, None) => DEFAULT_INDEX_TTL_SECS,
    };
    let trusted_keys = match &file.oci_trusted_keys {
        Some(keys) => check_keys(
            keys.iter()
                .map(|k| (in_file("oci_trusted_keys"), k.clone()))
                .collect(),
        )?,
        None => global_keys.to_vec(),
    };
    let token = env_nonempty("GITHUB_TOKEN")
        .or_else(|| env_nonempty("GH_TOKEN"))
        .map(|t| Secret(t.trim().to_string()));
    Ok(Some(OciConfig {
        registry,
        repo,
        index_ttl: Duration::from_secs(index_ttl),
        trusted_keys,
        accept_unsigned: file.oci_accept_unsigned.unwrap_or(false),
        token,
    }))
}

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

/// Checks that every key parses as a Nix public key (`name:base64 of 32 bytes`).
fn check_keys(keys: Vec<(String, String)>) -> Result<Vec<String>, ConfigError> {
    keys.into_iter()
        .map(|(origin, key)| {
            let key = key.trim().to_string();
            crate::nix::signing::PublicKey::parse(&key)
                .map(|_| key.clone())
                .map_err(|e| {
                    invalid(
                        &origin,
                        format!("{key:?} is not a public key (name:base64): {e}"),
                    )
                })
        })
        .collect()
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Parses `ADDR:PORT`, or a bare address when `default_port` is given (nixcache-oci's `NIXCACHE_LISTEN=0.0.0.0`).
fn parse_listen(value: &str, default_port: Option<u16>) -> Result<SocketAddr, String> {
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
fn normalize_upstream(raw: &str) -> Result<String, String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn resolve(args: ServeArgs, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::resolve(&args, &|k| env.get(k).cloned())
    }

    fn file_args(text: &str) -> (tempfile::TempDir, ServeArgs) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nixcache.toml");
        std::fs::write(&path, text).expect("write config");
        let args = ServeArgs {
            config: Some(path),
            ..Default::default()
        };
        (dir, args)
    }

    fn urls(c: &Config) -> Vec<&str> {
        c.upstreams.iter().map(|u| u.url.as_str()).collect()
    }

    const KEY_A: &str = "a-1:veQv4KKpmmHg7SlnFFbSRVLwWtRIi1N0nTJMfTpElKY=";
    const KEY_B: &str = "b-1:t/3Ot7hf+gNG/a6McHNOxMkd+KYWh0qcQmMw/A4Hw+E=";

    #[test]
    fn trust_is_global_or_per_source() {
        let (_d, mut args) = file_args(&format!(
            "trusted_keys = [\"{KEY_A}\"]\nsigning_key_file = \"/keys/sk\"\n\
             upstreams = [\"http://a.example\", {{ url = \"http://b.example\", trusted_keys = [\"{KEY_B}\"] }},\
             {{ url = \"http://c.example\", accept_unsigned = true }}]\n"
        ));
        let c = resolve(args.clone(), &[]).unwrap();
        assert_eq!(c.signing_key_file, Some(PathBuf::from("/keys/sk")));
        assert_eq!(c.upstreams[0].trusted_keys, [KEY_A]);
        assert_eq!(c.upstreams[1].trusted_keys, [KEY_B]);
        assert!(!c.upstreams[1].accept_unsigned);
        assert!(c.upstreams[2].accept_unsigned);
        args.trusted_keys = vec![KEY_B.into()];
        args.signing_key_file = Some("/flag/sk".into());
        let c = resolve(args, &[]).unwrap();
        assert_eq!(c.upstreams[0].trusted_keys, [KEY_B]);
        assert_eq!(c.signing_key_file, Some(PathBuf::from("/flag/sk")));

        let args = ServeArgs {
            trusted_keys: vec!["not-a-key".into()],
            ..Default::default()
        };
        assert!(
            resolve(args, &[])
                .unwrap_err()
                .to_string()
                .starts_with("--trusted-key")
        );
        let (_d, args) = file_args("upstreams = [{ url = \"http://x\", trust = true }]\n");
        assert!(resolve(args, &[]).is_err());
    }

    #[test]
    fn oci_source_from_flags_env_or_file() {
        assert_eq!(resolve(ServeArgs::default(), &[]).unwrap().oci, None);
        let (_d, mut args) =
            file_args("oci_repo = \"Owner/Repo\"\nindex_ttl = 30\noci_accept_unsigned = true\n");
        let c = resolve(args.clone(), &[("GH_TOKEN", "s3cret")]).unwrap();
        let oci = c.oci.clone().unwrap();
        assert_eq!(oci.registry, "https://ghcr.io");
        assert_eq!(oci.repo, "Owner/Repo");
        assert_eq!(oci.index_ttl, Duration::from_secs(30));
        assert!(oci.accept_unsigned);
        assert_eq!(oci.trusted_keys, DEFAULT_TRUSTED_KEYS);
        assert_eq!(oci.token, Some(Secret("s3cret".into())));
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "tokens are never printed"
        );

        let env = [
            ("NIXCACHE_REPO", "env/repo"),
            ("NIXCACHE_REGISTRY", "registry.example:5000"),
            ("NIXCACHE_INDEX_TTL", "60"),
        ];
        let oci = resolve(args.clone(), &env).unwrap().oci.unwrap();
        assert_eq!(
            (oci.repo.as_str(), oci.registry.as_str()),
            ("env/repo", "https://registry.example:5000")
        );
        assert_eq!(oci.index_ttl, Duration::from_secs(60));

        args.oci_repo = Some("flag/repo".into());
        args.oci_registry = Some("http://127.0.0.1:5000".into());
        let oci = resolve(args.clone(), &env).unwrap().oci.unwrap();
        assert_eq!(
            (oci.repo.as_str(), oci.registry.as_str()),
            ("flag/repo", "http://127.0.0.1:5000")
        );

        args.oci_repo = Some("no-slash".into());
        assert!(
            resolve(args.clone(), &[])
                .unwrap_err()
                .to_string()
                .starts_with("--oci-repo")
        );
        args.oci_repo = Some("a/b".into());
        args.oci_registry = Some("ftp://x".into());
        assert!(
            resolve(args, &[])
                .unwrap_err()
                .to_string()
                .starts_with("--oci-registry")
        );
    }

    #[test]
    fn mdns_is_on_by_default_and_can_be_narrowed_or_turned_off() {
        let c = resolve(ServeArgs::default(), &[]).unwrap();
        assert_eq!((c.mdns, c.mdns_interfaces.is_empty()), (true, true));

        let (_d, mut args) =
            file_args("mdns = false\nmdns_interfaces = [\"eth0\", \"10.0.0.2\"]\n");
        let c = resolve(args.clone(), &[]).unwrap();
        assert!(!c.mdns);
        assert_eq!(c.mdns_interfaces, ["eth0", "10.0.0.2"]);
        args.mdns_interfaces = vec!["br0".into()];
        assert_eq!(resolve(args, &[]).unwrap().mdns_interfaces, ["br0"]);

        let args = ServeArgs {
            no_mdns: true,
            ..Default::default()
        };
        assert!(!resolve(args, &[]).unwrap().mdns);

        let (_d, args) = file_args("mdns_interfaces = [\"not an interface\"]\n");
        let e = resolve(args, &[]).unwrap_err().to_string();
        assert!(e.starts_with("mdns_interfaces in"), "{e}");
        let args = ServeArgs {
            mdns_interfaces: vec!["a-very-long-interface-name".into()],
            ..Default::default()
        };
        let e = resolve(args, &[]).unwrap_err().to_string();
        assert!(e.starts_with("--mdns-interface"), "{e}");
    }

    #[test]
    fn defaults_need_no_setup() {
        let c = resolve(ServeArgs::default(), &[]).unwrap();
        assert_eq!(c.listen, "0.0.0.0:37515".parse().unwrap());
        assert_eq!(c.data_dir, PathBuf::from("./nixcache-data"));
        assert_eq!(urls(&c), ["https://cache.nixos.org/"]);
        assert_eq!(c.upstreams[0].trusted_keys, DEFAULT_TRUSTED_KEYS);
        assert!(!c.upstreams[0].accept_unsigned);
        assert_eq!(c.signing_key_file, None);
        assert_eq!(c.max_size, 20 << 30);
        assert_eq!(c.priority, 30);
        assert_eq!(c.negative_ttl, Duration::from_secs(60));
    }

    #[test]
    fn state_directory_is_the_systemd_default() {
        let c = resolve(
            ServeArgs::default(),
            &[("STATE_DIRECTORY", "/var/lib/nixcache:/x")],
        )
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/nixcache"));
    }

    #[test]
    fn flag_beats_env_beats_file() {
        let (_d, mut args) = file_args(
            "listen = \"127.0.0.1:1000\"\ndata_dir = \"/file\"\nupstreams = [\"http://file.example\"]\nmax_size = 1000\n",
        );
        let c = resolve(args.clone(), &[]).unwrap();
        assert_eq!(c.listen, "127.0.0.1:1000".parse().unwrap());
        assert_eq!(c.data_dir, PathBuf::from("/file"));
        assert_eq!(urls(&c), ["http://file.example/"]);
        assert_eq!(c.max_size, 1000);

        let env = [
            ("NIXCACHE_LISTEN", "127.0.0.2"),
            ("NIXCACHE_PORT", "2000"),
            ("NIXCACHE_DATA_DIR", "/env"),
            (
                "NIXCACHE_UPSTREAM",
                "http://a.example https://b.example/cache",
            ),
        ];
        let c = resolve(args.clone(), &env).unwrap();
        assert_eq!(c.listen, "127.0.0.2:2000".parse().unwrap());
        assert_eq!(c.data_dir, PathBuf::from("/env"));
        assert_eq!(urls(&c), ["http://a.example/", "https://b.example/cache/"]);

        args.listen = Some("[::1]:3000".into());
        args.data_dir = Some("/flag".into());
        args.upstreams = vec!["http://flag.example".into()];
        args.max_size = Some("1MiB".into());
        let c = resolve(args, &env).unwrap();
        assert_eq!(c.listen, "[::1]:3000".parse().unwrap());
        assert_eq!(c.data_dir, PathBuf::from("/flag"));
        assert_eq!(urls(&c), ["http://flag.example/"]);
        assert_eq!(c.max_size, 1 << 20);
    }

    #[test]
    fn port_alone_keeps_the_file_address() {
        let (_d, args) = file_args("listen = \"127.0.0.1:1000\"\n");
        let c = resolve(args, &[("NIXCACHE_PORT", "2000")]).unwrap();
        assert_eq!(c.listen, "127.0.0.1:2000".parse().unwrap());
    }

    #[test]
    fn empty_upstream_variable_means_none() {
        let c = resolve(ServeArgs::default(), &[("NIXCACHE_UPSTREAM", "")]).unwrap();
        assert!(c.upstreams.is_empty());
    }

    #[test]
    fn errors_name_their_origin() {
        let (_d, args) = file_args("listen = \"0.0.0.0:1\"\nmax_sise = \"1G\"\n");
        let e = resolve(args, &[]).unwrap_err().to_string();
        assert!(e.contains("max_sise"), "{e}");

        let (_d, args) = file_args("max_size = \"12 parsecs\"\n");
        let e = resolve(args, &[]).unwrap_err().to_string();
        assert!(e.contains("max_size in"), "{e}");

        let e = resolve(ServeArgs::default(), &[("NIXCACHE_PORT", "http")]).unwrap_err();
        assert!(e.to_string().starts_with("NIXCACHE_PORT"), "{e}");

        let args = ServeArgs {
            listen: Some("localhost".into()),
            ..Default::default()
        };
        assert!(
            resolve(args, &[])
                .unwrap_err()
                .to_string()
                .starts_with("--listen")
        );

        let args = ServeArgs {
            upstreams: vec!["ftp://x".into()],
            ..Default::default()
        };
        assert!(
            resolve(args, &[])
                .unwrap_err()
                .to_string()
                .starts_with("--upstream")
        );

        let (_d, args) = file_args("negative_ttl = 0\n");
        assert!(
            resolve(args, &[])
                .unwrap_err()
                .to_string()
                .contains("negative_ttl")
        );
    }

    #[test]
    fn shipped_config_file_states_the_defaults() {
        let args = ServeArgs {
            config: Some(concat!(env!("CARGO_MANIFEST_DIR"), "/config/nixcache.toml").into()),
            ..Default::default()
        };
        assert_eq!(
            resolve(args, &[]).unwrap(),
            resolve(ServeArgs::default(), &[]).unwrap()
        );
    }

    #[test]
    fn sizes() {
        for (text, want) in [
            ("0", Some(0)),
            ("512", Some(512)),
            ("1K", Some(1024)),
            ("20GiB", Some(20 << 30)),
            ("20 G", Some(20 << 30)),
            ("3MB", Some(3_000_000)),
            ("1t", Some(1 << 40)),
            ("", None),
            ("G", None),
            ("1.5G", None),
            ("-1", None),
            ("99999999999T", None),
        ] {
            assert_eq!(parse_size(text).ok(), want, "{text:?}");
        }
    }
}
