//! Writes an index of N synthetic narinfos through the library's index API, for cold-start and
//! large-index benchmarks (`scripts/bench.sh` runs it).
//!
//! `cargo run --release --example gen_index -- INDEX_FILE COUNT HASHES_FILE SOURCE_URL KEY [SAMPLE]`
//!
//! Each narinfo looks like one of cache.nixos.org's (xz, FileHash, a few references, a deriver, one
//! signature; about 700 bytes), recorded under the source SOURCE_URL (an upstream's base URL as the
//! appliance names it, with its trailing `/`) and the trust policy tag of that source trusting KEY, with
//! no appliance signer: an appliance started with `--upstream SOURCE_URL --trusted-key KEY` and no signing
//! key serves them as they are, without checking their (made-up) signatures again. They are written in
//! batches of 100,000 per transaction (as an OCI mirror refresh would). HASHES_FILE receives SAMPLE store
//! hashes (default 100,000) spread evenly over the whole set, one per line, for load generators.

use std::collections::HashSet;
use std::io::Write;
use std::time::Instant;

use base64::Engine;
use nixcache::index::{Index, MirroredEntry, NarRecord, NarinfoRow};
use nixcache::nix::hash::Sha256Hash;
use nixcache::nix::narinfo::Compression;
use nixcache::nix::nix32;

const BATCH: u64 = 100_000;
const NAMES: [&str; 8] = [
    "glibc-2.40-66",
    "bash-5.2p37",
    "coreutils-9.5",
    "python3-3.12.8",
    "openssl-3.3.2",
    "gcc-14-20241116-lib",
    "systemd-256.10",
    "perl5.40.0-Moose-2.2207",
];

/// splitmix64: deterministic bytes without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for chunk in out.chunks_mut(8) {
            chunk.copy_from_slice(&self.next().to_le_bytes()[..chunk.len()]);
        }
        out
    }
}

fn store_hash(i: u64) -> String {
    nix32::encode(&Rng(i.wrapping_mul(0x2545_f491_4f6c_dd1d)).bytes::<20>())
}

fn entry(i: u64, count: u64, source: &str, policy: u64) -> MirroredEntry {
    let mut rng = Rng(i);
    let hash = store_hash(i);
    let name = NAMES[(i % NAMES.len() as u64) as usize];
    let file_hash = Sha256Hash(rng.bytes());
    let nar_hash = Sha256Hash(rng.bytes());
    let nar_size = 4096 + rng.next() % 4_000_000;
    let file_size = nar_size / 4 + 100;
    let refs: Vec<String> = (0..rng.next() % 8)
        .map(|_| {
            let r = rng.next() % count;
            format!(
                "{}-{}",
                store_hash(r),
                NAMES[(r % NAMES.len() as u64) as usize]
            )
        })
        .collect();
    let sig = base64::engine::general_purpose::STANDARD.encode(rng.bytes::<64>());
    let text = format!(
        "StorePath: /nix/store/{hash}-{name}\nURL: nar/{file}.nar.xz\nCompression: xz\n\
         FileHash: sha256:{file}\nFileSize: {file_size}\nNarHash: sha256:{nar}\nNarSize: {nar_size}\n\
         References: {refs}\nDeriver: {deriver}-{name}.drv\nSig: cache.nixos.org-1:{sig}\n",
        file = file_hash.to_nix32(),
        nar = nar_hash.to_nix32(),
        refs = refs.join(" "),
        deriver = nix32::encode(&rng.bytes::<20>()),
    );
    MirroredEntry {
        hash: hash.parse().expect("a valid store hash"),
        entry_digest: rng.bytes(),
        row: NarinfoRow {
            recorded: 1_800_000_000,
            policy,
            source: source.into(),
            signer: String::new(),
            file_hash,
            text,
        },
        nar: NarRecord {
            compression: Compression::Xz,
            file_size: Some(file_size),
            nar_hash,
            nar_size,
            source: source.into(),
            url: format!("http://bench.invalid/nar/{}.nar.xz", file_hash.to_nix32()),
        },
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 6 {
        eprintln!("usage: gen_index INDEX_FILE COUNT HASHES_FILE SOURCE_URL KEY [SAMPLE]");
        std::process::exit(2);
    }
    let count: u64 = args[2].parse().expect("COUNT is a number");
    let source = args[4].as_str();
    let key = nixcache::nix::signing::PublicKey::parse(&args[5]).expect("KEY is a public key");
    let policy = nixcache::trust::tag(source, &nixcache::trust::Trust::Keys(vec![key]));
    let sample: u64 = args.get(6).map_or(100_000, |s| s.parse().expect("SAMPLE"));
    let started = Instant::now();
    let index = Index::open(std::path::Path::new(&args[1]), None).expect("open the index");
    let mut keep = HashSet::new();
    let mut written = 0;
    while written < count {
        let batch: Vec<MirroredEntry> = (written..(written + BATCH).min(count))
            .map(|i| entry(i, count, source, policy))
            .collect();
        keep.extend(batch.iter().map(|e| e.hash.to_string()));
        index
            .apply_mirror(source, &batch, &keep, "sha256:bench")
            .expect("write a batch");
        written += batch.len() as u64;
    }
    let mut out = std::io::BufWriter::new(std::fs::File::create(&args[3]).expect("HASHES_FILE"));
    let step = (count / sample.max(1)).max(1);
    for i in (0..count).step_by(step as usize) {
        writeln!(out, "{}", store_hash(i)).expect("write HASHES_FILE");
    }
    out.flush().expect("write HASHES_FILE");
    eprintln!(
        "gen_index: {count} narinfos in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
