# The daemon's built-in defaults (src/config.rs, DEFAULT_*), as plain data: the NixOS module declares its
# `services.nixcache.settings` options with these, so the option documentation tells the truth.
# tests/packaging.rs evaluates this file and fails when any value drifts from the daemon's constants.
{
  listen = "0.0.0.0:37515";
  max_size = "20GiB";
  priority = 30;
  negative_ttl = 60;
  upstream_timeout = 10;
  stall_timeout = 60;
  upstreams = [ "https://cache.nixos.org" ];
  trusted_keys = [ "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ];
  mdns = true;
  mdns_interfaces = [ ];
  oci_registry = "https://ghcr.io";
  index_ttl = 300;
}
