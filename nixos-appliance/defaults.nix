# The daemon's built-in defaults (src/config.rs and src/config/*.rs, DEFAULT_*), as plain data: the NixOS
# module declares its `services.nixcache.settings` options with these, so the option documentation tells
# the truth. tests/packaging.rs evaluates this file and fails when any value drifts from the daemon's
# constants, and renders it as a config file that must resolve to exactly the daemon's defaults.
{
  listen = "0.0.0.0:37515";
  max_size = "20GiB";
  min_free = "512MiB";
  priority = 30;
  negative_ttl = 60;
  upstream_timeout = 10;
  stall_timeout = 60;
  max_fills = 16;
  fill_queue = 64;
  fill_abandon_grace = 5;
  fill_min_rate = "4KiB";
  fill_rate_window = 60;
  index_retention = 2592000;
  scrub_interval = 604800;
  index_cache_size = "128MiB";
  prefetch = true;
  prefetch_max_size = "256MiB";
  upstreams = [ "https://cache.nixos.org" ];
  trusted_keys = [ "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ];
  mdns = true;
  mdns_interfaces = [ ];
  oci_registry = "https://ghcr.io";
  index_ttl = 300;

  # Limits (src/config/limits.rs).
  header_timeout = 60;
  keepalive_timeout = 75;
  send_timeout = 60;
  max_connections = 4096;
  max_connections_per_client = 256;
  max_upstream_lookups = 64;
  trust_loopback = true;

  # Transcoding, warm, pins (issue 16).
  transcode = "zstd";
  transcode_level = 3;
  transcode_workers = 1;
  transcode_keep_original = 3600;
  warm_concurrency = 4;

  # LAN pushes (src/config/push.rs).
  push_pending_max = 64;
  push_pending_timeout = 600;
}
