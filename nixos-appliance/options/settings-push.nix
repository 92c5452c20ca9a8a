# services.nixcache.settings, part 5: LAN pushes (issue 12), all but the tokens, which are
# services.nixcache.pushTokens (./push.nix) because their files are handed over with LoadCredential.
# A module of the `settings` submodule.
{ lib, ... }:

let
  defaults = import ../defaults.nix;
  nixcacheTypes = (import ../lib.nix { inherit lib; }).types;
  inherit (lib) mkOption types;
in
{
  options = {
    push_trusted_keys = mkOption {
      type = types.listOf nixcacheTypes.publicKey;
      default = [ ];
      example = [ "builder.lan-1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=" ];
      description = ''
        Keys whose signature makes a pushed narinfo acceptable: the builders' public keys (their
        `secretKeyFile` in services.nixcache-client.push). Not needed for tokens with `sign`.
      '';
    };
    push_max_size = mkOption {
      type = types.nullOr nixcacheTypes.size;
      default = null;
      example = "5GiB";
      description = ''
        Most bytes of pushed NAR files held at once (stored, and uploads waiting for their narinfo);
        pushed NARs are kept from eviction within it. At most `max_size`. Null: a quarter of `max_size`.
      '';
    };
    push_lru = mkOption {
      type = types.bool;
      default = false;
      description = "Evict pushed NARs least-recently-used like fetched ones (an evicted pushed path is forgotten).";
    };
    push_pending_max = mkOption {
      type = types.ints.positive;
      default = defaults.push_pending_max;
      description = "NAR uploads that may wait for their narinfo at once; more are answered 503, which Nix retries.";
    };
    push_pending_timeout = mkOption {
      type = nixcacheTypes.seconds;
      default = defaults.push_pending_timeout;
      description = "Seconds an uploaded NAR waits for its narinfo before it is dropped.";
    };
  };
}
