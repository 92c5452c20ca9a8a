# services.nixcache: the LAN cache daemon (`nixcache serve`) as a hardened systemd service.
#
# The settings are rendered to the daemon's TOML config file and checked at build time with the daemon's
# own `serve --check-config`, so an unknown key or a bad value fails `nixos-rebuild`, not the boot.
# The data (index.redb, nar/, tmp/) lives in /var/lib/nixcache (StateDirectory, DynamicUser).
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.services.nixcache;
  defaults = import ./defaults.nix;
  format = pkgs.formats.toml { };
  inherit (lib) mkOption types;

  # systemd puts LoadCredential= files here, readable only by the service's dynamic user.
  credentials = "/run/credentials/nixcache.service";

  renderedSettings = lib.filterAttrs (_: v: v != null) (
    cfg.settings
    // lib.optionalAttrs (cfg.signingKeyFile != null) {
      signing_key_file = "${credentials}/signing-key";
    }
    // lib.optionalAttrs (cfg.adminTokenFile != null) {
      admin_token_file = "${credentials}/admin-token";
    }
  );
  rawConfigFile = format.generate "nixcache.toml" renderedSettings;
  configFile =
    if cfg.checkConfig then
      pkgs.runCommand "nixcache-checked.toml" { } ''
        # The daemon's own check, with the same flags as the service: unknown keys and bad values stop
        # the build here. Nothing from the build environment may leak in as NIXCACHE_* variables.
        env -i ${lib.getExe cfg.package} serve --config ${rawConfigFile} \
          ${lib.escapeShellArgs cfg.extraArgs} --check-config > /dev/null
        cp ${rawConfigFile} $out
      ''
    else
      rawConfigFile;

  # "ADDR:PORT" and "[v6]:PORT" both end in ":PORT".
  port = lib.toInt (lib.last (lib.splitString ":" cfg.settings.listen));
  privilegedPort = port < 1024;

  inStore = path: path != null && lib.hasPrefix builtins.storeDir (toString path);
in
{
  options.services.nixcache = {
    enable = lib.mkEnableOption "nixcache, the LAN Nix binary cache appliance (`nixcache serve`)";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = lib.literalExpression "pkgs.callPackage ./package.nix { } (this repository's daemon)";
      description = "The nixcache package to run.";
    };

    settings = mkOption {
      default = { };
      description = ''
        The daemon's configuration, rendered to the TOML file given to `nixcache serve --config`.
        Any key of `config/nixcache.toml` may be set (freeform, RFC 42); the ones declared here carry the
        daemon's own defaults. Keys the daemon does not know stop the build (see `checkConfig`).
        Use `signingKeyFile` and `adminTokenFile` instead of `signing_key_file` and `admin_token_file`:
        they are passed with LoadCredential, readable by the service alone. The data folder is
        /var/lib/nixcache; set `data_dir` only to move it elsewhere.
      '';
      example = lib.literalExpression ''
        {
          max_size = "200GiB";
          upstreams = [
            "https://cache.nixos.org"
            { url = "http://builder.lan:5000"; accept_unsigned = true; }
          ];
          oci_repo = "my-org/my-cache";
        }
      '';
      type = types.submodule {
        freeformType = format.type;
        options = {
          listen = mkOption {
            type = types.str;
            default = defaults.listen;
            description = "Address and port to listen on, `ADDR:PORT` or `[V6ADDR]:PORT`.";
          };
          max_size = mkOption {
            type = types.either types.str types.ints.positive;
            default = defaults.max_size;
            description = "Cap on NAR bytes on disk (`20GiB`, `500M`, or bytes); least recently used NARs are evicted.";
          };
          priority = mkOption {
            type = types.ints.unsigned;
            default = defaults.priority;
            description = "`Priority:` announced in /nix-cache-info (lower is preferred; cache.nixos.org says 40).";
          };
          negative_ttl = mkOption {
            type = types.ints.positive;
            default = defaults.negative_ttl;
            description = "Seconds a path found in no upstream is answered 404 without asking again.";
          };
          upstream_timeout = mkOption {
            type = types.ints.positive;
            default = defaults.upstream_timeout;
            description = "Seconds for one upstream narinfo request, the start of a NAR download, and connecting.";
          };
          stall_timeout = mkOption {
            type = types.ints.positive;
            default = defaults.stall_timeout;
            description = "Seconds a NAR download may receive nothing before it is abandoned.";
          };
          upstreams = mkOption {
            type = types.listOf (
              types.either types.str (
                types.attrsOf (
                  types.oneOf [
                    types.str
                    types.bool
                    (types.listOf types.str)
                  ]
                )
              )
            );
            default = defaults.upstreams;
            description = ''
              Upstream caches, most preferred first: URLs, or `{ url, trusted_keys, accept_unsigned }`
              tables with their own trust settings.
            '';
          };
          trusted_keys = mkOption {
            type = types.listOf types.str;
            default = defaults.trusted_keys;
            description = "Keys (`name:base64`) whose signature makes an upstream narinfo acceptable.";
          };
          mdns = mkOption {
            type = types.bool;
            default = defaults.mdns;
            description = ''
              Advertise the cache over mDNS (`_nix-cache._tcp`) so that clients can discover it. With
              `openFirewall`, UDP port 5353 is opened too.
            '';
          };
          mdns_interfaces = mkOption {
            type = types.listOf types.str;
            default = defaults.mdns_interfaces;
            description = "Interfaces (names or addresses) to advertise on; empty means all.";
          };
          oci_repo = mkOption {
            type = types.nullOr types.str;
            default = null;
            example = "my-org/my-cache";
            description = ''
              `OWNER/REPO` of a cache published in the nixcache-oci format (image
              `<owner>/<repo>/nix-cache`, tag `cache-index`), served before the upstreams. Null: no OCI
              source. A private package needs `GITHUB_TOKEN` in `environmentFile`.
            '';
          };
          oci_registry = mkOption {
            type = types.str;
            default = defaults.oci_registry;
            description = "Registry of the OCI source.";
          };
          index_ttl = mkOption {
            type = types.ints.positive;
            default = defaults.index_ttl;
            description = "Seconds between refreshes of the OCI index.";
          };
        };
      };
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the listening TCP port, and UDP port 5353 (mDNS) when `settings.mdns` is on.";
    };

    signingKeyFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/var/lib/nixcache-key/secret";
      description = ''
        The appliance's secret signing key (from `nixcache keygen NAME` or
        `nix-store --generate-binary-cache-key`). It is handed to the service with LoadCredential, so the
        file may stay root-only (mode 600). Give a path as a string: a Nix path literal would copy the
        secret into the world-readable store. LAN clients then trust this one key (`/public-key`).
      '';
    };

    adminTokenFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      description = ''
        File holding the admin token that allows `POST /_refresh` from hosts other than the appliance
        itself. Handed to the service with LoadCredential and rendered as `admin_token_file`.
      '';
    };

    environmentFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/etc/nixcache/secrets.env";
      description = ''
        Environment file for secrets the daemon reads from its environment, such as `GITHUB_TOKEN=...`
        for a private OCI cache. Keep it root-only.
      '';
    };

    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "--mdns-interface" "eth0" ];
      description = "Extra command-line flags for `nixcache serve` (flags override the config file).";
    };

    checkConfig = mkOption {
      type = types.bool;
      default = pkgs.stdenv.buildPlatform.canExecute pkgs.stdenv.hostPlatform;
      defaultText = lib.literalExpression "pkgs.stdenv.buildPlatform.canExecute pkgs.stdenv.hostPlatform";
      description = ''
        Check the rendered config file with `nixcache serve --check-config` at build time. Off when
        cross-compiling, because the check runs the daemon.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = !(cfg.settings ? signing_key_file);
        message = "services.nixcache: set signingKeyFile, not settings.signing_key_file (the dynamic user could not read it).";
      }
      {
        assertion = !(cfg.settings ? admin_token_file);
        message = "services.nixcache: set adminTokenFile, not settings.admin_token_file (the dynamic user could not read it).";
      }
    ];
    warnings =
      lib.optional (inStore cfg.signingKeyFile) "services.nixcache.signingKeyFile is in the Nix store, which every local user can read."
      ++ lib.optional (inStore cfg.adminTokenFile) "services.nixcache.adminTokenFile is in the Nix store, which every local user can read.";

    environment.systemPackages = [ cfg.package ];

    networking.firewall = lib.mkIf cfg.openFirewall {
      allowedTCPPorts = [ port ];
      allowedUDPPorts = lib.optional cfg.settings.mdns 5353;
    };

    systemd.services.nixcache = {
      description = "nixcache, the LAN Nix binary cache";
      documentation = [ "file://${cfg.package}/share/nixcache/nixcache.toml" ];
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];

      serviceConfig = {
        ExecStart = lib.escapeShellArgs (
          [
            (lib.getExe cfg.package)
            "serve"
            "--config"
            configFile
          ]
          ++ cfg.extraArgs
        );
        Restart = "on-failure";
        RestartSec = 5;
        # SIGTERM lets in-flight requests finish for up to 10 s, then flushes the index.
        TimeoutStopSec = 30;
        LimitNOFILE = 65536;

        DynamicUser = true;
        # $STATE_DIRECTORY is the daemon's default data folder.
        StateDirectory = "nixcache";
        StateDirectoryMode = "0750";
        LoadCredential =
          lib.optional (cfg.signingKeyFile != null) "signing-key:${cfg.signingKeyFile}"
          ++ lib.optional (cfg.adminTokenFile != null) "admin-token:${cfg.adminTokenFile}";
        EnvironmentFile = lib.optional (cfg.environmentFile != null) cfg.environmentFile;
        ReadWritePaths = lib.optional (cfg.settings ? data_dir) cfg.settings.data_dir;
        UMask = "0027";

        # Hardening. Networking stays the host's (no PrivateNetwork): the daemon serves the LAN and
        # advertises itself over mDNS, which needs multicast on the real interfaces and AF_NETLINK to
        # enumerate them and their addresses.
        RestrictAddressFamilies = [
          "AF_INET"
          "AF_INET6"
          "AF_UNIX"
          "AF_NETLINK"
        ];
        CapabilityBoundingSet = if privilegedPort then [ "CAP_NET_BIND_SERVICE" ] else [ "" ];
        AmbientCapabilities = lib.optional privilegedPort "CAP_NET_BIND_SERVICE";
        NoNewPrivileges = true;
        PrivateTmp = true;
        PrivateDevices = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        ProtectClock = true;
        ProtectControlGroups = true;
        ProtectHostname = true;
        ProtectKernelLogs = true;
        ProtectKernelModules = true;
        ProtectKernelTunables = true;
        ProtectProc = "invisible";
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        RemoveIPC = true;
        SystemCallArchitectures = "native";
        SystemCallFilter = [
          "@system-service"
          "~@privileged"
        ];
        # A call outside the filter fails with EPERM instead of killing the daemon mid-download.
        SystemCallErrorNumber = "EPERM";
      };
    };
  };
}
