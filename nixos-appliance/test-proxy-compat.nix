# VM test: a nixcache-oci user's configuration (services.nixcache-proxy from nixosModules.default) still
# evaluates, runs a cache on 127.0.0.1:37515 only, and points the local Nix at it with the publisher's key.
# The GHCR cache itself is out of reach in the test (no internet): the daemon must start and serve anyway.
{ self }:
{ ... }:

let
  keys = import ./test-keys.nix;
in
{
  name = "nixcache-proxy-compat";

  nodes.machine = {
    imports = [ self.nixosModules.default ];
    services.nixcache-proxy = {
      enable = true;
      repo = "example/cache";
      publicKey = keys.appliance.public;
    };
  };

  testScript = ''
    machine.wait_for_unit("nixcache.service")
    machine.wait_for_open_port(37515, "127.0.0.1")
    machine.succeed("curl -fsS http://localhost:37515/nix-cache-info | grep -q '^StoreDir: /nix/store'")
    machine.fail("ss -Hltn | grep -q '0.0.0.0:37515'")
    machine.succeed("grep -q 'http://localhost:37515' /etc/nix/nix.conf")
    machine.succeed("grep -qF '${keys.appliance.public}' /etc/nix/nix.conf")
  '';
}
