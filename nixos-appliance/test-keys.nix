# Signing keys for the VM tests only. They are public (they are in this repository): never use them for a
# real cache. Made with `nix-store --generate-binary-cache-key NAME secret public`.
{
  # Signs what the test's upstream cache (nix-serve, standing in for cache.nixos.org) serves.
  upstream = {
    secret = "upstream.test-1:774hW2WzS/nL7ngtgGcqF0WjPisq8WZ78MtZQ/AjeZaZtkUH3qRfCcZ2JfRRcpN7l9PWKAkKGM5x+bpj8w5T0A==";
    public = "upstream.test-1:mbZFB96kXwnGdiX0UXKTe5fT1igJChjOcfm6Y/MOU9A=";
  };
  # The appliance's own key, pinned by the test clients.
  appliance = {
    secret = "appliance.test-1:9f1pR+xuQjuViq7u6fGFXqbp3h8hJZeElEciDVlSYdGUPnxH7Bl48qJq2W6/qXMln1CSZdiLPMgLgfN/9VHe/w==";
    public = "appliance.test-1:lD58R+wZePKiatluv6lzJZ9QkmXYizzIC4Hzf/VR3v8=";
  };
  # A key that signs nothing in the tests: trusting only it must get a client nothing.
  stranger.public = "stranger.test-1:6KB/l2THrckjcVtv6RwNWpXbse9WGzbjP/2VeiGMZAA=";
}
