#!/usr/bin/env bash
# Benchmark: nixcache against references measured in the same run, on the same machine, back to back.
#
#   scripts/bench.sh quick      # a developer's check: small sizes, one round (about 5 minutes)
#   scripts/bench.sh [full]     # the record: every part at full size, several rounds (about 30 minutes)
#
# Parts (BENCH_PARTS, default all of them):
#   hits       cache hits against nginx serving the same `nix copy --to file://` folder: narinfos, small
#              NARs on one kept-alive connection, a large NAR on 1 and 16 connections (wrk)
#   closure    `nix copy --from` of a whole closure (a few hundred xz paths of real files) with the real Nix
#              client: all hits through nixcache, and the first, cold copy through nixcache (everything
#              fetched from nginx as its upstream), each against the same copy straight from nginx
#   coldstart  an index of BENCH_INDEX narinfos written by examples/gen_index.rs: time from process
#              start to the first narinfo answered and RSS, also after `kill -9` while writing; narinfo
#              hit rate and p99 at that size against a 1,000-narinfo index
#   load       p99 of narinfo hits and RSS while sixteen clients download the large NAR
# Sizes and rounds: BENCH_NAR_MIB, BENCH_SECS, BENCH_ROUNDS (hits, load), BENCH_CLOSURE_PATHS,
# BENCH_CLOSURE_ROUNDS, BENCH_INDEX, BENCH_COLD_ROUNDS; the mode sets their defaults.
#
# Prints Markdown tables (stdout): medians over the rounds, their ratio, and the ratio of each round;
# progress and raw tool output go to stderr. Exits non-zero when a step fails, never because of the
# figures. Loopback only. Everything lives in a temp folder removed at exit, and every process started
# here is ended by its PID. See docs/benchmarks.md for what is measured and why.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

MODE=${1:-full}
case "$MODE" in
  quick) d=(16 3 1 60 1 100000 2) ;;
  full) d=(256 10 3 300 5 1000000 5) ;;
  *) echo "usage: scripts/bench.sh [quick|full]" >&2; exit 2 ;;
esac
NAR_MIB=${BENCH_NAR_MIB:-${d[0]}}
SECS=${BENCH_SECS:-${d[1]}}
ROUNDS=${BENCH_ROUNDS:-${d[2]}}
CLOSURE_PATHS=${BENCH_CLOSURE_PATHS:-${d[3]}}
CLOSURE_ROUNDS=${BENCH_CLOSURE_ROUNDS:-${d[4]}}
INDEX_COUNT=${BENCH_INDEX:-${d[5]}}
COLD_ROUNDS=${BENCH_COLD_ROUNDS:-${d[6]}}
PARTS=" ${BENCH_PARTS:-hits closure coldstart load} "
for v in "$NAR_MIB" "$SECS" "$ROUNDS" "$CLOSURE_PATHS" "$CLOSURE_ROUNDS" "$INDEX_COUNT" "$COLD_ROUNDS"; do
  case "$v" in
    '' | *[!0-9]* | 0*) echo "bench: sizes, seconds and rounds must be whole numbers > 0" >&2; exit 2 ;;
  esac
done
for part in $PARTS; do
  case "$part" in
    hits | closure | coldstart | load) ;;
    *) echo "bench: unknown part $part (BENCH_PARTS: hits closure coldstart load)" >&2; exit 2 ;;
  esac
done
want() { [[ "$PARTS" == *" $1 "* ]]; }
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

log() { printf '[bench] %s\n' "$*" >&2; }

scripts/install-peers.sh --bench
for tool in cargo nix-build nix nginx wrk curl python3 sha256sum taskset; do
  command -v "$tool" >/dev/null || { echo "bench: $tool not found" >&2; exit 1; }
done

log "building the release binary and the index generator"
cargo build --release --locked >&2
cargo build --release --locked --example gen_index >&2
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/nixcache
GEN_INDEX=${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/gen_index
for b in "$BIN" "$GEN_INDEX"; do
  [ -x "$b" ] || { echo "bench: $b not built" >&2; exit 1; }
done

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
read -r NGINX_PORT UPSTREAM_PORT NIXCACHE_PORT CLOSURE_PORT COLD_PORT SMALL_PORT < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(6)]
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
# BENCH_CONFIG: a nixcache.toml for every appliance of the run (e.g. transcode = "off" to compare).
CONFIG=()
if [ -n "${BENCH_CONFIG:-}" ]; then
  CONFIG=(--config "$(realpath "$BENCH_CONFIG")")
fi
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
# run_wrk NAME THREADS CONNS URL [WRAPPER...]: runs wrk, keeps its output in $W/wrk-NAME.txt and its
# own CPU time (user and system seconds) in $W/wcpu-NAME.txt, echoes the output to stderr.
run_wrk() {
  local name=$1 t=$2 c=$3 url=$4 out="$W/wrk-$1.txt" errs TIMEFORMAT='%U %S'
  shift 4
  log "$name: $* wrk -t$t -c$c -d${SECS}s $url"
  { time "$@" wrk -t"$t" -c"$c" -d"${SECS}s" --timeout 120s "$url" > "$out" 2> "$W/wrk-$name.err"; } 2> "$W/wcpu-$name.txt"
  sed 's/^/    /' "$out" >&2
  [ ! -s "$W/wrk-$name.err" ] || NOTES+=("wrk $name said: $(head -c 200 "$W/wrk-$name.err" | tr '\n' ' ')")
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
median() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%g\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# smallnar: the small path's NAR (~140 bytes) one after another on one kept-alive connection, the way Nix
# fetches the many small NARs of a closure; it shows per-response latency (e.g. Nagle/delayed-ACK stalls).
# cpu_ticks SERVER: CPU time (user + system, clock ticks) used so far by nginx's workers or by nixcache.
cpu_ticks() {
  local pids p t=0
  if [ "$1" = nginx ]; then pids=$(pgrep -P "$NGINX_PID"); else pids=$NIXCACHE_PID; fi
  for p in $pids; do t=$((t + $(awk '{ print $14 + $15 }' "/proc/$p/stat"))); done
  echo "$t"
}
# cpu_per KIND NAME [wrk]: the server's CPU time (or wrk's own) per request (µs; KIND rps) or per GB
# sent (ms; KIND mbps).
cpu_per() {
  local ticks hz
  hz=$(getconf CLK_TCK)
  if [ "${3:-}" = wrk ]; then ticks=$(awk -v hz="$hz" '{ printf "%.0f", ($1 + $2) * hz }' "$W/wcpu-$2.txt")
  else ticks=$(cat "$W/cpu-$2.txt"); fi
  awk -v kind="$1" -v ticks="$ticks" -v hz="$hz" '
    / requests in / { n = $1; v = $5; b = v + 0; u = v; sub(/^[0-9.]+/, "", u)
      if (u == "KB") b *= 2^10; else if (u == "MB") b *= 2^20; else if (u == "GB") b *= 2^30; else if (u == "TB") b *= 2^40 }
    END { s = ticks / hz; if (kind == "rps") printf "%.1f", n ? s * 1e6 / n : 0; else printf "%.0f", b ? s * 1e3 / (b / 1e9) : 0 }' "$W/wrk-$2.txt"
}
# narinfo1: the same hits with wrk on CPU 0 and the server on CPU 1, as a LAN runs them (the clients are
# other machines): what the server does per request, without wrk's threads preempting it at each
# answer on the same cores (see docs/benchmarks.md, "Narinfo hits").
# smallnar1: the small NAR on one connection the same way: every request and every answer waits for a
# wake-up on the other core, as each waits for the wire on a LAN (the unpinned row's rate depends on
# whether the scheduler puts the server's thread on wrk's core; see docs/benchmarks.md).
# narinfo0, smallnar0: one connection with wrk and the server both on CPU 0, so no answer waits for a
# wake-up on another core (on a VM these cost tens of µs each; see docs/benchmarks.md, "One connection:
# wake-ups across cores"): the request rate then measures what both sides spend per request.
MEASURES=(narinfo narinfo1 smallnar smallnar1 nar1 nar16 narinfo0 smallnar0)
declare -A ARGS=([narinfo]="2 32" [narinfo1]="1 32" [smallnar]="1 1" [smallnar1]="1 1" [nar1]="1 1"
  [nar16]="2 16" [narinfo0]="1 1" [smallnar0]="1 1")
declare -A URL_NGINX=([narinfo]="$NGINX/$SMALL_HASH.narinfo" [narinfo1]="$NGINX/$SMALL_HASH.narinfo"
  [smallnar]="$NGINX/$NGINX_SMALL_NAR_URL" [smallnar1]="$NGINX/$NGINX_SMALL_NAR_URL"
  [nar1]="$NGINX/$NGINX_NAR_URL" [nar16]="$NGINX/$NGINX_NAR_URL"
  [narinfo0]="$NGINX/$SMALL_HASH.narinfo" [smallnar0]="$NGINX/$NGINX_SMALL_NAR_URL")
declare -A URL_NIXCACHE=([narinfo]="$NIXCACHE/$SMALL_HASH.narinfo" [narinfo1]="$NIXCACHE/$SMALL_HASH.narinfo"
  [smallnar]="$NIXCACHE/$SMALL_NAR_URL" [smallnar1]="$NIXCACHE/$SMALL_NAR_URL"
  [nar1]="$NIXCACHE/$NIXCACHE_NAR_URL" [nar16]="$NIXCACHE/$NIXCACHE_NAR_URL"
  [narinfo0]="$NIXCACHE/$SMALL_HASH.narinfo" [smallnar0]="$NIXCACHE/$SMALL_NAR_URL")
# pin_server SERVER CPUS: every thread of nginx's workers or of nixcache onto CPUS.
pin_server() {
  local p
  if [ "$1" = nginx ]; then for p in $(pgrep -P "$NGINX_PID"); do taskset -apc "$2" "$p" > /dev/null; done
  else taskset -apc "$2" "$NIXCACHE_PID" > /dev/null; fi
}
want hits && for r in $(seq 1 "$ROUNDS"); do
  for m in "${MEASURES[@]}"; do
    if [ $((r % 2)) -eq 1 ]; then order="nginx nixcache"; else order="nixcache nginx"; fi
    for server in $order; do
      if [ "$server" = nginx ]; then url=${URL_NGINX[$m]}; else url=${URL_NIXCACHE[$m]}; fi
      wrap=()
      case $m in
        narinfo1 | smallnar1) pin_server "$server" 1; wrap=(taskset -c 0) ;;
        narinfo0 | smallnar0) pin_server "$server" 0; wrap=(taskset -c 0) ;;
      esac
      c0=$(cpu_ticks "$server")
      # shellcheck disable=SC2086 # ARGS holds "threads conns"
      run_wrk "$m-$server-$r" ${ARGS[$m]} "$url" "${wrap[@]}"
      echo "$(($(cpu_ticks "$server") - c0))" > "$W/cpu-$m-$server-$r.txt"
      [ -z "${wrap[*]}" ] || pin_server "$server" "0-$(($(nproc) - 1))"
    done
  done
done

# ---------------------------------------------------------------------------------------------------
# Helpers for the parts below.
# rss PID: resident MiB now; hwm PID: peak resident MiB.
rss() { awk '/^VmRSS:/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || echo "?"; }
hwm() { awk '/^VmHWM:/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || echo "?"; }
# p99 FILE: wrk --latency's 99th percentile in ms.
p99() {
  awk '$1 == "99%" { v = $2; n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
    printf "%.2f", n }' "$1"
}
rps() { awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$1"; }
# spread LIST: "min–max" of numbers.
spread() { tr ' ' '\n' | grep . | sort -g | awk 'NR == 1 { a = $1 } { b = $1 } END { printf "%s–%s", a, b }'; }
# tratio A B: B / A with two decimals (for times: below 1 means nixcache took less).
tratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a <= 0) print "n/a"; else printf "%.2f", b / a }'; }
# wait_fills PORT: until that nixcache has no fill in flight (so a following copy only hits).
wait_fills() {
  local n
  for _ in $(seq 1 600); do
    n=$(curl -fsS "http://127.0.0.1:$1/_status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["fills_in_flight"])')
    [ "$n" -eq 0 ] && return 0
    sleep 0.1
  done
  echo "bench: fills still running on port $1 after 60 s" >&2
  return 1
}
# start_nixcache PORT DATA LOG [WRAPPER...]: a nixcache with nginx as its upstream; sets STARTED_PID.
start_nixcache() {
  local port=$1 data=$2 log=$3
  shift 3
  NIXCACHE_LOG=info "$@" "$BIN" serve --listen "127.0.0.1:$port" --data-dir "$data" --no-mdns \
    --upstream "http://127.0.0.1:$UPSTREAM_PORT" "${TRUST[@]}" "${CONFIG[@]}" 2> "$log" &
  STARTED_PID=$!
  PIDS+=("$STARTED_PID")
  wait_http "http://127.0.0.1:$port/healthz" "$STARTED_PID" nixcache || { tail -n 20 "$log" >&2; exit 1; }
}
# stop PID: SIGTERM and wait (a process started here).
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# ---------------------------------------------------------------------------------------------------
# Load: narinfo hits (p99, rate) while 16 connections download the large NAR, against the same hits with
# nothing else running; nginx the same way. RSS of nixcache during the load.
if want load; then
  for r in $(seq 1 "$ROUNDS"); do
    for server in nginx nixcache; do
      if [ "$server" = nginx ]; then base=$NGINX nar=$NGINX_NAR_URL; else base=$NIXCACHE nar=$NIXCACHE_NAR_URL; fi
      log "load $server $r: narinfo hits idle, then while wrk -t1 -c16 downloads $nar"
      wrk -t1 -c4 -d"${SECS}s" --latency "$base/$SMALL_HASH.narinfo" > "$W/load-idle-$server-$r.txt"
      wrk -t1 -c16 -d"$((SECS + 2))s" --timeout 120s "$base/$nar" > "$W/load-bg-$server-$r.txt" &
      bg=$!
      PIDS+=("$bg")
      sleep 1
      wrk -t1 -c4 -d"${SECS}s" --latency "$base/$SMALL_HASH.narinfo" > "$W/load-busy-$server-$r.txt" &
      fg=$!
      PIDS+=("$fg")
      sleep "$((SECS / 2))"
      [ "$server" = nixcache ] && rss "$NIXCACHE_PID" > "$W/load-rss-$r.txt"
      wait "$fg"
      wait "$bg"
      sed 's/^/    /' "$W/load-busy-$server-$r.txt" >&2
    done
  done
fi

# What the warm nixcache asked upstream during hits and load (the parts below use other instances).
UPSTREAM_AFTER=$(wc -l < "$W/nginx/upstream.log")

# ---------------------------------------------------------------------------------------------------
# Closure: a few hundred paths of real files, published xz by the real client into the same folder.
CLOSURE_ROWS=()
if want closure; then
  log "building a closure of $CLOSURE_PATHS paths from this machine's files and publishing it (xz)"
  python3 scripts/bench/closure.py "$CLOSURE_PATHS" 1 > "$W/closure.nix" 2> >(tee "$W/closure-summary.txt" >&2)
  TOP=$(nix-build --store "$W/store" "$W/closure.nix" -A top --no-out-link --max-jobs 4 2> "$W/closure-build.log") \
    || { tail -n 20 "$W/closure-build.log" >&2; exit 1; }
  nix copy --store "$W/store" --to "file://$W/cache?compression=xz&parallel-compression=true&secret-key=$W/keys/sk" "$TOP"
  closure_xz=$(nix path-info --store "$W/store" -r "$TOP" | while read -r p; do
    field FileSize "$W/cache/$(basename "$p" | cut -c1-32).narinfo"; done | awk '{ s += $1 } END { printf "%.1f", s / 1e6 }')
  closure_n=$(nix path-info --store "$W/store" -r "$TOP" | wc -l)
  # copy_time URL [WRAPPER...]: seconds of one `nix copy --from URL` of the closure into a fresh store
  # and client cache; the client's CPU time (user + system seconds) goes to $W/copy-cpu.txt.
  copy_time() {
    local d s e url=$1 TIMEFORMAT='%U %S'
    shift
    d=$(mktemp -d "$W/client.XXXX")
    s=$(date +%s.%N)
    { time XDG_CACHE_HOME=$d/xdg "$@" nix copy --store "$d/store" --from "$url" \
      --option trusted-public-keys "$(cat "$W/keys/pk")" "$TOP" 2> "$d/log"; } 2> "$d/cpu" \
      || { tail -n 20 "$d/log" >&2; die_with_logs "nix copy --from $url failed"; }
    e=$(date +%s.%N)
    awk '{ printf "%.2f", $1 + $2 }' "$d/cpu" > "$W/copy-cpu.txt"
    chmod -R u+w "$d"
    rm -rf "$d"
    awk -v s="$s" -v e="$e" 'BEGIN { printf "%.2f", e - s }'
  }
  # The run's config (BENCH_CONFIG, if any) with fetching ahead turned off.
  { [ -n "${BENCH_CONFIG:-}" ] && cat "$BENCH_CONFIG"; echo "prefetch = false"; } > "$W/no-prefetch.toml"
  declare -A CT CPU
  for r in $(seq 1 "$CLOSURE_ROUNDS"); do
    rm -rf "$W/closure-data"
    start_nixcache "$CLOSURE_PORT" "$W/closure-data" "$W/closure-nixcache.log"
    cpid=$STARTED_PID
    for kind in $([ $((r % 2)) -eq 1 ] && echo "direct cold" || echo "cold direct"); do
      if [ "$kind" = direct ]; then
        CT[direct-$r]=$(copy_time "$NGINX")
      else
        n0=$(awk '{ print $14 + $15 }' "/proc/$cpid/stat")
        CT[cold-$r]=$(copy_time "http://127.0.0.1:$CLOSURE_PORT")
        CPU[nixcache-$r]=$(awk -v n0="$n0" -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15 - n0) / hz }' "/proc/$cpid/stat")
      fi
      CPU[$kind-$r]=$(cat "$W/copy-cpu.txt")
    done
    [ "$r" -eq 1 ] && curl -fsS "http://127.0.0.1:$CLOSURE_PORT/metrics" > "$W/closure-cold-metrics.txt"
    wait_fills "$CLOSURE_PORT"
    CT[warm-$r]=$(copy_time "http://127.0.0.1:$CLOSURE_PORT")
    stop "$cpid"
    # The same cold copy without fetching ahead (prefetch = false): what fetching ahead buys.
    rm -rf "$W/closure-data"
    saved_config=("${CONFIG[@]}")
    CONFIG=(--config "$W/no-prefetch.toml")
    start_nixcache "$CLOSURE_PORT" "$W/closure-data" "$W/closure-nixcache-noprefetch.log"
    CONFIG=("${saved_config[@]}")
    cpid=$STARTED_PID
    CT[noprefetch-$r]=$(copy_time "http://127.0.0.1:$CLOSURE_PORT")
    stop "$cpid"
    # The same cold copy with the client on one core and nixcache on the other, as two machines of a
    # LAN would be (here they share two cores: nixcache's xz verification competes with the client's
    # own xz decoding); its reference is the direct copy with the client on the same one core.
    rm -rf "$W/closure-data"
    start_nixcache "$CLOSURE_PORT" "$W/closure-data" "$W/closure-nixcache-pinned.log" taskset -c 1
    cpid=$STARTED_PID
    CT[pinneddirect-$r]=$(copy_time "$NGINX" taskset -c 0)
    CT[pinned-$r]=$(copy_time "http://127.0.0.1:$CLOSURE_PORT" taskset -c 0)
    stop "$cpid"
    log "closure round $r: direct ${CT[direct-$r]} s, cold ${CT[cold-$r]} s, all hits ${CT[warm-$r]} s, cold without fetching ahead ${CT[noprefetch-$r]} s, on separate cores ${CT[pinneddirect-$r]} s direct / ${CT[pinned-$r]} s cold"
  done
  # closure_row LABEL KIND [REFERENCE]: REFERENCE (default direct) vs KIND over the rounds.
  closure_row() {
    local a=() b=() per=() r ma mb ref=${3:-direct}
    for r in $(seq 1 "$CLOSURE_ROUNDS"); do
      a+=("${CT[$ref-$r]}") b+=("${CT[$2-$r]}") per+=("$(tratio "${CT[$ref-$r]}" "${CT[$2-$r]}")")
    done
    ma=$(echo "${a[*]}" | tr ' ' '\n' | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
    mb=$(echo "${b[*]}" | tr ' ' '\n' | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
    CLOSURE_ROWS+=("| $1 | $ma | $mb | $(tratio "$ma" "$mb") | ${per[*]} |")
  }
  closure_row "all hits through nixcache" warm
  closure_row "first, cold copy through nixcache (fetched from nginx)" cold
  closure_row "cold copy without fetching ahead (\`prefetch = false\`; diagnosis only)" noprefetch
  closure_row "cold copy, client on one core and nixcache on the other (as on a LAN; diagnosis only)" pinned pinneddirect
  # cpu_median KIND: the median over the rounds of CPU[KIND-r].
  cpu_median() { for r in $(seq 1 "$CLOSURE_ROUNDS"); do echo "${CPU[$1-$r]}"; done | median; }
  cold_transcode=$(awk '/^nixcache_transcode_cpu_seconds_total / { printf "%.2f", $2 }' "$W/closure-cold-metrics.txt")
  # What the first cold copy's requests waited for inside nixcache (time to response headers).
  cold_breakdown=$(awk '
    /^nixcache_http_request_duration_seconds_(sum|count)\{method="GET",route="\/(\{hash\}.narinfo|nar\/\{name\})"/ {
      split($1, a, "route=\""); route = a[2]; sub(/".*/, "", route)
      kind = ($1 ~ /_sum/) ? "sum" : "count"; v[route, kind] = $2 }
    END { printf "narinfo GETs %d (%.2f s in total, %.1f ms each), NAR GETs %d (%.2f s to headers in total)",
      v["/{hash}.narinfo", "count"], v["/{hash}.narinfo", "sum"],
      v["/{hash}.narinfo", "count"] ? 1000 * v["/{hash}.narinfo", "sum"] / v["/{hash}.narinfo", "count"] : 0,
      v["/nar/{name}", "count"], v["/nar/{name}", "sum"] }' "$W/closure-cold-metrics.txt")
fi

# ---------------------------------------------------------------------------------------------------
# Cold start: an index of INDEX_COUNT narinfos and one of 1,000, written through the index API.
COLD_ROWS=()
if want coldstart; then
  log "writing an index of $INDEX_COUNT narinfos and one of 1000 (examples/gen_index.rs)"
  mkdir -p "$W/big" "$W/small"
  # Recorded under the upstream the appliance below is started with, trusting the bench key: the rows'
  # trust policy is current, so their made-up signatures are not checked again.
  GEN_SOURCE="http://127.0.0.1:$UPSTREAM_PORT/"
  GEN_KEY=$(cat "$W/keys/pk")
  "$GEN_INDEX" "$W/big/index.redb" "$INDEX_COUNT" "$W/big-hashes.txt" "$GEN_SOURCE" "$GEN_KEY" 100000 >&2
  "$GEN_INDEX" "$W/small/index.redb" 1000 "$W/small-hashes.txt" "$GEN_SOURCE" "$GEN_KEY" 1000 >&2
  index_mib=$(du -m "$W/big/index.redb" | cut -f1)
  first_hash=$(sed -n '2p' "$W/big-hashes.txt")
  # serve_args DIR: the command line of a nixcache on COLD_PORT over DIR, in SERVE.
  serve_args() {
    SERVE=("$BIN" serve --listen "127.0.0.1:$COLD_PORT" --data-dir "$1" --no-mdns
      --upstream "http://127.0.0.1:$UPSTREAM_PORT" "${TRUST[@]}")
  }
  # coldstart LABEL DIR EVICT HASH: COLD_ROUNDS starts; a row of median ms, spread, max RSS.
  cold_row() {
    local out ms rss
    serve_args "$2"
    out=$(python3 scripts/bench/coldstart.py "$COLD_ROUNDS" "$3" "$4" -- "${SERVE[@]}") || exit 1
    while read -r line; do echo "    $1: $line" >&2; done <<< "$out"
    ms=$(echo "$out" | sed -n 's/^ms=\([0-9.]*\).*/\1/p' | tr '\n' ' ')
    rss=$(echo "$out" | sed -n 's/.*rss_mib=\([0-9.]*\).*/\1/p' | sort -g | tail -n 1)
    COLD_ROWS+=("| $1 | $(echo "$ms" | median) | $(echo "$ms" | spread) | $rss |")
  }
  cold_row "1,000 narinfos, index in the page cache" "$W/small" 0 "$(sed -n 2p "$W/small-hashes.txt")"
  cold_row "$INDEX_COUNT narinfos, index in the page cache" "$W/big" 0 "$first_hash"
  cold_row "$INDEX_COUNT narinfos, index dropped from the page cache" "$W/big" 1 "$first_hash"
  # kill -9 while writing: each round starts nixcache on the big index, makes it write (a cold closure
  # copy: narinfo and NAR commits; lookups of absent paths: non-durable negative entries), kills it
  # with SIGKILL after 1.5 s, and measures the next start.
  if want closure; then
    KILL_MS=() KILL_RSS=()
    for r in $(seq 1 "$COLD_ROUNDS"); do
      serve_args "$W/big"
      "${SERVE[@]}" 2> "$W/kill-$r.log" &
      kpid=$!
      PIDS+=("$kpid")
      wait_http "http://127.0.0.1:$COLD_PORT/healthz" "$kpid" nixcache || exit 1
      d=$(mktemp -d "$W/client.XXXX")
      XDG_CACHE_HOME=$d/xdg nix copy --store "$d/store" --from "http://127.0.0.1:$COLD_PORT" \
        --option trusted-public-keys "$(cat "$W/keys/pk")" "$TOP" > /dev/null 2>&1 &
      cp_pid=$!
      PIDS+=("$cp_pid")
      python3 -c 'import random
for _ in range(2000): print("".join(random.choice("0123456789abcdfghijklmnpqrsvwxyz") for _ in range(32)))' > "$W/absent.txt"
      ( while read -r h; do
          curl -s -o /dev/null "http://127.0.0.1:$COLD_PORT/$h.narinfo" || true
        done < "$W/absent.txt" ) &
      neg_pid=$!
      PIDS+=("$neg_pid")
      sleep 1.5
      kill -9 "$kpid"
      wait "$kpid" 2>/dev/null || true
      stop "$cp_pid"
      stop "$neg_pid"
      chmod -R u+w "$d"
      rm -rf "$d"
      out=$(python3 scripts/bench/coldstart.py 1 0 "$first_hash" -- "${SERVE[@]}") || exit 1
      echo "    after kill -9 ($r): $out" >&2
      KILL_MS+=("$(echo "$out" | sed -n 's/^ms=\([0-9.]*\).*/\1/p')")
      KILL_RSS+=("$(echo "$out" | sed -n 's/.*rss_mib=\([0-9.]*\).*/\1/p')")
    done
    COLD_ROWS+=("| $INDEX_COUNT narinfos, right after \`kill -9\` while writing | $(echo "${KILL_MS[*]}" | median) | $(echo "${KILL_MS[*]}" | spread) | $(echo "${KILL_RSS[*]}" | tr ' ' '\n' | sort -g | tail -n 1) |")
  fi
  # Narinfo hits at random over the index: big against small, alternating, wrk with a Lua script.
  cat > "$W/random.lua" <<'LUA'
local hashes = {}
for line in io.lines(os.getenv("BENCH_HASHES")) do hashes[#hashes + 1] = line end
math.randomseed(os.time())
request = function() return wrk.format("GET", "/" .. hashes[math.random(#hashes)] .. ".narinfo") end
LUA
  # Three cases: the small index with its 1,000 paths; the big index with 1,000 paths spread over it
  # (the same working set: what index size alone costs); the big index with 100,000 paths spread over
  # it (a working set beyond any LAN's, where first reads of pages dominate).
  awk 'NR % 100 == 1' "$W/big-hashes.txt" | head -n 1000 > "$W/big1k-hashes.txt"
  cat "$W/big/index.redb" > /dev/null # back into the page cache (the cold-start rows dropped it)
  declare -A SIZE_RPS SIZE_P99 SIZE_RSS SIZE_PORT=([big]=$COLD_PORT [small]=$SMALL_PORT) SIZE_PID
  declare -A CASE_SERVER=([small]=small [big1k]=big [big]=big)
  for which in small big; do
    serve_args "$W/$which"
    SERVE[3]=127.0.0.1:${SIZE_PORT[$which]}
    "${SERVE[@]}" 2> "$W/size-$which.log" &
    SIZE_PID[$which]=$!
    PIDS+=("${SIZE_PID[$which]}")
    wait_http "http://127.0.0.1:${SIZE_PORT[$which]}/healthz" "${SIZE_PID[$which]}" nixcache || exit 1
  done
  # Warm-up (not measured): the steady state of a running appliance, index pages in its cache.
  for c in small big1k big; do
    log "random narinfo hits, $c: warming up for ${SECS} s"
    BENCH_HASHES="$W/$c-hashes.txt" wrk -t2 -c32 -d"${SECS}s" -s "$W/random.lua" \
      "http://127.0.0.1:${SIZE_PORT[${CASE_SERVER[$c]}]}/" > /dev/null
  done
  for r in $(seq 1 "$ROUNDS"); do
    if [ $((r % 2)) -eq 1 ]; then order="small big1k big"; else order="big big1k small"; fi
    for c in $order; do
      log "random narinfo hits, $c, round $r"
      BENCH_HASHES="$W/$c-hashes.txt" wrk -t2 -c32 -d"${SECS}s" --latency -s "$W/random.lua" \
        "http://127.0.0.1:${SIZE_PORT[${CASE_SERVER[$c]}]}/" > "$W/size-$c-$r.txt"
      grep -qE '^ *Non-2xx' "$W/size-$c-$r.txt" && NOTES+=("random hits, $c: non-2xx answers")
      SIZE_RPS[$c-$r]=$(rps "$W/size-$c-$r.txt")
      SIZE_P99[$c-$r]=$(p99 "$W/size-$c-$r.txt")
      SIZE_RSS[$c-$r]=$(rss "${SIZE_PID[${CASE_SERVER[$c]}]}")
    done
  done
  for which in small big; do stop "${SIZE_PID[$which]}"; done
fi

# ---------------------------------------------------------------------------------------------------
# 5. What nixcache did meanwhile: upstream requests after warming (expected none), warnings, memory.
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
peak_rss="$(hwm "$NIXCACHE_PID") MiB"

# row MEASURE KIND LABEL: medians over the rounds, their ratio, and the ratio of each round.
row() {
  local m=$1 kind=$2 label=$3 a b r ng=() nx=() per=() cg=() cx=() wg=() wx=()
  for r in $(seq 1 "$ROUNDS"); do
    a=$(figure "$kind" "$m-nginx-$r")
    b=$(figure "$kind" "$m-nixcache-$r")
    ng+=("$a") nx+=("$b") per+=("$(ratio "$a" "$b")")
    cg+=("$(cpu_per "$kind" "$m-nginx-$r")") cx+=("$(cpu_per "$kind" "$m-nixcache-$r")")
    wg+=("$(cpu_per "$kind" "$m-nginx-$r" wrk)") wx+=("$(cpu_per "$kind" "$m-nixcache-$r" wrk)")
  done
  a=$(echo "${ng[*]}" | median)
  b=$(echo "${nx[*]}" | median)
  printf '| %s | %s | %s | %s | %s | %s / %s | %s / %s |\n' "$label" "$a" "$b" "$(ratio "$a" "$b")" "${per[*]}" \
    "$(echo "${cg[*]}" | median)" "$(echo "${cx[*]}" | median)" \
    "$(echo "${wg[*]}" | median)" "$(echo "${wx[*]}" | median)"
}
rev=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)
cpu=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || echo unknown)

if want hits; then
  echo
  echo "| measure | nginx | nixcache | ratio (nixcache/nginx) | ratio per round | server CPU per request (µs) or per GB (ms), nginx / nixcache | wrk's own CPU, the same way, against nginx / nixcache |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
  row narinfo rps "narinfo hits, \`-t2 -c32\` (requests/s)"
  row narinfo1 rps "narinfo hits, \`-t1 -c32\` on CPU 0, the server on CPU 1 (requests/s)"
  row smallnar rps "small NAR ($(wc -c < "$W/cache/$NGINX_SMALL_NAR_URL") B) hits, 1 connection \`-t1 -c1\` (requests/s)"
  row smallnar1 rps "small NAR hits, 1 connection \`-t1 -c1\` on CPU 0, the server on CPU 1 (requests/s)"
  row nar1 mbps "$NAR_MIB MiB NAR, 1 connection \`-t1 -c1\` (MB/s)"
  row nar16 mbps "$NAR_MIB MiB NAR, 16 connections \`-t2 -c16\` (MB/s)"
  row narinfo0 rps "narinfo hits, 1 connection \`-t1 -c1\`, wrk and the server both on CPU 0 (requests/s)"
  row smallnar0 rps "small NAR hits, 1 connection \`-t1 -c1\`, wrk and the server both on CPU 0 (requests/s)"
fi
if want closure; then
  echo
  echo "Closure: $closure_n paths, $closure_xz MB xz ($(sed 's/^closure: //' "$W/closure-summary.txt")); \`nix copy --from\` with Nix $(nix --version | awk '{ print $NF }'), fresh store each time; $CLOSURE_ROUNDS rounds."
  echo
  echo "| closure copy | straight from nginx (s) | through nixcache (s) | time ratio (nixcache/nginx, lower is better) | per round |"
  echo "|---|---:|---:|---:|---:|"
  printf '%s\n' "${CLOSURE_ROWS[@]}"
  echo
  echo "- the first cold copy, inside nixcache: $cold_breakdown"
  echo "- CPU seconds during the copy (medians; the xz checks and transcoding of the cold copy compete with the client on this machine's cores): client straight from nginx $(cpu_median direct), client through nixcache (cold) $(cpu_median cold), nixcache meanwhile $(cpu_median nixcache) ($cold_transcode of it transcoding in the first round)"
fi
if want coldstart; then
  echo
  echo "Cold start: from process start to the first narinfo answered (200), and VmRSS then; $COLD_ROUNDS starts each; index of $INDEX_COUNT narinfos: $index_mib MiB."
  echo
  echo "| index | median ms | spread ms | RSS MiB (max) |"
  echo "|---|---:|---:|---:|"
  printf '%s\n' "${COLD_ROWS[@]}"
  echo
  echo "| random narinfo hits, \`-t2 -c32\`, after a warm-up | index of 1,000, its 1,000 paths | index of $INDEX_COUNT, 1,000 paths | ratio | per round | index of $INDEX_COUNT, 100,000 paths | ratio | per round |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|"
  mid() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
  for k in rps p99; do
    line="| $([ $k = rps ] && echo "requests/s" || echo "p99 latency (ms)")"
    a=()
    for r in $(seq 1 "$ROUNDS"); do
      if [ $k = rps ]; then a+=("${SIZE_RPS[small-$r]}"); else a+=("${SIZE_P99[small-$r]}"); fi
    done
    ma=$(echo "${a[*]}" | mid)
    line+=" | $ma"
    for c in big1k big; do
      b=() per=()
      for r in $(seq 1 "$ROUNDS"); do
        if [ $k = rps ]; then x=${SIZE_RPS[small-$r]} y=${SIZE_RPS[$c-$r]}; else x=${SIZE_P99[small-$r]} y=${SIZE_P99[$c-$r]}; fi
        b+=("$y") per+=("$(tratio "$x" "$y")")
      done
      mb=$(echo "${b[*]}" | mid)
      line+=" | $mb | $(tratio "$ma" "$mb") | ${per[*]}"
    done
    echo "$line |"
  done
  rss_max() { for r in $(seq 1 "$ROUNDS"); do echo "${SIZE_RSS[$1-$r]}"; done | sort -g | tail -n 1; }
  echo "| RSS after the rounds (MiB) | $(rss_max small) | $(rss_max big1k) | | | $(rss_max big) | | |"
fi
if want load; then
  echo
  echo "| narinfo hits \`-t1 -c4\`, $NAR_MIB MiB NAR downloaded by \`-t1 -c16\` meanwhile | nginx | nixcache | ratio (nixcache/nginx) | per round |"
  echo "|---|---:|---:|---:|---:|"
  for k in idle busy; do
    for q in p99 rps; do
      a=() b=() per=()
      for r in $(seq 1 "$ROUNDS"); do
        x=$($q "$W/load-$k-nginx-$r.txt") y=$($q "$W/load-$k-nixcache-$r.txt")
        a+=("$x") b+=("$y") per+=("$(tratio "$x" "$y")")
      done
      ma=$(echo "${a[*]}" | tr ' ' '\n' | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
      mb=$(echo "${b[*]}" | tr ' ' '\n' | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
      label=$([ $q = p99 ] && echo "p99 ms" || echo "requests/s")
      echo "| $label, $([ $k = idle ] && echo "nothing else running" || echo "during the downloads") | $ma | $mb | $(tratio "$ma" "$mb") | ${per[*]} |"
    done
  done
  lr=()
  for r in $(seq 1 "$ROUNDS"); do lr+=("$(cat "$W/load-rss-$r.txt")"); done
  echo
  echo "- nixcache RSS during the downloads: $(echo "${lr[*]}" | spread) MiB (over the rounds)"
fi
echo
echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); git: $rev; nproc: $(nproc); CPU: $cpu; kernel: $(uname -r)"
echo "- $(nginx -v 2>&1 | sed 's/^nginx version: //') (worker_processes auto, sendfile on); $(wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2); ${SECS} s per measurement; rounds: $ROUNDS; loopback"
echo "- load average before the run: $LOAD_BEFORE; after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- mode: $MODE; nixcache (hits) peak RSS: $peak_rss; upstream requests after warming: $upstream_during"
for n in "${NOTES[@]}"; do
  echo "- note: $n"
done
