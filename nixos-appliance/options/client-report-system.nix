# services.nixcache-client.reportSystem: after each activation (boot, `nixos-rebuild switch` or
# `test`), ask an appliance to fetch this machine's system closure, optionally as a named pin, so that
# the appliance holds what the LAN runs: `nixcache warm --no-wait` of the system just activated.
#
# The activation script records the system it activates (/run/current-system is switched only at its
# very end) and starts the service without waiting for it: an appliance that is away costs the
# activation nothing. At boot systemd is not running yet during activation; multi-user.target starts
# the service then. Independent of services.nixcache-client.enable.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.services.nixcache-client.reportSystem;
  # One package for the machine's server and client alike (../package-option.nix).
  inherit (config.services.nixcache) package;
  nixcacheTypes = (import ../lib.nix { inherit lib; }).types;
  inherit (lib) mkOption types;

  systemFile = "/run/nixcache-report-system";

  report = pkgs.writeShellScript "nixcache-report-system" ''
    set -eu
    system=$(cat ${systemFile} 2>/dev/null || readlink -f /run/current-system)
    exec ${
      lib.escapeShellArgs (
        [
          (lib.getExe package)
          "warm"
          "--no-wait"
          "--url"
          cfg.url
        ]
        ++ lib.optionals (cfg.pin != null) [
          "--pin"
          cfg.pin
        ]
      )
    } ${lib.optionalString (cfg.tokenFile != null) ''--token-file "$CREDENTIALS_DIRECTORY/admin-token"''} "$system"
  '';
in
{
  options.services.nixcache-client.reportSystem = {
    enable = lib.mkEnableOption ''
      asking an appliance to fetch this machine's system closure after each activation
      (`nixcache warm --no-wait`), so that it holds what the LAN runs
    '';
    url = mkOption {
      type = nixcacheTypes.httpUrl;
      example = "http://192.168.1.10:37515";
      description = "The appliance.";
    };
    pin = mkOption {
      type = types.nullOr nixcacheTypes.pinName;
      default = null;
      example = lib.literalExpression ''"host-''${config.networking.hostName}"'';
      description = ''
        Keep the system's closure on the appliance as this named pin, never evicted; each activation
        replaces the pin's closure with the new system's. Null: fetched, then evicted as anything else.
      '';
    };
    tokenFile = mkOption {
      type = types.nullOr nixcacheTypes.absolutePath;
      default = null;
      example = "/var/lib/nixcache/admin-token";
      description = ''
        File holding the appliance's admin token (its `adminTokenFile`), which warm requests from any
        other host than the appliance itself need. Handed to the service with LoadCredential.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    systemd.services.nixcache-report-system = {
      description = "Ask the nixcache appliance to fetch this machine's system";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      serviceConfig = {
        Type = "oneshot";
        ExecStart = report;
        LoadCredential = lib.optional (cfg.tokenFile != null) "admin-token:${cfg.tokenFile}";
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
      };
    };

    system.activationScripts.nixcache-report-system = ''
      readlink -f "$systemConfig" > ${systemFile}
      if [ -d /run/systemd/system ]; then
        ${config.systemd.package}/bin/systemctl start --no-block nixcache-report-system.service || true
      fi
    '';
  };
}
