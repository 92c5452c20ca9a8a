#!/usr/bin/env bash
# Benchmark of the shared bucket (issue 13): hits through an appliance whose store is an S3 bucket
# (SeaweedFS `weed mini` on loopback) against an appliance on its local disk, same machine, same run.
#
#   scripts/bench-bucket.sh                                        # 64 MiB NAR, 5 s per measure, 3 rounds
#   BENCH_NAR_MIB=16 BENCH_SECS=2 BENCH_ROUNDS=1 scripts/bench-bucket.sh   # quick
#
# Appliances: "disk" (no bucket), "bucket" (bucket, local_cache = false: every NAR streams from the
# bucket), "bucket+disk" (bucket with its local disk cache, after one read). Measures: narinfo hits
# (wrk, requests/s; always from the local index), small-NAR hits (wrk, requests/s), the big NAR (curl,
# MiB/s, median of the rounds), and the first lookup of a narinfo by an appliance with an empty index
# (from the bucket vs from the upstream; ms, one request each). Markdown table on stdout, progress on
# stderr. Loopback only; every process started here is ended by its PID; the temp folder is removed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
NAR_MIB=${BENCH_NAR_MIB:-64}
SECS=${BENCH_SECS:-5}
ROUNDS=${BENCH_ROUNDS:-3}
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
log() { printf '[bench-bucket] %s\n' "$*" >&2; }

scripts/install-peers.sh --bench
log "building the release binary"
cargo build --release --locked >&2
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/nixcache
WEED=$(command -v weed || echo "$(python3 -c "import sysconfig; print(sysconfig.get_path('scripts'))")/weed")

W=$(mktemp -d)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  chmod -R u+w "$W" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 1. A binary cache folder made by the real Nix client: a small path and a NAR_MIB MiB one.
export HOME=$W/home XDG_CACHE_HOME=$W/xdg
mkdir -p "$HOME" "$XDG_CACHE_HOME" "$W/keys"
export NIX_CONFIG=$'experimental-features = nix-command\nsandbox = false\nbuild-users-group =\nsubstituters =\nextra-sandbox-paths = /bin /usr /lib /lib64'
cat > "$W/bench.nix" <<'NIX'
{ mib }:
{
  small = derivation { name = "bench-small"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "echo nixcache bucket benchmark > $out" ]; };
  big = derivation { name = "bench-big-${toString mib}MiB"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "/usr/bin/head -c ${toString (mib * 1048576)} /dev/urandom > $out" ]; };
}
NIX
nix-store --generate-binary-cache-key bench-1 "$W/keys/sk" "$W/keys/pk"
SMALL=$(nix-build --store "$W/store" "$W/bench.nix" --arg mib "$NAR_MIB" -A small --no-out-link)
BIG=$(nix-build --store "$W/store" "$W/bench.nix" --arg mib "$NAR_MIB" -A big --no-out-link)
nix copy --store "$W/store" --to "file://$W/cache?compression=none&secret-key=$W/keys/sk" "$SMALL" "$BIG"
SMALL_HASH=$(basename "$SMALL" | cut -c1-32)
BIG_HASH=$(basename "$BIG" | cut -c1-32)
field() { sed -n "s/^$1: //p" "$2" | head -n1; }

read -r -a P < <(python3 -c '
import socket
s = [socket.socket() for _ in range(16)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')

# 2. The peers: an upstream (python http.server over the folder) and SeaweedFS with one bucket.
python3 -m http.server "${P[0]}" --bind 127.0.0.1 --directory "$W/cache" >/dev/null 2>&1 &
PIDS+=($!)
UPSTREAM=http://127.0.0.1:${P[0]}
printf '{"identities":[{"name":"bench","credentials":[{"accessKey":"bench","secretKey":"bench-secret"}],"actions":["Admin","Read","Write","List"]}]}' > "$W/s3.json"
"$WEED" mini -dir="$W/s3" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.port="${P[1]}" -master.port.grpc="${P[2]}" \
  -volume.port="${P[3]}" -volume.port.grpc="${P[4]}" -filer.port="${P[5]}" -filer.port.grpc="${P[6]}" \
  -s3.port="${P[7]}" -s3.port.grpc="${P[8]}" -admin.port="${P[9]}" -admin.port.grpc="${P[10]}" \
  -admin.ui=false -master.telemetry=false -webdav=false -s3.port.iceberg=0 -s3.port.lance=0 -s3.config="$W/s3.json" -bucket=nixcache \
  > "$W/weed.log" 2>&1 &
PIDS+=($!)
S3=http://127.0.0.1:${P[7]}

# 3. Three appliances (and a fourth with an empty index, started later).
appliance() { # NAME PORT BUCKET(yes|no) LOCAL_CACHE(true|false) UPSTREAMS
  local name=$1 port=$2
  {
    echo "listen = \"127.0.0.1:$port\""
    echo "data_dir = \"$W/$name\""
    echo "mdns = false"
    echo "max_size = \"4GiB\""
    echo "min_free = 0"
    echo "upstreams = [$5]"
    echo "trusted_keys = [\"$(cat "$W/keys/pk")\"]"
    if [ "$3" = yes ]; then
      printf '[bucket]\nendpoint = "%s"\nbucket = "nixcache"\nlocal_cache = %s\n' "$S3" "$4"
    fi
  } > "$W/$name.toml"
  AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret NIXCACHE_LOG=warn \
    "$BIN" serve --config "$W/$name.toml" 2> "$W/$name.log" &
  PIDS+=($!)
  for _ in $(seq 1 100); do curl -fsS -o /dev/null "http://127.0.0.1:$port/healthz" 2>/dev/null && return 0; sleep 0.1; done
  echo "bench-bucket: $name did not start" >&2; cat "$W/$name.log" >&2; exit 1
}
for _ in $(seq 1 100); do [ "$(curl -s -o /dev/null -w '%{http_code}' "$S3/nixcache/x")" = 403 ] && break; sleep 0.1; done
appliance disk "${P[11]}" no true "\"$UPSTREAM\""
appliance bucket "${P[12]}" yes false "\"$UPSTREAM\""
appliance bucketdisk "${P[13]}" yes true "\"$UPSTREAM\""
declare -A URL=([disk]=http://127.0.0.1:${P[11]} [bucket]=http://127.0.0.1:${P[12]} [bucketdisk]=http://127.0.0.1:${P[13]})

# Warm: every appliance reads both narinfos and both NARs (the bucket appliances upload them).
for a in disk bucket bucketdisk; do
  for h in "$SMALL_HASH" "$BIG_HASH"; do
    curl -fsS -o "$W/$a-$h.narinfo" "${URL[$a]}/$h.narinfo"
    curl -fsS -o /dev/null "${URL[$a]}/$(field URL "$W/$a-$h.narinfo")"
  done
done
for a in disk bucketdisk; do # their NAR hits come from disk once the fills committed
  for _ in $(seq 1 100); do
    [ "$(curl -fsS "${URL[$a]}/_status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["store"]["nars"])')" -ge 2 ] && break
    sleep 0.1
  done
done
SMALL_NAR=$(field URL "$W/disk-$SMALL_HASH.narinfo")
BIG_NAR=$(field URL "$W/disk-$BIG_HASH.narinfo")
want=$(sha256sum < "$W/cache/$(field URL "$W/cache/$BIG_HASH.narinfo")" | cut -d' ' -f1)
for a in disk bucket bucketdisk; do
  got=$(curl -fsS "${URL[$a]}/$BIG_NAR" | sha256sum | cut -d' ' -f1)
  [ "$got" = "$want" ] || { echo "bench-bucket: $a served other bytes" >&2; exit 1; }
done

# 4. Measures.
rps() { wrk -t1 -c16 -d"${SECS}s" "$1" 2>/dev/null | awk '/Requests\/sec/ {printf "%.0f", $2}'; }
mibs() { curl -fsS -o /dev/null -w '%{speed_download}' "$1" | awk '{printf "%.0f", $1 / 1048576}'; }
median() { tr ' ' '\n' | sed '/^$/d' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
declare -A R
for round in $(seq 1 "$ROUNDS"); do
  log "round $round/$ROUNDS"
  for a in disk bucket bucketdisk; do
    R[narinfo-$a]+=" $(rps "${URL[$a]}/$SMALL_HASH.narinfo")"
    R[small-$a]+=" $(rps "${URL[$a]}/$SMALL_NAR")"
    R[big-$a]+=" $(mibs "${URL[$a]}/$BIG_NAR")"
  done
done
# First lookups by appliances with empty indexes: one from the bucket, one from the upstream.
appliance fresh "${P[14]}" yes true ""
appliance freshup "${P[15]}" no true "\"$UPSTREAM\""
ms() { curl -fsS -o /dev/null -w '%{time_total}' "$1" | awk '{printf "%.1f", $1 * 1000}'; }
first_bucket=$(ms "http://127.0.0.1:${P[14]}/$BIG_HASH.narinfo")
first_upstream=$(ms "http://127.0.0.1:${P[15]}/$BIG_HASH.narinfo")

m() { echo "${R[$1]}" | median; }
echo "| measure | local disk | bucket (no local cache) | bucket + local disk cache |"
echo "|---|---|---|---|"
echo "| narinfo hit, requests/s (wrk -c16) | $(m narinfo-disk) | $(m narinfo-bucket) | $(m narinfo-bucketdisk) |"
echo "| small NAR hit, requests/s (wrk -c16) | $(m small-disk) | $(m small-bucket) | $(m small-bucketdisk) |"
echo "| ${NAR_MIB} MiB NAR hit, MiB/s (curl) | $(m big-disk) | $(m big-bucket) | $(m big-bucketdisk) |"
echo "| first narinfo lookup, empty index, ms | upstream: $first_upstream | bucket: $first_bucket | |"
echo
echo "load before: $LOAD_BEFORE (1/5/15 min) · $(nproc) cores · ${SECS}s per wrk run · $ROUNDS rounds (medians)"
