# services.nixcache-client: a LAN machine that substitutes through a nixcache appliance.
#
# Appliances are given by hand (`servers`) and/or found over mDNS at boot and periodically after
# (`discovery`). Discovery writes nix.conf lines to a file that /etc/nix/nix.conf `!include`s. An mDNS
# advertisement is unauthenticated, so it can only add a substituter: a key becomes trusted only when it
# is pinned in `trustedPublicKeys` (or with the explicit trust-on-first-use `discovery.trustAdvertised`),
# and Nix checks every narinfo's signature against the keys it trusts. `fallback` stays on, so an
# appliance that is off or far away costs a connect timeout, never a failed build.
#
# The machine may also give to the appliance: `push` publishes every local build to it, `reportSystem`
# asks it to fetch (and pin) this machine's system after each activation (./options/client-*.nix).
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.services.nixcache-client;
  # One package for the machine's server and client alike (package-option.nix).
  inherit (config.services.nixcache) package;
  nixcacheLib = import ./lib.nix { inherit lib; };
  inherit (lib) mkOption types;

  stateDir = "/var/lib/nixcache-client";
  includeFile = "${stateDir}/nix.conf";

  discoverArgs =
    lib.concatMap (k: [
      "--trust"
      k
    ]) cfg.trustedPublicKeys
    ++ lib.optional cfg.discovery.trustAdvertised "--trust-advertised"
    ++ [
      "--write"
      includeFile
    ];

  # Both tools print the nix.conf lines, write them atomically to --write FILE (mode 644 under the
  # default umask: every user's Nix reads the include), and exit 1 when no cache with a trusted key
  # answered — an ordinary outcome away from home, not a failure of the unit.
  discoverCommand =
    if cfg.discovery.method == "nixcache" then
      [
        (lib.getExe package)
        "discover"
        "--nix-conf"
        "--timeout"
        (toString cfg.discovery.timeout)
      ]
    else
      [
        "${pkgs.dash}/bin/dash"
        "${./nixcache-discover.sh}"
      ];

  discover = pkgs.writeShellScript "nixcache-client-discover" ''
    set -u
    before=$(cat ${includeFile} 2>/dev/null || true)
    status=0
    ${lib.escapeShellArgs (discoverCommand ++ discoverArgs)} || status=$?
    after=$(cat ${includeFile} 2>/dev/null || true)
    if [ "$before" != "$after" ]; then
      # nix-daemon reads nix.conf when it starts. Its per-connection workers live on through a
      # restart (KillMode=process), so running builds are not interrupted.
      echo "substituters changed; restarting nix-daemon"
      systemctl try-restart nix-daemon.service || true
    fi
    exit "$status"
  '';
in
{
  imports = [
    ./package-option.nix
    # Builders publishing to an appliance, and machines reporting their system to it.
    ./options/client-push.nix
    ./options/client-report-system.nix
    (lib.mkRenamedOptionModule
      [ "services" "nixcache-client" "package" ]
      [ "services" "nixcache" "package" ]
    )
  ];

  options.services.nixcache-client = {
    enable = lib.mkEnableOption "substituting through nixcache appliances on the LAN";

    servers = mkOption {
      type = types.listOf nixcacheLib.types.substituterUrl;
      default = [ ];
      example = [ "http://192.168.1.10:37515" ];
      description = ''
        Appliances given by hand, as substituter URLs. An IP address is safer than a `.local` name, which
        many Nix clients cannot resolve.
      '';
    };

    trustedPublicKeys = mkOption {
      type = types.listOf nixcacheLib.types.publicKey;
      default = [ ];
      example = [ "nixcache.lan-1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=" ];
      description = ''
        The appliances' public keys (`curl http://APPLIANCE:37515/public-key`, read on a machine you
        trust). Trusted by Nix, and the only advertised keys discovery accepts.
      '';
    };

    fallback = mkOption {
      type = types.bool;
      default = true;
      description = "Build from source when no substituter can deliver a path (Nix's `fallback`).";
    };

    connectTimeout = mkOption {
      type = types.ints.positive;
      default = 5;
      description = "Seconds Nix waits to connect to a substituter, so that an absent appliance costs little.";
    };

    discovery = {
      enable = mkOption {
        type = types.bool;
        default = true;
        description = "Find appliances over mDNS at boot and every `discovery.interval`.";
      };
      method = mkOption {
        type = types.enum [
          "nixcache"
          "avahi"
        ];
        default = "nixcache";
        description = ''
          `nixcache`: `nixcache discover` (its own mDNS stack; opens UDP 5353 for the answers when
          `discovery.openFirewall`). `avahi`: nixcache-discover.sh with avahi-browse (turns on
          services.avahi), for machines that run Avahi anyway.
        '';
      };
      timeout = mkOption {
        type = types.ints.positive;
        default = 3;
        description = "Seconds to listen for advertisements (discovery.method = \"nixcache\").";
      };
      trustAdvertised = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Trust every advertised key: trust on first use. Anyone on the LAN can advertise a cache with a
          key of their own, so leave this off and pin `trustedPublicKeys` instead.
        '';
      };
      interval = mkOption {
        type = types.nullOr types.str;
        default = "1h";
        description = "How often to look again after boot (systemd time span); null: at boot only.";
      };
      openFirewall = mkOption {
        type = types.bool;
        default = true;
        description = "Open UDP port 5353 for mDNS answers (discovery.method = \"nixcache\").";
      };
    };
  };

  config = lib.mkIf cfg.enable (
    lib.mkMerge [
      {
        nix.settings = {
          extra-substituters = lib.mkIf (cfg.servers != [ ]) cfg.servers;
          extra-trusted-public-keys = lib.mkIf (cfg.trustedPublicKeys != [ ]) cfg.trustedPublicKeys;
          fallback = lib.mkDefault cfg.fallback;
          connect-timeout = lib.mkDefault cfg.connectTimeout;
        };
      }

      (lib.mkIf cfg.discovery.enable {
        warnings = lib.optional (
          cfg.trustedPublicKeys == [ ] && !cfg.discovery.trustAdvertised
        ) "services.nixcache-client: discovery finds appliances, but with no trustedPublicKeys Nix accepts nothing they sign alone.";

        # `!include` skips a missing file: before the first discovery Nix simply has no extra lines.
        nix.extraOptions = ''
          !include ${includeFile}
        '';

        services.avahi.enable = lib.mkIf (cfg.discovery.method == "avahi") (lib.mkDefault true);
        networking.firewall.allowedUDPPorts = lib.mkIf (
          cfg.discovery.method == "nixcache" && cfg.discovery.openFirewall
        ) [ 5353 ];

        systemd.services.nixcache-discover = {
          description = "Find nixcache appliances on the LAN for Nix";
          wantedBy = [ "multi-user.target" ];
          wants = [ "network-online.target" ];
          after = [ "network-online.target" ] ++ lib.optional (cfg.discovery.method == "avahi") "avahi-daemon.service";
          path = lib.optionals (cfg.discovery.method == "avahi") [
            pkgs.avahi
            pkgs.curl
            pkgs.gawk
          ];
          serviceConfig = {
            Type = "oneshot";
            ExecStart = discover;
            SuccessExitStatus = 1;
            TimeoutStartSec = "2min";
            StateDirectory = "nixcache-client";
            StateDirectoryMode = "0755";
            UMask = "0022";
            # Root, to restart nix-daemon; everything else is read-only.
            ProtectSystem = "strict";
            ProtectHome = true;
            PrivateTmp = true;
            PrivateDevices = true;
            NoNewPrivileges = true;
            RestrictAddressFamilies = [
              "AF_INET"
              "AF_INET6"
              "AF_UNIX"
              "AF_NETLINK"
            ];
          };
        };

        systemd.timers.nixcache-discover = lib.mkIf (cfg.discovery.interval != null) {
          description = "Look for nixcache appliances on the LAN again";
          wantedBy = [ "timers.target" ];
          timerConfig = {
            OnBootSec = cfg.discovery.interval;
            OnUnitActiveSec = cfg.discovery.interval;
          };
        };
      })
    ]
  );
}
