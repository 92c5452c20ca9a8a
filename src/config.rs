//! Configuration: the TOML file, the environment and the flags, merged into one checked [`Config`].
//!
//! Precedence is flag > environment > file > default. Every problem names the key (or variable or flag)
//! it came from, so a bad value stops start-up with a message the user can act on.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod bucket;
mod limits;
mod parse;
mod push;

pub use bucket::{BucketConfig, BucketTable, Credential};
pub use limits::{
    DEFAULT_HEADER_TIMEOUT_SECS, DEFAULT_KEEPALIVE_TIMEOUT_SECS, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_CLIENT, DEFAULT_MAX_UPSTREAM_LOOKUPS, DEFAULT_SEND_TIMEOUT_SECS,
    DEFAULT_TRUST_LOOPBACK, Limits,
};
pub use parse::{normalize_registry, parse_size};
use parse::{normalize_upstream, parse_listen};
pub use push::{
    DEFAULT_PUSH_PENDING_MAX, DEFAULT_PUSH_PENDING_TIMEOUT_SECS, PushConfig, PushTokenConfig,
    PushTokenTable,
};

/// What the command line sets (`nixcache serve` flags, filled by `cli`): each field overrides the
/// environment and the config file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// The TOML configuration file.
    pub config: Option<PathBuf>,
    /// `ADDR:PORT` to listen on.
    pub listen: Option<String>,
    /// The data folder.
    pub data_dir: Option<PathBuf>,
    /// Upstream caches, replacing the configured list.
    pub upstreams: Vec<String>,
    /// The store's size cap.
    pub max_size: Option<String>,
    /// The appliance's secret key file.
    pub signing_key_file: Option<PathBuf>,
    /// Trusted upstream keys, replacing the configured list.
    pub trusted_keys: Vec<String>,
    /// Do not advertise over mDNS.
    pub no_mdns: bool,
    /// Interfaces to advertise on, replacing the configured list.
    pub mdns_interfaces: Vec<String>,
    /// Registry of the OCI source.
    pub oci_registry: Option<String>,
    /// `OWNER/REPO` of the OCI source.
    pub oci_repo: Option<String>,
}

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
/// Free space kept on the data folder's filesystem unless told otherwise.
pub const DEFAULT_MIN_FREE: &str = "512MiB";
/// NAR downloads at once.
pub const DEFAULT_MAX_FILLS: usize = 16;
/// NAR downloads waiting for a slot, beyond the running ones; more are refused with 503.
pub const DEFAULT_FILL_QUEUE: usize = 64;
/// Seconds a download goes on after its last client left.
pub const DEFAULT_FILL_ABANDON_GRACE_SECS: u64 = 5;
/// Bytes per second a source must at least deliver over the rate window.
pub const DEFAULT_FILL_MIN_RATE: &str = "4KiB";
/// Seconds over which the download rate is measured.
pub const DEFAULT_FILL_RATE_WINDOW_SECS: u64 = 60;
/// Seconds a narinfo whose NAR is not on disk is kept after it was last asked for (30 days: the time
/// Nix clients cache a narinfo).
pub const DEFAULT_INDEX_RETENTION_SECS: u64 = 30 * 24 * 3600;
/// Seconds between two passes of the background scrub over the stored NARs (a week); 0 turns it off.
pub const DEFAULT_SCRUB_INTERVAL_SECS: u64 = 7 * 24 * 3600;
/// Memory redb may use to cache index pages (the OS page cache holds the file too).
pub const DEFAULT_INDEX_CACHE_SIZE: &str = "128MiB";
/// Issue 14: whether narinfos and NARs a client is about to ask for are fetched ahead.
pub const DEFAULT_PREFETCH: bool = true;
/// Issue 14: the largest NAR file fetched ahead.
pub const DEFAULT_PREFETCH_MAX_SIZE: &str = "256MiB";

/// Issue 16: `transcode` unless told otherwise.
pub const DEFAULT_TRANSCODE: &str = "zstd";
/// Issue 16: zstd level of transcoded NARs.
pub const DEFAULT_TRANSCODE_LEVEL: i32 = 3;
/// Issue 16: transcoding threads.
pub const DEFAULT_TRANSCODE_WORKERS: usize = 1;
/// Issue 16: seconds a transcoded NAR's original stays on disk after the switch.
pub const DEFAULT_TRANSCODE_KEEP_ORIGINAL_SECS: u64 = 3600;
/// Issue 16: NARs one warm job fetches at once.
pub const DEFAULT_WARM_CONCURRENCY: usize = 4;

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
    /// Free space to keep on the data folder's filesystem, evicting to keep it.
    pub min_free: Option<SizeValue>,
    /// NAR downloads at once.
    pub max_fills: Option<usize>,
    /// NAR downloads that may wait for a slot; more are refused with 503.
    pub fill_queue: Option<usize>,
    /// Seconds a download goes on after its last client left.
    pub fill_abandon_grace: Option<u64>,
    /// Bytes per second a source must at least deliver over `fill_rate_window`.
    pub fill_min_rate: Option<SizeValue>,
    /// Seconds over which the download rate is measured.
    pub fill_rate_window: Option<u64>,
    /// Seconds a narinfo whose NAR is not on disk is kept after it was last asked for.
    pub index_retention: Option<u64>,
    /// Seconds between passes of the background scrub; 0 turns it off.
    pub scrub_interval: Option<u64>,
    /// Memory the index may use to cache its pages.
    pub index_cache_size: Option<SizeValue>,
    /// Fetch ahead what a client is about to ask for (references' narinfos, asked-for narinfos' NARs).
    pub prefetch: Option<bool>,
    /// The largest NAR file fetched ahead.
    pub prefetch_max_size: Option<SizeValue>,
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
    // --- LAN pushes (issue 12): see `config/push.rs` ---
    /// Tokens that may publish with `nix copy --to` (PUT): name, token file, scope.
    pub push_tokens: Option<Vec<PushTokenTable>>,
    /// Keys whose signature makes a pushed narinfo acceptable.
    pub push_trusted_keys: Option<Vec<String>>,
    /// Most bytes of pushed NAR files held at once (default: a quarter of `max_size`).
    pub push_max_size: Option<SizeValue>,
    /// Evict pushed NARs least-recently-used like fetched ones instead of keeping them.
    pub push_lru: Option<bool>,
    /// NAR uploads that may wait for their narinfo at once.
    pub push_pending_max: Option<usize>,
    /// Seconds an uploaded NAR waits for its narinfo before it is dropped.
    pub push_pending_timeout: Option<u64>,
    // Issue 13 (shared bucket): keep this block last.
    /// `[bucket]`: NARs and narinfos in an S3-compatible bucket shared by several appliances.
    pub bucket: Option<BucketTable>,
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
    /// Whether loopback clients may use the admin endpoints (`/_refresh`, `/_warm`, `/_pins`) without the admin token.
    pub trust_loopback: Option<bool>,
    /// Token realm hosts besides the registry's own that may receive the registry credentials.
    pub oci_token_hosts: Option<Vec<String>>,
    // --- Issue 16: transcoding to zstd, warm, pins ---
    /// `zstd` (re-encode stored xz and bzip2 NARs to zstd in the background) or `off`.
    pub transcode: Option<String>,
    /// zstd level of transcoded NARs (1 to 19).
    pub transcode_level: Option<i32>,
    /// Transcoding threads (at the lowest CPU and I/O priority).
    pub transcode_workers: Option<usize>,
    /// Seconds the original of a transcoded NAR stays on disk after the switch.
    pub transcode_keep_original: Option<u64>,
    /// NARs one warm job fetches at once.
    pub warm_concurrency: Option<usize>,
    /// Named pins: name → store paths whose closures are fetched at start and never evicted.
    pub pins: Option<std::collections::BTreeMap<String, Vec<String>>>,
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
    /// Free space kept on the data folder's filesystem, in bytes.
    pub min_free: u64,
    /// NAR downloads at once.
    pub max_fills: usize,
    /// NAR downloads that may wait for a slot.
    pub fill_queue: usize,
    /// How long a download goes on after its last client left.
    pub fill_abandon_grace: Duration,
    /// Bytes per second a source must at least deliver over `fill_rate_window`.
    pub fill_min_rate: u64,
    /// The window the download rate is measured over.
    pub fill_rate_window: Duration,
    /// How long a narinfo whose NAR is not on disk is kept after it was last asked for.
    pub index_retention: Duration,
    /// Time between passes of the background scrub; `None`: off.
    pub scrub_interval: Option<Duration>,
    /// Bytes of memory the index may use to cache its pages.
    pub index_cache_size: u64,
    /// Whether what a client is about to ask for is fetched ahead (`prefetch.rs`).
    pub prefetch: bool,
    /// The largest NAR file fetched ahead, in bytes.
    pub prefetch_max_size: u64,
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
    /// LAN pushes (issue 12).
    pub push: PushConfig,
    // Issue 13 (shared bucket): keep this block last.
    /// The shared bucket, when `[bucket]` is configured; `None`: the local disk only.
    pub bucket: Option<BucketConfig>,
    /// Connection limits, time-outs, the upstream lookup cap and trust boundaries.
    pub limits: Limits,
    // --- Issue 16: transcoding to zstd, warm, pins ---
    /// zstd level to transcode stored xz and bzip2 NARs at; `None`: transcoding is off.
    pub transcode_level: Option<i32>,
    /// Transcoding threads.
    pub transcode_workers: usize,
    /// How long the original of a transcoded NAR stays on disk after the switch.
    pub transcode_keep_original: Duration,
    /// NARs one warm job fetches at once.
    pub warm_concurrency: usize,
    /// Named pins from the config file: name → store paths (checked to parse).
    pub pins: std::collections::BTreeMap<String, Vec<String>>,
}

impl Config {
    /// Merges flags, environment (read through `env`) and the config file (named by `--config`) over the defaults.
    pub fn resolve(
        args: &Overrides,
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
        let size = |v: &Option<SizeValue>, key: &str, default: &str| -> Result<u64, ConfigError> {
            match v {
                Some(SizeValue::Bytes(n)) => Ok(*n),
                Some(SizeValue::Text(t)) => parse_size(t).map_err(|m| invalid(&in_file(key), m)),
                None => Ok(parse_size(default).expect("default size parses")),
            }
        };
        let count = |v: Option<usize>, key: &str, default: usize| -> Result<usize, ConfigError> {
            match v {
                Some(0) => Err(invalid(&in_file(key), "must be at least 1".into())),
                Some(n) => Ok(n),
                None => Ok(default),
            }
        };
        // LAN pushes (issue 12).
        let push = push::resolve_push(
            push::PushKeys {
                tokens: &file.push_tokens,
                trusted_keys: &file.push_trusted_keys,
                max_size: &file.push_max_size,
                lru: file.push_lru,
                pending_max: file.push_pending_max,
                pending_timeout: file.push_pending_timeout,
            },
            &in_file,
            max_size,
            signing_key_file.is_some(),
        )?;
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
            min_free: size(&file.min_free, "min_free", DEFAULT_MIN_FREE)?,
            max_fills: count(file.max_fills, "max_fills", DEFAULT_MAX_FILLS)?,
            fill_queue: file.fill_queue.unwrap_or(DEFAULT_FILL_QUEUE),
            fill_abandon_grace: secs(
                file.fill_abandon_grace,
                "fill_abandon_grace",
                DEFAULT_FILL_ABANDON_GRACE_SECS,
            )?,
            fill_min_rate: size(&file.fill_min_rate, "fill_min_rate", DEFAULT_FILL_MIN_RATE)?,
            fill_rate_window: secs(
                file.fill_rate_window,
                "fill_rate_window",
                DEFAULT_FILL_RATE_WINDOW_SECS,
            )?,
            index_retention: secs(
                file.index_retention,
                "index_retention",
                DEFAULT_INDEX_RETENTION_SECS,
            )?,
            scrub_interval: match file.scrub_interval.unwrap_or(DEFAULT_SCRUB_INTERVAL_SECS) {
                0 => None,
                n => Some(Duration::from_secs(n)),
            },
            index_cache_size: size(
                &file.index_cache_size,
                "index_cache_size",
                DEFAULT_INDEX_CACHE_SIZE,
            )?,
            prefetch: file.prefetch.unwrap_or(DEFAULT_PREFETCH),
            prefetch_max_size: size(
                &file.prefetch_max_size,
                "prefetch_max_size",
                DEFAULT_PREFETCH_MAX_SIZE,
            )?,
            upstreams: checked,
            signing_key_file,
            mdns: !args.no_mdns && file.mdns.unwrap_or(DEFAULT_MDNS),
            mdns_interfaces,
            oci,
            admin_token_file: file.admin_token_file.clone(),
            // LAN pushes (issue 12).
            push,
            // Issue 13 (shared bucket).
            bucket: bucket::resolve_bucket(
                file.bucket.as_ref(),
                env,
                &in_file,
                &global_keys,
                secs(
                    file.upstream_timeout,
                    "upstream_timeout",
                    DEFAULT_UPSTREAM_TIMEOUT_SECS,
                )?,
            )?,
            limits: Limits::resolve(&file, &in_file)?,
            // Issue 16.
            transcode_level: resolve_transcode(&file, &in_file)?,
            transcode_workers: count(
                file.transcode_workers,
                "transcode_workers",
                DEFAULT_TRANSCODE_WORKERS,
            )?,
            transcode_keep_original: Duration::from_secs(
                file.transcode_keep_original
                    .unwrap_or(DEFAULT_TRANSCODE_KEEP_ORIGINAL_SECS),
            ),
            warm_concurrency: count(
                file.warm_concurrency,
                "warm_concurrency",
                DEFAULT_WARM_CONCURRENCY,
            )?,
            pins: resolve_pins(&file, &in_file)?,
        })
    }
}

/// Whether stored NARs are transcoded and at which zstd level (issue 16).
fn resolve_transcode(
    file: &FileConfig,
    in_file: &dyn Fn(&str) -> String,
) -> Result<Option<i32>, ConfigError> {
    let level = file.transcode_level.unwrap_or(DEFAULT_TRANSCODE_LEVEL);
    if !(1..=19).contains(&level) {
        return Err(invalid(
            &in_file("transcode_level"),
            format!("{level} is not a zstd level from 1 to 19"),
        ));
    }
    match file.transcode.as_deref().unwrap_or(DEFAULT_TRANSCODE) {
        "zstd" => Ok(Some(level)),
        "off" => Ok(None),
        other => Err(invalid(
            &in_file("transcode"),
            format!("{other:?} is not \"zstd\" or \"off\""),
        )),
    }
}

/// The config file's pins: names of letters, digits, `-`, `_`, `.`; each path a store path (issue 16).
fn resolve_pins(
    file: &FileConfig,
    in_file: &dyn Fn(&str) -> String,
) -> Result<std::collections::BTreeMap<String, Vec<String>>, ConfigError> {
    let Some(pins) = &file.pins else {
        return Ok(Default::default());
    };
    for (name, paths) in pins {
        crate::pins::check_name(name).map_err(|m| invalid(&in_file("pins"), m))?;
        for p in paths {
            crate::nix::store_path::StorePath::parse(p.trim()).map_err(|e| {
                invalid(
                    &in_file("pins"),
                    format!("pin {name}: {p:?} is not a store path: {e}"),
                )
            })?;
        }
    }
    Ok(pins.clone())
}

fn invalid(origin: &str, message: String) -> ConfigError {
    ConfigError::Invalid {
        origin: origin.to_string(),
        message,
    }
}

/// `--mdns-interface` > `mdns_interfaces` > all; each an interface name (as `ip link` shows it) or address.
fn resolve_mdns_interfaces(
    args: &Overrides,
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
    args: &Overrides,
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

#[cfg(test)]
mod tests;
