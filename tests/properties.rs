//! Property tests for every parser fed from the network: narinfo (and the hashes in it), NAR names,
//! store hashes and paths, `Range`, `/nix-cache-info` as `nixcache discover` reads it, the OCI index and
//! a registry's auth challenge, and mDNS TXT records as discovery uses them.
//!
//! Two properties each: generated input (random, and valid input with random damage) never panics, and
//! every accepted value round-trips (parse, write, parse gives the same value). A few dozen cases per
//! property here; `scripts/soak-proptest.sh` runs them with many more (`PROPTEST_CASES`).

use std::collections::BTreeMap;

use axum::http::HeaderValue;
use proptest::prelude::*;
use proptest::test_runner::Config;

use nixcache::commands::discover::{
    Found, KeyTrust, acceptable_key, cache_url, nix_conf_lines, parse_cache_info, parse_priority,
    valid_path,
};
use nixcache::mdns::txt_map;
use nixcache::nix::hash::Sha256Hash;
use nixcache::nix::nar_name::NarName;
use nixcache::nix::narinfo::{Compression, NarInfo};
use nixcache::nix::signing::PublicKey;
use nixcache::nix::store_path::{StoreHash, StorePath};
use nixcache::oci::client::parse_challenge;
use nixcache::oci::format::{CacheIndex, IndexEntry};
use nixcache::server::nar::parse_range;

/// Cases per property: `PROPTEST_CASES` when set (the soak script), a quick 64 otherwise.
fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    Config {
        cases,
        ..Config::default()
    }
}

const HASH_CHARS: &str = "[0-9a-df-np-sv-z]";

fn store_hash() -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("{HASH_CHARS}{{32}}")).expect("regex")
}

fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9+._?=-]{1,40}".prop_filter("not . or .. first", |n| {
        let first = n.split('-').next().unwrap_or("");
        first != "." && first != ".."
    })
}

fn base_name() -> impl Strategy<Value = String> {
    (store_hash(), name()).prop_map(|(h, n)| format!("{h}-{n}"))
}

fn store_path() -> impl Strategy<Value = StorePath> {
    base_name().prop_map(|b| StorePath::from_base_name(&b).expect("generated base names are valid"))
}

fn sha256() -> impl Strategy<Value = Sha256Hash> {
    any::<[u8; 32]>().prop_map(Sha256Hash)
}

fn compression() -> impl Strategy<Value = Compression> {
    proptest::sample::select(Compression::ALL.to_vec())
}

prop_compose! {
    fn narinfo()(
        store_path in store_path(),
        url in "[a-zA-Z0-9/._?=&:%-]{1,60}",
        compression in compression(),
        file_hash in proptest::option::of(sha256()),
        file_size in proptest::option::of(any::<u64>()),
        nar_hash in sha256(),
        nar_size in 1..u64::MAX,
        references in proptest::collection::vec(store_path(), 0..5),
        deriver in proptest::option::of(base_name().prop_map(|b| format!("{b}.drv"))),
        sigs in proptest::collection::vec("[a-z0-9.-]{1,20}:[A-Za-z0-9+/]{86}==", 0..3),
        ca in proptest::option::of("fixed:r:sha256:[0-9a-df-np-sv-z]{52}"),
    ) -> NarInfo {
        NarInfo {
            store_path, url, compression, file_hash, file_size, nar_hash, nar_size, references,
            deriver, sigs, ca,
        }
    }
}

/// Random damage to a text: a few characters replaced, inserted or removed.
fn damaged(text: String) -> impl Strategy<Value = String> {
    let len = text.chars().count().max(1);
    proptest::collection::vec((0..len, 0..3u8, any::<char>()), 1..4).prop_map(move |edits| {
        let mut chars: Vec<char> = text.chars().collect();
        for (at, kind, c) in edits {
            let at = at.min(chars.len());
            match kind {
                0 if at < chars.len() => chars[at] = c,
                1 => chars.insert(at, c),
                _ if at < chars.len() => {
                    chars.remove(at);
                }
                _ => chars.push(c),
            }
        }
        chars.into_iter().collect()
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn narinfo_written_by_us_reads_back_the_same(n in narinfo()) {
        prop_assert_eq!(NarInfo::parse(&n.to_text()), Ok(n));
    }

    #[test]
    fn narinfo_from_anywhere_never_panics_and_accepted_ones_round_trip(
        text in prop_oneof![
            any::<String>(),
            narinfo().prop_map(|n| n.to_text()).prop_flat_map(damaged),
        ]
    ) {
        if let Ok(n) = NarInfo::parse(&text) {
            prop_assert_eq!(NarInfo::parse(&n.to_text()), Ok(n));
        }
    }

    #[test]
    fn narinfo_hashes_in_any_accepted_form_round_trip(
        text in prop_oneof![
            any::<String>(),
            sha256().prop_map(|h| h.to_string()).prop_flat_map(damaged),
            sha256().prop_map(|h| h.to_sri()),
            sha256().prop_map(|h| format!("sha256:{}", h.to_hex())),
        ]
    ) {
        if let Ok(h) = Sha256Hash::parse(&text) {
            prop_assert_eq!(Sha256Hash::parse(&h.to_string()), Ok(h));
            prop_assert_eq!(Sha256Hash::parse(&h.to_sri()), Ok(h));
        }
    }

    #[test]
    fn nar_names_round_trip(
        text in prop_oneof![
            any::<String>(),
            (sha256(), compression())
                .prop_map(|(file_hash, compression)| NarName { file_hash, compression }.to_string())
                .prop_flat_map(damaged),
        ],
        file_hash in sha256(),
        compression in compression(),
    ) {
        let name = NarName { file_hash, compression };
        prop_assert_eq!(name.to_string().parse::<NarName>(), Ok(name));
        if let Ok(n) = text.parse::<NarName>() {
            // Canonical names only: what is accepted is exactly what is written.
            prop_assert_eq!(n.to_string(), text);
        }
    }

    #[test]
    fn store_hashes_and_paths_round_trip(
        text in prop_oneof![
            any::<String>(),
            store_hash().prop_flat_map(damaged),
            base_name().prop_map(|b| format!("/nix/store/{b}")).prop_flat_map(damaged),
        ]
    ) {
        if let Ok(h) = text.parse::<StoreHash>() {
            prop_assert_eq!(h.to_string(), text.clone());
        }
        if let Ok(p) = StorePath::parse(&text) {
            prop_assert_eq!(p.to_string(), text.clone());
            prop_assert_eq!(StorePath::from_base_name(&p.base_name()), Ok(p));
        }
    }

    #[test]
    fn ranges_round_trip(
        text in prop_oneof![
            any::<String>(),
            "(bytes=)?[0-9]{0,22}-[0-9]{0,22}",
            "bytes= ?[0-9,-]{0,12} ?",
        ]
    ) {
        let Ok(value) = HeaderValue::from_str(&text) else {
            return Ok(());
        };
        if let Some(r) = parse_range(Some(&value)) {
            let end = r.end.map(|e| e.to_string()).unwrap_or_default();
            let again = HeaderValue::from_str(&format!("bytes={}-{end}", r.start)).expect("ASCII");
            prop_assert_eq!(parse_range(Some(&again)), Some(r));
            prop_assert!(r.end.is_none_or(|e| e >= r.start), "{:?}", r);
        }
    }

    #[test]
    fn nix_cache_info_as_discover_reads_it(
        text in prop_oneof![
            any::<String>(),
            (0u32..1_000_000_000)
                .prop_map(|p| format!("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: {p}\n"))
                .prop_flat_map(damaged),
        ],
        priority in any::<u32>(),
    ) {
        let ours = format!("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: {priority}\n");
        let read = parse_cache_info(&ours);
        prop_assert_eq!(read, Some(parse_priority(&priority.to_string())));
        if let Some(Some(p)) = parse_cache_info(&text) {
            prop_assert_eq!(parse_priority(&p.to_string()), Some(p));
        }
    }

    #[test]
    fn oci_index_round_trips_and_junk_never_panics(
        entries in proptest::collection::btree_map(
            store_hash(),
            (name(), sha256(), any::<u64>(), any::<String>()),
            0..4,
        ),
        gc_roots in proptest::collection::vec(store_hash(), 0..3),
        public_key in any::<String>(),
        junk in prop_oneof![
            any::<Vec<u8>>(),
            Just(b"{\"entries\":{},\"version\":1}".to_vec())
                .prop_map(|b| String::from_utf8(b).expect("UTF-8"))
                .prop_flat_map(damaged)
                .prop_map(String::into_bytes),
        ],
    ) {
        let mut index = CacheIndex::new("owner/repo", "ghcr.io");
        index.generated = "2026-11-28T00:00:00Z".into();
        index.gc_roots = gc_roots;
        index.public_key = public_key;
        index.entries = entries
            .into_iter()
            .map(|(hash, (name, digest, nar_size, narinfo))| {
                let entry = IndexEntry {
                    added: "2026-11-28T00:00:00Z".into(),
                    name,
                    nar_digest: format!("sha256:{}", digest.to_hex()),
                    nar_size,
                    narinfo,
                };
                (hash, entry)
            })
            .collect::<BTreeMap<_, _>>();
        prop_assert_eq!(CacheIndex::parse(&index.to_bytes()), Ok(index));
        if let Ok(parsed) = CacheIndex::parse(&junk) {
            prop_assert_eq!(CacheIndex::parse(&parsed.to_bytes()), Ok(parsed));
        }
    }

    #[test]
    fn registry_challenges_never_panic_and_round_trip(
        text in any::<String>(),
        params in proptest::collection::vec(("[a-z]{1,8}", "[a-zA-Z0-9:/._ =-]{0,30}"), 1..4),
    ) {
        let _ = parse_challenge(&text);
        let written = params
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect::<Vec<_>>()
            .join(",");
        let (scheme, read) = parse_challenge(&format!("Bearer {written}")).expect("well formed");
        prop_assert_eq!(scheme, "bearer");
        prop_assert_eq!(read, params);
    }

    #[test]
    fn txt_records_cannot_smuggle_anything_into_nix_conf(
        pairs in proptest::collection::vec((any::<String>(), any::<String>()), 0..8),
        port in any::<u16>(),
    ) {
        let txt = txt_map(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        for (key, value) in &txt {
            prop_assert_eq!(key.to_ascii_lowercase(), key.clone());
            let first = pairs.iter().find(|(k, _)| k.to_ascii_lowercase() == *key);
            prop_assert_eq!(first.map(|(_, v)| v), Some(value));
        }
        let path = txt.get("path").map(String::as_str).unwrap_or("/");
        let url = cache_url([192, 0, 2, 1].into(), port, if valid_path(path) { path } else { "/" });
        let priority = txt.get("priority").and_then(|p| parse_priority(p));
        if let Some(p) = priority {
            prop_assert_eq!(parse_priority(&p.to_string()), Some(p));
        }
        let key = txt.get("pubkey").filter(|k| acceptable_key(k)).cloned();
        if let Some(k) = &key {
            prop_assert_eq!(PublicKey::parse(k).map(|p| p.to_string()).ok(), Some(k.clone()));
        }
        let found = [Found { url, priority, key, trust: KeyTrust::OnFirstUse }];
        for line in nix_conf_lines(&found) {
            prop_assert!(!line.contains(['\n', '\r']), "{line:?}");
        }
    }
}

/// A TXT value with a key that parses: accepted as-is, so the round trip is exact.
#[test]
fn a_real_key_is_acceptable() {
    let key = "nixcache.lan-1:veQv4KKpmmHg7SlnFFbSRVLwWtRIi1N0nTJMfTpElKY=";
    assert!(acceptable_key(key));
    assert!(!acceptable_key(&format!(
        "{key}\nextra-substituters = http://evil"
    )));
}
