#!/bin/sh
# nixcache-discover.sh: find Nix caches advertised on the LAN (mDNS service _nix-cache._tcp, as
# `nixcache serve` advertises itself) with avahi, check that each answers GET /nix-cache-info, and print
# nix.conf lines: the same lines as `nixcache discover --nix-conf`, for machines without the binary.
#
# Usage: nixcache-discover.sh [--trust NAME:KEY]... [--trust-advertised] [--write FILE]
#
#   --trust NAME:KEY    a key you trust (read the appliance's /public-key on a machine you trust).
#   --trust-advertised  trust every advertised key: trust on first use. mDNS is unauthenticated, so
#                       anyone on the LAN can advertise a cache with a key of their own.
#   --write FILE        also write the lines to FILE atomically, for a nix.conf `!include FILE`.
#
# Every cache that answers becomes an `extra-substituters` entry, http://IP:PORT?priority=N (an address,
# not a .local name, which many Nix clients cannot resolve); Nix still checks every narinfo's signature.
# An advertised key becomes an `extra-trusted-public-keys` entry only when it equals a --trust key, or
# with --trust-advertised.
#
# Needs a running avahi-daemon, avahi-browse (Debian avahi-utils), curl, awk, sort.
# Exit status: 0 when a cache with a trusted key was found, 1 when none was, 2 on a usage error.
set -eu
export LC_ALL=C

me=nixcache-discover.sh
pinned=" "
trust_advertised=0
write=""

usage() {
  echo "usage: $me [--trust NAME:KEY]... [--trust-advertised] [--write FILE]" >&2
  exit 2
}

# The key form `nixcache discover` accepts: a plain name, ':', base64 of 32 bytes written canonically.
valid_key() {
  printf '%s\n' "$1" | grep -Eqx '[A-Za-z0-9._+@-]+:[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]='
}

while [ $# -gt 0 ]; do
  case $1 in
    --trust)
      [ $# -ge 2 ] || usage
      valid_key "$2" || { echo "$me: --trust $2: not a public key (name:base64)" >&2; exit 2; }
      pinned="$pinned$2 "
      shift 2 ;;
    --trust=*)
      k=${1#--trust=}
      valid_key "$k" || { echo "$me: --trust $k: not a public key (name:base64)" >&2; exit 2; }
      pinned="$pinned$k "
      shift ;;
    --trust-advertised) trust_advertised=1; shift ;;
    --write)
      [ $# -ge 2 ] || usage
      write=$2
      shift 2 ;;
    --write=*) write=${1#--write=}; shift ;;
    -h|--help) usage ;;
    *) echo "$me: unknown argument $1" >&2; usage ;;
  esac
done

for tool in avahi-browse curl awk sort; do
  command -v "$tool" >/dev/null 2>&1 || { echo "$me: $tool is missing" >&2; exit 1; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM

if ! avahi-browse -rpt _nix-cache._tcp >"$work/browse" 2>"$work/browse.err"; then
  echo "$me: avahi-browse failed (is avahi-daemon running?): $(cat "$work/browse.err")" >&2
  exit 1
fi

# One line per candidate address: service-number rank address port path proto priority key, with every
# value checked here ("!" marks an unusable path or protocol, "-" an absent priority or key), so that no
# field holds a space and nothing advertised can reach nix.conf unchecked.
awk -F';' '
function rank(a) {
  if (a ~ /^127\./ || a == "::1") return 2
  if (a ~ /:/) { if (tolower(a) ~ /^fe[89ab]/ || a == "::") return -1; return 1 }
  if (a == "0.0.0.0" || a ~ /^(22[4-9]|23[0-9])\./) return -1
  return 0
}
# Splits avahi'"'"'s "k=v" "k=v" list (with \" \\ and \DDD escapes) into T. avahi-browse lists the TXT strings
# last-first, so the last one kept is the first on the wire, which DNS-SD says wins.
function parse_txt(s,    i, c, inq, cur, eq, k) {
  split("", T)
  inq = 0
  for (i = 1; i <= length(s); i++) {
    c = substr(s, i, 1)
    if (!inq) { if (c == "\"") { inq = 1; cur = "" }; continue }
    if (c == "\\") {
      i++; c = substr(s, i, 1)
      if (c ~ /[0-9]/) { i += 2; c = "\001" }
      cur = cur c; continue
    }
    if (c == "\"") {
      inq = 0
      eq = index(cur, "=")
      if (eq == 0) { k = cur; v = "" } else { k = substr(cur, 1, eq - 1); v = substr(cur, eq + 1) }
      T[tolower(k)] = v
      continue
    }
    cur = cur c
  }
}
$1 == "=" && NF >= 10 {
  name = $4 ";" $5 ";" $6
  if (!(name in id)) id[name] = ++services
  txt = $10
  for (i = 11; i <= NF; i++) txt = txt ";" $i
  parse_txt(txt)
  path = ("path" in T) ? T["path"] : "/"
  if (path !~ /^\/[A-Za-z0-9\/._~-]*$/) path = "!"
  proto = ("proto" in T) ? T["proto"] : "http"
  if (proto != "http") proto = "!"
  prio = ("priority" in T && T["priority"] ~ /^[0-9]+$/ && length(T["priority"]) <= 9) ? T["priority"] + 0 : "-"
  key = ("pubkey" in T && T["pubkey"] ~ /^[A-Za-z0-9._+@-]+:[A-Za-z0-9+\/][A-Za-z0-9+\/]*=$/ && length(T["pubkey"]) <= 255) ? T["pubkey"] : "-"
  r = rank($8)
  if (r >= 0 && $9 ~ /^[0-9]+$/) print id[name], r, $8, $9, path, proto, prio, key
}' "$work/browse" | sort -k1,1n -k2,2n -k3,3 >"$work/candidates"

# The first address of each service that answers as a Nix cache: sort-priority url substituter trusted key
: >"$work/found"
done_id=""
while read -r sid _rank addr port path proto prio key; do
  [ "$sid" = "$done_id" ] && continue
  if [ "$path" = "!" ] || [ "$proto" = "!" ]; then
    done_id=$sid
    continue
  fi
  [ "$key" = "-" ] || valid_key "$key" || key="-"
  case $addr in
    *:*) host="[$addr]" ;;
    *) host=$addr ;;
  esac
  url="http://$host:$port${path%/}"
  info=$(curl -fsS --noproxy '*' --max-time 2 "$url/nix-cache-info" 2>/dev/null) || continue
  store_dir=$(printf '%s\n' "$info" | awk 'index($0, "StoreDir:") == 1 { sub(/^StoreDir:[ \t]*/, ""); sub(/[ \t\r]*$/, ""); print; exit }')
  [ "$store_dir" = /nix/store ] || continue
  info_prio=$(printf '%s\n' "$info" | awk 'index($0, "Priority:") == 1 { sub(/^Priority:[ \t]*/, ""); sub(/[ \t\r]*$/, ""); print; exit }')
  case $info_prio in
    ''|*[!0-9]*) ;;
    *) [ ${#info_prio} -le 9 ] && prio=$(awk -v p="$info_prio" 'BEGIN { print p + 0 }') ;;
  esac
  trusted=no
  if [ "$key" != "-" ]; then
    case $pinned in *" $key "*) trusted=yes ;; esac
    [ "$trust_advertised" = 1 ] && trusted=yes
  fi
  if [ "$prio" = "-" ]; then sub=$url; order=50; else sub="$url?priority=$prio"; order=$prio; fi
  echo "$order $url $sub $trusted $key" >>"$work/found"
  done_id=$sid
done <"$work/candidates"

sort -k1,1n -k2,2 -k5,5 "$work/found" >"$work/sorted"
subs=$(awk '!seen[$3]++ { printf "%s%s", (n++ ? " " : ""), $3 }' "$work/sorted")
keys=$(awk '$4 == "yes" { print $5 }' "$work/sorted" | sort -u | awk '{ printf "%s%s", (NR > 1 ? " " : ""), $0 }')
{
  [ -z "$subs" ] || echo "extra-substituters = $subs"
  [ -z "$keys" ] || echo "extra-trusted-public-keys = $keys"
} >"$work/lines"
cat "$work/lines"

if [ -n "$write" ]; then
  dir=$(dirname "$write")
  tmp="$dir/.$(basename "$write").tmp-$$"
  { echo "# Written by $me: Nix caches found on the LAN."; cat "$work/lines"; } >"$tmp" || { rm -f "$tmp"; exit 1; }
  mv -f "$tmp" "$write" || { rm -f "$tmp"; exit 1; }
  echo "wrote $write" >&2
fi

found=$(wc -l <"$work/found")
if [ "$found" -eq 0 ]; then
  echo "$me: no Nix cache found over mDNS" >&2
  exit 1
fi
if [ -z "$keys" ]; then
  echo "$me: $found cache(s) found, none with a trusted key: pin the appliance's key with --trust NAME:KEY, or accept advertised keys with --trust-advertised" >&2
  exit 1
fi
exit 0
