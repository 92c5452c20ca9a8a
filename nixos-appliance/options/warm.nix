# services.nixcache.warm: fetch closures into the appliance ahead of time, on a timer (issue 16): a
# oneshot running `nixcache warm` against the local daemon, which follows the job until it ends. With
# `pin`, the closures are kept from eviction as a named pin (`settings.pins` names pins at start instead).
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.services.nixcache;
  w = cfg.warm;
  nixcacheLib = import ../lib.nix { inherit lib; };
  nixcacheTypes = nixcacheLib.types;
  inherit (lib) mkOption types;

  # Admin requests from the machine itself need no token only over loopback, and only with
  # trust_loopback; otherwise they carry the admin token.
  tokenless = cfg.settings.trust_loopback && nixcacheLib.listensOnLoopback cfg.settings.listen;
  hasToken = cfg.adminTokenFile != null;

  command = [
    (lib.getExe cfg.package)
    "warm"
    "--url"
    (nixcacheLib.localUrl cfg.settings.listen)
  ]
  ++ lib.optionals (w.pin != null) [
    "--pin"
    w.pin
  ]
  ++ lib.optionals (w.pathsFile != null) [
    "--file"
    "${w.pathsFile}"
  ]
  ++ lib.optionals hasToken [
    "--token-file"
    # %d: the service's credentials folder.
    "%d/admin-token"
  ]
  # The paths are named for the daemon to fetch: they must not become dependencies of this system.
  ++ map builtins.unsafeDiscardStringContext w.paths;
in
{
  options.services.nixcache.warm = {
    enable = lib.mkEnableOption ''
      fetching closures into the cache ahead of time, on a timer (`nixcache warm`), so that the LAN
      finds them there when it needs them
    '';
    paths = mkOption {
      type = types.listOf nixcacheTypes.storePath;
      default = [ ];
      example = [ "/nix/store/…-nixos-system-desktop-25.11" ];
      description = ''
        Store paths whose closures are fetched. They are only named: not built or copied with this
        system (their string context is dropped); the appliance fetches them from its sources.
      '';
    };
    pathsFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = "/var/lib/ci/roots.txt";
      description = ''
        A file of store paths, one per line (blank lines and `#` comments skipped), read at each
        run: for a list that changes without a rebuild. It must be readable by every user (the
        service runs as a dynamic user); a file in the Nix store is.
      '';
    };
    pin = mkOption {
      type = types.nullOr nixcacheTypes.pinName;
      default = null;
      example = "lab";
      description = ''
        Keep the closures as this named pin, never evicted (replacing the pin's earlier closures).
        Pins together may hold at most 90% of `settings.max_size`. Null: fetched, then evicted as
        anything else.
      '';
    };
    onCalendar = mkOption {
      type = types.str;
      default = "daily";
      example = "*-*-* 03:00";
      description = "When to run (systemd calendar event, see systemd.time(7)); a run missed while the machine was off happens at boot (`Persistent`).";
    };
  };

  config = lib.mkIf (cfg.enable && w.enable) {
    assertions = [
      {
        assertion = w.paths != [ ] || w.pathsFile != null;
        message = "services.nixcache.warm: give paths or pathsFile.";
      }
      {
        assertion = tokenless || hasToken;
        message = "services.nixcache.warm: the daemon takes warm requests from this machine only with the admin token (settings.trust_loopback is off, or settings.listen is not reachable over loopback): set services.nixcache.adminTokenFile.";
      }
    ];

    systemd.services.nixcache-warm = {
      description = "Fetch closures into nixcache ahead of time";
      requires = [ "nixcache.service" ];
      after = [ "nixcache.service" ];
      serviceConfig = {
        Type = "oneshot";
        ExecStart = lib.escapeShellArgs command;
        LoadCredential = lib.optional hasToken "admin-token:${cfg.adminTokenFile}";
        # A client of the daemon's HTTP API: nothing else to reach or write.
        DynamicUser = true;
        RestrictAddressFamilies = [
          "AF_INET"
          "AF_INET6"
          "AF_UNIX"
        ];
        CapabilityBoundingSet = [ "" ];
        NoNewPrivileges = true;
        PrivateTmp = true;
        PrivateDevices = true;
        ProtectHome = true;
        ProtectSystem = "strict";
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectControlGroups = true;
        RestrictNamespaces = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        SystemCallArchitectures = "native";
        SystemCallFilter = [ "@system-service" ];
      };
    };

    systemd.timers.nixcache-warm = {
      description = "Fetch closures into nixcache ahead of time";
      wantedBy = [ "timers.target" ];
      timerConfig = {
        OnCalendar = w.onCalendar;
        Persistent = true;
      };
    };
  };
}
