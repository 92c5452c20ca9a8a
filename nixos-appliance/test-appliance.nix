# VM test: the appliance (nixosModules.appliance, as the images ship it) between an upstream cache and a
# LAN client. The client trusts only the key the appliance made on first boot; the upstream (nix-serve,
# standing in for cache.nixos.org) signs with a key only the appliance trusts. Run: nix flake check -L
{ self }:
{ pkgs, ... }:

let
  keys = import ./test-keys.nix;
  inherit (import ./test-payload.nix { inherit pkgs; }) dep payload;
  url = "http://nixcache:37515";
in
{
  name = "nixcache-appliance";

  nodes = {
    upstream = {
      services.nix-serve = {
        enable = true;
        openFirewall = true;
        secretKeyFile = "${pkgs.writeText "upstream.secret" keys.upstream.secret}";
      };
      system.extraDependencies = [ payload ];
    };

    nixcache = {
      imports = [ self.nixosModules.appliance ];
      services.nixcache.settings = {
        upstreams = [ "http://upstream:5000" ];
        trusted_keys = [ keys.upstream.public ];
      };
    };

    client = { };
  };

  testScript = ''
    import json

    def realise(store, key, succeed=True):
        # A fresh store each time, so that every path comes over the network.
        command = (
            f"nix-store --store /root/{store} --realise ${payload}"
            f" --option substituters ${url} --option trusted-public-keys '{key}'"
        )
        return client.succeed(command) if succeed else client.fail(command)

    start_all()
    upstream.wait_for_unit("nix-serve.service")
    upstream.wait_for_open_port(5000)
    nixcache.wait_for_unit("nixcache.service")
    nixcache.wait_for_open_port(37515)
    client.wait_for_unit("multi-user.target")

    with subtest("first boot made the appliance's key, and /public-key serves it"):
        public = nixcache.succeed("cat /var/lib/nixcache-key/public").strip()
        assert public.startswith("nixcache-1:"), public
        client.wait_until_succeeds("curl -fsS ${url}/nix-cache-info")
        served = client.succeed("curl -fsS ${url}/public-key").strip()
        assert served == public, f"/public-key says {served!r}, the key file {public!r}"

    with subtest("a client trusting only the appliance's key substitutes a path and its reference"):
        realise("store-a", public)
        client.succeed("grep -q 'fetched once' /root/store-a${payload}/message")
        client.succeed("test -f /root/store-a${dep}")

    with subtest("a key that signed nothing gets nothing"):
        realise("store-b", "${keys.stranger.public}", succeed=False)

    with subtest("upstream gone, appliance restarted: served from the appliance's disk"):
        upstream.shutdown()
        nixcache.systemctl("restart nixcache.service")
        nixcache.wait_for_open_port(37515)
        realise("store-c", public)
        client.succeed("test -f /root/store-c${dep}")
        status = json.loads(client.succeed("curl -fsS ${url}/_status"))
        nixcache.log(json.dumps(status, indent=2))

    with subtest("hardened service, dynamic user, data in /var/lib/nixcache"):
        nixcache.succeed("test -f /var/lib/nixcache/index.redb")
        nixcache.succeed("systemctl show -p DynamicUser nixcache.service | grep -qx DynamicUser=yes")
        nixcache.log(nixcache.succeed("systemd-analyze security nixcache.service | tail -n 1"))
  '';
}
