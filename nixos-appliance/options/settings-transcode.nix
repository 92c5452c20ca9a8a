# services.nixcache.settings, part 4: transcoding stored NARs to zstd, warm jobs and named pins (issue
# 16). A module of the `settings` submodule; services.nixcache.warm (./warm.nix) runs warm jobs on a timer.
{ lib, ... }:

let
  defaults = import ../defaults.nix;
  nixcacheTypes = (import ../lib.nix { inherit lib; }).types;
  inherit (lib) mkOption types;

  # Pin names are attribute names, which attrsOf does not check: the whole set is checked instead.
  pinsType =
    lib.types.addCheck (types.attrsOf (types.listOf nixcacheTypes.storePath)) (
      pins: lib.all nixcacheTypes.pinName.check (builtins.attrNames pins)
    )
    // {
      description = "attribute set of lists of store paths, named by pin names (1 to 64 letters, digits, `-`, `_`, `.`; not starting with `.`)";
    };
in
{
  options = {
    transcode = mkOption {
      type = types.enum [
        "zstd"
        "off"
      ];
      default = defaults.transcode;
      description = ''
        `zstd`: re-encode every stored xz or bzip2 NAR to zstd in the background (verified against
        the signed NarHash), then serve zstd, which clients decompress many times faster. `off`: serve
        NARs as fetched.
      '';
    };
    transcode_level = mkOption {
      type = types.ints.between 1 19;
      default = defaults.transcode_level;
      description = "zstd level of transcoded NARs: higher makes smaller files for more CPU, once.";
    };
    transcode_workers = mkOption {
      type = types.ints.positive;
      default = defaults.transcode_workers;
      description = "Transcoding threads; each runs at nice 19 and the idle I/O class, never delaying fills or hits.";
    };
    transcode_keep_original = mkOption {
      type = nixcacheTypes.secondsOrZero;
      default = defaults.transcode_keep_original;
      description = ''
        Seconds the original file stays on disk after its narinfos switched to zstd, for clients that
        fetched the narinfo before (later they get it fetched again).
      '';
    };
    warm_concurrency = mkOption {
      type = types.ints.positive;
      default = defaults.warm_concurrency;
      description = "NARs one warm job (`nixcache warm`, `POST /_warm`, a pin) fetches at once.";
    };
    pins = mkOption {
      type = pinsType;
      default = { };
      example = lib.literalExpression ''
        { desktop = [ "/nix/store/…-nixos-system-desktop-25.11" ]; }
      '';
      description = ''
        Named pins: closures fetched after start and never evicted (together at most 90% of
        `max_size`). A pin removed here is released at the next start. The paths are only named:
        they are not built or copied with this system (their string context is dropped); the
        appliance fetches them from its sources.
      '';
    };
  };
}
