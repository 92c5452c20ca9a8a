//! What NarHash verification costs on the fill path: throughput of checking a NAR file the way a fill
//! does (FileHash + decompress + NarHash) against FileHash alone, on the same bytes, in one run.
//!
//! `cargo run --release --example verify_cost [MiB]` (default 64 MiB of semi-compressible data).

use std::io::Write;
use std::time::Instant;

use nixcache::nix::hash::Sha256Hash;
use nixcache::nix::narinfo::Compression;
use nixcache::verify::{Expected, NarVerifier};
use sha2::{Digest, Sha256};

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(64);
    // Text-like data: compresses about 3-4x, like typical store paths.
    let mut nar = Vec::with_capacity(mib << 20);
    let mut x: u64 = 0x9e3779b97f4a7c15;
    while nar.len() < mib << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let word = [
            "lib", "share", "bin", "nix", "store", "include", "-", "/", "\n", "0",
        ][(x % 10) as usize];
        nar.extend_from_slice(word.as_bytes());
        nar.push(b'a' + (x >> 60) as u8);
    }
    nar.truncate(mib << 20);
    println!("| compression | file MiB | FileHash only MB/s | full verification MB/s | ratio |");
    println!("|---|---:|---:|---:|---:|");
    for c in [Compression::None, Compression::Zstd, Compression::Xz] {
        let file = match c {
            Compression::None => nar.clone(),
            Compression::Zstd => zstd::stream::encode_all(nar.as_slice(), 3).unwrap(),
            Compression::Xz => {
                let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6);
                e.write_all(&nar).unwrap();
                e.finish().unwrap()
            }
            _ => unreachable!(),
        };
        let expected = Expected {
            compression: c,
            file_hash: Sha256Hash::digest(&file),
            file_size: Some(file.len() as u64),
            nar_hash: Sha256Hash::digest(&nar),
            nar_size: nar.len() as u64,
        };
        let rate = |secs: f64| nar.len() as f64 / secs / 1e6;
        let t = Instant::now();
        let mut sha = Sha256::new();
        for chunk in file.chunks(1 << 20) {
            sha.update(chunk);
        }
        let _ = sha.finalize();
        let hash_only = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut v = NarVerifier::new(expected).unwrap();
        for chunk in file.chunks(1 << 20) {
            v.update(chunk).unwrap();
        }
        v.finish().unwrap();
        let full = t.elapsed().as_secs_f64();
        println!(
            "| {} | {:.1} | {:.0} | {:.0} | {:.2} |",
            c.as_str(),
            file.len() as f64 / (1 << 20) as f64,
            rate(hash_only),
            rate(full),
            hash_only / full
        );
    }
    println!("\n(MB/s of NAR bytes; ratio = full verification speed / FileHash-only speed)");
}
