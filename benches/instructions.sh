#!/usr/bin/env bash
# Userspace instructions per request of one or more switchyard builds, under callgrind.
#
# Wall-clock and CPU figures on this shared VM drift by 10-20% within minutes, which hides a
# change worth 1-3%. An instruction count does not drift: the same build under the same load
# counts within 0.3% run to run. It measures userspace work only (the kernel, cache misses
# and system calls are not in it), so it says whether a change removed work, and
# `compare.sh` says what that work was worth.
#
# For each build: NGINX backends (three ports, `return 200`) and switchyard under
# `valgrind --tool=callgrind` on 127.0.0.1, a warm-up of 2,000 requests, counters zeroed,
# then N requests with h2load (bounded by count), counters dumped, everything stopped by PID.
#
# Usage: ./benches/instructions.sh [BIN...]      (default: cargo build --release)
# Environment: LOAD [keepalive] (`h2c`: h2load -c50 -m10 with HTTP/2 prior knowledge;
#   `close`: `Connection: close`, a new connection per request),
#   N [20000] requests, OUT (directory to keep the callgrind files; default: a temp dir,
#   removed). With OUT set, `callgrind_annotate` or any callgrind reader shows where the
#   instructions go (a build with debug symbols names them: see profile.sh).
set -euo pipefail

LOAD=${LOAD:-keepalive}
N=${N:-20000}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=benches/lib/loopback.sh
. "$ROOT/benches/lib/loopback.sh"
make_work_dirs instructions
PIDS=()

log() { printf '[instructions] %s\n' "$*" >&2; }

cleanup() {
    stop_started
    remove_work_dirs
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for tool in valgrind callgrind_control nginx h2load curl; do
    command -v "$tool" >/dev/null || { log "missing $tool (apt-get install valgrind nginx-light nghttp2-client curl)"; exit 1; }
done
case $LOAD in keepalive | h2c | close) ;; *) log "LOAD is keepalive, h2c or close"; exit 1 ;; esac

BINS=("$@")
if [ ${#BINS[@]} -eq 0 ]; then
    log "building switchyard (release)"
    (cd "$ROOT" && cargo build --release --quiet)
    BINS=("$ROOT/target/release/switchyard")
fi

free_ports PORTS 4
write_backends "$TMP" "${PORTS[@]:0:3}"

mkdir -p "$TMP/sy"
write_switchyard_config "$TMP/sy/proxy.yaml" "${PORTS[3]}" off "${PORTS[@]:0:3}"

nginx -p "$TMP/backend" -c "$TMP/backend.conf" -e stderr 2>"$TMP/backend.err" &
PIDS+=($!)
for p in "${PORTS[@]:0:3}"; do wait_port "$p"; done

load() {
    local url="http://127.0.0.1:${PORTS[3]}/"
    case $LOAD in
        keepalive) timeout 600 h2load --h1 -t1 -c50 -n "$1" "$url" ;;
        h2c) timeout 600 h2load -t1 -c50 -m10 -n "$1" "$url" ;;
        close) timeout 600 h2load --h1 -t1 -c50 -n "$1" -H "Connection: close" "$url" ;;
    esac
}

echo "| build | load | requests | instructions per request |"
echo "|---|---|---:|---:|"
for i in "${!BINS[@]}"; do
    bin=${BINS[$i]}
    file="$OUT/callgrind.$i"
    valgrind --tool=callgrind --callgrind-out-file="$file" "$bin" run -c "$TMP/sy/proxy.yaml" \
        2>"$TMP/valgrind.$i.err" &
    pid=$!
    PIDS+=($pid)
    wait_port "${PORTS[3]}" 30
    load 2000 >/dev/null
    callgrind_control -z "$pid" >/dev/null 2>&1
    load "$N" >"$TMP/load.$i"
    callgrind_control -d "$pid" >/dev/null 2>&1
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    done_reqs=$(awk '/^requests:/ {print $8}' "$TMP/load.$i")
    # The dump requested above is part 1; its summary line is the total since the zeroing.
    ir=$(awk '/^summary:/ {print $2; exit}' "$file.1" 2>/dev/null || echo 0)
    echo "| $bin | $LOAD | ${done_reqs:-?} of $N | $((ir / N)) |"
done
