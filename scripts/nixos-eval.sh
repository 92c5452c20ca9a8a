#!/usr/bin/env bash
# Evaluate the NixOS side of this repository against a real nixpkgs, with a Nix new enough for it.
#
#   scripts/nixos-eval.sh [NIX-INSTANTIATE ARGS...]   run nix-instantiate --read-write-mode with these
#                                                      arguments, plus `--argstr nixpkgs PATH` (the tree,
#                                                      or "" for the flake's locked input)
#   scripts/nixos-eval.sh --root                       print the folder whose nix/store holds the results
#
# tests/nixos.rs drives it (cargo test, and so scripts/test.sh); it can be run by hand too:
#   scripts/nixos-eval.sh --eval --strict --json tests/nixos/eval.nix -A facts
#
# What it sets up, once per machine (cached under $NIXCACHE_TEST_CACHE, default /var/cache/nixcache-tests):
# - Nix: nixpkgs needs Nix >= 2.18 and Debian 12 ships 2.8, so a Debian trixie chroot (debootstrap) with
#   trixie's nix-bin. Its /nix/store keeps what evaluations wrote, so a second run is fast.
# - nixpkgs: $NIXCACHE_NIXPKGS, a nixpkgs tree as a folder or a tarball (.tar.zst/.tar.gz/.tar.xz/.tar),
#   unpacked once. Default: the first ../shared/nixpkgs/*.tar.zst next to the repository. With no tree
#   there (or NIXCACHE_NIXPKGS=locked), the flake's locked input (flake.lock) is fetched by Nix; when that
#   fails too, the script stops with a message saying so. It never skips.
# The repository is mounted read-only at its own path inside the chroot, so file names in errors are the
# ones you see; store paths printed are under `$(scripts/nixos-eval.sh --root)/nix/store`.
# Needs root (chroot, mounts), debootstrap and zstd; scripts/install-peers.sh installs those.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${NIXCACHE_TEST_CACHE:-/var/cache/nixcache-tests}
root=$cache/nix-trixie
say() { echo "nixos-eval: $*" >&2; }
die() {
  say "$*"
  exit 2
}

if [ "${1:-}" = "--root" ]; then
  echo "$root"
  exit 0
fi

[ "$(id -u)" -eq 0 ] || die "needs root (it makes a chroot with Nix >= 2.18 and mounts the repository into it)"

# The Debian mirror this machine's apt uses (deb822 or one-line sources), unless told otherwise.
debian_mirror() {
  if [ -n "${NIXCACHE_DEBIAN_MIRROR:-}" ]; then
    echo "$NIXCACHE_DEBIAN_MIRROR"
    return
  fi
  local m
  m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
    grep -oE '(https?|file)://[^ ]*/debian/?( |$)' | grep -v security | head -n 1 | tr -d ' ' || true)
  echo "${m:-http://deb.debian.org/debian}"
}

# A Debian trixie chroot with nix-bin (Nix 2.26). Built in a temporary folder inside a private mount
# namespace (debootstrap mounts /proc in its target), and moved into place only when complete.
make_chroot() {
  [ -x "$root/usr/bin/nix-instantiate" ] && return
  command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install debootstrap (scripts/install-peers.sh does)"
  local tmp=$root.partial mirror
  mirror=$(debian_mirror)
  say "making a Debian trixie chroot with Nix in $root (once per machine, a minute or a few; mirror $mirror)"
  rm -rf "$tmp"
  # shellcheck disable=SC2016 # the inner script expands its own arguments
  unshare --mount --propagation private -- sh -euc '
    tmp=$1; mirror=$2
    debootstrap --variant=minbase trixie "$tmp" "$mirror" >"$tmp.log" 2>&1 || {
      tail -n 20 "$tmp.log" >&2; exit 1; }
    cp /etc/resolv.conf "$tmp/etc/resolv.conf"
    printf "#!/bin/sh\nexit 101\n" > "$tmp/usr/sbin/policy-rc.d"; chmod +x "$tmp/usr/sbin/policy-rc.d"
    mount -t proc proc "$tmp/proc"
    chroot "$tmp" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
      sh -c "apt-get update -qq && apt-get install -y -qq --no-install-recommends nix-bin" >>"$tmp.log" 2>&1 || {
      tail -n 20 "$tmp.log" >&2; exit 1; }
    chroot "$tmp" apt-get clean
  ' _ "$tmp" "$mirror" || die "could not make the chroot (log: $tmp.log)"
  rm -f "$tmp.log"
  mv "$tmp" "$root"
}

# The nixpkgs tree to evaluate against: prints its folder, or nothing for the flake's locked input.
nixpkgs_tree() {
  local given=${NIXCACHE_NIXPKGS:-} source
  if [ "$given" = locked ]; then
    return
  elif [ -n "$given" ]; then
    [ -e "$given" ] || die "NIXCACHE_NIXPKGS=$given does not exist"
    source=$(realpath "$given")
  else
    source=$(compgen -G "$repo/../shared/nixpkgs/*.tar.zst" | head -n 1 || true)
    [ -n "$source" ] || return 0
    source=$(realpath "$source")
  fi
  if [ -d "$source" ]; then
    [ -f "$source/nixos/lib/eval-config.nix" ] || die "$source is not a nixpkgs tree (no nixos/lib/eval-config.nix)"
    echo "$source"
    return
  fi
  # A tarball, unpacked once per content.
  local key dir
  key=$(sha256sum "$source" | cut -c1-16)
  dir=$cache/nixpkgs/$key
  if [ ! -f "$dir/.complete" ]; then
    say "unpacking $source into $dir (once per tarball)"
    rm -rf "$dir"
    mkdir -p "$dir"
    tar -C "$dir" -xf "$source" || die "cannot unpack $source"
    touch "$dir/.complete"
  fi
  local top
  top=$(find "$dir" -mindepth 3 -maxdepth 4 -path '*/nixos/lib/eval-config.nix' -printf '%h\n' | head -n 1)
  [ -n "$top" ] || die "$source holds no nixpkgs tree (no nixos/lib/eval-config.nix)"
  dirname "$(dirname "$top")"
}

# Runs a command in the chroot, in a private mount namespace (nothing stays mounted afterwards), with the
# repository read-only and the nixpkgs tree at their own paths.
in_chroot() {
  local tree=$1 cwd=$repo
  shift
  # Relative paths in the arguments mean what they mean here, when here is inside the repository.
  case $PWD/ in "$repo"/*) cwd=$PWD ;; esac
  # shellcheck disable=SC2016 # the inner script expands its own arguments
  unshare --mount --propagation private -- bash -euc '
    root=$1 repo=$2 tree=$3 cwd=$4; shift 4
    mount --rbind /dev "$root/dev"
    mount -t proc proc "$root/proc"
    mkdir -p "$root$repo"
    mount --bind "$repo" "$root$repo"
    mount -o remount,bind,ro "$root$repo"
    if [ -n "$tree" ]; then
      mkdir -p "$root$tree"
      mount --bind "$tree" "$root$tree"
    fi
    cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
    exec chroot "$root" /usr/bin/env -i HOME=/root PATH=/usr/bin:/bin TMPDIR=/tmp \
      NIX_CONFIG="$(printf "%s\n" "experimental-features = nix-command" "sandbox = false" \
        "substituters =" "build-users-group =" "warn-dirty = false")" \
      /bin/sh -c "cd \"\$0\" && exec \"\$@\"" "$cwd" "$@"
  ' _ "$root" "$repo" "$tree" "$cwd" "$@"
}

main() {
  mkdir -p "$cache"
  exec 9>"$cache/lock"
  # One setup at a time on a machine (several worktrees may run their tests at once); evaluations share it.
  flock 9
  make_chroot
  tree=$(nixpkgs_tree)
  hash=
  if [ -n "$tree" ]; then
    case $tree in
      "$cache"/nixpkgs/*)
        # A tree unpacked here never changes (its folder is named after the tarball's content): its NAR
        # hash is computed once, so that builtins.path finds it in the store instead of hashing 50,000
        # files again. A folder given by NIXCACHE_NIXPKGS may change, so Nix hashes it every time.
        rel=${tree#"$cache"/nixpkgs/}
        stamp=$cache/nixpkgs/${rel%%/*}.narhash
        if [ ! -s "$stamp" ]; then
          in_chroot "$tree" nix-hash --type sha256 --base32 "$tree" >"$stamp.tmp"
          mv "$stamp.tmp" "$stamp"
        fi
        hash=$(cat "$stamp")
        ;;
    esac
  else
    say "no nixpkgs tree (NIXCACHE_NIXPKGS, or ../shared/nixpkgs/*.tar.zst): using the flake's locked nixpkgs input"
    if ! err=$(in_chroot "" nix-instantiate --read-write-mode --eval -E \
      "(import $repo/tests/nixos/flake-compat.nix { src = $repo; }).inputs.nixpkgs.outPath" 2>&1); then
      die "no nixpkgs: no tree was given (set NIXCACHE_NIXPKGS to a nixpkgs folder or tarball) and the flake's locked nixpkgs could not be fetched: $(grep -m1 -E '^ *error: .' <<<"$err" | sed 's/^ *//')"
    fi
  fi
  flock -u 9

  # --read-write-mode: the sources are copied into the store as flakes would be, and .drv files are written
  # (with --eval too), so that every drvPath printed is a real, instantiated derivation.
  in_chroot "$tree" nix-instantiate --read-write-mode --argstr nixpkgs "$tree" --argstr nixpkgsHash "$hash" "$@"
}

# The whole script is read before it runs (main), so editing it during a run cannot change that run.
main "$@"
exit $?
