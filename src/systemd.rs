//! systemd's service notifications (sd_notify(3)): READY=1 once the daemon listens, WATCHDOG=1 while it
//! is healthy, STOPPING=1 when shutdown begins. The NixOS service runs with `Type=notify` and
//! `WatchdogSec=`, so systemd knows when the cache really serves and restarts one that stopped being able
//! to.
//!
//! The protocol is one datagram per message to the unix socket named by `$NOTIFY_SOCKET` (a path, or an
//! abstract name written with a leading `@`), with `KEY=VALUE` lines. That is a few lines over std's
//! `UnixDatagram`, so no crate: `sd-notify` would add a dependency for the same send, and its way of
//! clearing the variables (`unset_environment`) edits the environment of a running multi-threaded
//! process, which `std::env::remove_var` marks `unsafe` for good reason. Outside systemd (no
//! `$NOTIFY_SOCKET`) nothing here does anything.

use std::future::Future;
use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// A connection to the service manager's notification socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    target: SocketAddr,
}

impl Notifier {
    /// The notification socket systemd gave this process (read through `env`; the daemon passes
    /// `std::env::var`), or None when there is none: not started by systemd, or not `Type=notify`.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> io::Result<Option<Notifier>> {
        let Some(name) = env("NOTIFY_SOCKET").filter(|n| !n.is_empty()) else {
            return Ok(None);
        };
        let target = socket_address(&name)?;
        let socket = UnixDatagram::unbound()?;
        Ok(Some(Notifier { socket, target }))
    }

    /// Sends one notification, `KEY=VALUE` lines. A datagram is sent whole or not at all.
    pub fn notify(&self, state: &str) -> io::Result<()> {
        self.socket.send_to_addr(state.as_bytes(), &self.target)?;
        Ok(())
    }
}

/// `$NOTIFY_SOCKET` as an address: a file-system path, or `@name` for an abstract socket.
fn socket_address(name: &str) -> io::Result<SocketAddr> {
    match name.strip_prefix('@') {
        Some(abstract_name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(abstract_name.as_bytes())
        }
        None if name.starts_with('/') => SocketAddr::from_pathname(name),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("NOTIFY_SOCKET={name:?} is neither an absolute path nor an @abstract name"),
        )),
    }
}

/// How often to send WATCHDOG=1: half of `$WATCHDOG_USEC`, as sd_watchdog_enabled(3) advises, when
/// systemd asks this process for it (`$WATCHDOG_PID`, when set, must be ours).
pub fn watchdog_interval(env: &dyn Fn(&str) -> Option<String>) -> Option<Duration> {
    if let Some(pid) = env("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    let usec: u64 = env("WATCHDOG_USEC")?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Sends WATCHDOG=1 every `interval` for as long as `healthy()` answers Ok, until `shutdown` is
/// cancelled. While it answers Err the watchdog goes hungry (the reason is logged and shown by
/// `systemctl status`), so that systemd restarts a daemon that cannot do its job; a check that never
/// returns starves it too.
pub async fn run_watchdog<F, Fut>(
    notifier: &Notifier,
    interval: Duration,
    healthy: F,
    shutdown: CancellationToken,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_healthy = true;
    loop {
        let verdict = tokio::select! {
            () = shutdown.cancelled() => return,
            verdict = async { tick.tick().await; healthy().await } => verdict,
        };
        let message = match &verdict {
            Ok(()) if was_healthy => "WATCHDOG=1".to_string(),
            Ok(()) => {
                tracing::info!("healthy again; feeding the watchdog");
                "WATCHDOG=1\nSTATUS=serving".to_string()
            }
            Err(reason) => {
                tracing::warn!(reason = %reason, "unhealthy: not feeding systemd's watchdog");
                format!("STATUS=unhealthy: {}", reason.replace('\n', " "))
            }
        };
        was_healthy = verdict.is_ok();
        if let Err(e) = notifier.notify(&message) {
            tracing::warn!(error = %e, "cannot notify systemd");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| vars.get(k).cloned()
    }

    #[test]
    fn no_socket_means_no_notifier() {
        assert!(Notifier::from_env(&env(&[])).unwrap().is_none());
        assert!(
            Notifier::from_env(&env(&[("NOTIFY_SOCKET", "")]))
                .unwrap()
                .is_none()
        );
        assert!(Notifier::from_env(&env(&[("NOTIFY_SOCKET", "relative/path")])).is_err());
    }

    #[test]
    fn abstract_and_path_sockets_receive_notifications() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let by_path = UnixDatagram::bind(&path).unwrap();
        let name = format!("nixcache-test-{}", std::process::id());
        let by_name = {
            use std::os::linux::net::SocketAddrExt;
            let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
            UnixDatagram::bind_addr(&addr).unwrap()
        };
        for (socket, variable) in [
            (&by_path, path.display().to_string()),
            (&by_name, format!("@{name}")),
        ] {
            let notifier = Notifier::from_env(&env(&[("NOTIFY_SOCKET", &variable)]))
                .unwrap()
                .expect("a notifier");
            notifier.notify("READY=1").unwrap();
            let mut buf = [0u8; 64];
            let n = socket.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"READY=1", "{variable}");
        }
    }

    #[test]
    fn watchdog_interval_is_half_the_timeout_and_only_for_this_process() {
        assert_eq!(watchdog_interval(&env(&[])), None);
        assert_eq!(
            watchdog_interval(&env(&[("WATCHDOG_USEC", "30000000")])),
            Some(Duration::from_secs(15))
        );
        let me = std::process::id().to_string();
        assert_eq!(
            watchdog_interval(&env(&[("WATCHDOG_USEC", "2000000"), ("WATCHDOG_PID", &me)])),
            Some(Duration::from_secs(1))
        );
        let other = (std::process::id() + 1).to_string();
        assert_eq!(
            watchdog_interval(&env(&[
                ("WATCHDOG_USEC", "2000000"),
                ("WATCHDOG_PID", &other)
            ])),
            None
        );
        assert_eq!(watchdog_interval(&env(&[("WATCHDOG_USEC", "0")])), None);
        assert_eq!(watchdog_interval(&env(&[("WATCHDOG_USEC", "soon")])), None);
    }

    /// Messages that arrive on `socket` within `window`.
    async fn received(socket: &tokio::net::UnixDatagram, window: Duration) -> Vec<String> {
        let mut messages = Vec::new();
        let deadline = tokio::time::Instant::now() + window;
        let mut buf = [0u8; 256];
        while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
            messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        messages
    }

    #[tokio::test]
    async fn watchdog_is_fed_only_while_healthy_and_stops_at_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = tokio::net::UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::from_env(&env(&[("NOTIFY_SOCKET", &path.display().to_string())]))
            .unwrap()
            .unwrap();
        let healthy = Arc::new(AtomicBool::new(true));
        let shutdown = CancellationToken::new();
        let task = {
            let healthy = healthy.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let check = || {
                    let ok = healthy.load(Ordering::SeqCst);
                    async move {
                        if ok {
                            Ok(())
                        } else {
                            Err("index not writable".to_string())
                        }
                    }
                };
                run_watchdog(&notifier, Duration::from_millis(20), check, shutdown).await;
            })
        };
        let fed = received(&socket, Duration::from_millis(300)).await;
        assert!(
            fed.iter().filter(|m| *m == "WATCHDOG=1").count() >= 5,
            "{fed:?}"
        );

        healthy.store(false, Ordering::SeqCst);
        // One tick may have been checked just before the switch.
        let _ = received(&socket, Duration::from_millis(50)).await;
        let hungry = received(&socket, Duration::from_millis(300)).await;
        assert!(!hungry.is_empty(), "the reason is reported");
        assert!(
            hungry
                .iter()
                .all(|m| m == "STATUS=unhealthy: index not writable"),
            "{hungry:?}"
        );

        healthy.store(true, Ordering::SeqCst);
        let again = received(&socket, Duration::from_millis(300)).await;
        assert!(
            again.iter().any(|m| m.starts_with("WATCHDOG=1")),
            "{again:?}"
        );

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the watchdog stops at shutdown")
            .unwrap();
    }
}
