{
  description = "nixcache: one verified, persistent Nix binary cache for every machine on the LAN";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      # The appliance for one platform: the role (nixos-appliance/appliance.nix) plus the disk layout its
      # images use, so that an installed image upgrades with `nixos-rebuild switch --flake .#NAME`.
      applianceSystem =
        system: layout:
        lib.nixosSystem {
          modules = [
            self.nixosModules.appliance
            layout
            {
              nixpkgs.hostPlatform = system;
              # The release the appliance's state was first created with; keep it when upgrading.
              system.stateVersion = "25.11";
            }
          ];
        };
      images = name: self.nixosConfigurations.${name}.config.system.build.images;

      # nixcache-oci's `nix run ...#cache-proxy`: a cache for this machine only, on 127.0.0.1:37515 unless
      # NIXCACHE_LISTEN says otherwise, data under ~/.cache/nixcache. NIXCACHE_REPO, GITHUB_TOKEN and the
      # other variables of nixcache-oci pass through.
      cacheProxy =
        pkgs:
        pkgs.writeShellScriptBin "nixcache-cache-proxy" ''
          export NIXCACHE_LISTEN="''${NIXCACHE_LISTEN:-127.0.0.1}"
          export NIXCACHE_DATA_DIR="''${NIXCACHE_DATA_DIR:-''${XDG_CACHE_HOME:-$HOME/.cache}/nixcache}"
          exec ${lib.getExe self.packages.${pkgs.stdenv.hostPlatform.system}.default} serve "$@"
        '';

      vmTest = pkgs: file: pkgs.testers.runNixOSTest (import file { inherit self; });
    in
    {
      overlays.default = final: _prev: {
        nixcache = final.callPackage ./nixos-appliance/package.nix { };
      };

      packages = forAllSystems (
        pkgs:
        let
          nixcache = pkgs.callPackage ./nixos-appliance/package.nix { };
        in
        {
          default = nixcache;
          inherit nixcache;
          cache-proxy = cacheProxy pkgs;
        }
        // lib.optionalAttrs (pkgs.stdenv.hostPlatform.system == "x86_64-linux") {
          appliance-iso = (images "appliance").iso;
          appliance-qemu-efi = (images "appliance").qemu-efi;
        }
        // lib.optionalAttrs (pkgs.stdenv.hostPlatform.system == "aarch64-linux") {
          appliance-sd-card = (images "appliance-aarch64").sd-card;
        }
      );

      apps = forAllSystems (
        pkgs:
        let
          inherit (pkgs.stdenv.hostPlatform) system;
        in
        {
          default = {
            type = "app";
            program = lib.getExe self.packages.${system}.default;
            meta.description = "nixcache: serve, keygen, push, gc, discover";
          };
          cache-proxy = {
            type = "app";
            program = lib.getExe self.packages.${system}.cache-proxy;
            meta.description = "A local cache on 127.0.0.1:37515, as nixcache-oci's cache-proxy";
          };
        }
      );

      nixosModules = {
        # The server, plus nixcache-oci's services.nixcache-proxy options for its users' configurations.
        default = {
          imports = [
            ./nixos-appliance/module.nix
            ./nixos-appliance/nixcache-proxy.nix
          ];
        };
        nixcache = ./nixos-appliance/module.nix;
        client = ./nixos-appliance/client.nix;
        appliance = ./nixos-appliance/appliance.nix;
      };

      nixosConfigurations = {
        appliance = applianceSystem "x86_64-linux" ./nixos-appliance/layout-efi.nix;
        appliance-aarch64 = applianceSystem "aarch64-linux" ./nixos-appliance/layout-sd.nix;
      };

      # NixOS VM tests: they need KVM (`nix flake check` on a Linux machine with /dev/kvm).
      checks = forAllSystems (pkgs: {
        package = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        appliance = vmTest pkgs ./nixos-appliance/test-appliance.nix;
        discovery = vmTest pkgs ./nixos-appliance/test-discovery.nix;
        proxy-compat = vmTest pkgs ./nixos-appliance/test-proxy-compat.nix;
      });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${pkgs.stdenv.hostPlatform.system}.default ];
          packages = [
            pkgs.cargo
            pkgs.clippy
            pkgs.rustfmt
            pkgs.rust-analyzer
            # The peers scripts/test.sh talks to.
            pkgs.nix
            pkgs.python3
            pkgs.curl
            pkgs.avahi
            pkgs.actionlint
            pkgs.shellcheck
          ];
        };
      });
    };
}
