# What the VM tests substitute: an input-addressed path (so signatures matter; a content-addressed one would
# pass unsigned) with a reference to a second one. Neither is in a test client's store.
{ pkgs }:

rec {
  dep = pkgs.writeText "nixcache-test-dep" "fetched once for the whole LAN\n";
  payload = pkgs.runCommand "nixcache-test-payload" { } ''
    mkdir $out
    cp ${dep} $out/message
    echo ${dep} > $out/dep-path
  '';
}
