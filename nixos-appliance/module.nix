# services.nixcache: the LAN cache daemon (`nixcache serve`) as a hardened systemd service.
#
# The settings are rendered to the daemon's TOML config file and checked at build time with the daemon's
# own `serve --check-config`, so an unknown key or a bad value fails `nixos-rebuild`, not the boot. The
# keys the daemon has are declared under `settings` (./options/settings-*.nix) with types (./lib.nix)
# that accept what the daemon accepts, so most mistakes fail earlier still, at evaluation, with the
# option's name.
#
# Adding a key of config/nixcache.toml: declare it in the ./options/settings-*.nix of its group with
# the type of its kind from ./lib.nix (size, seconds, httpUrl, …) and, when the daemon has a DEFAULT_*
# constant for it, its default in ./defaults.nix (tests/packaging.rs compares those with the daemon).
# tests/nixos.rs fails while a key of config/nixcache.toml is not declared.
#
# Secrets are never in the config file or the store: their files are handed to the service with
# LoadCredential (`credentials`, filled here and by ./options/push.nix and ./options/bucket.nix), and
# the file names the daemon's keys point at are the service's own copies (`generatedSettings`).
#
# The data (index.redb, nar/, tmp/) lives in /var/lib/nixcache (StateDirectory, DynamicUser) unless
# `settings.data_dir` moves it; then the service runs as the static user `nixcache`, which owns it.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.services.nixcache;
  nixcacheLib = import ./lib.nix { inherit lib; };
  nixcacheTypes = nixcacheLib.types;
  inherit (nixcacheLib) credentialsDir inStore;
  format = pkgs.formats.toml { };
  inherit (lib) mkOption types;

  renderedSettings = nixcacheLib.dropNulls (
    cfg.settings
    // {
      # Pins only name paths for the daemon to fetch: they must not become dependencies of this system.
      pins = lib.mapAttrs (_: map builtins.unsafeDiscardStringContext) cfg.settings.pins;
    }
    // cfg.generatedSettings
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

  inherit (nixcacheLib.parseListen cfg.settings.listen) port;
  privilegedPort = port < 1024;

  # A data folder of its own (settings.data_dir) needs an owner that exists before the service starts:
  # a dynamic user gets only its StateDirectory, so a static user takes its place.
  dataDir = cfg.settings.data_dir;
  staticUser = dataDir != null;

  # Two descriptors per connection plus 256 (src/server/listener.rs): below that the daemon lowers
  # max_connections at start-up, with a warning.
  openFilesLimit = lib.max 65536 (2 * cfg.settings.max_connections + 256);
in
{
  imports = [
    ./package-option.nix
    ./options/push.nix
    ./options/bucket.nix
    ./options/warm.nix
  ];

  options.services.nixcache = {
    enable = lib.mkEnableOption "nixcache, the LAN Nix binary cache appliance (`nixcache serve`)";

    settings = mkOption {
      default = { };
      description = ''
        The daemon's configuration, rendered to the TOML file given to `nixcache serve --config`
        (`config/nixcache.toml` documents every key). The keys declared here are typed and carry the
        daemon's own defaults; other keys pass through as they are (freeform, RFC 42), and keys the daemon
        does not know stop the build (see `checkConfig`). Secrets are files handed over with
        LoadCredential, readable by the service alone: use `signingKeyFile`, `adminTokenFile`,
        `pushTokens` and `bucket` instead of `signing_key_file`, `admin_token_file`, `push_tokens` and
        `[bucket]`.
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
        # One file per group of keys, in the order of config/nixcache.toml.
        imports = [
          ./options/settings-store.nix
          ./options/settings-sources.nix
          ./options/settings-limits.nix
          ./options/settings-transcode.nix
          ./options/settings-push.nix
        ];
      };
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the listening TCP port, and UDP port 5353 (mDNS) when `settings.mdns` is on.";
    };

    signingKeyFile = mkOption {
      type = types.nullOr nixcacheTypes.absolutePath;
      default = null;
      example = "/var/lib/nixcache-key/secret";
      description = ''
        The appliance's secret signing key (from `nixcache keygen NAME` or
        `nix-store --generate-binary-cache-key`), rendered as `signing_key_file`. It is handed to the
        service with LoadCredential, so the file may stay root-only (mode 600). Give a path as a string:
        a Nix path literal would copy the secret into the world-readable store. LAN clients then trust
        this one key (`/public-key`).
      '';
    };

    adminTokenFile = mkOption {
      type = types.nullOr nixcacheTypes.absolutePath;
      default = null;
      description = ''
        File holding the admin token that allows `POST /_refresh` from hosts other than the appliance
        itself. Handed to the service with LoadCredential and rendered as `admin_token_file`.
      '';
    };

    environmentFile = mkOption {
      type = types.nullOr nixcacheTypes.absolutePath;
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
      example = [
        "--mdns-interface"
        "eth0"
      ];
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

    renderedSettings = mkOption {
      type = types.attrsOf types.anything;
      readOnly = true;
      internal = true;
      default = renderedSettings;
      description = "The settings as written to the config file (credentials resolved, unset keys left out).";
    };

    credentials = mkOption {
      type = types.attrsOf nixcacheTypes.absolutePath;
      default = { };
      internal = true;
      description = ''
        Files handed to the service with LoadCredential, by credential name: the service reads its copy
        at /run/credentials/nixcache.service/NAME. Set by the options that take a secret file.
      '';
    };

    generatedSettings = mkOption {
      type = types.attrsOf types.anything;
      default = { };
      internal = true;
      description = ''
        Config file keys the modules write from other options (the credentials' file names,
        `push_tokens`, `[bucket]`); they take the place of the same keys in `settings`.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    assertions =
      lib.mapAttrsToList
        (key: option: {
          assertion = !(builtins.hasAttr key cfg.settings);
          message = "services.nixcache: set ${option}, not settings.${key} (its files are handed to the service with LoadCredential, so that the service's user can read them and nobody else).";
        })
        {
          signing_key_file = "signingKeyFile";
          admin_token_file = "adminTokenFile";
          push_tokens = "pushTokens";
          bucket = "bucket";
        }
      ++ [
        {
          assertion = dataDir == null || !(lib.any (p: lib.hasPrefix p dataDir) [ "/home/" "/root/" ]);
          message = "services.nixcache.settings.data_dir = ${toString dataDir}: the service cannot write under /home or /root (ProtectHome); choose another folder, such as /srv/nixcache.";
        }
      ];
    warnings =
      lib.optional (inStore cfg.signingKeyFile) "services.nixcache.signingKeyFile is in the Nix store, which every local user can read."
      ++ lib.optional (inStore cfg.adminTokenFile) "services.nixcache.adminTokenFile is in the Nix store, which every local user can read.";

    services.nixcache = {
      credentials =
        lib.optionalAttrs (cfg.signingKeyFile != null) { signing-key = cfg.signingKeyFile; }
        // lib.optionalAttrs (cfg.adminTokenFile != null) { admin-token = cfg.adminTokenFile; };
      generatedSettings =
        lib.optionalAttrs (cfg.signingKeyFile != null) {
          signing_key_file = "${credentialsDir}/signing-key";
        }
        // lib.optionalAttrs (cfg.adminTokenFile != null) {
          admin_token_file = "${credentialsDir}/admin-token";
        };
    };

    environment.systemPackages = [ cfg.package ];

    networking.firewall = lib.mkIf cfg.openFirewall {
      allowedTCPPorts = [ port ];
      allowedUDPPorts = lib.optional cfg.settings.mdns 5353;
    };

    users = lib.mkIf staticUser {
      users.nixcache = {
        isSystemUser = true;
        group = "nixcache";
        description = "nixcache daemon";
      };
      groups.nixcache = { };
    };
    systemd.tmpfiles.settings."10-nixcache" = lib.mkIf staticUser {
      ${dataDir}.d = {
        user = "nixcache";
        group = "nixcache";
        mode = "0750";
      };
    };

    systemd.services.nixcache = {
      description = "nixcache, the LAN Nix binary cache";
      documentation = [ "file://${cfg.package}/share/nixcache/nixcache.toml" ];
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      unitConfig.RequiresMountsFor = lib.mkIf staticUser [ dataDir ];

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
        # The daemon says READY=1 once it listens, and WATCHDOG=1 every WatchdogSec/2 while its health
        # check passes (src/systemd.rs): a daemon that hangs, or whose index stays unwritable for ten
        # minutes although the disk has room (src/health.rs), is killed and restarted; a full disk is
        # not a reason (a restart would not make room).
        Type = "notify";
        WatchdogSec = lib.mkDefault 30;
        Restart = lib.mkDefault "on-failure";
        RestartSec = lib.mkDefault 5;
        # SIGTERM lets in-flight requests finish for up to 10 s, then flushes the index.
        TimeoutStopSec = lib.mkDefault 30;
        LimitNOFILE = lib.mkDefault openFilesLimit;

        DynamicUser = !staticUser;
        User = lib.mkIf staticUser "nixcache";
        Group = lib.mkIf staticUser "nixcache";
        # $STATE_DIRECTORY is the daemon's default data folder.
        StateDirectory = lib.mkIf (!staticUser) "nixcache";
        StateDirectoryMode = lib.mkIf (!staticUser) "0750";
        ReadWritePaths = lib.mkIf staticUser [ dataDir ];
        LoadCredential = lib.mapAttrsToList (name: file: "${name}:${file}") cfg.credentials;
        EnvironmentFile = lib.optional (cfg.environmentFile != null) cfg.environmentFile;
        UMask = "0027";

        # Hardening, as nixpkgs' harmonia and ncps modules do it. Networking stays the host's (no
        # PrivateNetwork): the daemon serves the LAN and advertises itself over mDNS, which needs
        # multicast on the real interfaces and AF_NETLINK to enumerate them and their addresses.
        RestrictAddressFamilies = [
          "AF_INET"
          "AF_INET6"
          "AF_UNIX"
          "AF_NETLINK"
        ];
        CapabilityBoundingSet = if privilegedPort then [ "CAP_NET_BIND_SERVICE" ] else [ "" ];
        AmbientCapabilities = lib.optional privilegedPort "CAP_NET_BIND_SERVICE";
        # A user namespace would take CAP_NET_BIND_SERVICE's effect on the host away: only for ports >= 1024.
        PrivateUsers = !privilegedPort;
        NoNewPrivileges = true;
        PrivateTmp = true;
        PrivateDevices = true;
        DevicePolicy = "closed";
        PrivateMounts = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        ProtectClock = true;
        ProtectControlGroups = true;
        ProtectHostname = true;
        ProtectKernelLogs = true;
        ProtectKernelModules = true;
        ProtectKernelTunables = true;
        ProtectProc = "invisible";
        ProcSubset = "pid";
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
          "~@resources"
        ];
        # A call outside the filter fails with EPERM instead of killing the daemon mid-download.
        SystemCallErrorNumber = "EPERM";
      };
    };
  };
}
