//! Unit tests for keys and signatures, against keys and Sig lines made by real Nix.

use super::*;
use crate::nix::test_vectors::*;

fn secret() -> SecretKey {
    SecretKey::parse(SECRET_KEY_FILE).expect("real secret key")
}

fn public() -> PublicKey {
    PublicKey::parse(PUBLIC_KEY_FILE).expect("real public key")
}

fn narinfo(text: &str) -> NarInfo {
    NarInfo::parse(text).expect("real narinfo")
}

#[test]
fn real_key_files_parse_and_match() {
    let sk = secret();
    assert_eq!(sk.name(), "test-1");
    assert_eq!(sk.public_key(), public());
    assert_eq!(public().to_string(), PUBLIC_KEY_FILE);
    assert_eq!(sk.to_file_text(), SECRET_KEY_FILE);
    // Key files read from disk may carry a newline; padding is optional.
    assert_eq!(
        SecretKey::parse(&format!("{SECRET_KEY_FILE}\n"))
            .map(|k| k.to_file_text())
            .ok(),
        Some(SECRET_KEY_FILE.to_string())
    );
    let unpadded = PUBLIC_KEY_FILE.trim_end_matches('=');
    assert_eq!(
        PublicKey::parse(&format!(" {unpadded}\n")).ok(),
        Some(public())
    );
    assert_eq!(
        SecretKey::parse(SECRET_KEY_FILE.trim_end_matches('='))
            .map(|k| k.public_key())
            .ok(),
        Some(public())
    );
}

#[test]
fn real_nix_signatures_verify() {
    let keys = [public()];
    for text in SIGNED {
        let info = narinfo(text);
        assert_eq!(info.sigs.len(), 1);
        assert!(
            public().verify(&info.fingerprint(), &info.sigs[0]),
            "{text}"
        );
        assert!(info.verify_with(&keys), "{text}");
    }
    assert!(!narinfo(TOP_UNSIGNED).verify_with(&keys));
}

#[test]
fn our_signatures_equal_nix_signatures() {
    // ed25519 is deterministic, so signing the same fingerprint reproduces Nix's Sig exactly.
    let sk = secret();
    for text in SIGNED {
        let info = narinfo(text);
        assert_eq!(sk.sign(&info.fingerprint()), info.sigs[0], "{text}");
    }
    let mut unsigned = narinfo(TOP_UNSIGNED);
    unsigned.sign_with(&sk);
    assert_eq!(unsigned.to_text(), TOP_XZ);
}

#[test]
fn signature_still_verifies_after_sri_or_unsigned_changes() {
    let sri = TOP_XZ.replace(
        "sha256:0q6yj9sbg7xi8kks5cmqc38xcpprb64a18cq9d67pds7sw04di7k",
        "sha256-88RGANdHt3tMS5ihoIhZ+V7W0WC4sqLnRLGft3SS3mA=",
    );
    let mut info = narinfo(&sri);
    assert!(info.verify_with(&[public()]));
    info.url = "nar/other.nar.zst".into();
    info.compression = crate::nix::narinfo::Compression::Zstd;
    info.file_hash = None;
    info.file_size = None;
    info.deriver = None;
    info.ca = Some("fixed:r:sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73".into());
    assert!(info.verify_with(&[public()]));
}

#[test]
fn altered_signed_fields_fail() {
    let keys = [public()];
    let base = narinfo(MULTI_XZ);
    let mut alterations: Vec<NarInfo> = Vec::new();
    let mut a = base.clone();
    a.nar_hash = crate::nix::hash::Sha256Hash::digest(b"other");
    alterations.push(a);
    let mut a = base.clone();
    a.nar_size += 1;
    alterations.push(a);
    let mut a = base.clone();
    a.references.pop();
    alterations.push(a);
    let mut a = base.clone();
    a.references.push(narinfo(DEP_XZ).store_path.clone());
    a.references[0] =
        crate::nix::store_path::StorePath::from_base_name("00000000000000000000000000000000-evil")
            .expect("valid");
    alterations.push(a);
    let mut a = base.clone();
    a.store_path = narinfo(TOP_XZ).store_path;
    alterations.push(a);
    for (i, a) in alterations.iter().enumerate() {
        assert!(!a.verify_with(&keys), "alteration {i}");
    }
    // Text-level edits of the real file fail the same way.
    for (from, to) in [
        ("NarSize: 160", "NarSize: 161"),
        (
            "References: z4asv3j07d89ywjf8fxkn7sg6mf5s9q5-dep",
            "References: ",
        ),
        (
            "sha256:0q6yj9sbg7xi8kks5cmqc38xcpprb64a18cq9d67pds7sw04di7k",
            "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73",
        ),
    ] {
        assert!(
            !narinfo(&TOP_XZ.replace(from, to)).verify_with(&keys),
            "{from} -> {to}"
        );
    }
}

#[test]
fn verify_any_matches_by_name() {
    let info = narinfo(TOP_XZ);
    let fp = info.fingerprint();
    let sig = info.sigs[0].clone();
    let other = SecretKey::generate("other-1").expect("random");
    let keys = [other.public_key(), public()];
    assert!(verify_any(&keys, &fp, std::slice::from_ref(&sig)));
    // A valid signature under a name we do not trust, or under the wrong name, does not count.
    assert!(!verify_any(
        &[other.public_key()],
        &fp,
        std::slice::from_ref(&sig)
    ));
    let renamed = sig.replacen("test-1:", "other-1:", 1);
    assert!(!verify_any(&keys, &fp, &[renamed]));
    // Garbage and unknown names are skipped, one good signature suffices.
    let sigs = vec![
        "unknown:AAAA".to_string(),
        "no-colon".to_string(),
        "test-1:!!!".to_string(),
        "test-1:AAAA".to_string(),
        sig,
    ];
    assert!(verify_any(&keys, &fp, &sigs));
    assert!(!verify_any(&keys, &fp, &sigs[..4]));
    assert!(!verify_any(&[], &fp, &sigs));
    assert!(!verify_any(&keys, &fp, &[]));
}

#[test]
fn sign_with_replaces_own_name_and_keeps_others() {
    let ours = SecretKey::generate("nixcache-1").expect("random");
    let mut info = narinfo(TOP_XZ);
    info.sigs.push("nixcache-1:stale".into());
    info.sign_with(&ours);
    assert_eq!(info.sigs.len(), 2);
    assert!(info.sigs[0].starts_with("test-1:"));
    assert!(info.sigs[1].starts_with("nixcache-1:"));
    assert!(info.verify_with(&[ours.public_key()]));
    assert!(info.verify_with(&[public()]));
    info.sign_with(&ours);
    assert_eq!(info.sigs.len(), 2, "re-signing does not pile up");
    assert_eq!(sig_key_name(&info.sigs[1]), Some("nixcache-1"));
}

#[test]
fn generated_keys_read_back() {
    let sk = SecretKey::generate("cache.lan-1").expect("random");
    let text = sk.to_file_text();
    assert!(!text.ends_with('\n'));
    let back = SecretKey::parse(&text).expect("reads back");
    assert_eq!(back.to_file_text(), text);
    assert_eq!(back.public_key(), sk.public_key());
    let pk = PublicKey::parse(&sk.public_key().to_string()).expect("public reads back");
    assert_eq!(pk, sk.public_key());
    assert_eq!(pk.name(), "cache.lan-1");
    let sig = sk.sign("hello");
    assert!(pk.verify("hello", &sig));
    assert!(!pk.verify("hello!", &sig));
    assert_ne!(
        SecretKey::generate("x").expect("random").to_file_text(),
        text
    );
}

#[test]
fn debug_hides_the_secret() {
    let sk = secret();
    let debug = format!("{sk:?}");
    assert!(debug.contains("test-1"));
    let b64 = SECRET_KEY_FILE.split_once(':').expect("colon").1;
    assert!(!debug.contains(&b64[..20]));
    assert!(!debug.contains("22"), "no byte arrays: {debug}");
}

#[test]
fn rejects_bad_keys() {
    let pk_b64 = PUBLIC_KEY_FILE.split_once(':').expect("colon").1;
    let sk_b64 = SECRET_KEY_FILE.split_once(':').expect("colon").1;
    let bad_pk: Vec<(String, &str)> = vec![
        (String::new(), "MissingColon"),
        (pk_b64.to_string(), "MissingColon"),
        (format!(":{pk_b64}"), "BadName"),
        (format!("a b:{pk_b64}"), "BadName"),
        ("test-1:!!!!".into(), "BadBase64"),
        ("test-1:AAAA".into(), "BadLength"),
        (format!("test-1:x{pk_b64}"), "BadBase64"),
        (format!("test-1:{sk_b64}"), "BadLength"),
    ];
    for (text, want) in &bad_pk {
        let err = PublicKey::parse(text).expect_err(text);
        assert!(format!("{err:?}").starts_with(want), "{text}: {err:?}");
    }
    // A secret key whose public half does not belong to its seed.
    let mut bytes = STANDARD.decode(sk_b64).expect("b64");
    bytes[63] ^= 1;
    let tampered = format!("test-1:{}", STANDARD.encode(&bytes));
    let bad_sk = [
        (tampered.as_str(), "InvalidKey"),
        (PUBLIC_KEY_FILE, "BadLength"),
        ("test-1", "MissingColon"),
    ];
    for (text, want) in bad_sk {
        let err = SecretKey::parse(text).expect_err(text);
        assert!(format!("{err:?}").starts_with(want), "{text}: {err:?}");
    }
    for name in ["", "a:b", "a b", "a\n"] {
        assert!(
            matches!(SecretKey::generate(name), Err(SigningError::BadName)),
            "{name:?}"
        );
    }
}
