//! `nixcache keygen`: a signing key pair in Nix's own file format.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use anyhow::Context;

use crate::cli::KeygenArgs;
use crate::nix::signing::SecretKey;

/// Writes the two files (refusing to overwrite either) and prints the public key.
pub fn keygen(args: KeygenArgs) -> anyhow::Result<()> {
    let secret_path = args
        .secret_key_file
        .unwrap_or_else(|| PathBuf::from(format!("{}.secret", args.name)));
    let public_path = args
        .public_key_file
        .unwrap_or_else(|| PathBuf::from(format!("{}.public", args.name)));
    let key = SecretKey::generate(&args.name).context("cannot make a key")?;
    let public = key.public_key().to_string();
    write_new(&secret_path, &key.to_file_text(), 0o600)?;
    write_new(&public_path, &public, 0o644)?;
    println!("{public}");
    eprintln!(
        "secret key: {} (keep it private); public key: {}",
        secret_path.display(),
        public_path.display()
    );
    Ok(())
}

fn write_new(path: &PathBuf, content: &str, mode: u32) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    file.write_all(content.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}
