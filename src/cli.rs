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
    /// Publish store paths (their closure) or a `nix copy --to file://` folder to an OCI registry.
    Push(PushArgs),
    /// Remove old entries outside the kept roots from a published cache's index.
    Gc(GcArgs),
    /// Find nixcache appliances on the LAN (mDNS) and print nix.conf lines for them.
    Discover(DiscoverArgs),
    /// Check the data folder (an fsck): re-hash stored NARs, check the index against the files both
    /// ways, repair what can be repaired. Run it with the daemon stopped.
    Verify(VerifyArgs),
    /// Fetch the closures of store paths into a running appliance ahead of time, optionally as a
    /// named pin that is never evicted (paths as arguments, from --file, or `-` for stdin, e.g. the
    /// output of `nix path-info -r`).
    Warm(WarmArgs),
    /// List the pins of a running appliance and their sizes, or remove one.
    Pins(PinsArgs),
}

/// How to reach a running appliance's admin endpoints (issue 16).
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// The appliance's URL.
    #[arg(long, env = "NIXCACHE_URL", default_value = "http://127.0.0.1:37515")]
    pub url: String,
    /// File holding the admin token (needed from other hosts than the appliance itself).
    #[arg(long, env = "NIXCACHE_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

/// Arguments of `nixcache warm`.
#[derive(Debug, Clone, Args)]
pub struct WarmArgs {
    /// The appliance.
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Keep the closures as this named pin (replacing a pin of that name).
    #[arg(long, value_name = "NAME")]
    pub pin: Option<String>,
    /// Read store paths from FILE, one per line (`-` for stdin).
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Start the job and print its id without waiting for it.
    #[arg(long)]
    pub no_wait: bool,
    /// Store paths (`-` reads them from stdin).
    #[arg(value_name = "STORE-PATH")]
    pub paths: Vec<String>,
}

/// Arguments of `nixcache pins`.
#[derive(Debug, Clone, Args)]
pub struct PinsArgs {
    /// The appliance.
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Remove this pin, releasing the NARs only it held.
    #[arg(long, value_name = "NAME")]
    pub remove: Option<String>,
}

/// Arguments of `nixcache verify`.
#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// The daemon's configuration file (for its data folder).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The data folder [default: as `serve` resolves it].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Also decompress each NAR and check its NarHash and NarSize (slower).
    #[arg(long)]
    pub nar_hash: bool,
    /// Only report: repair nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Arguments of `nixcache discover`. Advertised keys are never trusted unless pinned or explicitly
/// accepted: anyone on the LAN can advertise anything.
#[derive(Debug, Clone, Args)]
pub struct DiscoverArgs {
    /// Seconds to listen for advertisements.
    #[arg(long, value_name = "SECS", default_value_t = 3)]
    pub timeout: u64,
    /// A key NAME:KEY you trust; an appliance advertising it gets an extra-trusted-public-keys line.
    /// Repeat for several.
    #[arg(long = "trust", value_name = "NAME:KEY")]
    pub trust: Vec<String>,
    /// Trust every advertised key (trust on first use: anyone on the LAN can advertise a key).
    #[arg(long)]
    pub trust_advertised: bool,
    /// Print nix.conf lines instead of a table.
    #[arg(long)]
    pub nix_conf: bool,
    /// Write the nix.conf lines to FILE atomically (for a nix.conf `!include`).
    #[arg(long, value_name = "FILE")]
    pub write: Option<PathBuf>,
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
    /// Do not advertise the cache over mDNS.
    #[arg(long)]
    pub no_mdns: bool,
    /// Advertise over mDNS only on this interface (name or address); repeat for several. Replaces the
    /// configured list.
    #[arg(long = "mdns-interface", value_name = "IFACE")]
    pub mdns_interfaces: Vec<String>,
    /// Registry of the OCI source [default: https://ghcr.io].
    #[arg(long, value_name = "URL")]
    pub oci_registry: Option<String>,
    /// OWNER/REPO whose cache (<owner>/<repo>/nix-cache, tag cache-index) is served.
    #[arg(long, value_name = "OWNER/REPO")]
    pub oci_repo: Option<String>,
    /// Check the configuration, print it resolved, and exit.
    #[arg(long)]
    pub check_config: bool,
}

impl ServeArgs {
    /// The settings these flags override.
    pub fn overrides(&self) -> crate::config::Overrides {
        crate::config::Overrides {
            config: self.config.clone(),
            listen: self.listen.clone(),
            data_dir: self.data_dir.clone(),
            upstreams: self.upstreams.clone(),
            max_size: self.max_size.clone(),
            signing_key_file: self.signing_key_file.clone(),
            trusted_keys: self.trusted_keys.clone(),
            no_mdns: self.no_mdns,
            mdns_interfaces: self.mdns_interfaces.clone(),
            oci_registry: self.oci_registry.clone(),
            oci_repo: self.oci_repo.clone(),
        }
    }
}

/// Where a published cache lives. The token comes from `GITHUB_TOKEN` or `GH_TOKEN`.
#[derive(Debug, Clone, Args)]
pub struct RegistryArgs {
    /// Registry base URL (or host).
    #[arg(long, env = "NIXCACHE_REGISTRY", default_value = crate::config::DEFAULT_OCI_REGISTRY)]
    pub oci_registry: String,
    /// OWNER/REPO: the cache is the image <owner>/<repo>/nix-cache, tag cache-index.
    #[arg(long, env = "NIXCACHE_REPO", value_name = "OWNER/REPO")]
    pub oci_repo: String,
}

/// Arguments of `nixcache push`.
#[derive(Debug, Clone, Args)]
pub struct PushArgs {
    /// The registry and repository.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Secret key to sign the narinfos with; its public key goes into the index.
    #[arg(long, value_name = "FILE")]
    pub signing_key_file: Option<PathBuf>,
    /// Publish this folder (made by `nix copy --to file://DIR`) instead of store paths.
    #[arg(long, value_name = "DIR", conflicts_with = "paths")]
    pub from_cache: Option<PathBuf>,
    /// Store paths whose closures to publish (they become the index's gc roots).
    #[arg(value_name = "STORE-PATH", required_unless_present = "from_cache")]
    pub paths: Vec<String>,
    /// Skip paths these caches already have (repeatable) [default: https://cache.nixos.org].
    #[arg(long = "upstream", value_name = "URL")]
    pub upstreams: Vec<String>,
    /// Publish the whole closure, without asking upstream caches.
    #[arg(long)]
    pub all: bool,
    /// The Nix store to read the paths from (passed to nix as --store).
    #[arg(long, value_name = "STORE")]
    pub store: Option<String>,
}

/// Arguments of `nixcache gc`.
#[derive(Debug, Clone, Args)]
pub struct GcArgs {
    /// The registry and repository.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Entries outside the roots' closures are removed once older than this.
    #[arg(long, default_value_t = 30, value_name = "N")]
    pub retention_days: u64,
    /// List what would be removed, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}
