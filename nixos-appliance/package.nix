# The nixcache daemon and CLI, built from this repository with the versions pinned in Cargo.lock.
# Used by the root flake (packages.<system>.default) and as the NixOS modules' default package, so a
# configuration that imports nixos-appliance/module.nix without flakes builds the same thing.
{ lib, rustPlatform }:

let
  cargoToml = lib.importTOML ../Cargo.toml;
in
rustPlatform.buildRustPackage {
  pname = "nixcache";
  inherit (cargoToml.package) version;

  # What Cargo reads, and no more: editing docs, workflows or the NixOS modules does not rebuild the
  # daemon. tests/, examples/ and benches/ are in because Cargo checks that targets it knows of exist.
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../src
      ../config/nixcache.toml
      (lib.fileset.maybeMissing ../tests)
      (lib.fileset.maybeMissing ../examples)
      (lib.fileset.maybeMissing ../benches)
    ];
  };

  cargoLock.lockFile = ../Cargo.lock;

  # Only the library's unit tests run here: they are pure (formats, parsers, config resolution). The
  # integration and end-to-end tests in tests/ need real peers — the Nix client, an OCI registry, network
  # namespaces for mDNS — that the build sandbox does not have; scripts/test.sh runs them in CI.
  cargoTestFlags = [ "--lib" ];

  postInstall = ''
    install -Dm644 config/nixcache.toml $out/share/nixcache/nixcache.toml
  '';

  meta = {
    inherit (cargoToml.package) description;
    license = lib.licenses.mit;
    mainProgram = "nixcache";
    platforms = lib.platforms.linux;
  };
}
