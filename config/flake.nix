# What the publish workflows build and cache (as in nixcache-oci): every
#   packages.<system>.<name>, nixosConfigurations.<host> (its system.build.toplevel) and
#   devShells.<system>.<name>
# for the runner's system. Paths that cache.nixos.org already has are not uploaded; the rest goes to
# ghcr.io/<owner>/<repo>/nix-cache, which nixcache serves to the LAN (settings.oci_repo).
# The weekly update-and-cache workflow runs `nix flake update` here and commits flake.lock.
{
  description = "What to build and cache: add your packages and NixOS hosts here";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { nixpkgs, ... }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAllSystems (pkgs: {
        default = pkgs.hello;
        inherit (pkgs) htop tree;

        # Built here, so not on cache.nixos.org: this one is uploaded.
        nixcache-test = pkgs.writeShellScriptBin "nixcache-test" ''
          echo "Hello from nixcache! This path came from your own cache."
        '';
      });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell { packages = [ pkgs.jq ]; };
      });

      # A host of yours: its whole system closure is built and cached, so that
      # `nixos-rebuild switch` on it substitutes everything through the appliance.
      # nixosConfigurations.my-host = nixpkgs.lib.nixosSystem {
      #   modules = [ ./hosts/my-host/configuration.nix ];
      # };
    };
}
