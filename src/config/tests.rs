use super::*;
use std::collections::HashMap;

fn resolve(args: Overrides, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::resolve(&args, &|k| env.get(k).cloned())
}

fn file_args(text: &str) -> (tempfile::TempDir, Overrides) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nixcache.toml");
    std::fs::write(&path, text).expect("write config");
    let args = Overrides {
        config: Some(path),
        ..Default::default()
    };
    (dir, args)
}

fn urls(c: &Config) -> Vec<&str> {
    c.upstreams.iter().map(|u| u.url.as_str()).collect()
}

const KEY_A: &str = "a-1:veQv4KKpmmHg7SlnFFbSRVLwWtRIi1N0nTJMfTpElKY=";
const KEY_B: &str = "b-1:t/3Ot7hf+gNG/a6McHNOxMkd+KYWh0qcQmMw/A4Hw+E=";

#[test]
fn trust_is_global_or_per_source() {
    let (_d, mut args) = file_args(&format!(
        "trusted_keys = [\"{KEY_A}\"]\nsigning_key_file = \"/keys/sk\"\n\
         upstreams = [\"http://a.example\", {{ url = \"http://b.example\", trusted_keys = [\"{KEY_B}\"] }},\
         {{ url = \"http://c.example\", accept_unsigned = true }}]\n"
    ));
    let c = resolve(args.clone(), &[]).unwrap();
    assert_eq!(c.signing_key_file, Some(PathBuf::from("/keys/sk")));
    assert_eq!(c.upstreams[0].trusted_keys, [KEY_A]);
    assert_eq!(c.upstreams[1].trusted_keys, [KEY_B]);
    assert!(!c.upstreams[1].accept_unsigned);
    assert!(c.upstreams[2].accept_unsigned);
    args.trusted_keys = vec![KEY_B.into()];
    args.signing_key_file = Some("/flag/sk".into());
    let c = resolve(args, &[]).unwrap();
    assert_eq!(c.upstreams[0].trusted_keys, [KEY_B]);
    assert_eq!(c.signing_key_file, Some(PathBuf::from("/flag/sk")));

    let args = Overrides {
        trusted_keys: vec!["not-a-key".into()],
        ..Default::default()
    };
    assert!(
        resolve(args, &[])
            .unwrap_err()
            .to_string()
            .starts_with("--trusted-key")
    );
    let (_d, args) = file_args("upstreams = [{ url = \"http://x\", trust = true }]\n");
    assert!(resolve(args, &[]).is_err());
}

#[test]
fn oci_source_from_flags_env_or_file() {
    assert_eq!(resolve(Overrides::default(), &[]).unwrap().oci, None);
    let (_d, mut args) =
        file_args("oci_repo = \"Owner/Repo\"\nindex_ttl = 30\noci_accept_unsigned = true\n");
    let c = resolve(args.clone(), &[("GH_TOKEN", "s3cret")]).unwrap();
    let oci = c.oci.clone().unwrap();
    assert_eq!(oci.registry, "https://ghcr.io");
    assert_eq!(oci.repo, "Owner/Repo");
    assert_eq!(oci.index_ttl, Duration::from_secs(30));
    assert!(oci.accept_unsigned);
    assert_eq!(oci.trusted_keys, DEFAULT_TRUSTED_KEYS);
    assert_eq!(oci.token, Some(Secret("s3cret".into())));
    assert!(
        !format!("{c:?}").contains("s3cret"),
        "tokens are never printed"
    );

    let env = [
        ("NIXCACHE_REPO", "env/repo"),
        ("NIXCACHE_REGISTRY", "registry.example:5000"),
        ("NIXCACHE_INDEX_TTL", "60"),
    ];
    let oci = resolve(args.clone(), &env).unwrap().oci.unwrap();
    assert_eq!(
        (oci.repo.as_str(), oci.registry.as_str()),
        ("env/repo", "https://registry.example:5000")
    );
    assert_eq!(oci.index_ttl, Duration::from_secs(60));

    args.oci_repo = Some("flag/repo".into());
    args.oci_registry = Some("http://127.0.0.1:5000".into());
    let oci = resolve(args.clone(), &env).unwrap().oci.unwrap();
    assert_eq!(
        (oci.repo.as_str(), oci.registry.as_str()),
        ("flag/repo", "http://127.0.0.1:5000")
    );

    args.oci_repo = Some("no-slash".into());
    assert!(
        resolve(args.clone(), &[])
            .unwrap_err()
            .to_string()
            .starts_with("--oci-repo")
    );
    args.oci_repo = Some("a/b".into());
    args.oci_registry = Some("ftp://x".into());
    assert!(
        resolve(args, &[])
            .unwrap_err()
            .to_string()
            .starts_with("--oci-registry")
    );
}

#[test]
fn mdns_is_on_by_default_and_can_be_narrowed_or_turned_off() {
    let c = resolve(Overrides::default(), &[]).unwrap();
    assert_eq!((c.mdns, c.mdns_interfaces.is_empty()), (true, true));

    let (_d, mut args) = file_args("mdns = false\nmdns_interfaces = [\"eth0\", \"10.0.0.2\"]\n");
    let c = resolve(args.clone(), &[]).unwrap();
    assert!(!c.mdns);
    assert_eq!(c.mdns_interfaces, ["eth0", "10.0.0.2"]);
    args.mdns_interfaces = vec!["br0".into()];
    assert_eq!(resolve(args, &[]).unwrap().mdns_interfaces, ["br0"]);

    let args = Overrides {
        no_mdns: true,
        ..Default::default()
    };
    assert!(!resolve(args, &[]).unwrap().mdns);

    let (_d, args) = file_args("mdns_interfaces = [\"not an interface\"]\n");
    let e = resolve(args, &[]).unwrap_err().to_string();
    assert!(e.starts_with("mdns_interfaces in"), "{e}");
    let args = Overrides {
        mdns_interfaces: vec!["a-very-long-interface-name".into()],
        ..Default::default()
    };
    let e = resolve(args, &[]).unwrap_err().to_string();
    assert!(e.starts_with("--mdns-interface"), "{e}");
}

#[test]
fn defaults_need_no_setup() {
    let c = resolve(Overrides::default(), &[]).unwrap();
    assert_eq!(c.listen, "0.0.0.0:37515".parse().unwrap());
    assert_eq!(c.data_dir, PathBuf::from("./nixcache-data"));
    assert_eq!(urls(&c), ["https://cache.nixos.org/"]);
    assert_eq!(c.upstreams[0].trusted_keys, DEFAULT_TRUSTED_KEYS);
    assert!(!c.upstreams[0].accept_unsigned);
    assert_eq!(c.signing_key_file, None);
    assert_eq!(c.max_size, 20 << 30);
    assert_eq!(c.priority, 30);
    assert_eq!(c.negative_ttl, Duration::from_secs(60));
}

#[test]
fn state_directory_is_the_systemd_default() {
    let c = resolve(
        Overrides::default(),
        &[("STATE_DIRECTORY", "/var/lib/nixcache:/x")],
    )
    .unwrap();
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/nixcache"));
}

#[test]
fn flag_beats_env_beats_file() {
    let (_d, mut args) = file_args(
        "listen = \"127.0.0.1:1000\"\ndata_dir = \"/file\"\nupstreams = [\"http://file.example\"]\nmax_size = 1000\n",
    );
    let c = resolve(args.clone(), &[]).unwrap();
    assert_eq!(c.listen, "127.0.0.1:1000".parse().unwrap());
    assert_eq!(c.data_dir, PathBuf::from("/file"));
    assert_eq!(urls(&c), ["http://file.example/"]);
    assert_eq!(c.max_size, 1000);

    let env = [
        ("NIXCACHE_LISTEN", "127.0.0.2"),
        ("NIXCACHE_PORT", "2000"),
        ("NIXCACHE_DATA_DIR", "/env"),
        (
            "NIXCACHE_UPSTREAM",
            "http://a.example https://b.example/cache",
        ),
    ];
    let c = resolve(args.clone(), &env).unwrap();
    assert_eq!(c.listen, "127.0.0.2:2000".parse().unwrap());
    assert_eq!(c.data_dir, PathBuf::from("/env"));
    assert_eq!(urls(&c), ["http://a.example/", "https://b.example/cache/"]);

    args.listen = Some("[::1]:3000".into());
    args.data_dir = Some("/flag".into());
    args.upstreams = vec!["http://flag.example".into()];
    args.max_size = Some("1MiB".into());
    let c = resolve(args, &env).unwrap();
    assert_eq!(c.listen, "[::1]:3000".parse().unwrap());
    assert_eq!(c.data_dir, PathBuf::from("/flag"));
    assert_eq!(urls(&c), ["http://flag.example/"]);
    assert_eq!(c.max_size, 1 << 20);
}

#[test]
fn port_alone_keeps_the_file_address() {
    let (_d, args) = file_args("listen = \"127.0.0.1:1000\"\n");
    let c = resolve(args, &[("NIXCACHE_PORT", "2000")]).unwrap();
    assert_eq!(c.listen, "127.0.0.1:2000".parse().unwrap());
}

#[test]
fn empty_upstream_variable_means_none() {
    let c = resolve(Overrides::default(), &[("NIXCACHE_UPSTREAM", "")]).unwrap();
    assert!(c.upstreams.is_empty());
}

#[test]
fn errors_name_their_origin() {
    let (_d, args) = file_args("listen = \"0.0.0.0:1\"\nmax_sise = \"1G\"\n");
    let e = resolve(args, &[]).unwrap_err().to_string();
    assert!(e.contains("max_sise"), "{e}");

    let (_d, args) = file_args("max_size = \"12 parsecs\"\n");
    let e = resolve(args, &[]).unwrap_err().to_string();
    assert!(e.contains("max_size in"), "{e}");

    let e = resolve(Overrides::default(), &[("NIXCACHE_PORT", "http")]).unwrap_err();
    assert!(e.to_string().starts_with("NIXCACHE_PORT"), "{e}");

    let args = Overrides {
        listen: Some("localhost".into()),
        ..Default::default()
    };
    assert!(
        resolve(args, &[])
            .unwrap_err()
            .to_string()
            .starts_with("--listen")
    );

    let args = Overrides {
        upstreams: vec!["ftp://x".into()],
        ..Default::default()
    };
    assert!(
        resolve(args, &[])
            .unwrap_err()
            .to_string()
            .starts_with("--upstream")
    );

    let (_d, args) = file_args("negative_ttl = 0\n");
    assert!(
        resolve(args, &[])
            .unwrap_err()
            .to_string()
            .contains("negative_ttl")
    );
}

#[test]
fn shipped_config_file_states_the_defaults() {
    let args = Overrides {
        config: Some(concat!(env!("CARGO_MANIFEST_DIR"), "/config/nixcache.toml").into()),
        ..Default::default()
    };
    assert_eq!(
        resolve(args, &[]).unwrap(),
        resolve(Overrides::default(), &[]).unwrap()
    );
}

#[test]
fn sizes() {
    for (text, want) in [
        ("0", Some(0)),
        ("512", Some(512)),
        ("1K", Some(1024)),
        ("20GiB", Some(20 << 30)),
        ("20 G", Some(20 << 30)),
        ("3MB", Some(3_000_000)),
        ("1t", Some(1 << 40)),
        ("", None),
        ("G", None),
        ("1.5G", None),
        ("-1", None),
        ("99999999999T", None),
    ] {
        assert_eq!(parse_size(text).ok(), want, "{text:?}");
    }
}

// Issue 16.
#[test]
fn transcoding_warm_and_pin_keys_are_checked() {
    let c = resolve(Overrides::default(), &[]).unwrap();
    assert_eq!(c.transcode_level, Some(DEFAULT_TRANSCODE_LEVEL));
    let (_d, args) = file_args(
        "transcode = \"off\"\ntranscode_workers = 2\nwarm_concurrency = 8\n\
         pins = { desktop = [\"/nix/store/0c0ha5s1pv7p1r0a6z1zfbqqvxgdqrmk-hello-2.12\"] }\n",
    );
    let c = resolve(args, &[]).unwrap();
    assert_eq!(
        (c.transcode_level, c.transcode_workers, c.warm_concurrency),
        (None, 2, 8)
    );
    assert_eq!(c.pins["desktop"].len(), 1);
    for (text, culprit) in [
        ("transcode = \"brotli\"\n", "transcode in"),
        ("transcode_level = 22\n", "transcode_level"),
        ("transcode_workers = 0\n", "transcode_workers"),
        ("pins = { \"a/b\" = [] }\n", "is not a pin name"),
        (
            "pins = { x = [\"/tmp/hello\"] }\n",
            "pin x: \"/tmp/hello\" is not a store path",
        ),
    ] {
        let (_d, args) = file_args(text);
        let err = resolve(args, &[]).unwrap_err().to_string();
        assert!(err.contains(culprit), "{text}: {err}");
    }
}
