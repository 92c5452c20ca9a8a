# The root flake's outputs without flake support, as `nix flake check` would see them: flake.nix's
# `outputs` called with `self` (this repository copied into the store, as a flake's source is) and
# `nixpkgs` (the nixpkgs flake's own outputs, from a given tree or from the input locked in flake.lock).
# Used by the evaluation tests (tests/nixos/eval.nix), which cannot use flakes: fetching flake inputs
# needs the network, and the machines that run the tests have a nixpkgs tree instead.
{
  src ? ../..,
  # A nixpkgs tree (folder); "" means the flake's locked input, fetched by Nix.
  nixpkgs ? "",
  # The tree's NAR hash (nix-hash --type sha256 --base32), so that a warm store skips hashing it again.
  nixpkgsHash ? "",
}:

let
  lock = builtins.fromJSON (builtins.readFile (src + "/flake.lock"));
  lockedNixpkgs = lock.nodes.${lock.nodes.${lock.root}.inputs.nixpkgs}.locked;

  # The project as a flake sees it: its files, without build output or version-control data.
  selfSource = builtins.path {
    path = src;
    name = "source";
    filter =
      path: _type:
      let
        name = baseNameOf path;
      in
      !(builtins.elem name [
        ".git"
        "target"
        "nixcache-data"
      ])
      && builtins.match "result(-.*)?" name == null;
  };

  nixpkgsSource =
    if nixpkgs != "" then
      builtins.path (
        {
          path = nixpkgs;
          name = "source";
        }
        // (if nixpkgsHash != "" then { sha256 = nixpkgsHash; } else { })
      )
    else
      assert lockedNixpkgs.type == "github";
      builtins.fetchTarball {
        url = "https://github.com/${lockedNixpkgs.owner}/${lockedNixpkgs.repo}/archive/${lockedNixpkgs.rev}.tar.gz";
        sha256 = lockedNixpkgs.narHash;
      };

  # What a flake's `self` carries besides its outputs.
  sourceInfo =
    outPath: info:
    {
      inherit outPath;
      lastModified = 0;
      lastModifiedDate = "19700101000000";
    }
    // info;

  callFlake =
    source: info: inputs:
    let
      flake = import (source + "/flake.nix");
      outputs = flake.outputs (inputs // { self = result; });
      result =
        outputs
        // sourceInfo source info
        // {
          inherit inputs outputs;
          sourceInfo = sourceInfo source info;
          _type = "flake";
        };
    in
    result;

  nixpkgsFlake = callFlake nixpkgsSource (
    if nixpkgs != "" then
      { }
    else
      {
        inherit (lockedNixpkgs) rev lastModified narHash;
        shortRev = builtins.substring 0 7 lockedNixpkgs.rev;
      }
  ) { };
in
callFlake selfSource {
  dirtyRev = "0000000000000000000000000000000000000000-dirty";
  dirtyShortRev = "0000000-dirty";
} { nixpkgs = nixpkgsFlake; }
