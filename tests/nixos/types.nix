# Table tests of the option types in nixos-appliance/lib.nix: what each accepts and refuses, with the
# daemon's own parsers (src/config.rs) as the reference. Evaluates to the list of cases that disagree.
{ lib }:

let
  nixcacheLib = import ../../nixos-appliance/lib.nix { inherit lib; };
  t = nixcacheLib.types;
  cases = {
    listen = {
      type = t.listen;
      accept = [
        "0.0.0.0:37515"
        "127.0.0.1:1"
        "[::]:37515"
        "[::1]:65535"
        "[fe80::1]:80"
      ];
      refuse = [
        "0.0.0.0" # defect 1: the bare address that once failed with `toInt: Could not convert`
        "::"
        "0.0.0.0:0"
        "0.0.0.0:65536"
        "256.0.0.1:80"
        "localhost:37515"
        ":37515"
        37515
      ];
    };
    address = {
      type = t.address;
      accept = [
        "127.0.0.1"
        "0.0.0.0"
        "192.168.1.10"
        "::1"
        "::"
        "localhost"
      ];
      refuse = [
        "my-host"
        "192.168.1.10:37515"
        ""
      ];
    };
    size = {
      type = t.size;
      accept = [
        "20GiB"
        "500M"
        "3GB"
        "1t"
        "20 G"
        "512"
        1024
      ];
      refuse = [
        0
        "0"
        "0GiB"
        "1.5G"
        "12 parsecs"
        "G"
        ""
        (-1)
      ];
    };
    sizeOrZero = {
      type = t.sizeOrZero;
      accept = [
        0
        "0"
        "512MiB"
        "4KiB"
        "4 K"
        4096
      ];
      refuse = [
        "lots"
        "1.5G"
        ""
        (-1)
      ];
    };
    secondsOrZero = {
      type = t.secondsOrZero;
      accept = [
        0
        604800
      ];
      refuse = [
        (-1)
        "0"
      ];
    };
    seconds = {
      type = t.seconds;
      accept = [
        1
        300
      ];
      refuse = [
        0
        (-5)
        "60"
      ];
    };
    httpUrl = {
      type = t.httpUrl;
      accept = [
        "https://cache.nixos.org"
        "https://cache.nixos.org/"
        "http://builder.lan:5000"
        "https://cache.example.org/nix"
      ];
      refuse = [
        "ftp://cache.example.org"
        "cache.nixos.org"
        "https://cache.example.org/?priority=1"
        "https://cache.example.org/#x"
        "https://"
      ];
    };
    substituterUrl = {
      type = t.substituterUrl;
      accept = [
        "http://192.168.1.10:37515"
        "http://192.168.1.10:37515?priority=30"
      ];
      refuse = [
        "192.168.1.10:37515"
        "ssh://builder"
      ];
    };
    registry = {
      type = t.registry;
      accept = [
        "ghcr.io"
        "https://ghcr.io"
        "https://ghcr.io/"
        "http://127.0.0.1:5000"
      ];
      refuse = [
        "https://ghcr.io/v2/"
        "ftp://ghcr.io"
        ""
      ];
    };
    publicKey = {
      type = t.publicKey;
      accept = [
        "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="
        "upstream.test-1:mbZFB96kXwnGdiX0UXKTe5fT1igJChjOcfm6Y/MOU9A="
      ];
      refuse = [
        "not-a-key"
        "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY"
        ":6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="
        "cache.nixos.org-1:AAAA="
      ];
    };
    ociRepo = {
      type = t.ociRepo;
      accept = [
        "owner/repo"
        "My-Org/my.cache_1"
      ];
      refuse = [
        "repo"
        "a/b/c"
        "/repo"
        "owner/"
      ];
    };
    interface = {
      type = t.interface;
      accept = [
        "eth0"
        "enp3s0"
        "10.0.0.2"
        "fe80::1"
      ];
      refuse = [
        "not an interface"
        "a-very-long-interface-name"
        "eth0/1"
      ];
    };
    # src/nix/store_path.rs: StorePath::parse.
    storePath = {
      type = t.storePath;
      accept = [
        "/nix/store/0r2v93mqaf9d2zyqi8pgmyzmf879753y-top"
        "/nix/store/0r2v93mqaf9d2zyqi8pgmyzmf879753y-nixos-system-desktop-25.11"
        "/nix/store/0r2v93mqaf9d2zyqi8pgmyzmf879753y-.zshrc"
        "/nix/store/0r2v93mqaf9d2zyqi8pgmyzmf879753y-a+b?c=d_e"
      ];
      refuse = [
        "/tmp/desktop"
        "nixpkgs#hello"
        "/nix/store/0r2v93mqaf9d2zyqi8pgmyzmf879753y"
        "/nix/store/0r2v93mqaf9d2zyqi8pgmyzmf879753y-"
        "/nix/store/0r2v93mqaf9d2zyqi8pgmyzmf879753e-top" # e is not a nix32 digit
        "/nix/store/0r2v93mqaf9d2zyqi8pgmyzmf87975-top"
        "/nix/store/0r2v93mqaf9d2zyqi8pgmyzmf879753y-a/b"
        "/nix/store/0r2v93mqaf9d2zyqi8pgmyzmf879753y-..-x"
        "/nix/store/0r2v93mqaf9d2zyqi8pgmyzmf879753y-."
        "/nix/store/0r2v93mqaf9d2zyqi8pgmyzmf879753y-top "
      ];
    };
    # src/pins.rs: check_name.
    pinName = {
      type = t.pinName;
      accept = [
        "desktop"
        "host-builder"
        "a.b_c-1"
        "-x"
      ];
      refuse = [
        ""
        ".hidden"
        "host builder"
        "a/b"
        "${lib.fixedWidthString 65 "x" ""}"
      ];
    };
    # src/config/push.rs: token names and path patterns.
    pushTokenName = {
      type = t.pushTokenName;
      accept = [
        "builder"
        "lab.2"
        "ci_runner-1"
      ];
      refuse = [
        ""
        "ci token"
        "a/b"
        "${lib.fixedWidthString 65 "x" ""}"
      ];
    };
    namePattern = {
      type = t.namePattern;
      accept = [
        "*"
        "myproject-*"
        "hello-2.12.1"
      ];
      refuse = [
        ""
        "../x"
        "a b"
      ];
    };
    # src/config/limits.rs: oci_token_hosts.
    tokenHost = {
      type = t.tokenHost;
      accept = [
        "auth.docker.io"
        "registry.lan:5000"
        "[::1]:5000"
      ];
      refuse = [
        ""
        "https://auth.docker.io"
        "auth.docker.io/token"
      ];
    };
    # src/config/bucket.rs: bucket and prefix.
    bucketName = {
      type = t.bucketName;
      accept = [
        "nixcache"
        "my.bucket_1-a"
      ];
      refuse = [
        ""
        "team/nixcache"
        "a b"
      ];
    };
    bucketPrefix = {
      type = t.bucketPrefix;
      accept = [
        ""
        "team/nix"
        "/team/nix/"
        "nix"
      ];
      refuse = [
        "team//nix"
        "team/../nix"
        "./nix"
        ".."
      ];
    };
    absolutePath = {
      type = t.absolutePath;
      accept = [ "/srv/nixcache" ];
      refuse = [
        "nixcache-data"
        ./types.nix
      ];
    };
  };

  disagreements = lib.concatLists (
    lib.mapAttrsToList (
      name: c:
      map (v: "${name} refuses ${builtins.toJSON v}") (builtins.filter (v: !c.type.check v) c.accept)
      ++ map (v: "${name} accepts ${builtins.toJSON (toString v)}") (builtins.filter c.type.check c.refuse)
    ) cases
  );

  localUrls = {
    "0.0.0.0:37515" = "http://127.0.0.1:37515";
    "127.0.0.1:37515" = "http://127.0.0.1:37515";
    "192.168.1.10:37515" = "http://192.168.1.10:37515";
    "[::]:8080" = "http://[::1]:8080";
    "[fe80::1]:80" = "http://[fe80::1]:80";
  };
  wrongUrls = lib.mapAttrsToList (listen: want: "localUrl ${listen} is ${nixcacheLib.localUrl listen}, not ${want}") (
    lib.filterAttrs (listen: want: nixcacheLib.localUrl listen != want) localUrls
  );
in
disagreements ++ wrongUrls
