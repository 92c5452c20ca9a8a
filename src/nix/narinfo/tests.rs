//! Unit tests for the narinfo parser and writer, on narinfos written by real Nix.

use super::*;
use crate::nix::test_vectors::*;

fn parse(text: &str) -> NarInfo {
    NarInfo::parse(text).expect("valid narinfo")
}

fn path(full: &str) -> StorePath {
    StorePath::parse(full).expect("valid store path")
}

fn hash(s: &str) -> Sha256Hash {
    Sha256Hash::parse(s).expect("valid hash")
}

#[test]
fn parses_real_xz_narinfo_with_references() {
    let info = parse(TOP_XZ);
    let want = NarInfo {
        store_path: path("/nix/store/0r2v93mqaf9d2zyqi8pgmyzmf879753y-top"),
        url: "nar/1lk2fx87ggsw1qwm1fp333bwbm3gm32ggxvfz3z2h6pglnxswym0.nar.xz".into(),
        compression: Compression::Xz,
        file_hash: Some(hash("sha256:1lk2fx87ggsw1qwm1fp333bwbm3gm32ggxvfz3z2h6pglnxswym0")),
        file_size: Some(172),
        nar_hash: hash("sha256:0q6yj9sbg7xi8kks5cmqc38xcpprb64a18cq9d67pds7sw04di7k"),
        nar_size: 160,
        references: vec![path("/nix/store/z4asv3j07d89ywjf8fxkn7sg6mf5s9q5-dep")],
        deriver: Some("13ymk1q4wh30z4fq5lf3a5d15fvb07f9-top.drv".into()),
        sigs: vec![
            "test-1:2Hhv4me0TPbqueJQ/J4HzAMHXak9dgn2oD9S6EhNHLCbiMroIipFdmKz3WHp/Tr9JHFcZl2jKdC0I6XgUWYJBw=="
                .into(),
        ],
        ca: None,
    };
    assert_eq!(info, want);
}

#[test]
fn parses_real_narinfos_of_each_kind() {
    let dep = parse(DEP_XZ);
    assert!(dep.references.is_empty());
    assert_eq!(dep.nar_size, 120);

    let none = parse(TOP_NONE);
    assert_eq!(none.compression, Compression::None);
    assert_eq!(none.file_hash, Some(none.nar_hash));

    let zstd = parse(TOP_ZSTD);
    assert_eq!(zstd.compression, Compression::Zstd);
    assert_eq!(zstd.file_size, Some(130));
    assert!(zstd.url.ends_with(".nar.zst"));

    let multi = parse(MULTI_XZ);
    assert_eq!(multi.references.len(), 4);
    assert!(
        multi.references.contains(&multi.store_path),
        "self-reference kept"
    );

    let ca = parse(HELLO_CA);
    assert_eq!(ca.deriver, None);
    assert_eq!(
        ca.ca.as_deref(),
        Some("text:sha256:00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq")
    );

    assert!(parse(TOP_UNSIGNED).sigs.is_empty());
}

#[test]
fn nar_hash_is_the_sha256_of_the_real_nar() {
    use base64::Engine as _;
    let nar = base64::engine::general_purpose::STANDARD
        .decode(DEP_NAR_BASE64)
        .expect("test base64");
    let info = parse(DEP_NONE);
    assert_eq!(nar.len() as u64, info.nar_size);
    assert_eq!(Sha256Hash::digest(&nar), info.nar_hash);
    assert_eq!(info.file_hash_or_nar(), Some((info.nar_hash, Some(120))));
}

#[test]
fn to_text_reproduces_real_nix_output_byte_for_byte() {
    for text in SIGNED.iter().chain([&TOP_UNSIGNED]) {
        assert_eq!(parse(text).to_text(), *text);
    }
}

#[test]
fn round_trips_through_other_hash_forms() {
    // nixcache-oci writes SRI NarHash values and omits an empty References line.
    let sri = TOP_XZ.replace(
        "NarHash: sha256:0q6yj9sbg7xi8kks5cmqc38xcpprb64a18cq9d67pds7sw04di7k",
        "NarHash: sha256-88RGANdHt3tMS5ihoIhZ+V7W0WC4sqLnRLGft3SS3mA=",
    );
    let hex = TOP_XZ.replace(
        "NarHash: sha256:0q6yj9sbg7xi8kks5cmqc38xcpprb64a18cq9d67pds7sw04di7k",
        "NarHash: sha256:f3c44600d747b77b4c4b98a1a08859f95ed6d160b8b2a2e744b19fb77492de60",
    );
    for text in [&sri, &hex] {
        let info = parse(text);
        assert_eq!(info, parse(TOP_XZ));
        assert_eq!(info.to_text(), TOP_XZ);
        assert_eq!(parse(&info.to_text()), info);
    }
    let no_refs = DEP_XZ.replace("References: \n", "");
    assert_eq!(parse(&no_refs).to_text(), DEP_XZ);
}

#[test]
fn accepts_what_nix_accepts() {
    // Key order does not matter; unknown keys are ignored; Compression absent or empty is bzip2.
    let minimal = "NarSize: 5\nNarHash: sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73\n\
                   System: x86_64-linux\nURL: x\nStorePath: /nix/store/z4asv3j07d89ywjf8fxkn7sg6mf5s9q5-dep\n";
    let info = parse(minimal);
    assert_eq!(info.compression, Compression::Bzip2);
    assert!(info.references.is_empty());
    assert_eq!(
        (info.file_hash, info.file_size, &info.deriver),
        (None, None, &None)
    );
    assert_eq!(info.file_hash_or_nar(), None);
    let empty = format!("{minimal}Compression: \nDeriver: unknown-deriver\nCA: \n");
    assert_eq!(parse(&empty), info);
    assert!(info.to_text().contains("Compression: bzip2\nNarHash: "));
    // Repeated Sig lines are all kept, in order; several spaces between references are tolerated.
    let sigs = format!(
        "{minimal}Sig: a:1\nSig: b:2\nReferences: {0}  {0}\n",
        "z4asv3j07d89ywjf8fxkn7sg6mf5s9q5-dep"
    );
    let info = parse(&sigs);
    assert_eq!(info.sigs, ["a:1", "b:2"]);
    assert_eq!(info.references.len(), 2);
}

#[test]
fn rejects_malformed_narinfos() {
    let nar_hash = "NarHash: sha256:0q6yj9sbg7xi8kks5cmqc38xcpprb64a18cq9d67pds7sw04di7k\n";
    let cases: Vec<(String, NarInfoError)> = vec![
        (TOP_XZ.replace('\n', "\r\n"), NarInfoError::CarriageReturn),
        (TOP_XZ.trim_end().to_string(), NarInfoError::NoFinalNewline),
        (String::new(), NarInfoError::NoFinalNewline),
        (format!("{TOP_XZ}\n"), NarInfoError::BadLine { line: 11 }),
        (
            format!("{TOP_XZ}Garbage\n"),
            NarInfoError::BadLine { line: 11 },
        ),
        (
            TOP_XZ.replace("URL: ", "URL:"),
            NarInfoError::BadLine { line: 2 },
        ),
        (
            TOP_XZ.replace("URL: ", "URL : "),
            NarInfoError::BadLine { line: 2 },
        ),
        (format!(": x\n{TOP_XZ}"), NarInfoError::BadLine { line: 1 }),
        (
            format!("{TOP_XZ}{}", "X: y\n".repeat(13_200)),
            NarInfoError::TooLarge,
        ),
        (
            TOP_XZ.replace("NarSize: 160", "NarSize: 0"),
            NarInfoError::ZeroNarSize,
        ),
        (
            TOP_XZ.replace("NarSize: 160", "NarSize: -1"),
            NarInfoError::BadNumber { field: "NarSize" },
        ),
        (
            TOP_XZ.replace("NarSize: 160", "NarSize: +160"),
            NarInfoError::BadNumber { field: "NarSize" },
        ),
        (
            TOP_XZ.replace("NarSize: 160", "NarSize: 160 "),
            NarInfoError::BadNumber { field: "NarSize" },
        ),
        (
            TOP_XZ.replace("NarSize: 160", "NarSize: "),
            NarInfoError::BadNumber { field: "NarSize" },
        ),
        (
            TOP_XZ.replace("NarSize: 160", "NarSize: 18446744073709551616"),
            NarInfoError::BadNumber { field: "NarSize" },
        ),
        (
            TOP_XZ.replace("FileSize: 172", "FileSize: 1e3"),
            NarInfoError::BadNumber { field: "FileSize" },
        ),
        (
            TOP_XZ.replace("Compression: xz", "Compression: lzma2"),
            NarInfoError::BadCompression("lzma2".into()),
        ),
        (
            TOP_XZ.replace("Compression: xz", "Compression: XZ"),
            NarInfoError::BadCompression("XZ".into()),
        ),
        (
            TOP_XZ.replace(
                "URL: nar/1lk2fx87ggsw1qwm1fp333bwbm3gm32ggxvfz3z2h6pglnxswym0.nar.xz",
                "URL: ",
            ),
            NarInfoError::EmptyField("URL"),
        ),
        (
            format!("{TOP_XZ}{nar_hash}"),
            NarInfoError::Duplicate("NarHash"),
        ),
        (
            format!("{TOP_XZ}References: \n"),
            NarInfoError::Duplicate("References"),
        ),
        (
            format!("{TOP_XZ}Compression: xz\n"),
            NarInfoError::Duplicate("Compression"),
        ),
        (
            format!("{TOP_XZ}StorePath: /nix/store/0r2v93mqaf9d2zyqi8pgmyzmf879753y-top\n"),
            NarInfoError::Duplicate("StorePath"),
        ),
        (
            format!("{TOP_XZ}Deriver: unknown-deriver\n"),
            NarInfoError::Duplicate("Deriver"),
        ),
        (format!("{HELLO_CA}CA: \n"), NarInfoError::Duplicate("CA")),
    ];
    for (text, want) in cases {
        assert_eq!(NarInfo::parse(&text), Err(want), "{text:?}");
    }
}

#[test]
fn rejects_bad_field_values() {
    use crate::nix::hash::HashError;
    use crate::nix::nix32::Nix32Error;
    let bad_path = |field, source| NarInfoError::BadStorePath { field, source };
    let cases: Vec<(String, NarInfoError)> = vec![
        (
            TOP_XZ.replace("/nix/store/0r2v", "/gnu/store/0r2v"),
            bad_path("StorePath", StorePathError::WrongStoreDir),
        ),
        (
            TOP_XZ.replace("StorePath: /nix/store/", "StorePath: "),
            bad_path("StorePath", StorePathError::WrongStoreDir),
        ),
        (
            TOP_XZ.replace("753y-top\n", "753y-to/p\n"),
            bad_path("StorePath", StorePathError::BadNameChar),
        ),
        (
            TOP_XZ.replace("9q5-dep", "9q5"),
            bad_path("References", StorePathError::MissingDash),
        ),
        (
            TOP_XZ.replace("References: z4as", "References: /nix/store/z4as"),
            bad_path("References", StorePathError::BadHash),
        ),
        (
            TOP_XZ.replace("Deriver: 13ym", "Deriver: 13ye"),
            bad_path("Deriver", StorePathError::BadHash),
        ),
        (
            TOP_XZ.replace("-top.drv", ""),
            bad_path("Deriver", StorePathError::MissingDash),
        ),
        (
            TOP_XZ.replace("NarHash: sha256:0q6", "NarHash: sha256:2q6"),
            NarInfoError::BadHash {
                field: "NarHash",
                source: HashError::Nix32(Nix32Error::Overflow),
            },
        ),
        (
            TOP_XZ.replace("NarHash: sha256:", "NarHash: md5:"),
            NarInfoError::BadHash {
                field: "NarHash",
                source: HashError::UnsupportedType,
            },
        ),
        (
            TOP_XZ.replace("FileHash: sha256:1lk2", "FileHash: sha256:1lk"),
            NarInfoError::BadHash {
                field: "FileHash",
                source: HashError::BadLength(51),
            },
        ),
    ];
    for (text, want) in cases {
        assert_eq!(NarInfo::parse(&text), Err(want), "{text:?}");
    }
}

#[test]
fn rejects_each_missing_required_field() {
    for (line_start, field) in [
        ("StorePath: ", "StorePath"),
        ("URL: ", "URL"),
        ("NarHash: ", "NarHash"),
        ("NarSize: ", "NarSize"),
    ] {
        let text: String = TOP_XZ
            .lines()
            .filter(|l| !l.starts_with(line_start))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            NarInfo::parse(&text),
            Err(NarInfoError::MissingField(field)),
            "{field}"
        );
    }
}

#[test]
fn fingerprint_uses_sorted_full_paths() {
    assert_eq!(
        parse(TOP_XZ).fingerprint(),
        "1;/nix/store/0r2v93mqaf9d2zyqi8pgmyzmf879753y-top;\
         sha256:0q6yj9sbg7xi8kks5cmqc38xcpprb64a18cq9d67pds7sw04di7k;160;\
         /nix/store/z4asv3j07d89ywjf8fxkn7sg6mf5s9q5-dep"
    );
    assert_eq!(
        parse(DEP_XZ).fingerprint(),
        "1;/nix/store/z4asv3j07d89ywjf8fxkn7sg6mf5s9q5-dep;\
         sha256:00kjynz8n03652qccs76ivsvark3pr3dfr6w1ba3x7bx83kcknvv;120;"
    );
    let mut multi = parse(MULTI_XZ);
    let fingerprint = multi.fingerprint();
    multi.references.reverse();
    let dup = multi.references[0].clone();
    multi.references.push(dup);
    assert_eq!(
        multi.fingerprint(),
        fingerprint,
        "order and duplicates do not matter"
    );
    // Unsigned fields do not change it.
    let mut moved = parse(TOP_XZ);
    moved.url = "nar/elsewhere.nar".into();
    moved.compression = Compression::None;
    moved.file_hash = None;
    moved.deriver = None;
    assert_eq!(moved.fingerprint(), parse(TOP_XZ).fingerprint());
}

#[test]
fn file_hash_or_nar() {
    let xz = parse(TOP_XZ);
    assert_eq!(
        xz.file_hash_or_nar(),
        Some((xz.file_hash.expect("FileHash"), Some(172)))
    );
    // Compression none without FileHash/FileSize, as nix-serve answers: the file is the NAR.
    let mut bare = parse(TOP_NONE);
    bare.file_hash = None;
    bare.file_size = None;
    assert_eq!(bare.file_hash_or_nar(), Some((bare.nar_hash, Some(160))));
    let mut no_file_hash = parse(TOP_ZSTD);
    no_file_hash.file_hash = None;
    assert_eq!(no_file_hash.file_hash_or_nar(), None);
}

#[test]
fn compression_names_and_extensions() {
    let table = [
        (Compression::None, "none", ""),
        (Compression::Xz, "xz", ".xz"),
        (Compression::Zstd, "zstd", ".zst"),
        (Compression::Bzip2, "bzip2", ".bz2"),
        (Compression::Br, "br", ".br"),
        (Compression::Gzip, "gzip", ".gz"),
        (Compression::Lzip, "lzip", ".lzip"),
        (Compression::Lz4, "lz4", ".lz4"),
    ];
    assert_eq!(table.len(), Compression::ALL.len());
    for (c, name, ext) in table {
        assert_eq!(Compression::parse(name), Ok(c));
        assert_eq!(c.as_str(), name);
        assert_eq!(c.to_string(), name);
        assert_eq!(c.extension(), ext);
    }
    assert_eq!(Compression::parse(""), Ok(Compression::Bzip2));
    for bad in ["lzma2", "xz ", "Xz", "zst", "gz", "bz2"] {
        assert_eq!(
            Compression::parse(bad),
            Err(NarInfoError::BadCompression(bad.into()))
        );
    }
}
