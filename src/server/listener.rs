//! The accept loop: at most `max_connections` connections at once, at most `max_connections_per_client`
//! of them from one address, each served by [`super::connection`], and a drain with a time limit at
//! shutdown.
//!
//! Past the cap the loop stops accepting: new connections wait in the kernel's listen backlog (and past
//! that the kernel refuses them), so the process never runs out of descriptors because of clients. The cap
//! is lowered at start-up when the descriptor limit could not hold it, and `accept()` failures (out of
//! descriptors or memory for other reasons) pause the loop briefly instead of spinning or stopping it.
//! A client address at its own cap has further connections closed at once: the backlog is shared, so
//! one machine must not fill the connections every other machine waits for.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection::{self, Shared, Stop, Timeouts};
use super::cores::Cores;
use super::dispatch::Routes;
use crate::config::Limits;
use crate::metrics::LimitMetrics;

/// Descriptors kept for everything but client connections: the index, fills' temp files, upstream and
/// registry connections (bounded by the lookup cap and the fill slots), mDNS, logs.
const RESERVED_FDS: u64 = 256;
/// Descriptors one client connection may hold: its socket, and the NAR file it is sent.
const FDS_PER_CONNECTION: u64 = 2;
/// Pause after an `accept()` failure that is not about one connection (EMFILE, ENFILE, ENOMEM...).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Serves `listener` until `shutdown` is cancelled, each connection on one of `cores`, then lets
/// running requests finish for at most `drain` before closing what is left.
pub async fn serve(
    listener: TcpListener,
    cores: &Cores,
    routes: Arc<Routes>,
    limits: &Limits,
    metrics: LimitMetrics,
    shutdown: CancellationToken,
    drain: Duration,
) -> io::Result<()> {
    let cap = connection_cap(limits.max_connections, raise_fd_limit());
    metrics
        .connections_limit
        .set(i64::try_from(cap).unwrap_or(i64::MAX));
    let permits = Arc::new(Semaphore::new(cap));
    let tracker = TaskTracker::new();
    let shared = Shared {
        routes,
        builder: Arc::new(connection::http1_builder()),
        timeouts: Timeouts::from(limits),
        metrics: metrics.clone(),
        stop: Arc::new(Stop::default()),
    };
    let per_client = Arc::new(PerClient {
        max: limits.max_connections_per_client,
        open: Mutex::default(),
    });
    let mut last_warning: Option<Instant> = None;
    loop {
        let permit = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    accept_failed(&e, &metrics, &mut last_warning).await;
                    continue;
                }
            },
        };
        metrics.connections_accepted.inc();
        let Some(client) = PerClient::admit(&per_client, peer.ip()) else {
            metrics.connections_refused.inc();
            drop(tcp);
            continue;
        };
        // Headers and a small body go out in separate writes: without TCP_NODELAY the body waits for
        // the client's delayed ACK (~40 ms per small NAR on a kept-alive connection).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let shared = shared.clone();
        let open = metrics.connections_open.clone();
        let tracked = tracker.token();
        let served = cores.serve(tcp, move |tcp| async move {
            open.inc();
            connection::serve(tcp, peer, shared).await;
            open.dec();
            drop(client);
            drop(permit);
            drop(tracked);
        });
        if let Err(e) = served {
            tracing::warn!(error = %e, "cannot hand a connection to its thread; closed");
        }
    }
    // Closing the socket makes the kernel refuse new connections while the running ones drain.
    drop(listener);
    tracker.close();
    shared.stop.drain();
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        tracing::warn!("requests still running after the drain time-out; closing them");
        shared.stop.abort();
        tracker.wait().await;
    }
    Ok(())
}

/// Connections open per client address.
struct PerClient {
    /// The cap; 0 for none.
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection counted for its client address; counted out when dropped.
struct ClientGuard {
    clients: Arc<PerClient>,
    ip: IpAddr,
}

impl PerClient {
    /// Counts a connection from `ip` in, or `None` when that address is at its cap.
    fn admit(clients: &Arc<PerClient>, ip: IpAddr) -> Option<ClientGuard> {
        // One address however it is written (an IPv4 client of a dual-stack listener is ::ffff:a.b.c.d).
        let ip = ip.to_canonical();
        let mut open = clients
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = open.entry(ip).or_insert(0);
        if clients.max > 0 && *n >= clients.max {
            return None;
        }
        *n += 1;
        Some(ClientGuard {
            clients: clients.clone(),
            ip,
        })
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        let mut open = self
            .clients
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Handles an `accept()` failure: a client that gave up is skipped at once; anything else (descriptors
/// or memory exhausted) pauses the loop, warning at most once a minute.
async fn accept_failed(e: &io::Error, metrics: &LimitMetrics, last_warning: &mut Option<Instant>) {
    metrics.accept_errors.inc();
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    ) {
        return;
    }
    if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
        tracing::warn!(error = %e, "cannot accept connections; pausing accepts briefly");
        *last_warning = Some(Instant::now());
    }
    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
}

/// The connection cap the descriptor limit `soft` can hold (`None`: unlimited or unknown), at least 1.
pub fn connection_cap(wanted: usize, soft: Option<u64>) -> usize {
    let Some(soft) = soft else {
        return wanted;
    };
    let room = soft.saturating_sub(RESERVED_FDS) / FDS_PER_CONNECTION;
    let room = usize::try_from(room).unwrap_or(usize::MAX).max(1);
    if room < wanted {
        tracing::warn!(
            max_connections = wanted,
            serving = room,
            open_files_limit = soft,
            "the open-files limit cannot hold max_connections; serving fewer (raise LimitNOFILE)"
        );
        return room;
    }
    wanted
}

/// Raises the soft open-files limit to the hard one (many systems start services at 1024 with a much
/// higher hard limit). Returns the soft limit in force, `None` when unlimited or unknown.
pub fn raise_fd_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given, which lives for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    (limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_gets_at_most_its_share() {
        let clients = Arc::new(PerClient {
            max: 2,
            open: Mutex::default(),
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = PerClient::admit(&clients, a).unwrap();
        let _second = PerClient::admit(&clients, mapped).unwrap();
        assert!(
            PerClient::admit(&clients, a).is_none(),
            "the same address, mapped or not"
        );
        assert!(
            PerClient::admit(&clients, b).is_some(),
            "others are not affected"
        );
        drop(first);
        assert!(
            PerClient::admit(&clients, a).is_some(),
            "a slot freed is a slot"
        );
        let unlimited = Arc::new(PerClient {
            max: 0,
            open: Mutex::default(),
        });
        let held: Vec<_> = (0..1000).map(|_| PerClient::admit(&unlimited, a)).collect();
        assert!(held.iter().all(Option::is_some));
    }

    #[test]
    fn the_cap_fits_the_descriptor_limit() {
        assert_eq!(connection_cap(4096, None), 4096);
        assert_eq!(connection_cap(4096, Some(1 << 20)), 4096);
        assert_eq!(connection_cap(4096, Some(1024)), (1024 - 256) / 2);
        assert_eq!(
            connection_cap(4096, Some(10)),
            1,
            "never 0: the appliance still serves"
        );
    }
}
