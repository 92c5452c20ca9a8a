//! What `push` and `gc` share: opening the registry from the command line and the environment.

use anyhow::Context;

use crate::cli::RegistryArgs;
use crate::config::normalize_registry;
use crate::oci::client::Registry;
use crate::oci::format::{check_repo, image_name};

/// The registry client for `args`, with `GITHUB_TOKEN` / `GH_TOKEN` as credentials when set.
pub fn open_registry(args: &RegistryArgs) -> anyhow::Result<Registry> {
    check_repo(&args.oci_repo).map_err(|m| anyhow::anyhow!("--oci-repo: {m}"))?;
    let base = normalize_registry(&args.oci_registry)
        .map_err(|m| anyhow::anyhow!("--oci-registry: {m}"))?;
    let token = ["GITHUB_TOKEN", "GH_TOKEN"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|t| !t.trim().is_empty()))
        .map(|t| t.trim().to_string());
    let client = reqwest::Client::builder()
        .user_agent(concat!("nixcache/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(std::time::Duration::from_secs(15))
        .build()
        .context("HTTP client")?;
    Registry::new(&base, &image_name(&args.oci_repo), token, client).map_err(anyhow::Error::msg)
}
