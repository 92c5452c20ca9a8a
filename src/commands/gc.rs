//! `nixcache gc`: drop index entries that are outside the kept roots' closures and older than the
//! retention period. Blobs are left to the registry's own clean-up (GHCR deletes by package version).

use std::collections::{BTreeSet, HashSet};

use crate::cli::GcArgs;
use crate::clock::unix_now;
use crate::nix::narinfo::NarInfo;
use crate::oci::format::{CacheIndex, parse_timestamp};
use crate::oci::publish::{read_index, update_index};

/// Store hashes to remove: not reachable from `gc_roots` through References, and added more than
/// `retention_days` before `now`. An entry whose time cannot be read is kept.
pub fn plan(index: &CacheIndex, now: u64, retention_days: u64) -> BTreeSet<String> {
    let mut kept: HashSet<&str> = HashSet::new();
    let mut todo: Vec<&str> = index.gc_roots.iter().map(String::as_str).collect();
    while let Some(hash) = todo.pop() {
        if !kept.insert(hash) {
            continue;
        }
        if let Some(entry) = index.entries.get(hash)
            && let Ok(info) = NarInfo::parse(&entry.narinfo)
        {
            for r in &info.references {
                if let Some((k, _)) = index.entries.get_key_value(r.hash.as_str()) {
                    todo.push(k.as_str());
                }
            }
        }
    }
    let cutoff = now.saturating_sub(retention_days * 86_400);
    index
        .entries
        .iter()
        .filter(|(hash, entry)| {
            !kept.contains(hash.as_str())
                && parse_timestamp(&entry.added).is_some_and(|added| added < cutoff)
        })
        .map(|(hash, _)| hash.clone())
        .collect()
}

/// Runs the command.
pub async fn gc(args: GcArgs) -> anyhow::Result<()> {
    let registry = super::publish_common::open_registry(&args.registry)?;
    let repo = args.registry.oci_repo.clone();
    let now = unix_now();
    let (digest, index) = read_index(&registry, &repo).await?;
    if digest.is_none() {
        println!("nothing published yet");
        return Ok(());
    }
    let doomed = plan(&index, now, args.retention_days);
    for hash in &doomed {
        let name = index
            .entries
            .get(hash)
            .map(|e| e.name.as_str())
            .unwrap_or("");
        println!(
            "{} {hash}-{name}",
            if args.dry_run {
                "would remove"
            } else {
                "removing"
            }
        );
    }
    if args.dry_run || doomed.is_empty() {
        println!(
            "{} of {} entries {}",
            doomed.len(),
            index.entries.len(),
            if args.dry_run {
                "would be removed"
            } else {
                "to remove"
            }
        );
        return Ok(());
    }
    let retention = args.retention_days;
    let (digest, index) = update_index(&registry, &repo, now, &|index: &mut CacheIndex| {
        for hash in plan(index, now, retention) {
            index.entries.remove(&hash);
        }
    })
    .await?;
    println!(
        "index now has {} entries (manifest {digest})",
        index.entries.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::format::{IndexEntry, timestamp};

    fn entry(hash: &str, name: &str, refs: &[&str], added: u64) -> (String, IndexEntry) {
        let refs: Vec<String> = refs.iter().map(|r| format!("{r}-x")).collect();
        let narinfo = format!(
            "StorePath: /nix/store/{hash}-{name}\nURL: nar/{hash}.nar.xz\nCompression: xz\n\
             NarHash: sha256:{}\nNarSize: 1\nReferences: {}\n",
            "1".repeat(52),
            refs.join(" ")
        );
        (
            hash.to_string(),
            IndexEntry {
                added: timestamp(added),
                name: name.into(),
                nar_digest: "sha256:00".into(),
                nar_size: 1,
                narinfo,
            },
        )
    }

    #[test]
    fn keeps_roots_closures_and_recent_entries() {
        let day = 86_400;
        let now = 1000 * day;
        let (a, b, c, d, e) = (
            "a".repeat(32),
            "b".repeat(32),
            "c".repeat(32),
            "d".repeat(32),
            "f".repeat(32),
        );
        let mut index = CacheIndex::new("o/r", "ghcr.io");
        index.entries.extend([
            entry(&a, "root", &[&b], now - 100 * day),
            entry(&b, "dep", &[&b], now - 100 * day), // self-reference
            entry(&c, "old", &[], now - 31 * day),
            entry(&d, "recent", &[], now - 29 * day),
            entry(&e, "old-too", &[&a], now - 40 * day), // refers to a root, but is not reachable from one
        ]);
        index.gc_roots = vec![a.clone()];
        let doomed = plan(&index, now, 30);
        assert_eq!(doomed, BTreeSet::from([c, e]));
        assert!(plan(&index, now, 365).is_empty());
    }
}
