# VM test: discovery between machines on one LAN. The appliance advertises itself over mDNS; `laptop`
# finds it with `nixcache discover`, trusts it because its key is pinned, and substitutes through it;
# `stranger` finds it with nixcache-discover.sh (avahi) but pins nothing, so it gets a substituter line
# and no trust. Run: nix flake check -L
{ self }:
{ pkgs, ... }:

let
  keys = import ./test-keys.nix;
  inherit (import ./test-payload.nix { inherit pkgs; }) payload;
  include = "/var/lib/nixcache-client/nix.conf";
in
{
  name = "nixcache-discovery";

  nodes = {
    nixcache = {
      imports = [ self.nixosModules.appliance ];
      # A fixed key, so that the laptop's configuration can pin it (a real appliance makes its own).
      services.nixcache.signingKeyFile = "${pkgs.writeText "appliance.secret" keys.appliance.secret}";
      services.nixcache.settings = {
        upstreams = [ "http://127.0.0.1:5000" ];
        trusted_keys = [ keys.upstream.public ];
      };
      # The upstream runs on the appliance itself here, to keep the test at three machines.
      services.nix-serve = {
        enable = true;
        bindAddress = "127.0.0.1";
        secretKeyFile = "${pkgs.writeText "upstream.secret" keys.upstream.secret}";
      };
      system.extraDependencies = [ payload ];
    };

    laptop = {
      imports = [ self.nixosModules.client ];
      services.nixcache-client = {
        enable = true;
        trustedPublicKeys = [ keys.appliance.public ];
      };
    };

    stranger = {
      imports = [ self.nixosModules.client ];
      services.nixcache-client = {
        enable = true;
        discovery.method = "avahi";
      };
    };
  };

  testScript =
    { nodes, ... }:
    ''
      url = "http://${nodes.nixcache.networking.primaryIPAddress}:37515?priority=30"
      trusted = "extra-trusted-public-keys = ${keys.appliance.public}"

      def discovered(machine):
          # The boot-time run may have come before the appliance was up: run it again until it sees it.
          machine.wait_until_succeeds(
              f"systemctl start nixcache-discover.service && grep -F '{url}' ${include} | grep -q '^extra-substituters = '",
              timeout=180,
          )
          machine.succeed("systemctl show -p Result nixcache-discover.service | grep -qx Result=success")
          return machine.succeed("cat ${include}")

      start_all()
      nixcache.wait_for_unit("nixcache.service")
      nixcache.wait_for_open_port(37515)

      with subtest("laptop, nixcache discover: the pinned key is trusted and the path substituted"):
          lines = discovered(laptop)
          assert trusted in lines, lines
          laptop.succeed("grep -qxF '!include ${include}' /etc/nix/nix.conf")
          laptop.succeed("nix-store --store /root/s --realise ${payload}")
          laptop.succeed("grep -q 'fetched once' /root/s${payload}/message")

      with subtest("stranger, nixcache-discover.sh: a substituter line, never a trusted key"):
          stranger.wait_for_unit("avahi-daemon.service")
          lines = discovered(stranger)
          assert "extra-trusted-public-keys" not in lines, lines
          stranger.fail("nix-store --store /root/s --realise ${payload}")
    '';
}
