# services.nixcache.settings, part 3: what one client or peer may take, and whom the daemon trusts with
# what (src/config/limits.rs). A module of the `settings` submodule. The unit's LimitNOFILE follows
# `max_connections` (module.nix).
{ lib, ... }:

let
  defaults = import ../defaults.nix;
  nixcacheTypes = (import ../lib.nix { inherit lib; }).types;
  inherit (lib) mkOption types;
in
{
  options = {
    header_timeout = mkOption {
      type = nixcacheTypes.seconds;
      default = defaults.header_timeout;
      description = ''
        Seconds a client may take to send a request's headers: from connecting for the first
        request, from its first byte for later ones on a kept-alive connection (nginx's
        `client_header_timeout`). Slowloris clients are dropped after this.
      '';
    };
    keepalive_timeout = mkOption {
      type = nixcacheTypes.seconds;
      default = defaults.keepalive_timeout;
      description = "Seconds a kept-alive connection may stay idle between requests (nginx's `keepalive_timeout`).";
    };
    send_timeout = mkOption {
      type = nixcacheTypes.seconds;
      default = defaults.send_timeout;
      description = ''
        Seconds a response may wait for the client to accept any byte before the connection is
        dropped (nginx's `send_timeout`). A client that takes bytes, however slowly, is never dropped.
      '';
    };
    max_connections = mkOption {
      type = types.ints.positive;
      default = defaults.max_connections;
      description = ''
        Connections served at once; more wait in the listen backlog. The unit's `LimitNOFILE` is at
        least 2 per connection plus 256, so that the daemon need not lower it at start-up.
      '';
    };
    max_connections_per_client = mkOption {
      type = types.ints.unsigned;
      default = defaults.max_connections_per_client;
      description = ''
        Connections served at once from one client address; its further connections are closed at
        once. `0`: no such cap (needed behind a local reverse proxy, where every client has the
        proxy's address).
      '';
    };
    max_upstream_lookups = mkOption {
      type = types.ints.positive;
      default = defaults.max_upstream_lookups;
      description = ''
        Upstream narinfo requests in flight at once, over all upstreams. A request that finds no slot
        within `upstream_timeout` is answered 503 (Nix retries).
      '';
    };
    trust_loopback = mkOption {
      type = types.bool;
      default = defaults.trust_loopback;
      description = ''
        Whether admin requests (`POST /_refresh`, `/_warm`, `/_pins`) from loopback need no token. Turn off
        behind a local reverse proxy (every client then looks like loopback) and set `adminTokenFile`.
      '';
    };
    oci_token_hosts = mkOption {
      type = types.listOf nixcacheTypes.tokenHost;
      default = [ ];
      example = [ "auth.docker.io" ];
      description = ''
        Token realm hosts (`host` or `host:port`) besides the registry's own that may receive
        `GITHUB_TOKEN` (https only), such as `auth.docker.io` for Docker Hub. Other realms are asked
        for a token anonymously.
      '';
    };
  };
}
