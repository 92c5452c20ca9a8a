//! How much one client or peer may take, and whom the appliance trusts with what: connection limits and
//! time-outs, the cap on upstream lookups, loopback trust and where registry credentials may go.
//!
//! The defaults fit a home LAN: nginx's (`client_header_timeout 60s`, `keepalive_timeout 75s`,
//! `send_timeout 60s`) for the time-outs, and room for thousands of idle connections.

use std::time::Duration;

use super::{ConfigError, FileConfig, invalid};

/// Seconds a client may take to send a request's headers (from connecting, or from the first byte of a
/// later request on a kept-alive connection).
pub const DEFAULT_HEADER_TIMEOUT_SECS: u64 = 60;
/// Seconds a kept-alive connection may sit idle between requests.
pub const DEFAULT_KEEPALIVE_TIMEOUT_SECS: u64 = 75;
/// Seconds a client may go without accepting a byte of a response before it is dropped.
pub const DEFAULT_SEND_TIMEOUT_SECS: u64 = 60;
/// Connections served at once; more wait in the listen backlog.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Connections served at once from one client address; more are closed at once (0: no such cap).
pub const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: usize = 256;
/// Upstream narinfo requests in flight at once, over all upstreams.
pub const DEFAULT_MAX_UPSTREAM_LOOKUPS: usize = 64;
/// Whether `POST /_refresh` from loopback needs no token.
pub const DEFAULT_TRUST_LOOPBACK: bool = true;

/// The resolved limits. Plain data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Time allowed to send a request's headers.
    pub header_timeout: Duration,
    /// Time a kept-alive connection may be idle between requests.
    pub keepalive_timeout: Duration,
    /// Time a response may wait for the client to accept any byte.
    pub send_timeout: Duration,
    /// Connections served at once (lowered at start-up if the descriptor limit cannot hold them).
    pub max_connections: usize,
    /// Connections served at once from one client address, 0 for no such cap: one machine cannot take
    /// every connection. Behind a local reverse proxy every client has the proxy's address.
    pub max_connections_per_client: usize,
    /// Upstream narinfo requests in flight at once.
    pub max_upstream_lookups: usize,
    /// Loopback clients may use the admin endpoints (`/_refresh`, `/_warm`, `/_pins`) without the admin token. Turn off behind a local reverse
    /// proxy, where every client looks like loopback.
    pub trust_loopback: bool,
    /// Token realm hosts (`host` or `host:port`) other than the registry's own that may receive the
    /// registry credentials (`GITHUB_TOKEN`), over https only.
    pub oci_token_hosts: Vec<String>,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_timeout: Duration::from_secs(DEFAULT_HEADER_TIMEOUT_SECS),
            keepalive_timeout: Duration::from_secs(DEFAULT_KEEPALIVE_TIMEOUT_SECS),
            send_timeout: Duration::from_secs(DEFAULT_SEND_TIMEOUT_SECS),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_client: DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
            max_upstream_lookups: DEFAULT_MAX_UPSTREAM_LOOKUPS,
            trust_loopback: DEFAULT_TRUST_LOOPBACK,
            oci_token_hosts: Vec::new(),
        }
    }
}

impl Limits {
    /// The limits the file sets over the defaults; `in_file` names a key for error messages.
    pub fn resolve(
        file: &FileConfig,
        in_file: &dyn Fn(&str) -> String,
    ) -> Result<Limits, ConfigError> {
        let secs = |v: Option<u64>, key: &str, default: u64| match v {
            Some(0) => Err(invalid(&in_file(key), "must be at least 1 second".into())),
            Some(n) => Ok(Duration::from_secs(n)),
            None => Ok(Duration::from_secs(default)),
        };
        let count = |v: Option<usize>, key: &str, default: usize| match v {
            Some(0) => Err(invalid(&in_file(key), "must be at least 1".into())),
            Some(n) => Ok(n),
            None => Ok(default),
        };
        let oci_token_hosts = file
            .oci_token_hosts
            .iter()
            .flatten()
            .map(|h| {
                let h = h.trim().to_ascii_lowercase();
                let ok = !h.is_empty()
                    && h.chars()
                        .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c));
                if ok {
                    Ok(h)
                } else {
                    Err(invalid(
                        &in_file("oci_token_hosts"),
                        format!("{h:?} is not a host name (or host:port)"),
                    ))
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Limits {
            header_timeout: secs(
                file.header_timeout,
                "header_timeout",
                DEFAULT_HEADER_TIMEOUT_SECS,
            )?,
            keepalive_timeout: secs(
                file.keepalive_timeout,
                "keepalive_timeout",
                DEFAULT_KEEPALIVE_TIMEOUT_SECS,
            )?,
            send_timeout: secs(file.send_timeout, "send_timeout", DEFAULT_SEND_TIMEOUT_SECS)?,
            max_connections: count(
                file.max_connections,
                "max_connections",
                DEFAULT_MAX_CONNECTIONS,
            )?,
            max_connections_per_client: file
                .max_connections_per_client
                .unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_CLIENT),
            max_upstream_lookups: count(
                file.max_upstream_lookups,
                "max_upstream_lookups",
                DEFAULT_MAX_UPSTREAM_LOOKUPS,
            )?,
            trust_loopback: file.trust_loopback.unwrap_or(DEFAULT_TRUST_LOOPBACK),
            oci_token_hosts,
        })
    }
}
