//! `nixcache serve`: resolve the configuration, open the data folder, bind, serve until a signal.

use anyhow::Context;
use tokio::net::TcpListener;

use crate::app::App;
use crate::cli::ServeArgs;
use crate::config::Config;

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
    let served = crate::server::run(listener, app).await;
    if let Err(e) = advertiser.await {
        tracing::error!(error = %e, "mDNS task failed");
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
