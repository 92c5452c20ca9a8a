# services.nixcache.package: the one nixcache package of a machine, for the server (module.nix) and the
# client's `nixcache discover` (client.nix) alike, so that overriding it builds the daemon once. Both
# modules import this file; NixOS imports a file once however many modules name it.
{ lib, pkgs, ... }:

{
  options.services.nixcache.package = lib.mkOption {
    type = lib.types.package;
    # `pkgs.nixcache` when the flake's overlay (overlays.default) or your own provides it, as
    # mkPackageOption would; else this repository's package, so that the module works without it.
    default = pkgs.nixcache or (pkgs.callPackage ./package.nix { });
    defaultText = lib.literalMD "`pkgs.nixcache` when an overlay provides it (such as this flake's `overlays.default`), else the package built from this repository (`nixos-appliance/package.nix`)";
    description = "The nixcache package: the daemon of `services.nixcache` and the `nixcache discover` of `services.nixcache-client`.";
  };
}
