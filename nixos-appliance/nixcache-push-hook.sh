#!/bin/sh
# nixcache-push-hook: a Nix post-build-hook that publishes what was just built to a nixcache appliance
# (`nix copy --to`), authenticated with a push token read from a file.
#
# Nix runs the hook after every build, with OUT_PATHS (space-separated store paths) and DRV_PATH set,
# and waits for it (the build counts as done only afterwards). Settings come from the environment (the NixOS client module wraps this script):
#   NIXCACHE_PUSH_URL              the appliance, e.g. http://192.0.2.10:37515 (required)
#   NIXCACHE_PUSH_TOKEN_FILE       file holding the push token (required; keep it mode 600)
#   NIXCACHE_PUSH_LOGIN            netrc login (default: push); the appliance reads only the password
#   NIXCACHE_PUSH_SECRET_KEY_FILE  sign on the builder with this Nix secret key (its public half must be
#                                  in the appliance's push_trusted_keys), unless the token lets the
#                                  appliance sign (default: none)
#   NIXCACHE_PUSH_COMPRESSION      xz (default), zstd, bzip2, br or none
#   NIXCACHE_PUSH_NIX              the nix binary (default: nix from PATH)
#   NIXCACHE_PUSH_STRICT           1: fail (and so stop Nix's builds) when the push fails; default: log
#                                  the failure and let the build count as done
#
# The token never appears on a command line or in nix.conf: it is written to a private netrc file
# (mode 600, in a fresh temporary folder) that only this `nix copy` reads, and removed afterwards.
set -eu

url=${NIXCACHE_PUSH_URL:?NIXCACHE_PUSH_URL is not set}
token_file=${NIXCACHE_PUSH_TOKEN_FILE:?NIXCACHE_PUSH_TOKEN_FILE is not set}
login=${NIXCACHE_PUSH_LOGIN:-push}
compression=${NIXCACHE_PUSH_COMPRESSION:-xz}
nix=${NIXCACHE_PUSH_NIX:-nix}

paths=${OUT_PATHS:-}
if [ -z "$paths" ] && [ -n "${DRV_PATH:-}" ]; then
  # Nix before 2.10 passes an empty OUT_PATHS (NixOS/nix#6446): ask for the derivation's outputs.
  case $nix in
    */*) nix_store="${nix%/*}/nix-store" ;;
    *) nix_store="nix-store" ;;
  esac
  paths=$("$nix_store" --query --outputs "$DRV_PATH" | tr '\n' ' ')
  paths=${paths% }
fi
if [ -z "$paths" ]; then
  exit 0
fi

case $compression in
  xz | zstd | bzip2 | br | none) ;;
  *)
    echo "nixcache-push-hook: NIXCACHE_PUSH_COMPRESSION=$compression: use xz, zstd, bzip2, br or none" >&2
    exit 1
    ;;
esac

# netrc entries are per host: the URL's host without scheme, path, port or IPv6 brackets.
authority=${url#*://}
authority=${authority%%/*}
case $authority in
  \[*) host=${authority#\[} && host=${host%%\]*} ;;
  *) host=${authority%%:*} ;;
esac

umask 077
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
trap 'exit 1' INT TERM
# printf is a shell builtin: the token is not passed to another process.
token=$(cat "$token_file")
printf 'machine %s\nlogin %s\npassword %s\n' "$host" "$login" "$token" >"$dir/netrc"
unset token

store="$url?compression=$compression"
if [ -n "${NIXCACHE_PUSH_SECRET_KEY_FILE:-}" ]; then
  store="$store&secret-key=$NIXCACHE_PUSH_SECRET_KEY_FILE"
fi

# The paths are a space-separated list: split on purpose.
# shellcheck disable=SC2086
if "$nix" --extra-experimental-features nix-command copy --to "$store" \
  --option netrc-file "$dir/netrc" $paths; then
  echo "nixcache-push-hook: pushed $paths to $url" >&2
  exit 0
fi
echo "nixcache-push-hook: pushing $paths to $url failed" >&2
if [ "${NIXCACHE_PUSH_STRICT:-0}" = 1 ]; then
  exit 1
fi
exit 0
