#!/usr/bin/env bash
# Profiles switchyard in compare.sh's `keepalive` scenario (or another, with LOAD) (HTTP/1.1 keep-alive, small body,
# 50 connections, round robin over three NGINX backends, one worker pinned to one CPU).
#
# Three bounded passes, each against a fresh proxy, all traffic on 127.0.0.1:
#   1. perf record (cpu-clock sampling; this VM has no hardware counters) of the proxy for
#      DURATION seconds: top symbols by self time, and the split between the kernel and
#      each userspace library.
#   2. strace -c -f for DURATION seconds under the same load: syscalls per request.
#   3. allocations per request: libc malloc/calloc/realloc calls counted with perf uprobes
#      (perf stat), divided by the requests wrk completed.
#
# Usage (as root): ./benches/profile.sh
# Environment: DURATION [10], PROXY_CPU [0], LOAD_CPU [1], NICE [0] (see compare.sh),
#   CALLGRAPH [0] (1: perf records call chains too; kernel chains are reliable, userspace
#   ones are not without frame pointers; `dwarf`: userspace chains through DWARF unwinding,
#   costly: use a short DURATION) and writes the callers of the hottest symbols,
#   TARGET [switchyard] (`nginx`: the same passes on an NGINX proxy, one worker, upstream
#   keep-alive, as in compare.sh, for a side-by-side reading; `haproxy`: on HAProxy, one
#   thread, as in compare.sh, h2c included),
#   ACCESS_LOG [off] (`file` profiles with the access log written to a file in the temp dir),
#   LOAD [keepalive] (`h2c`: h2load -c50 -m10 with HTTP/2 prior knowledge; `c1000`: wrk -c1000;
#   `close`: a new connection per request; `64k`: 64 KiB responses; `rate`: h2load --h1,
#   50 connections at RATE [10000] requests/s in all, as compare.sh's `rate`),
#   EVENT (perf pass: record this event instead of cpu-clock samples, e.g. a uprobe such as
#   probe_libc:sy_malloc after `perf probe -x LIBC --add sy_malloc=malloc`),
#   PASSES [all] (`perf` or `strace`: only that pass; `syscalls`: instead of all three, system
#   calls, context switches and CPU time per request counted by kernel tracepoints, which
#   unlike strace do not slow the proxy),
#   SWITCHYARD_BIN (default: build release with debug symbols into target/profiling),
#   OUT (directory to keep perf.data and the reports; default: a temp dir, removed).
set -euo pipefail

DURATION=${DURATION:-10}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
NICE=${NICE:-0}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=benches/lib/haproxy.sh
. "$ROOT/benches/lib/haproxy.sh"
# shellcheck source=benches/lib/loopback.sh
. "$ROOT/benches/lib/loopback.sh"
make_work_dirs profile
PIDS=()

log() { printf '[profile] %s\n' "$*" >&2; }

cleanup() {
    [ -n "${AUTOGROUP_NICE:-}" ] && echo "$AUTOGROUP_NICE" >/proc/self/autogroup 2>/dev/null
    stop_started
    remove_work_dirs
}
trap cleanup EXIT
trap 'exit 130' INT TERM

LOAD=${LOAD:-keepalive}
RATE=${RATE:-10000}
tools=(perf strace wrk nginx taskset)
case $LOAD in h2c | rate) tools+=(h2load) ;; esac
for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null || { log "missing $tool (apt-get install linux-perf strace wrk nginx-light)"; exit 1; }
done

if [ -n "${SWITCHYARD_BIN:-}" ]; then
    BIN=$SWITCHYARD_BIN
else
    log "building switchyard: release with debug symbols (target/profiling)"
    (cd "$ROOT" && CARGO_PROFILE_RELEASE_DEBUG=true CARGO_TARGET_DIR="$ROOT/target/profiling" \
        cargo build --release --quiet)
    BIN="$ROOT/target/profiling/release/switchyard"
fi
if [ "$NICE" != 0 ] && [ -w /proc/self/autogroup ]; then
    AUTOGROUP_NICE=$(awk '{print $NF}' /proc/self/autogroup)
    echo "$NICE" >/proc/self/autogroup || AUTOGROUP_NICE=""
fi
ON_PROXY_CPU=(nice -n "$NICE" taskset -c "$PROXY_CPU")
ON_LOAD_CPU=(nice -n "$NICE" taskset -c "$LOAD_CPU")

free_ports PORTS 4
write_backends "$TMP" "${PORTS[@]:0:3}"
# The proxy watches its config's directory: keep it apart from the files the load touches.
mkdir -p "$TMP/sy"
log=off
[ "${ACCESS_LOG:-off}" = file ] && log="$TMP/access.log"
write_switchyard_config "$TMP/sy/proxy.yaml" "${PORTS[3]}" "$log" "${PORTS[@]:0:3}"

"${ON_LOAD_CPU[@]}" nginx -p "$TMP/backend" -c "$TMP/backend.conf" -e stderr 2>"$TMP/backend.err" &
PIDS+=($!)
for p in "${PORTS[@]:0:3}"; do wait_port "$p"; done

mkdir -p "$TMP/nginx"
{
    echo "worker_processes 1; daemon off; master_process on; pid $TMP/nginx/nginx.pid;"
    echo "error_log stderr error; events { worker_connections 4096; }"
    echo "http { access_log off; keepalive_requests 1000000;"
    echo "  client_body_temp_path $TMP/nginx/body; proxy_temp_path $TMP/nginx/proxy;"
    # As in compare.sh: as many idle upstream connections as switchyard keeps.
    echo "  upstream backends { keepalive 3072;"
    for p in "${PORTS[@]:0:3}"; do echo "    server 127.0.0.1:$p;"; done
    echo "  }"
    echo "  server { listen 127.0.0.1:${PORTS[3]};"
    echo "    location / { proxy_pass http://backends; proxy_http_version 1.1;"
    echo "      proxy_set_header Connection \"\"; proxy_set_header Host \$http_host;"
    echo "      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;"
    echo "      proxy_buffers 8 16k; proxy_buffer_size 16k; } }"
    echo "}"
} >"$TMP/nginx.conf"

# HAProxy as compare.sh runs it; its listener speaks h2c (prior knowledge) under LOAD=h2c,
# HTTP/1.1 otherwise.
h2=""
[ "$LOAD" = h2c ] && h2=" proto h2"
haproxy_config "127.0.0.1:${PORTS[3]}$h2" -- "${PORTS[@]:0:3}" >"$TMP/haproxy.cfg"

# Starts the proxy; PROXY is the process to stop, TRACED the one to profile (NGINX's worker).
start_proxy() {
    if [ "${TARGET:-switchyard}" = nginx ]; then
        "${ON_PROXY_CPU[@]}" nginx -p "$TMP/nginx" -c "$TMP/nginx.conf" -e stderr 2>"$TMP/proxy.err" &
    elif [ "${TARGET:-switchyard}" = haproxy ]; then
        "${ON_PROXY_CPU[@]}" haproxy -f "$TMP/haproxy.cfg" -db 2>"$TMP/proxy.err" &
    else
        "${ON_PROXY_CPU[@]}" "$BIN" run --config "$TMP/sy/proxy.yaml" --workers 1 --log-level warn \
            2>"$TMP/proxy.err" &
    fi
    PROXY=$!
    PIDS+=("$PROXY")
    wait_port "${PORTS[3]}"
    TRACED=$PROXY
    if [ "${TARGET:-switchyard}" = nginx ]; then
        TRACED=$(awk -v m="$PROXY" '$4 == m {print $1; exit}' /proc/[0-9]*/stat 2>/dev/null)
    fi
    if [ "$LOAD" = h2c ]; then
        "${ON_LOAD_CPU[@]}" h2load -t1 -c50 -m10 -D 1 "http://127.0.0.1:${PORTS[3]}/" >/dev/null
    else
        "${ON_LOAD_CPU[@]}" wrk -t1 -c50 -d1s "http://127.0.0.1:${PORTS[3]}/" >/dev/null
    fi
}
stop_proxy() {
    local pid keep=()
    kill "$PROXY" 2>/dev/null || true
    wait "$PROXY" 2>/dev/null || true
    for pid in "${PIDS[@]}"; do [ "$pid" = "$PROXY" ] || keep+=("$pid"); done
    PIDS=("${keep[@]}")
}
# Runs wrk for DURATION seconds; prints the number of requests it completed.
load() {
    case "$LOAD" in
    h2c)
        "${ON_LOAD_CPU[@]}" h2load -t1 -c50 -m10 -D "$DURATION" "http://127.0.0.1:${PORTS[3]}/" >"$TMP/load.out"
        awk '/^requests:/ {print $8}' "$TMP/load.out" ;;
    64k)
        "${ON_LOAD_CPU[@]}" wrk -t1 -c50 -d"${DURATION}s" "http://127.0.0.1:${PORTS[3]}/64k" >"$TMP/load.out"
        awk '/requests in/ {print $1}' "$TMP/load.out" ;;
    close)
        "${ON_LOAD_CPU[@]}" wrk -t1 -c50 -H "Connection: close" -d"${DURATION}s" "http://127.0.0.1:${PORTS[3]}/" >"$TMP/load.out"
        awk '/requests in/ {print $1}' "$TMP/load.out" ;;
    c1000)
        "${ON_LOAD_CPU[@]}" wrk -t1 -c1000 -d"${DURATION}s" "http://127.0.0.1:${PORTS[3]}/" >"$TMP/load.out"
        awk '/requests in/ {print $1}' "$TMP/load.out" ;;
    rate)
        "${ON_LOAD_CPU[@]}" h2load --h1 -t1 -c50 --rps=$((RATE / 50)) -D "$DURATION" "http://127.0.0.1:${PORTS[3]}/" >"$TMP/load.out"
        awk '/^requests:/ {print $8}' "$TMP/load.out" ;;
    *)
        "${ON_LOAD_CPU[@]}" wrk -t1 -c50 -d"${DURATION}s" "http://127.0.0.1:${PORTS[3]}/" >"$TMP/load.out"
        awk '/requests in/ {print $1}' "$TMP/load.out" ;;
    esac
}
# Runs a profiler attached to the proxy while wrk loads it; prints wrk's request count.
profiled() {
    "$@" &
    local prof=$!
    PIDS+=("$prof")
    sleep 0.5 # let the profiler attach before the load starts
    load
    kill -INT "$prof" 2>/dev/null || true
    wait "$prof" 2>/dev/null || true
    local pid keep=()
    for pid in "${PIDS[@]}"; do [ "$pid" = "$prof" ] || keep+=("$pid"); done
    PIDS=("${keep[@]}")
}

if [ "${PASSES:-all}" = syscalls ]; then
    # System calls per request without slowing the proxy (strace does, so much that a
    # fixed-rate load saturates it): kernel tracepoints counted by perf stat.
    log "system calls counted by tracepoints, ${DURATION}s"
    events=(raw_syscalls:sys_enter context-switches cpu-clock)
    for call in epoll_wait recvfrom read sendto write writev futex; do
        events+=("syscalls:sys_enter_$call")
    done
    events=("${events[@]/#/-e}")
    start_proxy
    reqs=$(profiled perf stat "${events[@]}" -x, -o "$OUT/syscalls.txt" -p "$TRACED")
    stop_proxy
    echo "# system calls: $reqs requests in ${DURATION}s"
    awk -F, -v n="$reqs" '$3 != "" && $1 ~ /^[0-9.]+$/ {printf "%-36s %12.0f  per request: %.3f\n", $3, $1, $1 / n}' "$OUT/syscalls.txt"
    exit 0
fi

if [ "${PASSES:-all}" != strace ]; then
log "1/3 perf record, ${DURATION}s"
start_proxy
graph=()
[ "${CALLGRAPH:-0}" = 1 ] && graph=(-g)
[ "${CALLGRAPH:-0}" = dwarf ] && graph=(--call-graph dwarf,16384)
sampling=(-e cpu-clock -F 1999)
[ -n "${EVENT:-}" ] && sampling=(-e "$EVENT")
reqs=$(profiled perf record -q "${graph[@]}" "${sampling[@]}" -o "$OUT/perf.data" -p "$TRACED")
stop_proxy
{
    echo "# perf: $reqs requests in ${DURATION}s"
    echo "## by shared object"
    perf report -i "$OUT/perf.data" --no-children --sort dso --stdio 2>/dev/null | grep -v '^#' | grep -v "^$" | head -15 || true
    echo "## top symbols (self)"
    perf report -i "$OUT/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null | grep -v '^#' | grep -v "^$" | head -60 || true
} >"$OUT/perf.txt"
cat "$OUT/perf.txt"
if [ "${CALLGRAPH:-0}" != 0 ]; then
    perf report -i "$OUT/perf.data" --no-children --stdio -G --percent-limit 3 2>/dev/null \
        >"$OUT/perf-callers.txt" || true
    log "callers of the hottest symbols: $OUT/perf-callers.txt"
fi

fi
[ "${PASSES:-all}" = perf ] && exit 0
log "2/3 strace -c, ${DURATION}s"
start_proxy
reqs=$(profiled strace -c -f -o "$OUT/strace.txt" -p "$TRACED")
stop_proxy
echo "# strace: $reqs requests (slowed by strace)"
awk -v n="$reqs" 'NR <= 2 || /^-/ {print; next}
    NF >= 5 { calls = ($4 ~ /^[0-9]+$/) ? $4 : 0
              printf "%s   per request: %.2f\n", $0, (n > 0 ? calls / n : 0); next } {print}' \
    "$OUT/strace.txt" | head -25 || true

[ "${PASSES:-all}" = strace ] && exit 0
log "3/3 malloc calls per request, ${DURATION}s"
LIBC=$(ldd "$BIN" | awk '/libc.so/ {print $3}')
probes=()
for fn in malloc calloc realloc free; do
    perf probe -q -x "$LIBC" --add "sy_$fn=$fn" 2>/dev/null || true
    perf probe -l 2>/dev/null | grep -q "sy_$fn" && probes+=("-e" "probe_libc:sy_$fn")
done
if [ ${#probes[@]} -eq 0 ]; then
    log "uprobes unavailable here: skipping the allocation count"
else
    start_proxy
    reqs=$(profiled perf stat "${probes[@]}" -x, -o "$OUT/allocs.txt" -p "$TRACED")
    stop_proxy
    echo "# allocations: $reqs requests"
    awk -F, -v n="$reqs" '$3 ~ /probe/ {printf "%s: %d calls, %.2f per request\n", $3, $1, $1 / n}' "$OUT/allocs.txt"
    for fn in malloc calloc realloc free; do perf probe -q --del "probe_libc:sy_$fn" 2>/dev/null || true; done
fi
