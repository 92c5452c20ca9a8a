# services.nixcache.settings, part 2: where the daemon fetches from and whom it trusts (upstreams, the
# OCI source), and how it is found on the LAN (mDNS). A module of the `settings` submodule.
{ lib, ... }:

let
  defaults = import ../defaults.nix;
  nixcacheTypes = (import ../lib.nix { inherit lib; }).types;
  inherit (lib) mkOption types;
in
{
  options = {
    upstreams = mkOption {
      type = types.listOf (
        types.either nixcacheTypes.httpUrl (
          types.submodule {
            options = {
              url = mkOption {
                type = nixcacheTypes.httpUrl;
                description = "Base URL of the upstream cache.";
              };
              trusted_keys = mkOption {
                type = types.nullOr (types.listOf nixcacheTypes.publicKey);
                default = null;
                description = "Keys trusted for this upstream instead of the global `trusted_keys`.";
              };
              accept_unsigned = mkOption {
                type = types.bool;
                default = false;
                description = "Accept this upstream's narinfos without a valid signature: an explicit, logged choice.";
              };
            };
          }
        )
      );
      default = defaults.upstreams;
      description = ''
        Upstream caches, most preferred first: URLs, or `{ url, trusted_keys, accept_unsigned }`
        with trust settings of their own.
      '';
    };
    trusted_keys = mkOption {
      type = types.listOf nixcacheTypes.publicKey;
      default = defaults.trusted_keys;
      description = "Keys whose signature makes an upstream narinfo acceptable.";
    };
    mdns = mkOption {
      type = types.bool;
      default = defaults.mdns;
      description = ''
        Advertise the cache over mDNS (`_nix-cache._tcp`) so that clients can discover it. With
        `openFirewall`, UDP port 5353 is opened too.
      '';
    };
    mdns_interfaces = mkOption {
      type = types.listOf nixcacheTypes.interface;
      default = defaults.mdns_interfaces;
      description = "Interfaces (names or addresses) to advertise on; empty means all.";
    };
    oci_repo = mkOption {
      type = types.nullOr nixcacheTypes.ociRepo;
      default = null;
      example = "my-org/my-cache";
      description = ''
        `OWNER/REPO` of a cache published in the nixcache-oci format (image
        `<owner>/<repo>/nix-cache`, tag `cache-index`), served before the upstreams. Null: no OCI
        source. A private package needs `GITHUB_TOKEN` in `environmentFile`.
      '';
    };
    oci_registry = mkOption {
      type = nixcacheTypes.registry;
      default = defaults.oci_registry;
      description = "Registry of the OCI source.";
    };
    index_ttl = mkOption {
      type = nixcacheTypes.seconds;
      default = defaults.index_ttl;
      description = "Seconds between refreshes of the OCI index.";
    };
    oci_trusted_keys = mkOption {
      type = types.nullOr (types.listOf nixcacheTypes.publicKey);
      default = null;
      example = [ "my-cache-1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=" ];
      description = ''
        Keys whose signature makes an entry of the OCI index acceptable: the publisher's (its
        `public-key.txt`). Null: `trusted_keys`.
      '';
    };
    oci_accept_unsigned = mkOption {
      type = types.bool;
      default = false;
      description = "Accept the OCI index's entries without a valid signature (a publisher without a key): an explicit, logged choice.";
    };
  };
}
