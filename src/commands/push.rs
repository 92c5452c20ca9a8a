//! `nixcache push`: publish store paths (their closure, minus what upstream caches already have) or a
//! folder made by `nix copy --to file://` to an OCI registry in the nixcache-oci format.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

use crate::cli::PushArgs;
use crate::clock::unix_now;
use crate::nix::narinfo::NarInfo;
use crate::nix::signing::SecretKey;
use crate::oci::client::Registry;
use crate::oci::format::{CacheIndex, IndexEntry, timestamp};
use crate::oci::publish::update_index;

/// Runs the command.
pub async fn push(args: PushArgs) -> anyhow::Result<()> {
    let registry = super::publish_common::open_registry(&args.registry)?;
    let repo = args.registry.oci_repo.clone();
    let key = match &args.signing_key_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Some(SecretKey::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?)
        }
        None => None,
    };
    let _staging;
    let (folder, roots, wanted) = match &args.from_cache {
        Some(dir) => (dir.clone(), None, None),
        None => {
            let staging = tempfile::Builder::new()
                .prefix("nixcache-push-")
                .tempdir()?;
            let (roots, wanted) = stage_paths(&args, staging.path()).await?;
            let folder = staging.path().to_path_buf();
            _staging = staging;
            (folder, Some(roots), Some(wanted))
        }
    };
    let mut items = read_folder(&folder)?;
    if let Some(wanted) = &wanted {
        // The staging folder holds whole closures; publish only what the upstreams lack.
        items.retain(|(info, _)| wanted.contains(info.store_path.hash.as_str()));
    }
    let roots = roots.unwrap_or_else(|| {
        items
            .iter()
            .map(|(i, _)| i.store_path.hash.to_string())
            .collect()
    });
    let now = unix_now();
    let mut entries = BTreeMap::new();
    let (mut uploaded, mut present, mut bytes) = (0, 0, 0u64);
    let progress = Progress::new(items.len());
    for (i, (mut info, file)) in items.into_iter().enumerate() {
        if let Some(k) = &key {
            info.sign_with(k);
        }
        let (digest, size) = hash_file(&file).await?;
        if info
            .file_hash
            .is_some_and(|h| format!("sha256:{}", h.to_hex()) != digest)
        {
            bail!(
                "{}: FileHash does not match the file {}",
                info.store_path,
                file.display()
            );
        }
        progress.item(i, &info.store_path.to_string(), size);
        if registry.blob_exists(&digest).await? {
            present += 1;
        } else {
            upload(&registry, &digest, &file).await?;
            uploaded += 1;
            bytes += size;
        }
        let hash = info.store_path.hash.to_string();
        // Newer nixcache-oci entries name the NAR by store hash; nixcache maps by nar_digest either way.
        info.url = format!("nar/{hash}.nar{}", info.compression.extension());
        entries.insert(
            hash,
            IndexEntry {
                added: timestamp(now),
                name: info.store_path.name.clone(),
                nar_digest: digest,
                nar_size: size,
                narinfo: info.to_text(),
            },
        );
    }
    progress.done();
    let public_key = key.as_ref().map(|k| k.public_key().to_string());
    let count = entries.len();
    let (digest, index) = update_index(&registry, &repo, now, &|index: &mut CacheIndex| {
        for (hash, entry) in &entries {
            index.entries.insert(hash.clone(), entry.clone());
        }
        index.gc_roots = roots.clone();
        if let Some(pk) = &public_key {
            index.public_key = pk.clone();
        }
    })
    .await?;
    println!(
        "pushed {count} paths: {uploaded} NARs uploaded ({bytes} bytes), {present} already there; \
         index has {} entries; manifest {digest}",
        index.entries.len()
    );
    Ok(())
}

/// Computes the closure, drops what upstreams already have, and `nix copy`s the rest into `staging`
/// (with their closures: a binary cache folder takes a path only with its references).
/// Returns the roots' store hashes and the store hashes to publish.
async fn stage_paths(
    args: &PushArgs,
    staging: &Path,
) -> anyhow::Result<(Vec<String>, std::collections::HashSet<String>)> {
    let nix = |program: &str| {
        let mut c = Command::new(program);
        if let Some(store) = &args.store {
            c.args(["--store", store]);
        }
        c
    };
    let out = nix("nix-store")
        .arg("-qR")
        .args(&args.paths)
        .output()
        .context("cannot run nix-store (is Nix installed?)")?;
    if !out.status.success() {
        bail!(
            "nix-store -qR failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let closure: Vec<String> = String::from_utf8(out.stdout)?
        .lines()
        .map(str::to_string)
        .collect();
    let upstreams = if args.upstreams.is_empty() {
        vec![crate::config::DEFAULT_UPSTREAM.to_string()]
    } else {
        args.upstreams.clone()
    };
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(15))
        .build()?;
    let mut todo = Vec::new();
    for path in &closure {
        let hash = crate::nix::store_path::StorePath::parse(path)
            .map_err(|e| anyhow::anyhow!("{path}: {e}"))?
            .hash;
        let mut elsewhere = false;
        if !args.all {
            for up in &upstreams {
                let url = format!("{}/{hash}.narinfo", up.trim_end_matches('/'));
                match client.head(&url).send().await {
                    Ok(r) if r.status().is_success() => elsewhere = true,
                    Ok(_) => {}
                    Err(e) => eprintln!("warning: cannot ask {up} ({e}); publishing {path}"),
                }
            }
        }
        if !elsewhere {
            todo.push(path.clone());
        }
    }
    eprintln!(
        "{} paths in the closure, {} to publish ({} on upstream caches)",
        closure.len(),
        todo.len(),
        closure.len() - todo.len()
    );
    if !todo.is_empty() {
        let to = format!("file://{}?compression=xz", staging.display());
        let out = nix("nix")
            .args([
                "--extra-experimental-features",
                "nix-command",
                "copy",
                "--to",
                &to,
            ])
            .args(&todo)
            .output()
            .context("cannot run nix copy")?;
        if !out.status.success() {
            bail!("nix copy failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    let hash_of = |p: &String| {
        crate::nix::store_path::StorePath::parse(p)
            .map(|sp| sp.hash.to_string())
            .map_err(|e| anyhow::anyhow!("{p}: {e}"))
    };
    let roots = args.paths.iter().map(hash_of).collect::<Result<_, _>>()?;
    let wanted = todo.iter().map(hash_of).collect::<Result<_, _>>()?;
    Ok((roots, wanted))
}

/// Every narinfo of a binary cache folder with the NAR file it names.
fn read_folder(folder: &Path) -> anyhow::Result<Vec<(NarInfo, PathBuf)>> {
    let mut items = Vec::new();
    let listing =
        std::fs::read_dir(folder).with_context(|| format!("cannot list {}", folder.display()))?;
    for entry in listing {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("narinfo") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        let info = NarInfo::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if info.url.contains("..") || info.url.starts_with('/') || info.url.contains("://") {
            bail!(
                "{}: URL {:?} is not a file in the folder",
                path.display(),
                info.url
            );
        }
        let file = folder.join(&info.url);
        if !file.is_file() {
            bail!("{}: NAR file {} is missing", path.display(), file.display());
        }
        items.push((info, file));
    }
    items.sort_by(|a, b| a.0.store_path.name.cmp(&b.0.store_path.name));
    Ok(items)
}

/// `sha256:<hex>` and size of a file, read in 1 MiB pieces off the async threads.
async fn hash_file(path: &Path) -> anyhow::Result<(String, u64)> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || -> anyhow::Result<(String, u64)> {
        let mut file = std::fs::File::open(&path)?;
        let mut sha = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            sha.update(&buf[..n]);
            size += n as u64;
        }
        Ok((format!("sha256:{}", hex::encode(sha.finalize())), size))
    })
    .await?
}

/// Uploads a file as a blob, streamed (re-opened if the upload must be retried after an auth challenge).
async fn upload(registry: &Registry, digest: &str, file: &Path) -> anyhow::Result<()> {
    let path = file.to_path_buf();
    let body = move || match std::fs::File::open(&path) {
        Ok(f) => reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
            tokio::fs::File::from_std(f),
            1 << 20,
        )),
        Err(e) => reqwest::Body::wrap_stream(futures_util::stream::once(async move {
            Err::<bytes::Bytes, _>(e)
        })),
    };
    registry
        .upload_blob(digest, &body)
        .await
        .with_context(|| format!("uploading {}", file.display()))
}

/// One line per NAR: rewritten in place on a terminal, plain lines otherwise.
struct Progress {
    total: usize,
    terminal: bool,
}

impl Progress {
    fn new(total: usize) -> Progress {
        Progress {
            total,
            terminal: std::io::stderr().is_terminal(),
        }
    }

    fn item(&self, i: usize, path: &str, size: u64) {
        let line = format!("[{}/{}] {path} ({size} bytes)", i + 1, self.total);
        let mut err = std::io::stderr();
        if self.terminal {
            let _ = write!(err, "\r\x1b[2K{line}");
            let _ = err.flush();
        } else {
            let _ = writeln!(err, "{line}");
        }
    }

    fn done(&self) {
        if self.terminal {
            eprintln!();
        }
    }
}
