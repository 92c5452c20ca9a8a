//! `nixcache serve`: resolve the configuration, open the data folder, bind, serve until a signal, and
//! keep systemd informed (readiness, watchdog, stopping).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::app::App;
use crate::cli::ServeArgs;
use crate::config::Config;
use crate::systemd::{self, Notifier};

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::resolve(&args.overrides(), &|k| std::env::var(k).ok())?;
    if args.check_config {
        println!("{config:#?}");
        return Ok(());
    }
    let listen = config.listen;
    let app = App::open(config)?;
    let listener = bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        data_dir = %app.config.data_dir.display(),
        upstreams = ?app.config.upstreams,
        "nixcache serving"
    );
    let token = app.shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        token.cancel();
    });
    // Advertised with the port really bound (tests bind port 0); withdrawn when shutdown begins.
    let advertiser = tokio::spawn(crate::mdns::run(app.clone(), listener.local_addr()?));
    let supervisor = tokio::spawn(notify_systemd(app.clone(), listener.local_addr()?));
    let served = crate::server::run(listener, app).await;
    if let Err(e) = advertiser.await {
        tracing::error!(error = %e, "mDNS task failed");
    }
    if let Err(e) = supervisor.await {
        tracing::error!(error = %e, "systemd notification task failed");
    }
    served?;
    tracing::info!("stopped");
    Ok(())
}

/// The listen backlog asked for (the kernel caps it at net.core.somaxconn): room for a burst of
/// connections, and for those waiting while `max_connections` are served.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` with a deep backlog (tokio's `TcpListener::bind` asks for 1024).
fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As TcpListener::bind does: a restart must not wait for old connections in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Tells systemd (Type=notify) that the daemon listens on `listening`, feeds its watchdog while
/// `health::alive` says no restart is needed (a full disk is not cured by one), and says STOPPING=1 when shutdown begins. Without `$NOTIFY_SOCKET` it only
/// waits for shutdown. The socket is bound before this runs, so a client that connects after READY=1
/// is answered.
async fn notify_systemd(app: Arc<App>, listening: SocketAddr) {
    let env = |k: &str| std::env::var(k).ok();
    let notifier = match Notifier::from_env(&env) {
        Ok(Some(notifier)) => notifier,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(error = %e, "cannot use NOTIFY_SOCKET; systemd will not hear from nixcache");
            return;
        }
    };
    if let Err(e) = notifier.notify(&format!("READY=1\nSTATUS=serving on {listening}")) {
        tracing::warn!(error = %e, "cannot tell systemd that nixcache is ready");
    }
    let shutdown = app.shutdown.clone();
    if let Some(interval) = systemd::watchdog_interval(&env) {
        let healthy = || {
            let app = app.clone();
            async move {
                // The check may touch the disk: off the async workers. A check that hangs starves
                // the watchdog, which is what should happen to a daemon stuck on its disk.
                tokio::task::spawn_blocking(move || crate::health::alive(&app))
                    .await
                    .unwrap_or_else(|e| Err(format!("health check failed: {e}")))
            }
        };
        systemd::run_watchdog(&notifier, interval, healthy, shutdown.clone()).await;
    }
    shutdown.cancelled().await;
    if let Err(e) = notifier.notify("STOPPING=1") {
        tracing::warn!(error = %e, "cannot tell systemd that nixcache is stopping");
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
