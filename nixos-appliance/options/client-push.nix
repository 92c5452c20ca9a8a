# services.nixcache-client.push: publish every local build to an appliance. Nix's post-build-hook runs
# ../nixcache-push-hook.sh (`nix copy --to`, the push token in a private netrc) through a wrapper that
# gives it its settings as NIXCACHE_PUSH_* variables. The appliance takes the token when it is one of its
# services.nixcache.pushTokens. Independent of services.nixcache-client.enable: a builder may push
# without substituting through the appliance.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.services.nixcache-client.push;
  nixcacheLib = import ../lib.nix { inherit lib; };
  nixcacheTypes = nixcacheLib.types;
  inherit (nixcacheLib) inStore;
  inherit (lib) mkOption types;

  # Nix runs the hook as root after every build and waits for it.
  hook = pkgs.writeShellScript "nixcache-push-hook" ''
    export PATH=${
      lib.makeBinPath [
        pkgs.coreutils
        config.nix.package
      ]
    }
    export NIXCACHE_PUSH_URL=${lib.escapeShellArg cfg.url}
    export NIXCACHE_PUSH_TOKEN_FILE=${lib.escapeShellArg cfg.tokenFile}
    export NIXCACHE_PUSH_LOGIN=${lib.escapeShellArg cfg.login}
    export NIXCACHE_PUSH_COMPRESSION=${cfg.compression}
    export NIXCACHE_PUSH_NIX=${config.nix.package}/bin/nix
    export NIXCACHE_PUSH_STRICT=${if cfg.strict then "1" else "0"}
    ${lib.optionalString (cfg.secretKeyFile != null) ''
      export NIXCACHE_PUSH_SECRET_KEY_FILE=${lib.escapeShellArg cfg.secretKeyFile}
    ''}
    exec ${pkgs.dash}/bin/dash ${../nixcache-push-hook.sh}
  '';
in
{
  options.services.nixcache-client.push = {
    enable = lib.mkEnableOption ''
      publishing every local build to a nixcache appliance (a Nix post-build-hook running
      `nix copy --to`), so that the other machines substitute it from there
    '';
    url = mkOption {
      type = nixcacheTypes.httpUrl;
      example = "http://192.168.1.10:37515";
      description = "The appliance to push to.";
    };
    tokenFile = mkOption {
      type = nixcacheTypes.absolutePath;
      example = "/var/lib/nixcache-push/token";
      description = ''
        File holding the push token (the same as one of the appliance's `pushTokens`), root-only
        (mode 600): the hook runs as root and writes it into a private netrc for each `nix copy`.
        Give it as a string, never in the Nix store.
      '';
    };
    secretKeyFile = mkOption {
      type = types.nullOr nixcacheTypes.absolutePath;
      default = null;
      example = "/var/lib/nixcache-push/builder.secret";
      description = ''
        Sign the uploads on this machine with this Nix secret key; its public half must be in the
        appliance's `settings.push_trusted_keys`. Null: unsigned, for a token with `sign` (the
        appliance signs).
      '';
    };
    compression = mkOption {
      type = types.enum [
        "xz"
        "zstd"
        "bzip2"
        "br"
        "none"
      ];
      default = "xz";
      description = "Compression of the uploaded NARs (the appliance verifies and transcodes them as fetched ones).";
    };
    strict = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Fail the build when its push fails (Nix then stops its other builds too). False: log the
        failure and let the build count as done.
      '';
    };
    login = mkOption {
      type = types.strMatching "[^[:space:]]+";
      default = "push";
      description = "netrc login sent with the token; the appliance reads only the password.";
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = !inStore cfg.tokenFile;
        message = "services.nixcache-client.push.tokenFile is in the Nix store, which every local user can read: give the path of a root-only file, as a string.";
      }
      {
        assertion = !inStore cfg.secretKeyFile;
        message = "services.nixcache-client.push.secretKeyFile is in the Nix store, which every local user can read: give the path of a root-only file, as a string.";
      }
    ];
    nix.settings.post-build-hook = hook;
  };
}
