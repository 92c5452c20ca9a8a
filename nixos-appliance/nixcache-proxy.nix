# services.nixcache-proxy: the NixOS options of nixcache-oci, kept so that its users' configurations keep
# working. They now run nixcache (services.nixcache) on the machine itself, serving the same GHCR cache,
# and point the local Nix at it exactly as nixcache-oci's module did.
{
  config,
  lib,
  ...
}:

let
  cfg = config.services.nixcache-proxy;
  nixcacheLib = import ./lib.nix { inherit lib; };
  inherit (lib) mkOption types;

  address = if cfg.listenAddress == "localhost" then "127.0.0.1" else cfg.listenAddress;
  listen =
    if lib.hasInfix ":" address then "[${address}]:${toString cfg.port}" else "${address}:${toString cfg.port}";
  # Where the local Nix finds the cache: nixcache-oci's `http://localhost:PORT` on loopback, otherwise
  # the address it listens on (a cache on 192.168.1.10 alone is not reachable at localhost).
  url =
    if address == "127.0.0.1" then "http://localhost:${toString cfg.port}" else nixcacheLib.localUrl listen;
in
{
  imports = [ ./module.nix ];

  options.services.nixcache-proxy = {
    enable = lib.mkEnableOption "the nixcache-oci compatible local cache (runs services.nixcache)";
    repo = mkOption {
      type = nixcacheLib.types.ociRepo;
      default = "cmspam/nixcache-oci";
      description = "GitHub owner/repo hosting the OCI cache (`<owner>/<repo>/nix-cache` on ghcr.io).";
    };
    port = mkOption {
      type = types.ints.between 1 65535;
      default = 37515;
      description = "Port the cache listens on.";
    };
    listenAddress = mkOption {
      type = nixcacheLib.types.address;
      default = "127.0.0.1";
      example = "0.0.0.0";
      description = ''
        Address the cache binds to: "127.0.0.1" for this machine only (the default, as in nixcache-oci),
        "0.0.0.0" to serve the LAN (then consider services.nixcache.openFirewall), or one address of
        this machine. The local Nix is pointed at the same address (loopback for 0.0.0.0 and ::).
      '';
    };
    publicKey = mkOption {
      type = types.either (types.enum [ "" ]) nixcacheLib.types.publicKey;
      default = "";
      example = "my-cache-1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
      description = ''
        Public key of the cache's publisher (the `public-key.txt` the publish workflow writes). It is
        trusted by the local Nix and by the cache itself for the OCI source.
      '';
    };
    requireSignatures = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Whether Nix requires valid signatures. false sets `require-sigs = false` for every substituter
        (as nixcache-oci did) and lets the cache accept the OCI source's narinfos unsigned.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    services.nixcache = {
      enable = true;
      settings = {
        inherit listen;
        oci_repo = cfg.repo;
        oci_trusted_keys = lib.mkIf (cfg.publicKey != "") [ cfg.publicKey ];
        oci_accept_unsigned = lib.mkIf (!cfg.requireSignatures) true;
      };
    };

    nix.settings = {
      extra-substituters = [ url ];
      extra-trusted-substituters = [ url ];
      extra-trusted-public-keys = lib.mkIf (cfg.publicKey != "") [ cfg.publicKey ];
      require-sigs = lib.mkIf (!cfg.requireSignatures) false;
    };
  };
}
