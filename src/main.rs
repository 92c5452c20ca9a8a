use clap::Parser;
use tracing_subscriber::EnvFilter;

use nixcache::cli::{Cli, Command};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("NIXCACHE_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => nixcache::commands::serve::serve(args).await,
            Command::Keygen(args) => nixcache::commands::keygen::keygen(args),
            Command::Push(args) => nixcache::commands::push::push(args).await,
            Command::Gc(args) => nixcache::commands::gc::gc(args).await,
            Command::Discover(args) => nixcache::commands::discover::discover(args).await,
            Command::Verify(args) => nixcache::commands::verify::verify(args),
            Command::Warm(args) => nixcache::commands::warm::warm(args).await,
            Command::Pins(args) => nixcache::commands::warm::pins(args).await,
        }
    })
}
