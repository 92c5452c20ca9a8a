//! The command line: what each subcommand accepts (DESIGN.md "Command line" is the contract).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// nixcache: one verified, persistent Nix binary cache for every machine on the LAN.
#[derive(Debug, Parser)]
#[command(name = "nixcache", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the cache daemon.
    Serve(ServeArgs),
    /// Make a signing key pair in Nix's format (as `nix-store --generate-binary-cache-key`).
    Keygen(KeygenArgs),
}

/// Arguments of `nixcache keygen`.
#[derive(Debug, Clone, Args)]
pub struct KeygenArgs {
    /// Key name, conventionally `<host>-<n>`, e.g. `nixcache.lan-1`.
    pub name: String,
    /// Where to write the secret key (mode 600) [default: NAME.secret].
    #[arg(long, value_name = "FILE")]
    pub secret_key_file: Option<PathBuf>,
    /// Where to write the public key [default: NAME.public].
    #[arg(long, value_name = "FILE")]
    pub public_key_file: Option<PathBuf>,
}

/// Flags of `nixcache serve`. Each overrides the environment and the config file.
#[derive(Debug, Default, Clone, Args)]
pub struct ServeArgs {
    /// TOML configuration file (see config/nixcache.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address and port to listen on [default: 0.0.0.0:37515].
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// Folder for the index and the NAR files [default: $STATE_DIRECTORY or ./nixcache-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Upstream binary cache, in priority order; repeat for several. Replaces the configured list.
    #[arg(long = "upstream", value_name = "URL")]
    pub upstreams: Vec<String>,
    /// Size cap of the NAR store, e.g. 20GiB, 500M [default: 20GiB].
    #[arg(long, value_name = "SIZE")]
    pub max_size: Option<String>,
    /// Secret key file (Nix format) to sign served narinfos with.
    #[arg(long, value_name = "FILE")]
    pub signing_key_file: Option<PathBuf>,
    /// Upstream public key NAME:KEY to trust; repeat for several. Replaces the configured list.
    #[arg(long = "trusted-key", value_name = "NAME:KEY")]
    pub trusted_keys: Vec<String>,
    /// Check the configuration, print it resolved, and exit.
    #[arg(long)]
    pub check_config: bool,
}
