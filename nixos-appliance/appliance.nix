# The appliance: a small NixOS machine whose job is to be the LAN's Nix binary cache.
#
# nixcache serves on 0.0.0.0:37515 with the firewall open for it and for mDNS, signs with a key made on
# first boot (/var/lib/nixcache-key; clients pin its public half), and uses itself as a substituter.
# Avahi stays off: the daemon advertises itself and would otherwise share UDP 5353 and the host name with
# a second responder. No disk layout here: see layout-efi.nix and layout-sd.nix, and the images in the
# root flake. Add your SSH key with users.users.root.openssh.authorizedKeys.keys.
{
  config,
  lib,
  ...
}:

let
  cfg = config.services.nixcache;
  nixcacheLib = import ./lib.nix { inherit lib; };
  keyDir = "/var/lib/nixcache-key";
  generatedKey = "${keyDir}/secret";
in
{
  imports = [ ./module.nix ];

  services.nixcache = {
    enable = true;
    openFirewall = lib.mkDefault true;
    signingKeyFile = lib.mkDefault generatedKey;
  };

  # The key is named after the host (`nixcache-1`) and never overwritten: clients have pinned it.
  systemd.services.nixcache-keygen = lib.mkIf (cfg.signingKeyFile == generatedKey) {
    description = "Make nixcache's signing key on first boot";
    wantedBy = [ "nixcache.service" ];
    before = [ "nixcache.service" ];
    unitConfig.ConditionPathExists = "!${generatedKey}";
    serviceConfig = {
      Type = "oneshot";
      StateDirectory = "nixcache-key";
      StateDirectoryMode = "0700";
      UMask = "0077";
      ExecStart = lib.escapeShellArgs [
        (lib.getExe cfg.package)
        "keygen"
        "${config.networking.hostName}-1"
        "--secret-key-file"
        generatedKey
        "--public-key-file"
        "${keyDir}/public"
      ];
    };
  };
  systemd.services.nixcache = lib.mkIf (cfg.signingKeyFile == generatedKey) {
    wants = [ "nixcache-keygen.service" ];
    after = [ "nixcache-keygen.service" ];
  };

  # The appliance fetches its own upgrades through itself, so the LAN gets them from disk afterwards.
  nix.settings = {
    extra-substituters = [ (nixcacheLib.localUrl cfg.settings.listen) ];
    fallback = true;
    connect-timeout = lib.mkDefault 5;
  };

  services.avahi.enable = lib.mkDefault false;

  services.openssh = {
    enable = lib.mkDefault true;
    settings = {
      PasswordAuthentication = false;
      KbdInteractiveAuthentication = false;
      PermitRootLogin = lib.mkDefault "prohibit-password";
    };
  };

  # Weaker than mkDefault, so that a test framework's or a user's host name wins without a conflict.
  networking.hostName = lib.mkOverride 1100 "nixcache";
  networking.useDHCP = lib.mkDefault true;
  networking.firewall.enable = true;

  # The appliance's own store: old generations go, so that /nix does not grow into the cache's room.
  nix.gc = {
    automatic = lib.mkDefault true;
    dates = lib.mkDefault "weekly";
    options = lib.mkDefault "--delete-older-than 14d";
  };
  nix.optimise.automatic = lib.mkDefault true;
  boot.tmp.cleanOnBoot = lib.mkDefault true;
  services.fstrim.enable = lib.mkDefault true;

  time.timeZone = lib.mkDefault "UTC";
}
