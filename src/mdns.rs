//! mDNS (DNS-SD) both ways: `serve` advertises the appliance as `_nix-cache._tcp.local.` and withdraws
//! it at shutdown; [`browse`] collects what others advertise, for `nixcache discover`.
//!
//! An advertisement is unauthenticated: anyone on the LAN can send one. What is read here is only ever a
//! candidate; deciding what to trust is `commands/discover.rs`'s job.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use mdns_sd::{DaemonEvent, IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};

use crate::app::App;

/// The DNS-SD service type of a Nix binary cache.
pub const SERVICE_TYPE: &str = "_nix-cache._tcp.local.";

/// How long a withdrawal may take at shutdown before the daemon is stopped anyway.
const WITHDRAW_TIMEOUT: Duration = Duration::from_secs(1);

/// Why the appliance could not be advertised (logged; the cache keeps serving).
#[derive(Debug, thiserror::Error)]
pub enum MdnsError {
    /// The mDNS daemon refused a request (bad name, TXT record too long, daemon gone...).
    #[error("mDNS: {0}")]
    Daemon(#[from] mdns_sd::Error),
}

/// Which addresses go into the A/AAAA records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addresses {
    /// The addresses of each interface the advertisement goes out on (the socket listens on all of
    /// them). Each interface carries only its own addresses, so loopback ones never leave the host.
    Auto {
        /// Whether IPv6 addresses are advertised too (the socket is `[::]`, which accepts both).
        ipv6: bool,
    },
    /// The one address the socket is bound to.
    Fixed(IpAddr),
}

/// What `serve` advertises, decided from the bound socket and the configuration alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertisement {
    /// The instance name, after the host: `<instance>._nix-cache._tcp.local.`.
    pub instance: String,
    /// The host name of the SRV record, ending in `.local.`.
    pub host: String,
    /// The port the socket is really bound to.
    pub port: u16,
    /// The address records.
    pub addresses: Addresses,
    /// TXT key/value pairs, `txtvers` first.
    pub txt: Vec<(String, String)>,
}

impl Advertisement {
    /// The advertisement for a server bound to `local`, or `None` when it listens on loopback only (other
    /// hosts could not connect, and advertising 127.0.0.1 to them would send them to themselves).
    pub fn plan(local: SocketAddr, hostname: &str, priority: u32, signer: &str) -> Option<Self> {
        let ip = local.ip();
        let addresses = if ip.is_loopback() {
            return None;
        } else if ip.is_unspecified() {
            Addresses::Auto { ipv6: ip.is_ipv6() }
        } else {
            Addresses::Fixed(ip)
        };
        let label = host_label(hostname);
        let mut txt = vec![
            ("txtvers".to_string(), "1".to_string()),
            ("path".to_string(), "/".to_string()),
            ("proto".to_string(), "http".to_string()),
            ("priority".to_string(), priority.to_string()),
        ];
        if !signer.is_empty() {
            txt.push(("pubkey".to_string(), signer.to_string()));
        }
        Some(Advertisement {
            // A host name of its own, so that an avahi-daemon on the same machine (which owns
            // `<host>.local.`) never sees a conflicting claim to its name.
            host: format!("nixcache-{label}.local."),
            instance: label,
            port: local.port(),
            addresses,
            txt,
        })
    }

    fn service_info(&self) -> Result<ServiceInfo, MdnsError> {
        let fixed: Vec<IpAddr> = match self.addresses {
            Addresses::Fixed(ip) => vec![ip],
            Addresses::Auto { .. } => Vec::new(),
        };
        let info = ServiceInfo::new(
            SERVICE_TYPE,
            &self.instance,
            &self.host,
            &fixed[..],
            self.port,
            &self.txt[..],
        )?;
        Ok(match self.addresses {
            Addresses::Auto { .. } => info.enable_addr_auto(),
            Addresses::Fixed(_) => info,
        })
    }
}

/// A DNS label made from the machine's host name: its first part, lower case, `[a-z0-9-]`.
pub fn host_label(hostname: &str) -> String {
    let first = hostname.trim().split('.').next().unwrap_or("");
    let label: String = first
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-') => c,
            _ => '-',
        })
        .take(50)
        .collect();
    let label = label.trim_matches('-');
    if label.is_empty() {
        "nixcache".to_string()
    } else {
        label.to_string()
    }
}

/// The host name of this machine (of its UTS namespace), or empty when it cannot be read.
pub fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Turns a configured interface (a name such as `eth0`, or one of its addresses) into a selection.
fn interface_kind(spec: &str) -> IfKind {
    match spec.parse::<IpAddr>() {
        Ok(ip) => IfKind::Addr(ip),
        Err(_) => IfKind::Name(spec.to_string()),
    }
}

/// A running advertisement; [`Advertiser::withdraw`] sends the goodbye packets.
pub struct Advertiser {
    daemon: ServiceDaemon,
    fullname: String,
}

impl Advertiser {
    /// Starts an mDNS responder restricted to `interfaces` (all when empty) and registers `ad`.
    pub fn start(ad: &Advertisement, interfaces: &[String]) -> Result<Advertiser, MdnsError> {
        let info = ad.service_info()?;
        let daemon = ServiceDaemon::new()?;
        let started = Self::configure(&daemon, ad, interfaces).and_then(|()| {
            let fullname = info.get_fullname().to_string();
            daemon.register(info)?;
            Ok(fullname)
        });
        match started {
            Ok(fullname) => Ok(Advertiser { daemon, fullname }),
            Err(e) => {
                let _ = daemon.shutdown();
                Err(e)
            }
        }
    }

    fn configure(
        daemon: &ServiceDaemon,
        ad: &Advertisement,
        interfaces: &[String],
    ) -> Result<(), MdnsError> {
        // Selections apply in order, later ones winning.
        if !interfaces.is_empty() {
            daemon.disable_interface(IfKind::All)?;
            daemon.enable_interface(
                interfaces
                    .iter()
                    .map(|s| interface_kind(s))
                    .collect::<Vec<_>>(),
            )?;
        }
        match ad.addresses {
            Addresses::Auto { ipv6: false } => daemon.disable_interface(IfKind::IPv6)?,
            Addresses::Fixed(IpAddr::V4(_)) => daemon.disable_interface(IfKind::IPv6)?,
            Addresses::Fixed(IpAddr::V6(_)) => daemon.disable_interface(IfKind::IPv4)?,
            Addresses::Auto { ipv6: true } => {}
        }
        Ok(())
    }

    /// The full service name, `<instance>._nix-cache._tcp.local.`.
    pub fn fullname(&self) -> &str {
        &self.fullname
    }

    /// Withdraws the service (goodbye packets, so browsers drop it at once) and stops the responder.
    pub async fn withdraw(self) {
        match self.daemon.unregister(&self.fullname) {
            Ok(status) => {
                if tokio::time::timeout(WITHDRAW_TIMEOUT, status.recv_async())
                    .await
                    .is_err()
                {
                    tracing::warn!("mDNS withdrawal not confirmed in time");
                }
                // The goodbye is sent once more 120 ms later, for peers that missed the first.
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => tracing::warn!(error = %e, "cannot withdraw the mDNS advertisement"),
        }
        if let Ok(done) = self.daemon.shutdown() {
            let _ = tokio::time::timeout(WITHDRAW_TIMEOUT, done.recv_async()).await;
        }
    }
}

/// Advertises the appliance bound to `local` until `app.shutdown`, then withdraws it. Never fails: a
/// cache that cannot be advertised still serves whoever knows its address.
pub async fn run(app: Arc<App>, local: SocketAddr) {
    if !app.config.mdns {
        tracing::info!("mDNS advertisement turned off");
        return;
    }
    let Some(ad) = Advertisement::plan(local, &system_hostname(), app.config.priority, &app.signer)
    else {
        tracing::info!(listen = %local, "listening on loopback only: not advertised over mDNS");
        return;
    };
    let advertiser = match Advertiser::start(&ad, &app.config.mdns_interfaces) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "cannot advertise over mDNS; serving anyway");
            return;
        }
    };
    tracing::info!(
        service = advertiser.fullname(),
        port = ad.port,
        interfaces = ?app.config.mdns_interfaces,
        "advertised over mDNS"
    );
    let events = advertiser.daemon.monitor().ok();
    loop {
        let event = async {
            match &events {
                Some(rx) => rx.recv_async().await.ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = app.shutdown.cancelled() => break,
            e = event => match e {
                Some(DaemonEvent::Error(e)) => tracing::warn!(error = %e, "mDNS"),
                Some(DaemonEvent::NameChange(c)) => {
                    tracing::info!(from = ?c.original, to = ?c.new_name, "mDNS name conflict resolved by renaming");
                }
                Some(_) => {}
                None => {
                    tracing::warn!("mDNS responder stopped");
                    app.shutdown.cancelled().await;
                    return;
                }
            },
        }
    }
    advertiser.withdraw().await;
    tracing::info!("mDNS advertisement withdrawn");
}

/// One advertised `_nix-cache._tcp` instance, as read from the network: nothing here is vouched for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertised {
    /// The full service name.
    pub fullname: String,
    /// The addresses its host name resolved to.
    pub addresses: Vec<IpAddr>,
    /// The SRV port.
    pub port: u16,
    /// The TXT record's key/value pairs (keys lower-cased).
    pub txt: HashMap<String, String>,
}

/// A TXT record's pairs as the browser keeps them: keys lower-cased, and of a key given twice the first
/// (DNS-SD, RFC 6763 section 6.4). Values are kept verbatim: they are checked where they are used.
pub fn txt_map<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> HashMap<String, String> {
    let mut txt = HashMap::new();
    for (key, value) in pairs {
        txt.entry(key.to_ascii_lowercase())
            .or_insert_with(|| value.to_string());
    }
    txt
}

/// Browses for `_nix-cache._tcp` for `duration` and returns the instances resolved by then, by name.
pub async fn browse(duration: Duration) -> Result<Vec<Advertised>, MdnsError> {
    let daemon = ServiceDaemon::new()?;
    let events = daemon.browse(SERVICE_TYPE)?;
    let mut found: BTreeMap<String, Advertised> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + duration;
    while let Ok(Ok(event)) = tokio::time::timeout_at(deadline, events.recv_async()).await {
        match event {
            ServiceEvent::ServiceResolved(r) => {
                let txt = txt_map(r.get_properties().iter().map(|p| (p.key(), p.val_str())));
                let advertised = Advertised {
                    fullname: r.get_fullname().to_string(),
                    addresses: r.get_addresses().iter().map(|a| a.to_ip_addr()).collect(),
                    port: r.get_port(),
                    txt,
                };
                found.insert(advertised.fullname.clone(), advertised);
            }
            ServiceEvent::ServiceRemoved(_, fullname) => {
                found.remove(&fullname);
            }
            _ => {}
        }
    }
    let _ = daemon.stop_browse(SERVICE_TYPE);
    if let Ok(done) = daemon.shutdown() {
        let _ = tokio::time::timeout(WITHDRAW_TIMEOUT, done.recv_async()).await;
    }
    Ok(found.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn loopback_listeners_are_not_advertised() {
        assert_eq!(
            Advertisement::plan(addr("127.0.0.1:37515"), "h", 30, ""),
            None
        );
        assert_eq!(Advertisement::plan(addr("[::1]:37515"), "h", 30, ""), None);
    }

    #[test]
    fn the_bound_socket_decides_the_addresses() {
        let ad = |a| Advertisement::plan(addr(a), "h", 30, "").unwrap().addresses;
        assert_eq!(ad("0.0.0.0:1"), Addresses::Auto { ipv6: false });
        assert_eq!(ad("[::]:1"), Addresses::Auto { ipv6: true });
        assert_eq!(
            ad("10.1.2.3:1"),
            Addresses::Fixed("10.1.2.3".parse().unwrap())
        );
    }

    #[test]
    fn txt_record_carries_priority_and_key_only_when_signing() {
        let key = "nixcache.lan-1:veQv4KKpmmHg7SlnFFbSRVLwWtRIi1N0nTJMfTpElKY=";
        let ad = Advertisement::plan(addr("0.0.0.0:41234"), "Box.example.org", 25, key).unwrap();
        assert_eq!(ad.port, 41234);
        assert_eq!(ad.instance, "box");
        assert_eq!(ad.host, "nixcache-box.local.");
        let txt: Vec<String> = ad.txt.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            txt,
            [
                "txtvers=1",
                "path=/",
                "proto=http",
                "priority=25",
                &format!("pubkey={key}")
            ]
        );
        let info = ad.service_info().unwrap();
        assert_eq!(info.get_fullname(), "box._nix-cache._tcp.local.");
        assert!(info.is_addr_auto());

        let unsigned = Advertisement::plan(addr("0.0.0.0:1"), "box", 30, "").unwrap();
        assert!(unsigned.txt.iter().all(|(k, _)| k != "pubkey"));
    }

    #[test]
    fn host_labels_are_dns_safe() {
        for (raw, want) in [
            ("appliance", "appliance"),
            ("My_Box.lan", "my-box"),
            ("  \n", "nixcache"),
            ("---", "nixcache"),
            ("ünïcode", "n-code"),
        ] {
            assert_eq!(host_label(raw), want, "{raw:?}");
        }
    }

    #[test]
    fn an_oversized_txt_record_is_an_error_not_a_panic() {
        let long = format!(
            "{}:veQv4KKpmmHg7SlnFFbSRVLwWtRIi1N0nTJMfTpElKY=",
            "k".repeat(300)
        );
        let ad = Advertisement::plan(addr("0.0.0.0:1"), "box", 30, &long).unwrap();
        assert!(ad.service_info().is_err());
    }
}
