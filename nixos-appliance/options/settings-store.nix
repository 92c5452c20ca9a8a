# services.nixcache.settings, part 1: where and how much the daemon stores, how it fills, its index.
# A module of the `settings` submodule (module.nix imports it there), so option names are the daemon's
# keys as config/nixcache.toml spells them.
{ lib, ... }:

let
  defaults = import ../defaults.nix;
  nixcacheTypes = (import ../lib.nix { inherit lib; }).types;
  inherit (lib) mkOption types;
in
{
  options = {
    listen = mkOption {
      type = nixcacheTypes.listen;
      default = defaults.listen;
      description = "Address and port to listen on. `0.0.0.0:PORT` serves the whole LAN (IPv4), `[::]:PORT` IPv6 too.";
    };
    data_dir = mkOption {
      type = types.nullOr nixcacheTypes.absolutePath;
      default = null;
      example = "/srv/nixcache";
      description = ''
        Folder for the index (`index.redb`) and the NAR files. Null: /var/lib/nixcache, the
        service's StateDirectory. A folder of your own is created by systemd-tmpfiles, owned by
        the static user `nixcache` the service then runs as, and must be outside /home and /root
        (ProtectHome). A separate disk mounted there is waited for (RequiresMountsFor).
      '';
    };
    max_size = mkOption {
      type = nixcacheTypes.size;
      default = defaults.max_size;
      description = ''
        Cap on everything the appliance writes: stored NARs, the room reserved by running downloads,
        and the index file. Least recently used NARs are evicted past it (pinned and pushed ones never).
      '';
    };
    min_free = mkOption {
      type = nixcacheTypes.sizeOrZero;
      default = defaults.min_free;
      description = ''
        Free space kept on the data folder's filesystem, whoever else fills it: the appliance evicts
        to keep it, and a download that cannot fit is refused with 503. `0`: keep nothing free.
      '';
    };
    priority = mkOption {
      type = types.ints.u32;
      default = defaults.priority;
      description = "`Priority:` announced in /nix-cache-info (lower is preferred; cache.nixos.org says 40).";
    };
    negative_ttl = mkOption {
      type = nixcacheTypes.seconds;
      default = defaults.negative_ttl;
      description = "Seconds a path found in no upstream is answered 404 without asking again.";
    };
    upstream_timeout = mkOption {
      type = nixcacheTypes.seconds;
      default = defaults.upstream_timeout;
      description = "Seconds for one upstream narinfo request, the start of a NAR download, and connecting.";
    };
    stall_timeout = mkOption {
      type = nixcacheTypes.seconds;
      default = defaults.stall_timeout;
      description = "Seconds a NAR download may receive nothing before it is abandoned.";
    };

    max_fills = mkOption {
      type = types.ints.positive;
      default = defaults.max_fills;
      description = "NAR downloads at once; more wait for a slot.";
    };
    fill_queue = mkOption {
      type = types.ints.unsigned;
      default = defaults.fill_queue;
      description = "Downloads that may wait for a slot; past it new ones are refused with 503 and `Retry-After`.";
    };
    fill_abandon_grace = mkOption {
      type = nixcacheTypes.seconds;
      default = defaults.fill_abandon_grace;
      description = ''
        Seconds a download goes on after its last client left (a client that comes back within it
        rejoins). Downloads of a warm job or a pin are never abandoned.
      '';
    };
    fill_min_rate = mkOption {
      type = nixcacheTypes.sizeOrZero;
      default = defaults.fill_min_rate;
      description = ''
        Bytes per second a source must deliver, measured over `fill_rate_window`, or the download is
        dropped (so a trickling source cannot hold download slots).
      '';
    };
    fill_rate_window = mkOption {
      type = nixcacheTypes.seconds;
      default = defaults.fill_rate_window;
      description = "Seconds the download rate of `fill_min_rate` is measured over.";
    };

    index_retention = mkOption {
      type = nixcacheTypes.seconds;
      default = defaults.index_retention;
      description = ''
        Seconds a narinfo whose NAR is not on disk stays in the index after a client last asked for
        it (the hourly index GC removes older ones). 30 days: the time Nix clients cache a narinfo.
      '';
    };
    scrub_interval = mkOption {
      type = nixcacheTypes.secondsOrZero;
      default = defaults.scrub_interval;
      description = ''
        Seconds between passes of the background scrub, which re-hashes every stored NAR (at most
        32 MB/s) and drops a damaged one, to be fetched again. `0` turns it off.
      '';
    };
    index_cache_size = mkOption {
      type = nixcacheTypes.size;
      default = defaults.index_cache_size;
      description = ''
        Memory the index may use to cache its pages (the page cache holds the file too). More makes
        random hits on a very large index faster; the process's memory grows up to it under load.
      '';
    };
    prefetch = mkOption {
      type = types.bool;
      default = defaults.prefetch;
      description = ''
        Fetch ahead what a client is about to ask for: the narinfos of a fetched narinfo's references,
        and the NAR of a narinfo a client asked for. The first machine copying a closure then waits for
        the appliance's disk instead of the upstream. Costs upstream traffic only for NARs a client
        asked the narinfo of and then did not fetch (`nix build --dry-run`).
      '';
    };
    prefetch_max_size = mkOption {
      type = nixcacheTypes.size;
      default = defaults.prefetch_max_size;
      description = "The largest NAR file fetched ahead; larger ones are fetched when a client asks.";
    };
  };
}
