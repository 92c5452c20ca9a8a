#!/usr/bin/env bash
# Benchmark: nixcache serving cache hits from its own disk, against nginx serving the same files from a
# `nix copy --to file://` folder, on the same machine, in the same run, back to back.
#
#   scripts/bench.sh                                  # full run: 256 MiB NAR, 10 s per measurement, 3 rounds
#   BENCH_NAR_MIB=16 BENCH_SECS=3 BENCH_ROUNDS=1 scripts/bench.sh   # quick run
#
# Prints a Markdown table (stdout): per measure the median over the rounds for nginx and nixcache, the ratio
# nixcache/nginx of the medians and of each round; progress and raw wrk output go to stderr.
# Exits non-zero when a step fails, never because of the figures. Loopback only. Everything lives in a
# temp folder removed at exit, and every process started here is ended by its PID.
# See docs/benchmarks.md for what is measured and why.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

NAR_MIB=${BENCH_NAR_MIB:-256}
SECS=${BENCH_SECS:-10}
ROUNDS=${BENCH_ROUNDS:-3}
for v in "$NAR_MIB" "$SECS" "$ROUNDS"; do
  case "$v" in
    '' | *[!0-9]* | 0*) echo "bench: BENCH_NAR_MIB, BENCH_SECS and BENCH_ROUNDS must be whole numbers > 0" >&2; exit 2 ;;
  esac
done
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

log() { printf '[bench] %s\n' "$*" >&2; }

scripts/install-peers.sh --bench
for tool in cargo nix-build nix nginx wrk curl python3 sha256sum; do
  command -v "$tool" >/dev/null || { echo "bench: $tool not found" >&2; exit 1; }
done

log "building the release binary"
cargo build --release --locked >&2
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/nixcache
[ -x "$BIN" ] || { echo "bench: $BIN not built" >&2; exit 1; }

W=$(mktemp -d)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do
    kill "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  chmod -R u+w "$W" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------------
# 1. A real binary cache folder, made by the real Nix client on a private store.
export HOME=$W/home XDG_CACHE_HOME=$W/xdg
mkdir -p "$HOME" "$XDG_CACHE_HOME" "$W/keys"
export NIX_CONFIG=$'experimental-features = nix-command\nsandbox = false\nbuild-users-group =\nsubstituters =\nextra-sandbox-paths = /bin /usr /lib /lib64\nnarinfo-cache-positive-ttl = 0\nnarinfo-cache-negative-ttl = 0'
cat > "$W/bench.nix" <<'NIX'
{ mib }:
{
  small = derivation {
    name = "bench-small"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "echo nixcache benchmark > $out" ];
  };
  big = derivation {
    name = "bench-big-${toString mib}MiB"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "/usr/bin/head -c ${toString (mib * 1048576)} /dev/urandom > $out" ];
  };
}
NIX
log "building a small path and a $NAR_MIB MiB path in a private Nix store"
nix-store --generate-binary-cache-key bench-1 "$W/keys/sk" "$W/keys/pk"
SMALL=$(nix-build --store "$W/store" "$W/bench.nix" --arg mib "$NAR_MIB" -A small --no-out-link)
BIG=$(nix-build --store "$W/store" "$W/bench.nix" --arg mib "$NAR_MIB" -A big --no-out-link)
nix copy --store "$W/store" --to "file://$W/cache?compression=none&secret-key=$W/keys/sk" "$SMALL" "$BIG"
SMALL_HASH=$(basename "$SMALL" | cut -c1-32)
BIG_HASH=$(basename "$BIG" | cut -c1-32)
for h in "$SMALL_HASH" "$BIG_HASH"; do
  [ -s "$W/cache/$h.narinfo" ] || { echo "bench: nix copy wrote no $h.narinfo" >&2; exit 1; }
done
# The field of a narinfo (file or stdin).
field() { sed -n "s/^$1: //p" "${2:--}" | head -n1; }
NGINX_NAR_URL=$(field URL "$W/cache/$BIG_HASH.narinfo")
NGINX_SMALL_NAR_URL=$(field URL "$W/cache/$SMALL_HASH.narinfo")
NAR_FILE_HASH=$(field FileHash "$W/cache/$BIG_HASH.narinfo")
NAR_SIZE=$(field FileSize "$W/cache/$BIG_HASH.narinfo")
log "cache folder: $SMALL_HASH.narinfo, $BIG_HASH.narinfo, $NGINX_NAR_URL ($NAR_SIZE bytes)"

# ---------------------------------------------------------------------------------------------------
# 2. nginx on two loopback ports serving that folder: one measured (no access log, like a tuned static
#    server), one used as nixcache's upstream (access log, to count what nixcache asks upstream).
read -r NGINX_PORT UPSTREAM_PORT NIXCACHE_PORT < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
')
mkdir -p "$W/nginx/tmp"
temp_paths="client_body_temp_path $W/nginx/tmp/body;"
for m in proxy fastcgi uwsgi scgi; do
  nginx -V 2>&1 | grep -q -- "--without-http_${m}_module" || temp_paths+=" ${m}_temp_path $W/nginx/tmp/$m;"
done
user_line=""
[ "$(id -u)" -eq 0 ] && user_line="user root root;" # workers must read the 0700 temp folder
cat > "$W/nginx/nginx.conf" <<CONF
$user_line
daemon off;
worker_processes auto;
pid $W/nginx/nginx.pid;
error_log $W/nginx/error.log warn;
events { worker_connections 1024; }
http {
  types { text/x-nix-narinfo narinfo; application/x-nix-nar nar; text/x-nix-cache-info nix-cache-info; }
  default_type application/octet-stream;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  $temp_paths
  access_log off;
  server { listen 127.0.0.1:$NGINX_PORT; root $W/cache; }
  server { listen 127.0.0.1:$UPSTREAM_PORT; root $W/cache; access_log $W/nginx/upstream.log; }
}
CONF
nginx -p "$W/nginx" -e "$W/nginx/error.log" -c "$W/nginx/nginx.conf" &
NGINX_PID=$!
PIDS+=("$NGINX_PID")

# The bench narinfos are signed with the bench key: trust it where nixcache checks upstream signatures.
TRUST=()
if "$BIN" serve --help 2>/dev/null | grep -q -- '--trusted-key'; then
  TRUST=(--trusted-key "$(cat "$W/keys/pk")")
fi
NIXCACHE_LOG=info "$BIN" serve --listen "127.0.0.1:$NIXCACHE_PORT" --data-dir "$W/data" \
  --upstream "http://127.0.0.1:$UPSTREAM_PORT" "${TRUST[@]}" 2> "$W/nixcache.log" &
NIXCACHE_PID=$!
PIDS+=("$NIXCACHE_PID")

# Waits until URL answers 200 while process PID lives.
wait_http() {
  local url=$1 pid=$2 name=$3
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "$url" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || { echo "bench: $name exited before answering $url" >&2; return 1; }
    sleep 0.1
  done
  echo "bench: $name did not answer $url within 10 s" >&2
  return 1
}
wait_http "http://127.0.0.1:$NGINX_PORT/nix-cache-info" "$NGINX_PID" nginx || { cat "$W/nginx/error.log" >&2; exit 1; }
wait_http "http://127.0.0.1:$UPSTREAM_PORT/nix-cache-info" "$NGINX_PID" nginx || { cat "$W/nginx/error.log" >&2; exit 1; }
wait_http "http://127.0.0.1:$NIXCACHE_PORT/healthz" "$NIXCACHE_PID" nixcache || { cat "$W/nixcache.log" >&2; exit 1; }
NGINX=http://127.0.0.1:$NGINX_PORT
NIXCACHE=http://127.0.0.1:$NIXCACHE_PORT
log "nginx on $NGINX (upstream port $UPSTREAM_PORT), nixcache on $NIXCACHE"

# Fails the run with MESSAGE, showing nixcache's log and what it asked upstream.
die_with_logs() {
  echo "bench: $*" >&2
  echo "--- nixcache log (last 20 lines):" >&2
  tail -n 20 "$W/nixcache.log" >&2 || true
  echo "--- upstream requests (nginx access log):" >&2
  tail -n 20 "$W/nginx/upstream.log" >&2 || true
  exit 1
}
# fetch URL [FILE]: GET that must answer 200.
fetch() { curl -fsS -o "${2:-/dev/null}" "$1" || die_with_logs "GET $1 failed"; }

# ---------------------------------------------------------------------------------------------------
# 3. Warm nixcache: both narinfos, then both NARs at the URLs its narinfos give, so it serves from disk.
for h in "$SMALL_HASH" "$BIG_HASH"; do
  fetch "$NIXCACHE/$h.narinfo" "$W/nixcache-$h.narinfo"
done
NIXCACHE_NAR_URL=$(field URL "$W/nixcache-$BIG_HASH.narinfo")
SMALL_NAR_URL=$(field URL "$W/nixcache-$SMALL_HASH.narinfo")
[ "$(field FileHash "$W/nixcache-$BIG_HASH.narinfo")" = "$NAR_FILE_HASH" ] \
  || die_with_logs "nixcache's narinfo has another FileHash than the cache folder's"
log "warming nixcache: $NIXCACHE_NAR_URL"
fetch "$NIXCACHE/$SMALL_NAR_URL"
fetch "$NIXCACHE/$NIXCACHE_NAR_URL"
status_field() { curl -fsS "$NIXCACHE/_status" | python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
stored=0
for _ in $(seq 1 300); do
  stored=$(status_field '["store"]["nars"]')
  [ "$stored" -ge 2 ] && break
  sleep 0.1
done
[ "$stored" -ge 2 ] || die_with_logs "nixcache stored $stored NARs after warming, expected 2"

# Same bytes from both (this also pulls both files into the page cache).
log "checking both serve identical bytes"
want=$(nix hash to-base16 --type sha256 "${NAR_FILE_HASH#sha256:}")
sum_nginx=$(curl -fsS "$NGINX/$NGINX_NAR_URL" | sha256sum | cut -d' ' -f1)
sum_nixcache=$(curl -fsS "$NIXCACHE/$NIXCACHE_NAR_URL" | sha256sum | cut -d' ' -f1)
if [ "$sum_nginx" != "$want" ] || [ "$sum_nixcache" != "$want" ]; then
  echo "bench: NAR bytes differ: FileHash $want, nginx $sum_nginx, nixcache $sum_nixcache" >&2
  exit 1
fi
UPSTREAM_BEFORE=$(wc -l < "$W/nginx/upstream.log")

# ---------------------------------------------------------------------------------------------------
# 4. Measurements: each pair back to back, BENCH_ROUNDS rounds, the order within a pair alternating.
NOTES=()
# run_wrk NAME THREADS CONNS URL: runs wrk, keeps its output in $W/wrk-NAME.txt, echoes it to stderr.
run_wrk() {
  local name=$1 t=$2 c=$3 url=$4 out="$W/wrk-$1.txt" errs
  log "$name: wrk -t$t -c$c -d${SECS}s $url"
  wrk -t"$t" -c"$c" -d"${SECS}s" --timeout 120s "$url" > "$out"
  sed 's/^/    /' "$out" >&2
  errs=$(grep -E '^ *(Socket errors|Non-2xx)' "$out" | tr -s ' ' | tr '\n' ';' || true)
  [ -z "$errs" ] || NOTES+=("wrk $name: ${errs%;}")
}
# figure KIND NAME: requests/s (rps) or decimal MB/s (mbps; wrk prints binary units, 1 MB = 2^20 bytes).
figure() {
  awk -v kind="$1" '
    kind == "rps" && /^Requests\/sec:/ { printf "%.0f", $2 }
    kind == "mbps" && /^Transfer\/sec:/ {
      v = $2; n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
      m = 1
      if (u == "KB") m = 2^10; else if (u == "MB") m = 2^20; else if (u == "GB") m = 2^30; else if (u == "TB") m = 2^40
      printf "%.0f", n * m / 1e6
    }' "$W/wrk-$2.txt"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a <= 0) print "n/a"; else if (b / a < 0.1) printf "%.3f", b / a; else printf "%.2f", b / a }'; }
median() { tr ' ' '\n' | grep . | sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.0f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# smallnar: the small path's NAR (~140 bytes) one after another on one kept-alive connection, the way Nix
# fetches the many small NARs of a closure; it shows per-response latency (e.g. Nagle/delayed-ACK stalls).
MEASURES=(narinfo smallnar nar1 nar16)
declare -A ARGS=([narinfo]="2 32" [smallnar]="1 1" [nar1]="1 1" [nar16]="2 16")
declare -A URL_NGINX=([narinfo]="$NGINX/$SMALL_HASH.narinfo" [smallnar]="$NGINX/$NGINX_SMALL_NAR_URL"
  [nar1]="$NGINX/$NGINX_NAR_URL" [nar16]="$NGINX/$NGINX_NAR_URL")
declare -A URL_NIXCACHE=([narinfo]="$NIXCACHE/$SMALL_HASH.narinfo" [smallnar]="$NIXCACHE/$SMALL_NAR_URL"
  [nar1]="$NIXCACHE/$NIXCACHE_NAR_URL" [nar16]="$NIXCACHE/$NIXCACHE_NAR_URL")
for r in $(seq 1 "$ROUNDS"); do
  for m in "${MEASURES[@]}"; do
    if [ $((r % 2)) -eq 1 ]; then order="nginx nixcache"; else order="nixcache nginx"; fi
    for server in $order; do
      if [ "$server" = nginx ]; then url=${URL_NGINX[$m]}; else url=${URL_NIXCACHE[$m]}; fi
      # shellcheck disable=SC2086 # ARGS holds "threads conns"
      run_wrk "$m-$server-$r" ${ARGS[$m]} "$url"
    done
  done
done

# ---------------------------------------------------------------------------------------------------
# 5. What nixcache did meanwhile: upstream requests after warming (expected none), warnings, memory.
UPSTREAM_AFTER=$(wc -l < "$W/nginx/upstream.log")
kill -0 "$NIXCACHE_PID" 2>/dev/null || die_with_logs "nixcache died during the run"
upstream_during=$((UPSTREAM_AFTER - UPSTREAM_BEFORE))
if [ "$upstream_during" -ne 0 ]; then
  NOTES+=("nixcache made $upstream_during upstream requests after warming (expected 0)")
  sed -n "$((UPSTREAM_BEFORE + 1)),\$p" "$W/nginx/upstream.log" | head -n 5 | sed 's/^/    /' >&2
fi
warnings=$(grep -cE '\b(WARN|ERROR)\b' "$W/nixcache.log" || true)
if [ "$warnings" -ne 0 ]; then
  NOTES+=("nixcache logged $warnings WARN/ERROR lines")
  grep -E '\b(WARN|ERROR)\b' "$W/nixcache.log" | head -n 10 | sed 's/^/    /' >&2
fi
fills=$(status_field '["fills_in_flight"]')
[ "$fills" -eq 0 ] || NOTES+=("nixcache had $fills fills in flight after the run (expected 0)")
rss=$(awk '/^VmHWM:/ { printf "%.0f MiB", $2 / 1024 }' "/proc/$NIXCACHE_PID/status" 2>/dev/null || echo "?")

# row MEASURE KIND LABEL: medians over the rounds, their ratio, and the ratio of each round.
row() {
  local m=$1 kind=$2 label=$3 a b r ng=() nx=() per=()
  for r in $(seq 1 "$ROUNDS"); do
    a=$(figure "$kind" "$m-nginx-$r")
    b=$(figure "$kind" "$m-nixcache-$r")
    ng+=("$a") nx+=("$b") per+=("$(ratio "$a" "$b")")
  done
  a=$(echo "${ng[*]}" | median)
  b=$(echo "${nx[*]}" | median)
  printf '| %s | %s | %s | %s | %s |\n' "$label" "$a" "$b" "$(ratio "$a" "$b")" "${per[*]}"
}
rev=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)
cpu=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || echo unknown)

echo
echo "| measure | nginx | nixcache | ratio (nixcache/nginx) | ratio per round |"
echo "|---|---:|---:|---:|---:|"
row narinfo rps "narinfo hits, \`-t2 -c32\` (requests/s)"
row smallnar rps "small NAR ($(wc -c < "$W/cache/$NGINX_SMALL_NAR_URL") B) hits, 1 connection \`-t1 -c1\` (requests/s)"
row nar1 mbps "$NAR_MIB MiB NAR, 1 connection \`-t1 -c1\` (MB/s)"
row nar16 mbps "$NAR_MIB MiB NAR, 16 connections \`-t2 -c16\` (MB/s)"
echo
echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); git: $rev; nproc: $(nproc); CPU: $cpu; kernel: $(uname -r)"
echo "- $(nginx -v 2>&1 | sed 's/^nginx version: //') (worker_processes auto, sendfile on); $(wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2); ${SECS} s per measurement; rounds: $ROUNDS; loopback"
echo "- load average before the run: $LOAD_BEFORE; after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- nixcache peak RSS: $rss; upstream requests after warming: $upstream_during"
for n in "${NOTES[@]}"; do
  echo "- note: $n"
done
