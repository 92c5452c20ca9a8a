#!/usr/bin/env bash
# Issue 16 benchmark: the real Nix client copying an xz-compressed closure of real binaries through
# nixcache after it transcoded the NARs to zstd, against nginx serving the xz folder (what a plain
# cache gives the LAN) and nginx serving a zstd folder (the ceiling), same run, fresh stores each time.
# Also reports the appliance's transcoding CPU per GiB, the time from fill to zstd and the size change.
#
#   scripts/bench-zstd.sh [ROUNDS] [FILE...]
#
# FILE...: what goes into the closure (default: libLLVM, libz3, libx265, librsvg from this machine,
# ~170 MiB of NAR). The xz files are made with `xz -6` (cache.nixos.org's preset), multi-threaded.
# Needs nix-bin, nginx-light, xz-utils, curl (scripts/install-peers.sh installs them) and a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}
shift || true
FILES=("$@")
if [ ${#FILES[@]} -eq 0 ]; then
  for f in libLLVM-15.so.1 libz3.so.4 libx265.so.199 librsvg-2.so.2.48.0; do
    FILES+=("/usr/lib/x86_64-linux-gnu/$f")
  done
fi
cargo build --release --quiet
BIN=$PWD/target/release/nixcache
W=$(mktemp -d /tmp/nixcache-bench-zstd.XXXXXX)
chmod 755 "$W" # nginx's workers run as another user
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  if [ -n "${KEEP:-}" ]; then echo "kept $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT
export HOME=$W/home XDG_CACHE_HOME=$W/xdg
mkdir -p "$HOME" "$W/keys"
export NIX_CONFIG=$'experimental-features = nix-command\nsandbox = false\nbuild-users-group =\nsubstituters =\nextra-sandbox-paths = /bin /usr /lib /lib64\nnarinfo-cache-positive-ttl = 0\nnarinfo-cache-negative-ttl = 0'
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }

# 1. An input-addressed closure of real binaries, one path per file (signatures matter).
nix-store --generate-binary-cache-key bench-1 "$W/keys/sk" "$W/keys/pk"
PK=$(cat "$W/keys/pk")
{
  echo 'let sh = name: src: derivation { inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "/bin/cp ${src} $out" ]; };'
  echo 'in ['
  i=0; for f in "${FILES[@]}"; do echo "  (sh \"f$i\" \"$f\")"; i=$((i+1)); done
  echo ']'
} > "$W/closure.nix"
nix-build --store "$W/store" "$W/closure.nix" --no-out-link > "$W/paths"
mapfile -t PATHS < "$W/paths"
nix copy --store "$W/store" --to "file://$W/plain?compression=none&secret-key=$W/keys/sk" "${PATHS[@]}"
nix copy --store "$W/store" --to "file://$W/zstd?compression=zstd&secret-key=$W/keys/sk" "${PATHS[@]}"

# 2. The xz folder: the same narinfos (signatures stay valid: they do not cover the file fields).
mkdir -p "$W/xz/nar"
cp "$W/plain/nix-cache-info" "$W/xz/"
NAR_BYTES=0
for ni in "$W"/plain/*.narinfo; do
  url=$(sed -n 's/^URL: //p' "$ni")
  NAR_BYTES=$((NAR_BYTES + $(stat -c %s "$W/plain/$url")))
  xz -6 -T0 -c "$W/plain/$url" > "$W/xz/tmp.nar.xz"
  fh=$(nix hash file --type sha256 --base32 "$W/xz/tmp.nar.xz")
  mv "$W/xz/tmp.nar.xz" "$W/xz/nar/$fh.nar.xz"
  sed -e "s|^URL: .*|URL: nar/$fh.nar.xz|" -e 's/^Compression: .*/Compression: xz/' \
      -e "s/^FileHash: .*/FileHash: sha256:$fh/" \
      -e "s/^FileSize: .*/FileSize: $(stat -c %s "$W/xz/nar/$fh.nar.xz")/" "$ni" > "$W/xz/$(basename "$ni")"
done
XZ_BYTES=$(du -cb "$W"/xz/nar/*.nar.xz | tail -1 | cut -f1)

# 3. nginx over the xz and zstd folders.
NX=$(port); NZ=$(port); NC=$(port)
mkdir -p "$W/nginx"
cat > "$W/nginx.conf" <<EOF
daemon off; worker_processes 1; pid $W/nginx/pid; error_log $W/nginx/error.log;
events {}
http {
  access_log off; client_body_temp_path $W/nginx; proxy_temp_path $W/nginx; fastcgi_temp_path $W/nginx;
  uwsgi_temp_path $W/nginx; scgi_temp_path $W/nginx; sendfile on;
  types { text/x-nix-narinfo narinfo; }
  server { listen 127.0.0.1:$NX; root $W/xz; }
  server { listen 127.0.0.1:$NZ; root $W/zstd; }
}
EOF
nginx -c "$W/nginx.conf" -p "$W/nginx" & PIDS+=($!)

# 4. nixcache with nginx-xz as its upstream; transcoding at the default level.
NIXCACHE_LOG=warn "$BIN" serve --listen "127.0.0.1:$NC" --data-dir "$W/data" --upstream "http://127.0.0.1:$NX" \
  --trusted-key "$PK" --no-mdns & PIDS+=($!)
NCPID=${PIDS[-1]}
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$NC/nix-cache-info" >/dev/null && curl -sf "http://127.0.0.1:$NX/nix-cache-info" >/dev/null && break; sleep 0.1; done

copy() { # copy FROM-URL into a fresh store; prints seconds
  local s; s=$(mktemp -d "$W/s.XXXX")
  local t0; t0=$(now)
  XDG_CACHE_HOME=$s/xdg nix copy --store "$s/store" --from "$1" --option trusted-public-keys "$PK" "${PATHS[@]}" \
    || { echo "nix copy --from $1 failed" >&2; exit 1; }
  python3 -c "print(f'{$(now) - $t0:.2f}')"
  rm -rf "$s"
}
status() { curl -sf "http://127.0.0.1:$NC/_status"; }
jq_() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

# 5. Fill through the appliance (xz), then wait for every NAR to be zstd.
cpu0=$(awk '{print $14+$15}' /proc/$NCPID/stat)
fill=$(copy "http://127.0.0.1:$NC")
filled=$(now)
n=${#PATHS[@]}
for i in $(seq 6000); do
  [ "$(status | jq_ "d['transcode']['nars_transcoded']")" -ge "$n" ] && break
  [ "$i" -eq 6000 ] && { echo "not all NARs were transcoded in 20 min" >&2; exit 1; }
  sleep 0.2
done
to_zstd=$(python3 -c "print(f'{$(now) - $filled:.1f}')")
S=$(status)
TCPU=$(echo "$S" | jq_ "d['transcode']['cpu_seconds']")
TIN=$(echo "$S" | jq_ "d['transcode']['input_bytes']")
TOUT=$(echo "$S" | jq_ "d['transcode']['output_bytes']")
cpu1=$(awk '{print $14+$15}' /proc/$NCPID/stat)

# 6. Rounds: nginx xz, nixcache (zstd now), nginx zstd.
echo "closure: ${#PATHS[@]} paths, $((NAR_BYTES >> 20)) MiB of NAR; xz -6 $((XZ_BYTES >> 20)) MiB"
echo "fill through nixcache (xz, cold): ${fill}s; fill end -> all zstd: ${to_zstd}s"
python3 - "$TCPU" "$TIN" "$TOUT" "$NAR_BYTES" "$cpu0" "$cpu1" <<'PY'
import sys
cpu, tin, tout, nar, c0, c1 = map(float, sys.argv[1:])
gib = nar / 2**30
print(f"transcoding: {cpu:.1f} CPU s = {cpu/gib:.1f} CPU s per GiB of NAR; "
      f"files {tin/2**20:.1f} MiB xz -> {tout/2**20:.1f} MiB zstd ({(tout/tin-1)*100:+.0f}%)")
print(f"appliance process CPU during fill+transcode: {(c1-c0)/100:.1f} s")
PY
for r in $(seq "$ROUNDS"); do
  a=$(copy "http://127.0.0.1:$NX"); b=$(copy "http://127.0.0.1:$NC"); c=$(copy "http://127.0.0.1:$NZ")
  python3 -c "print(f'round $r: nginx xz {$a}s | nixcache (transcoded) {$b}s | nginx zstd {$c}s -> nixcache {$a/$b:.1f}x faster than nginx xz, {$b/$c:.2f}x the zstd ceiling')"
done
