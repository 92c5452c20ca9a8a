//! `nixcache verify`: an fsck of a stopped appliance's data folder (see `integrity.rs`).

use anyhow::Context;

use crate::cli::VerifyArgs;
use crate::config::{Config, Overrides};
use crate::index::Index;
use crate::integrity;
use crate::store::NarStore;

/// Checks the data folder; exits with status 1 when it found damage (repaired unless `--dry-run`).
pub fn verify(args: VerifyArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        config: args.config.clone(),
        data_dir: args.data_dir.clone(),
        ..Default::default()
    };
    let config = Config::resolve(&overrides, &|k| std::env::var(k).ok())?;
    let dir = &config.data_dir;
    let index_path = dir.join("index.redb");
    anyhow::ensure!(
        index_path.exists(),
        "{} has no index.redb: not a nixcache data folder",
        dir.display()
    );
    let index = Index::open(&index_path, None).with_context(|| {
        format!(
            "cannot open {} (is `nixcache serve` running on it? stop it first)",
            index_path.display()
        )
    })?;
    let store = NarStore::open(dir)?;
    let report = integrity::verify_all(&index, &store, args.nar_hash, args.dry_run)
        .map_err(anyhow::Error::msg)?;
    let verb = if args.dry_run { "found" } else { "removed" };
    for (name, why) in &report.damaged {
        println!("damaged  {name}: {why}");
    }
    for name in &report.orphans {
        println!("orphan   {name}");
    }
    println!(
        "checked {} stored NARs ({} bytes{}): {} damaged, {} orphan files, {} temp files {verb}",
        report.checked,
        report.bytes,
        if args.nar_hash { ", NarHash too" } else { "" },
        report.damaged.len(),
        report.orphans.len(),
        report.temp_files,
    );
    anyhow::ensure!(
        !report.found_damage(),
        "the data folder had damage ({})",
        if args.dry_run {
            "nothing was changed"
        } else {
            "repaired"
        }
    );
    Ok(())
}
