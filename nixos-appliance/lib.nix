# Option types for the values the daemon parses, and helpers the modules share.
#
# Each type accepts what `nixcache serve` accepts for that kind of value (src/config.rs) and says so in
# its description, so that a mistake fails at evaluation with a message naming the option — not at
# build time (`--check-config`) and never at boot. A new setting of the daemon picks the type of its
# kind here: a size (`max_size`, `min_free`), a number of seconds (`*_timeout`, `*_interval`), a URL.
{ lib }:

let
  matches = regex: value: builtins.isString value && builtins.match regex value != null;

  ipv4Regex =
    let
      octet = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";
    in
    "${octet}\\.${octet}\\.${octet}\\.${octet}";
  # At least two colons ("::", "fe80::1", "::ffff:1.2.3.4"), so that "ADDR:PORT" is not taken for one.
  # Loose otherwise: the daemon's own parser (checked at build time) has the last word on odd forms.
  ipv6Regex = "[0-9A-Fa-f.]*:[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*";
  portRegex = "[1-9][0-9]{0,4}";
  isPort = p: matches portRegex p && lib.toInt p <= 65535;

  # "ADDR:PORT" or "[V6ADDR]:PORT" → { address; port; } (address without brackets), or null.
  parseListen =
    value:
    let
      v4 = builtins.match "(${ipv4Regex}):([0-9]+)" value;
      v6 = builtins.match "[[](${ipv6Regex})[]]:([0-9]+)" value;
      found =
        if !builtins.isString value then
          null
        else if v4 != null then
          {
            address = builtins.head v4;
            port = lib.last v4;
          }
        else if v6 != null then
          {
            address = builtins.head v6;
            port = lib.last v6;
          }
        else
          null;
    in
    if found != null && isPort found.port then
      found // { port = lib.toInt found.port; }
    else
      null;

  mkStringType =
    name: description: check:
    lib.mkOptionType {
      inherit name description check;
      descriptionClass = "noun";
      merge = lib.mergeEqualOption;
    };
in
rec {
  types = {
    # `listen`: what the daemon binds. A bare address (no port) is refused: the file's `listen` needs both.
    listen = mkStringType "nixcache-listen" "address and port (`ADDR:PORT` such as `0.0.0.0:37515`, or `[V6ADDR]:PORT` such as `[::]:37515`)" (
      v: parseListen v != null
    );

    # An IP address (v4 or v6, without brackets), or `localhost`.
    address = mkStringType "nixcache-address" "IP address (such as `127.0.0.1`, `192.168.1.10`, `::1`) or `localhost`" (
      v: v == "localhost" || matches ipv4Regex v || matches ipv6Regex v
    );

    # A size as the daemon's parse_size reads it: bytes, or a number with K/M/G/T (powers of 1024, also
    # KiB…) or KB/MB/GB/TB (powers of 1000). Zero is refused (a cap of nothing).
    size = lib.types.either lib.types.ints.positive (
      mkStringType "nixcache-size" "size (`20GiB`, `500M`, `3GB`, or a number of bytes)" (
        matches "0*[1-9][0-9]* ?([bB]|[kKmMgGtT]([iI]?[bB])?)?"
      )
    );

    # A size where 0 means something (`min_free = 0`: keep nothing free; `fill_min_rate = 0`: no
    # minimum rate).
    sizeOrZero = lib.types.either lib.types.ints.unsigned (
      mkStringType "nixcache-size-or-zero" "size or 0 (`512MiB`, `4KiB`, `0`, or a number of bytes)" (
        matches "[0-9]+ ?([bB]|[kKmMgGtT]([iI]?[bB])?)?"
      )
    );

    # Durations are whole seconds in nixcache.toml; the daemon refuses 0.
    seconds = lib.types.ints.positive;

    # Seconds where 0 means something (`scrub_interval = 0`: off; `transcode_keep_original = 0`: at once).
    secondsOrZero = lib.types.ints.unsigned;

    # An upstream cache: http or https, a host, an optional path; no query or fragment.
    httpUrl = mkStringType "nixcache-http-url" "http(s) URL without query or fragment (such as `https://cache.nixos.org`)" (
      matches "https?://[^/?#[:space:]]+(/[^?#[:space:]]*)?"
    );

    # A substituter as Nix takes it: http(s), and a query such as `?priority=30` is allowed.
    substituterUrl = mkStringType "nixcache-substituter-url" "http(s) substituter URL (such as `http://192.168.1.10:37515`)" (
      matches "https?://[^/?#[:space:]]+[^#[:space:]]*"
    );

    # An OCI registry: a host (https is implied) or a base URL without a path.
    registry = mkStringType "nixcache-registry" "registry host or base URL without a path (`ghcr.io`, `https://ghcr.io`, `http://127.0.0.1:5000`)" (
      matches "(https?://)?[A-Za-z0-9.-]+(:[0-9]+)?/?"
    );

    # A Nix public key: `name:` and the base64 of 32 bytes.
    publicKey = mkStringType "nixcache-public-key" "Nix public key (`name:base64`, such as `cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=`)" (
      matches "[^:[:space:]]+:[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]="
    );

    # `OWNER/REPO` on GitHub (or the registry's equivalent).
    ociRepo = mkStringType "nixcache-oci-repo" "`OWNER/REPO` (letters, digits, `-`, `_`, `.`)" (
      matches "[A-Za-z0-9._-]+/[A-Za-z0-9._-]+"
    );

    # An interface name as `ip link` shows it, or one of its addresses.
    interface = mkStringType "nixcache-interface" "interface name (such as `eth0`) or address" (
      v: matches "[^[:space:]/:]{1,15}" v || matches ipv4Regex v || matches ipv6Regex v
    );

    # A full store path, as the daemon's StorePath::parse reads it: /nix/store, 32 nix32 characters, a
    # name of Nix's name characters whose first dash-separated part is not `.` or `..`.
    storePath = mkStringType "nixcache-store-path" "store path (`/nix/store/<32 nix32 characters>-<name>`)" (
      v:
      let
        parts = builtins.match "/nix/store/[0-9abcdfghijklmnpqrsvwxyz]{32}-([A-Za-z0-9+._?=-]{1,211})" v;
      in
      parts != null && builtins.match "[.][.]?(-.*)?" (builtins.head parts) == null
    );

    # A pin's name (src/pins.rs check_name): 1 to 64 letters, digits, `-`, `_`, `.`, not starting with `.`.
    pinName = mkStringType "nixcache-pin-name" "pin name (1 to 64 letters, digits, `-`, `_`, `.`; not starting with `.`)" (
      matches "[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}"
    );

    # A push token's name: 1 to 64 letters, digits, `.`, `_`, `-` (also its LoadCredential name's tail).
    pushTokenName = mkStringType "nixcache-push-token-name" "push token name (1 to 64 letters, digits, `.`, `_`, `-`)" (
      matches "[A-Za-z0-9._-]{1,64}"
    );

    # What a push token may publish: store-path names (after `<hash>-`), `*` matching any run.
    namePattern = mkStringType "nixcache-name-pattern" "store-path name pattern (name characters and `*`, such as `myproject-*`)" (
      matches "[A-Za-z0-9+._?=*-]+"
    );

    # A token realm host that may receive registry credentials: `host` or `host:port`.
    tokenHost = mkStringType "nixcache-token-host" "host or `host:port` (such as `auth.docker.io`)" (
      matches "[][A-Za-z0-9.:-]+"
    );

    # An S3 bucket name as the daemon takes it.
    bucketName = mkStringType "nixcache-bucket-name" "bucket name (letters, digits, `-`, `.`, `_`)" (
      matches "[A-Za-z0-9._-]+"
    );

    # A folder in a bucket: `/`-separated parts, none empty, `.` or `..`; "" is the bucket's root.
    bucketPrefix = mkStringType "nixcache-bucket-prefix" "folder in the bucket (such as `team/nix`, or `\"\"` for its root)" (
      v:
      matches "/*([^/]+(/[^/]+)*)?/*" v
      && lib.all (part: part != "." && part != "..") (lib.splitString "/" v)
    );

    # An absolute path given as a string. A Nix path literal (./secret) is refused: it would be copied
    # into the world-readable store.
    absolutePath = mkStringType "nixcache-absolute-path" "absolute path, as a string (not a Nix path literal, which would be copied into the store)" (
      v: builtins.isString v && lib.hasPrefix "/" v
    );
  };

  inherit parseListen;

  # Where systemd puts a service's LoadCredential= files, readable only by its user.
  credentialsDir = "/run/credentials/nixcache.service";

  # Whether a file given to an option is in the world-readable Nix store.
  inStore = path: path != null && lib.hasPrefix builtins.storeDir (toString path);

  # Whether a daemon listening on `listen` is reached over loopback by localUrl (which admin requests
  # from the machine itself need, unless they carry the admin token).
  listensOnLoopback =
    listen:
    let
      inherit (parseListen listen) address;
    in
    builtins.elem address [
      "0.0.0.0"
      "::"
      "::1"
    ]
    || lib.hasPrefix "127." address;

  # The URL this machine's own Nix reaches a daemon listening on `listen` at: a wildcard address means
  # every address, so loopback; any other address is the one to connect to.
  localUrl =
    listen:
    let
      parsed = parseListen listen;
      host =
        if parsed.address == "0.0.0.0" then
          "127.0.0.1"
        else if parsed.address == "::" then
          "[::1]"
        else if lib.hasInfix ":" parsed.address then
          "[${parsed.address}]"
        else
          parsed.address;
    in
    "http://${host}:${toString parsed.port}";

  # The TOML renderer has no null: unset optional values are left out, in nested tables and lists too.
  dropNulls =
    value:
    if builtins.isAttrs value && !lib.isDerivation value then
      lib.mapAttrs (_: dropNulls) (lib.filterAttrs (_: v: v != null) value)
    else if builtins.isList value then
      map dropNulls (builtins.filter (v: v != null) value)
    else
      value;
}
