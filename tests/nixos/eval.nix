# What tests/nixos.rs evaluates: the flake's outputs and NixOS systems built from its modules, against a
# real nixpkgs (scripts/nixos-eval.sh passes `nixpkgs`, a tree, or "" for the flake's locked input).
#
#   groups.NAME    JSON documents (servers, clients, appliances, outputs): the .drv of every output
#                  (instantiated: scripts/nixos-eval.sh uses --read-write-mode), and per system what the
#                  options promise — the rendered unit, settings, nix.conf, firewall, users, tmpfiles,
#                  warnings. tests/nixos.rs asserts on them.
#   facts          all groups in one document, for a look by hand.
#   negative.NAME  configurations that must fail to evaluate; the test checks the message names the option.
{
  nixpkgs ? "",
  nixpkgsHash ? "",
}:

let
  flake = import ./flake-compat.nix { inherit nixpkgs nixpkgsHash; };
  inherit (flake.inputs.nixpkgs) lib;
  pkgs = flake.inputs.nixpkgs.legacyPackages.x86_64-linux;
  keys = import ../../nixos-appliance/test-keys.nix;
  cacheNixosOrg = builtins.head (import ../../nixos-appliance/defaults.nix).trusted_keys;

  # A small x86_64 machine: just enough for a system to instantiate (a root file system, no boot loader).
  machineBase = {
    boot.loader.grub.enable = false;
    fileSystems."/" = {
      device = "/dev/vda";
      fsType = "ext4";
    };
    system.stateVersion = "26.05";
  };
  # Machines share one package set, so that nixpkgs is evaluated once for all of them.
  machine =
    modules:
    lib.nixosSystem {
      modules = [
        machineBase
        { nixpkgs.pkgs = pkgs; }
      ]
      ++ modules;
    };
  server = settings: machine [
    flake.nixosModules.default
    { services.nixcache = settings // { enable = true; }; }
  ];

  # A package that is recognisably not the default one.
  marked = flake.packages.x86_64-linux.default.overrideAttrs { pname = "nixcache-marked"; };

  systems = {
    server-default = server { };

    server-full = server {
      openFirewall = true;
      signingKeyFile = "/var/lib/nixcache-key/secret";
      adminTokenFile = "/etc/nixcache/admin-token";
      environmentFile = "/etc/nixcache/secrets.env";
      extraArgs = [
        "--mdns-interface"
        "eth0"
      ];
      settings = {
        listen = "[::]:8080";
        data_dir = "/srv/nixcache";
        max_size = "200GiB";
        priority = 10;
        negative_ttl = 120;
        upstream_timeout = 20;
        stall_timeout = 90;
        upstreams = [
          "https://cache.nixos.org"
          {
            url = "http://builder.lan:5000";
            accept_unsigned = true;
          }
          {
            url = "https://cache.example.org/nix";
            trusted_keys = [ keys.upstream.public ];
          }
        ];
        trusted_keys = [
          cacheNixosOrg
          keys.upstream.public
        ];
        mdns = true;
        mdns_interfaces = [
          "eth0"
          "192.168.1.10"
        ];
        oci_repo = "my-org/my-cache";
        oci_registry = "ghcr.io";
        index_ttl = 600;
        oci_trusted_keys = [ keys.appliance.public ];
        oci_accept_unsigned = false;
        # Disk budget, fills, index.
        min_free = "1GiB";
        max_fills = 8;
        fill_queue = 0;
        fill_abandon_grace = 10;
        fill_min_rate = 0;
        fill_rate_window = 30;
        index_retention = 86400;
        scrub_interval = 0;
        index_cache_size = "64MiB";
        prefetch = false;
        prefetch_max_size = "1MiB";
        # Limits: trust_loopback off makes the warm job carry the admin token.
        header_timeout = 30;
        keepalive_timeout = 20;
        send_timeout = 45;
        max_connections = 40000;
        max_connections_per_client = 0;
        max_upstream_lookups = 32;
        trust_loopback = false;
        oci_token_hosts = [ "auth.docker.io" ];
        # Transcoding, warm, pins: a path with string context, which must not become a dependency.
        transcode = "off";
        transcode_level = 12;
        transcode_workers = 2;
        transcode_keep_original = 0;
        warm_concurrency = 8;
        pins.desktop = [ "${pkgs.hello}" ];
        # LAN pushes.
        push_trusted_keys = [ keys.upstream.public ];
        push_max_size = "5GiB";
        push_lru = true;
        push_pending_max = 16;
        push_pending_timeout = 300;
      };
      pushTokens = {
        builder.tokenFile = "/var/lib/nixcache-push/builder";
        ci = {
          tokenFile = "/var/lib/nixcache-push/ci";
          paths = [ "myproject-*" ];
          quota = "20GiB";
          sign = true;
        };
      };
      bucket = {
        enable = true;
        endpoint = "http://garage.lan:3900";
        region = "garage";
        bucket = "nixcache";
        prefix = "team/nix";
        pathStyle = false;
        accessKeyIdFile = "/var/lib/nixcache-s3/key-id";
        secretAccessKeyFile = "/var/lib/nixcache-s3/secret";
        sessionTokenFile = "/var/lib/nixcache-s3/session";
        localCache = false;
        trustedKeys = [ keys.upstream.public ];
        timeout = 20;
        gcMaxSize = "2TiB";
        multipartThreshold = "64MiB";
      };
      warm = {
        enable = true;
        paths = [ "${pkgs.hello}" ];
        pathsFile = "/var/lib/ci/roots.txt";
        pin = "lab";
        onCalendar = "*-*-* 03:00";
      };
    };

    # A privileged port: the capability to bind it, and no user namespace (which would void it).
    server-port-80 = server {
      openFirewall = true;
      settings = {
        listen = "0.0.0.0:80";
        mdns = false;
      };
    };

    client-manual = machine [
      flake.nixosModules.client
      {
        services.nixcache-client = {
          enable = true;
          servers = [ "http://192.168.1.10:37515" ];
          trustedPublicKeys = [ keys.appliance.public ];
          discovery.enable = false;
        };
      }
    ];
    client-discovery = machine [
      flake.nixosModules.client
      {
        services.nixcache-client = {
          enable = true;
          trustedPublicKeys = [ keys.appliance.public ];
        };
      }
    ];
    # A builder: publishes its builds and reports its system to the appliance.
    client-builder = machine [
      flake.nixosModules.client
      {
        networking.hostName = "builder";
        services.nixcache-client = {
          push = {
            enable = true;
            url = "http://192.168.1.10:37515";
            tokenFile = "/var/lib/nixcache-push/token";
            secretKeyFile = "/var/lib/nixcache-push/builder.secret";
            compression = "zstd";
            strict = true;
            login = "builder";
          };
          reportSystem = {
            enable = true;
            url = "http://192.168.1.10:37515";
            pin = "host-builder";
            tokenFile = "/var/lib/nixcache/admin-token";
          };
        };
      }
    ];
    client-avahi = machine [
      flake.nixosModules.client
      {
        services.nixcache-client = {
          enable = true;
          trustedPublicKeys = [ keys.appliance.public ];
          discovery.method = "avahi";
        };
      }
    ];

    # Server and client on one machine with the package overridden once: both use that one.
    server-and-client-one-package = machine [
      flake.nixosModules.default
      flake.nixosModules.client
      {
        services.nixcache = {
          enable = true;
          package = marked;
        };
        services.nixcache-client = {
          enable = true;
          trustedPublicKeys = [ keys.appliance.public ];
        };
      }
    ];

    # The flake's overlay (and one of the user's on top) decides the package, as with mkPackageOption.
    overlay = lib.nixosSystem {
      modules = [
        machineBase
        flake.nixosModules.default
        {
          nixpkgs.hostPlatform = "x86_64-linux";
          nixpkgs.overlays = [
            flake.overlays.default
            (_final: prev: { nixcache = prev.nixcache.overrideAttrs { pname = "nixcache-overlay"; }; })
          ];
          services.nixcache.enable = true;
        }
      ];
    };

    proxy-default = machine [
      flake.nixosModules.default
      {
        services.nixcache-proxy = {
          enable = true;
          repo = "example/cache";
          publicKey = keys.appliance.public;
        };
      }
    ];
    proxy-lan-address = machine [
      flake.nixosModules.default
      {
        services.nixcache-proxy = {
          enable = true;
          repo = "example/cache";
          listenAddress = "192.168.1.10";
          requireSignatures = false;
        };
      }
    ];

    appliance = flake.nixosConfigurations.appliance;
    appliance-aarch64 = flake.nixosConfigurations.appliance-aarch64;
  };

  # Systems whose evaluation must stop at an assertion: their messages, and no toplevel.
  assertionSystems = {
    data-dir-under-home = server { settings.data_dir = "/home/alice/nixcache"; };
    # Secrets in the store, a token that signs without a key, a warm job with nothing to warm or no
    # way to be authorized, secrets written as settings: each assertion must say so.
    misconfigured = machine [
      flake.nixosModules.default
      flake.nixosModules.client
      {
        services.nixcache = {
          enable = true;
          settings = {
            listen = "192.168.1.10:37515";
            push_tokens = [ ];
            bucket = { };
          };
          pushTokens.ci = {
            tokenFile = "${pkgs.writeText "token" "not-a-secret-any-more"}";
            sign = true;
          };
          bucket = {
            enable = true;
            bucket = "nixcache";
            accessKeyIdFile = "/var/lib/nixcache-s3/key-id";
            secretAccessKeyFile = "${pkgs.writeText "secret" "not-a-secret-any-more"}";
          };
          warm.enable = true;
        };
        services.nixcache-client.push = {
          enable = true;
          url = "http://192.168.1.10:37515";
          tokenFile = "${pkgs.writeText "push-token" "not-a-secret-any-more"}";
        };
      }
    ];
  };

  images = {
    inherit (flake.packages.x86_64-linux) appliance-qemu-efi appliance-iso;
    inherit (flake.packages.aarch64-linux) appliance-sd-card;
  };

  nixSettingKeys = [
    "substituters"
    "extra-substituters"
    "trusted-substituters"
    "extra-trusted-substituters"
    "trusted-public-keys"
    "extra-trusted-public-keys"
    "require-sigs"
    "fallback"
    "connect-timeout"
  ];

  # What a system's options turned into, as plain data.
  factsOf =
    system:
    let
      c = system.config;
      service = name: c.systemd.units."${name}.service".text or null;
      discover = c.systemd.services.nixcache-discover.serviceConfig.ExecStart or null;
      report = c.systemd.services.nixcache-report-system.serviceConfig.ExecStart or null;
      warmStart = c.systemd.services.nixcache-warm.serviceConfig.ExecStart or null;
      activation = c.system.activationScripts.nixcache-report-system or null;
      pushHook = c.nix.settings.post-build-hook or null;
      rendered = c.services.nixcache.renderedSettings;
    in
    {
      warnings = c.warnings;
      firewall = {
        tcp = c.networking.firewall.allowedTCPPorts;
        udp = c.networking.firewall.allowedUDPPorts;
      };
      nixSettings = lib.filterAttrs (n: _: builtins.elem n nixSettingKeys) c.nix.settings;
      nixConf = c.environment.etc."nix/nix.conf".source.text;
      unit = service "nixcache";
      keygenUnit = service "nixcache-keygen";
      discoverUnit = service "nixcache-discover";
      # The script the discovery unit runs, as text (it names the package it calls).
      discoverScript = if discover == null then null else discover.text;
      settings = if c.services.nixcache.enable or false then rendered else null;
      # What the rendered settings and the warm job depend on: only the package, never what they name.
      settingsContext =
        if c.services.nixcache.enable or false then
          builtins.attrNames (builtins.getContext (builtins.toJSON rendered))
        else
          null;
      warmUnit = service "nixcache-warm";
      warmTimer = c.systemd.units."nixcache-warm.timer".text or null;
      warmContext = if warmStart == null then null else builtins.attrNames (builtins.getContext warmStart);
      reportUnit = service "nixcache-report-system";
      reportScript = if report == null then null else report.text;
      reportActivation =
        if activation == null then
          null
        else if builtins.isString activation then
          activation
        else
          activation.text;
      pushHookScript = if pushHook == null then null else pushHook.text;
      nixcacheUser =
        if c.users.users ? nixcache then { inherit (c.users.users.nixcache) isSystemUser group; } else null;
      tmpfiles = c.systemd.tmpfiles.settings."10-nixcache" or null;
      avahi = c.services.avahi.enable;
      zfs = c.boot.supportedFilesystems.zfs or false;
    };

  # Options as the manual renders them (internal and hidden ones, such as renamed options, left out).
  documented =
    options:
    map (o: {
      inherit (o) name description type;
      defaultText = o.default._type or null;
    }) (builtins.filter (o: !o.internal && o.visible != false) (lib.optionAttrSetToDocList options));

  serverOptions = systems.server-default.options.services;
  clientOptions = systems.client-manual.options.services;

  # Each must fail, with a message naming the option in `expect` (tests/nixos.rs checks both).
  negative =
    let
      settingsOf = system: system.config.services.nixcache.renderedSettings;
      bad = expect: settings: {
        inherit expect;
        value = settingsOf (server settings);
      };
      storePath = "/nix/store/0r2v93mqaf9d2zyqi8pgmyzmf879753y-top";
      bucket = {
        enable = true;
        bucket = "nixcache";
        accessKeyIdFile = "/var/lib/nixcache-s3/key-id";
        secretAccessKeyFile = "/var/lib/nixcache-s3/secret";
      };
      client = expect: options: value: {
        inherit expect;
        value = value
          (machine [
            flake.nixosModules.client
            { services.nixcache-client = options; }
          ]).config;
      };
    in
    {
      listen-without-port = bad "services.nixcache.settings.listen" { settings.listen = "0.0.0.0"; };
      listen-port-too-large = bad "services.nixcache.settings.listen" { settings.listen = "0.0.0.0:70000"; };
      max-size-unit = bad "services.nixcache.settings.max_size" { settings.max_size = "12 parsecs"; };
      max-size-zero = bad "services.nixcache.settings.max_size" { settings.max_size = "0GiB"; };
      negative-ttl-zero = bad "services.nixcache.settings.negative_ttl" { settings.negative_ttl = 0; };
      upstream-not-http = bad "services.nixcache.settings.upstreams" { settings.upstreams = [ "ftp://cache.example.org" ]; };
      upstream-table-key = bad "services.nixcache.settings.upstreams" {
        settings.upstreams = [
          {
            url = "https://cache.example.org";
            trusted_keys = [ "not-a-key" ];
          }
        ];
      };
      trusted-key-garbage = bad "services.nixcache.settings.trusted_keys" { settings.trusted_keys = [ "not-a-key" ]; };
      oci-registry-with-path = bad "services.nixcache.settings.oci_registry" { settings.oci_registry = "https://ghcr.io/v2/"; };
      oci-repo-without-owner = bad "services.nixcache.settings.oci_repo" { settings.oci_repo = "cache"; };
      data-dir-relative = bad "services.nixcache.settings.data_dir" { settings.data_dir = "nixcache-data"; };
      signing-key-path-literal = bad "services.nixcache.signingKeyFile" { signingKeyFile = ./eval.nix; };
      # One for each kind of value the daemon settings of issues 12, 13, 15 and 16 brought.
      min-free-unit = bad "services.nixcache.settings.min_free" { settings.min_free = "lots"; };
      scrub-interval-negative = bad "services.nixcache.settings.scrub_interval" { settings.scrub_interval = -1; };
      token-host-url = bad "services.nixcache.settings.oci_token_hosts" {
        settings.oci_token_hosts = [ "https://auth.docker.io/token" ];
      };
      transcode-unknown = bad "services.nixcache.settings.transcode" { settings.transcode = "xz"; };
      transcode-level-too-high = bad "services.nixcache.settings.transcode_level" { settings.transcode_level = 20; };
      pin-not-store-path = bad "services.nixcache.settings.pins" { settings.pins.desktop = [ "/tmp/desktop" ]; };
      pin-name-dot = bad "services.nixcache.settings.pins" { settings.pins.".hidden" = [ storePath ]; };
      push-token-name = bad "services.nixcache.pushTokens" { pushTokens."ci token".tokenFile = "/var/lib/t"; };
      push-token-paths = bad "services.nixcache.pushTokens.ci.paths" {
        pushTokens.ci = {
          tokenFile = "/var/lib/t";
          paths = [ "../etc" ];
        };
      };
      bucket-name = bad "services.nixcache.bucket.bucket" { bucket = bucket // { bucket = "team/nixcache"; }; };
      bucket-prefix-dots = bad "services.nixcache.bucket.prefix" { bucket = bucket // { prefix = "team/../nix"; }; };
      warm-not-store-path = {
        expect = "services.nixcache.warm.paths";
        value =
          (server {
            adminTokenFile = "/etc/nixcache/admin-token";
            warm = {
              enable = true;
              paths = [ "nixpkgs#hello" ];
            };
          }).config.systemd.services.nixcache-warm.serviceConfig.ExecStart;
      };
      client-push-compression = client "services.nixcache-client.push.compression" {
        push = {
          enable = true;
          url = "http://192.168.1.10:37515";
          tokenFile = "/var/lib/nixcache-push/token";
          compression = "gzip";
        };
      } (c: c.nix.settings.post-build-hook.text);
      client-report-pin-name = client "services.nixcache-client.reportSystem.pin" {
        reportSystem = {
          enable = true;
          url = "http://192.168.1.10:37515";
          pin = "host builder";
        };
      } (c: c.systemd.services.nixcache-report-system.serviceConfig.ExecStart.text);
      proxy-listen-address = {
        expect = "services.nixcache-proxy.listenAddress";
        value = settingsOf (machine [
          flake.nixosModules.default
          {
            services.nixcache-proxy = {
              enable = true;
              listenAddress = "my-host";
            };
          }
        ]);
      };
      client-server-url = client "services.nixcache-client.servers" {
        enable = true;
        servers = [ "192.168.1.10:37515" ];
      } (c: c.nix.settings.extra-substituters);
    };
  # The facts come in groups, each evaluated by a process of its own: one process for all of them peaks
  # near 10 GB, as every system evaluated stays referenced until the JSON is printed.
  systemFacts = names: {
    drvs = lib.listToAttrs (
      map (n: lib.nameValuePair "system-${n}" systems.${n}.config.system.build.toplevel.drvPath) names
    );
    systems = lib.genAttrs names (n: factsOf systems.${n});
  };

  groups = {
    servers = systemFacts [
      "server-default"
      "server-full"
      "server-port-80"
      "server-and-client-one-package"
      "overlay"
    ];
    clients = systemFacts [
      "client-manual"
      "client-discovery"
      "client-avahi"
      "client-builder"
      "proxy-default"
      "proxy-lan-address"
    ];
    appliances =
      let
        base = systemFacts [
          "appliance"
          "appliance-aarch64"
        ];
      in
      base
      // {
        drvs = base.drvs // lib.mapAttrs' (n: i: lib.nameValuePair "image-${n}" i.drvPath) images;
        images = lib.mapAttrs (_: i: {
          zfs = i.passthru.config.boot.supportedFilesystems.zfs or false;
          inherit (i.passthru.config) warnings;
        }) images;
      };
    outputs = {
      drvs = {
        package-x86_64-linux = flake.packages.x86_64-linux.default.drvPath;
        package-aarch64-linux = flake.packages.aarch64-linux.default.drvPath;
        cache-proxy = flake.packages.x86_64-linux.cache-proxy.drvPath;
        dev-shell = flake.devShells.x86_64-linux.default.drvPath;
      }
      // lib.mapAttrs' (n: t: lib.nameValuePair "check-${n}" t.drvPath) flake.checks.x86_64-linux;

      failedAssertions = lib.mapAttrs (
        _: s: map (a: a.message) (builtins.filter (a: !a.assertion) s.config.assertions)
      ) assertionSystems;

      options = {
        server = documented { inherit (serverOptions) nixcache; };
        proxy = documented { inherit (serverOptions) nixcache-proxy; };
        client = documented { inherit (clientOptions) nixcache-client; };
        # The keys of `settings` declared with a type (the rest are freeform).
        settingsKeys = lib.mapAttrs (_: o: o.type.description) (
          lib.filterAttrs (n: o: lib.isOption o && n != "_module") (
            serverOptions.nixcache.settings.type.getSubOptions [ ]
          )
        );
        packageDefaultText = serverOptions.nixcache.package.defaultText._type or null;
      };

      # The option types' own table tests: the cases that disagree (none, when all is well).
      typeMismatches = import ./types.nix { inherit lib; };

      # What each negative case's message must name.
      negative = lib.mapAttrs (_: c: c.expect) negative;
    };
  };
in
{
  inherit groups negative;
  # All groups at once, for a look by hand (mind the memory: see `groups`).
  facts = lib.foldl' lib.recursiveUpdate { } (builtins.attrValues groups);
}
