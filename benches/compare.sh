#!/usr/bin/env bash
# Load comparison: switchyard vs NGINX vs HAProxy on this machine, loopback only.
#
# Each proxy runs alone on one CPU (taskset), round-robins over three NGINX backends
# answering `return 200`, and is loaded by wrk (HTTP/1.1) or h2load (h2c, fixed rate) on the
# other CPU. Proxies are interleaved (A B C A B C ...) and restarted for every run, so peak RSS
# is per run. For each run: requests/s, p50/p99 latency, the proxy's CPU seconds (utime +
# stime of the proxy and its children from /proc/PID/stat, before and after), requests per
# proxy CPU-second, peak RSS (VmHWM summed over the proxy's processes) and errors (non-2xx
# and socket errors). The report is one markdown table per scenario: medians over the
# repetitions, then switchyard's ratios to each peer: the ratio of the medians, and the median
# of the ratios within each repetition ("paired"), which a machine whose speed drifts over
# minutes disturbs less.
#
# Usage (as root, or with the tools already installed):
#   ./benches/compare.sh
#   REPS=3 DURATION=10 SCENARIOS=keepalive,close ./benches/compare.sh
#
# Environment (defaults in brackets):
#   REPS [3]          repetitions of each proxy in each scenario
#   DURATION [10]     seconds of load per run (plus WARMUP seconds before it, not measured)
#   WARMUP [1]        seconds of unmeasured load after each proxy starts
#   SCENARIOS [keepalive,close,64k,c1000,h2c,rate]
#       keepalive  HTTP/1.1 keep-alive, small body, 50 connections (wrk)
#       close      a new connection per request: `Connection: close`, 50 connections (wrk)
#       64k        64 KiB responses, keep-alive, 50 connections (wrk)
#       c1000      1,000 keep-alive connections, small body (wrk)
#       h2c        HTTP/2 prior knowledge, 50 connections x 10 streams (h2load)
#       rate       fixed RATE req/s over 50 HTTP/1.1 keep-alive connections (h2load --rps):
#                  latency at a load every proxy sustains
#   PROXIES [switchyard,switchyard-log,nginx,haproxy]
#       switchyard-log is switchyard with its access log written to a file
#   RATE [10000]      total requests/s of the `rate` scenario
#   PROXY_CPU [0]     CPU the proxy is pinned to
#   LOAD_CPU [1]      CPU for the load generator and the backends
#   NICE [0]          niceness of the proxy, load and backends; on a machine shared with
#                     other work, NICE=-20 (as root) keeps that work from skewing the runs.
#                     With the kernel's autogroup scheduling (sched_autogroup_enabled = 1)
#                     niceness only ranks processes within one session, so the script also
#                     sets its session's autogroup nice for the length of the run and puts
#                     it back on exit. The report shows how much CPU other processes still
#                     took on the proxy's CPU during the runs ("other CPU s").
#   SWITCHYARD_BIN    use this binary instead of `cargo build --release`
#   VARIANTS          extra switchyard builds to compare, as LABEL=PATH[,LABEL=PATH...]; each
#                     runs as proxy `sy-LABEL` (access log off), e.g.
#                     VARIANTS=mimalloc=/tmp/sy-mimalloc PROXIES=switchyard,sy-mimalloc;
#                     `sy-LABEL+log` runs it with the access log on
#   RESULTS           also write the raw per-run TSV to this file
#   REPORT            also write the markdown report to this file
#
# Every process the script starts is stopped on exit, by PID. All traffic is to 127.0.0.1.
set -euo pipefail

REPS=${REPS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-1}
SCENARIOS=${SCENARIOS:-keepalive,close,64k,c1000,h2c,rate}
PROXIES=${PROXIES:-switchyard,switchyard-log,nginx,haproxy}
RATE=${RATE:-10000}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
NICE=${NICE:-0}
ON_PROXY_CPU=(nice -n "$NICE" taskset -c "$PROXY_CPU")
ON_LOAD_CPU=(nice -n "$NICE" taskset -c "$LOAD_CPU")

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=benches/lib/haproxy.sh
. "$ROOT/benches/lib/haproxy.sh"
# shellcheck source=benches/lib/loopback.sh
. "$ROOT/benches/lib/loopback.sh"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/switchyard-compare.XXXXXX")
# NGINX workers drop to `nobody` when started as root: they must read the 64 KiB file.
chmod 755 "$TMP"
PIDS=()

log() { printf '[compare] %s\n' "$*" >&2; }

cleanup() {
    [ -n "${AUTOGROUP_NICE:-}" ] && echo "$AUTOGROUP_NICE" >/proc/self/autogroup 2>/dev/null
    stop_started
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- tools -------------------------------------------------------------------------------

install_missing() {
    local need=()
    command -v nginx >/dev/null || need+=(nginx-light)
    command -v haproxy >/dev/null || need+=(haproxy)
    command -v wrk >/dev/null || need+=(wrk)
    command -v h2load >/dev/null || need+=(nghttp2-client)
    command -v taskset >/dev/null || need+=(util-linux)
    [ ${#need[@]} -eq 0 ] && return
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    log "installing ${need[*]} from Debian's packages"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >&2 \
        || { [[ " ${need[*]} " == *" nginx-light "* ]] \
            && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
                "${need[@]/nginx-light/nginx}" >&2; }
}

# Starts a command in the background, records its PID in PIDS and in $STARTED.
start() {
    local name=$1
    shift
    "$@" >"$TMP/$name.out" 2>"$TMP/$name.err" &
    STARTED=$!
    PIDS+=("$STARTED")
}

# Stops a process this script started and forgets its PID, so cleanup never signals a
# PID the system may have handed to someone else since.
stop() {
    local pid keep=()
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    for pid in "${PIDS[@]}"; do
        [ "$pid" = "$1" ] || keep+=("$pid")
    done
    PIDS=("${keep[@]}")
}

# --- /proc accounting ----------------------------------------------------------------------

# The PID and all its descendants (from each process's parent in /proc/*/stat).
tree() {
    cat /proc/[0-9]*/stat 2>/dev/null | sed 's/ (.*) / x /' | awk -v root="$1" '
        {parent[$1] = $4}
        END {
            keep[root] = 1; printf "%s", root
            do {
                grew = 0
                for (p in parent) if (!(p in keep) && (parent[p] in keep)) {
                    keep[p] = 1; grew = 1; printf " %s", p }
            } while (grew)
            print "" }'
}

# utime + stime, then stime alone, in clock ticks, summed over the process tree.
cpu_ticks() {
    local total=0 sys=0 pid fields
    for pid in $(tree "$1"); do
        # Fields after "(comm) ": state is 1st, utime is 12th, stime is 13th.
        fields=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null) || continue
        total=$((total + $(awk '{print $12 + $13}' <<<"$fields")))
        sys=$((sys + $(awk '{print $13}' <<<"$fields")))
    done
    echo "$total $sys"
}

# Busy (non-idle, non-iowait) clock ticks of one CPU since boot, from /proc/stat.
cpu_busy_ticks() {
    awk -v c="cpu$1" '$1 == c {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat
}

# Peak RSS (VmHWM) in KiB, summed over the process tree.
peak_rss_kib() {
    local total=0 pid kib
    for pid in $(tree "$1"); do
        kib=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null) || continue
        total=$((total + ${kib:-0}))
    done
    echo "$total"
}

# --- configs -------------------------------------------------------------------------------

write_proxies() {
    local b
    # switchyard: one listener serves HTTP/1.1 and h2c on the same port. Its configs get a
    # directory of their own, as in a deployment: the proxy watches its config's directory,
    # and this temp dir also holds the 64 KiB body file and h2load's per-request log.
    mkdir -p "$TMP/sy"
    for variant in switchyard switchyard-log; do
        local log=off
        [ "$variant" = switchyard-log ] && log="$TMP/access.log"
        write_switchyard_config "$TMP/sy/$variant.yaml" "$PROXY_PORT" "$log" "${BACKEND_PORTS[@]}"
    done
    # NGINX: plaintext HTTP/2 needs its own port (`listen ... http2` is h2c only).
    mkdir -p "$TMP/nginx"
    {
        echo "worker_processes 1; daemon off; master_process on; pid $TMP/nginx/nginx.pid;"
        echo "error_log stderr error; worker_rlimit_nofile 16384;"
        echo "events { worker_connections 8192; }"
        echo "http { access_log off; keepalive_requests 1000000; keepalive_timeout 60s;"
        echo "  client_body_temp_path $TMP/nginx/body; proxy_temp_path $TMP/nginx/proxy;"
        # Idle upstream connections kept: as many as switchyard keeps (1,024 per upstream),
        # so that neither proxy reconnects under c1000 or h2c (500 streams) while the other
        # reuses: with NGINX's usual 256, NGINX closed and reopened upstream connections.
        echo "  upstream backends { keepalive $((1024 * ${#BACKEND_PORTS[@]})); keepalive_requests 1000000;"
        for b in "${BACKEND_PORTS[@]}"; do echo "    server 127.0.0.1:$b;"; done
        echo "  }"
        echo "  server { listen 127.0.0.1:$PROXY_PORT backlog=4096; listen 127.0.0.1:$PROXY_H2_PORT http2 backlog=4096;"
        echo "    location / { proxy_pass http://backends; proxy_http_version 1.1;"
        echo "      proxy_set_header Connection \"\"; proxy_set_header Host \$http_host;"
        echo "      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;"
        echo "      proxy_set_header X-Forwarded-Proto \$scheme;"
        echo "      proxy_buffers 8 16k; proxy_buffer_size 16k; } }"
        echo "}"
    } >"$TMP/nginx.conf"
    # HAProxy: `proto h2` on its own bind for h2c prior knowledge.
    haproxy_config "127.0.0.1:$PROXY_PORT" "127.0.0.1:$PROXY_H2_PORT proto h2" \
        -- "${BACKEND_PORTS[@]}" >"$TMP/haproxy.cfg"
}

# Starts one proxy pinned to PROXY_CPU; sets PROXY_PID.
start_proxy() {
    case $1 in
        sy-*)
            # `sy-LABEL+log` runs variant LABEL with the access log on, as `switchyard-log`.
            local bin label=${1#sy-} cfg=switchyard.yaml
            if [[ $label == *+log ]]; then
                label=${label%+log} cfg=switchyard-log.yaml
                rm -f "$TMP/access.log"
            fi
            bin=$(tr ',' '\n' <<<"${VARIANTS:-}" | awk -F= -v l="$label" '$1 == l {print $2}')
            [ -x "$bin" ] || { log "no binary for variant $label in VARIANTS"; exit 2; }
            start "$1" "${ON_PROXY_CPU[@]}" "$bin" run --config "$TMP/sy/$cfg" \
                --workers 1 --log-level warn ;;
        switchyard | switchyard-log)
            rm -f "$TMP/access.log"
            start "$1" "${ON_PROXY_CPU[@]}" "$SWITCHYARD" run --config "$TMP/sy/$1.yaml" \
                --workers 1 --log-level warn ;;
        nginx)
            start nginx "${ON_PROXY_CPU[@]}" nginx -p "$TMP/nginx" -c "$TMP/nginx.conf" -e stderr ;;
        haproxy)
            start haproxy "${ON_PROXY_CPU[@]}" haproxy -f "$TMP/haproxy.cfg" -db ;;
        *) log "unknown proxy $1"; exit 2 ;;
    esac
    PROXY_PID=$STARTED
    if ! wait_port "$PROXY_PORT" || { [[ $1 != switchyard* && $1 != sy-* ]] && ! wait_port "$PROXY_H2_PORT"; }; then
        cat "$TMP/$1.err" >&2
        exit 1
    fi
}

# --- load ----------------------------------------------------------------------------------

# The h2c port of a proxy (switchyard serves both on one port).
h2_port() {
    case $1 in switchyard* | sy-*) echo "$PROXY_PORT" ;; *) echo "$PROXY_H2_PORT" ;; esac
}

# wrk latency like 812.00us / 1.23ms / 1.02s -> milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n *= 1000
        printf "%.3f", n }'
}

# Runs one load; prints "rps p50_ms p99_ms errors".
run_load() {
    local scenario=$1 proxy=$2 seconds=$3 out="$TMP/load.out"
    local url="http://127.0.0.1:$PROXY_PORT/"
    local h2url="http://127.0.0.1:$(h2_port "$proxy")/"
    case $scenario in
        keepalive) "${ON_LOAD_CPU[@]}" wrk -t1 -c50 -d"${seconds}s" --latency "$url" >"$out" 2>&1 ;;
        close) "${ON_LOAD_CPU[@]}" wrk -t1 -c50 -d"${seconds}s" --latency -H "Connection: close" "$url" >"$out" 2>&1 ;;
        64k) "${ON_LOAD_CPU[@]}" wrk -t1 -c50 -d"${seconds}s" --latency "${url}64k" >"$out" 2>&1 ;;
        c1000) "${ON_LOAD_CPU[@]}" wrk -t1 -c1000 -d"${seconds}s" --timeout 5s --latency "$url" >"$out" 2>&1 ;;
        h2c)
            rm -f "$TMP/h2.log"
            "${ON_LOAD_CPU[@]}" h2load -t1 -c50 -m10 -D "$seconds" --log-file="$TMP/h2.log" \
                "$h2url" >"$out" 2>&1 ;;
        rate)
            rm -f "$TMP/h2.log"
            "${ON_LOAD_CPU[@]}" h2load --h1 -t1 -c50 --rps=$((RATE / 50)) -D "$seconds" \
                --log-file="$TMP/h2.log" "$url" >"$out" 2>&1 ;;
        *) log "unknown scenario $scenario"; exit 2 ;;
    esac
    case $scenario in
        h2c | rate) parse_h2load "$out" "$TMP/h2.log" ;;
        *) parse_wrk "$out" ;;
    esac
}

parse_wrk() {
    local rps p50 p99 errors
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$1")
    p50=$(to_ms "$(awk '$1 == "50%" {print $2}' "$1")")
    p99=$(to_ms "$(awk '$1 == "99%" {print $2}' "$1")")
    errors=$(awk '
        /Non-2xx or 3xx responses:/ {e += $NF}
        /Socket errors:/ {for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) e += $i}
        END {print e + 0}' "$1")
    echo "${rps:-0} $p50 $p99 $errors"
}

# h2load prints no percentiles: they come from its per-request log (3rd column, µs).
parse_h2load() {
    local rps errors pct
    rps=$(awk '/^finished in/ {print $4}' "$1" | tr -d ',')
    errors=$(awk '
        /^requests:/ {e += $10 + $12 + $14}
        /^status codes:/ {e += $5 + $7 + $9}
        END {print e + 0}' "$1")
    pct=$(awk '$2 >= 200 && $2 < 300 {print $3}' "$2" | sort -n | awk '
        {v[NR] = $1}
        END {
            if (NR == 0) {print "0 0"; exit}
            i50 = int(NR * 0.50); if (i50 < 1) i50 = 1
            i99 = int(NR * 0.99); if (i99 < 1) i99 = 1
            printf "%.3f %.3f", v[i50] / 1000, v[i99] / 1000 }')
    echo "${rps:-0} $pct $errors"
}

# --- report --------------------------------------------------------------------------------

median() { sort -g | awk '{v[NR] = $1} END {if (NR == 0) print 0; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

# Median of column $3 (1-based in the TSV) for scenario $1, proxy $2.
med() { awk -F'\t' -v s="$1" -v p="$2" -v c="$3" '$1 == s && $2 == p {print $c}' "$TMP/results.tsv" | median; }

# Median over the repetitions of proxy $2's requests per CPU-second over peer $3's in the same
# repetition, for scenario $1: the two ran minutes apart at most, so a slow stretch of the
# machine weighs on both sides of each ratio.
paired() {
    awk -F'\t' -v s="$1" -v a="$2" -v b="$3" '$1 == s && $2 == a {x[$3] = $8}
        $1 == s && $2 == b {y[$3] = $8}
        END {for (r in x) if ((r in y) && y[r] > 0) print x[r] / y[r]}' "$TMP/results.tsv" | median
}

report() {
    local scenario proxy peer
    echo "## Results"
    echo
    echo "Medians over $REPS runs of ${DURATION}s each; proxy pinned to CPU $PROXY_CPU, load and"
    echo "backends on CPU $LOAD_CPU. CPU s = utime + stime of the proxy's processes during the run;"
    echo "CPU use = that over the run's length (100% = the proxy's CPU was the limit; below it the"
    echo "load generator and backends on the other CPU were). other CPU s = busy time other processes"
    echo "took on the proxy's CPU during the run. kernel = stime's share of the proxy CPU s."
    echo "Errors = non-2xx answers + socket errors."
    echo "Ratios: efficiency is the ratio of the median requests per CPU-second; paired is the median"
    echo "over the repetitions of that ratio within each (the two proxies ran back to back)."
    for scenario in ${SCENARIOS//,/ }; do
        echo
        echo "### $scenario"
        echo
        echo "| proxy | req/s | p50 ms | p99 ms | proxy CPU s | CPU use | kernel | req per CPU-s | peak RSS MiB | errors | other CPU s |"
        echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        for proxy in ${PROXIES//,/ }; do
            local rps p50 p99 cpu eff rss err other kernel
            rps=$(med "$scenario" "$proxy" 4); p50=$(med "$scenario" "$proxy" 5)
            p99=$(med "$scenario" "$proxy" 6); cpu=$(med "$scenario" "$proxy" 7)
            eff=$(med "$scenario" "$proxy" 8); rss=$(med "$scenario" "$proxy" 9)
            err=$(med "$scenario" "$proxy" 10); other=$(med "$scenario" "$proxy" 11)
            kernel=$(med "$scenario" "$proxy" 12)
            awk -v p="$proxy" -v r="$rps" -v a="$p50" -v b="$p99" -v c="$cpu" -v e="$eff" \
                -v m="$rss" -v x="$err" -v d="$DURATION" -v o="$other" -v k="$kernel" 'BEGIN {
                printf "| %s | %.0f | %.2f | %.2f | %.2f | %.0f%% | %.0f%% | %.0f | %.1f | %d | %.2f |\n",
                    p, r, a, b, c, 100 * c / d, k, e, m / 1024, x, o }'
        done
        for proxy in ${PROXIES//,/ }; do
            [[ $proxy == switchyard* || $proxy == sy-* ]] || continue
            for peer in ${PROXIES//,/ }; do
                [[ $peer == "$proxy" || $peer == switchyard-log || $peer == sy-* ]] && continue
                awk -v s="$proxy" -v p="$peer" \
                    -v e1="$(med "$scenario" "$proxy" 8)" -v e2="$(med "$scenario" "$peer" 8)" \
                    -v pr="$(paired "$scenario" "$proxy" "$peer")" \
                    -v l1="$(med "$scenario" "$proxy" 6)" -v l2="$(med "$scenario" "$peer" 6)" \
                    -v m1="$(med "$scenario" "$proxy" 9)" -v m2="$(med "$scenario" "$peer" 9)" 'BEGIN {
                    printf "| %s / %s | req per CPU-s x%.2f | x%.2f | p99 x%.2f | RSS %+.1f MiB |\n",
                        s, p, (e2 > 0 ? e1 / e2 : 0), pr, (l2 > 0 ? l1 / l2 : 0), (m1 - m2) / 1024 }'
            done
        done | { read -r first || exit 0
                 echo; echo "| ratio | efficiency | paired | p99 latency | peak RSS |"
                 echo "|---|---|---|---|---|"
                 echo "$first"; cat; }
    done
}

# --- main ----------------------------------------------------------------------------------

install_missing
if [ -n "${SWITCHYARD_BIN:-}" ]; then
    SWITCHYARD=$SWITCHYARD_BIN
else
    log "building switchyard (cargo build --release)"
    (cd "$ROOT" && cargo build --release --quiet)
    SWITCHYARD="$ROOT/target/release/switchyard"
fi
if [ "$NICE" != 0 ] && [ -w /proc/self/autogroup ]; then
    AUTOGROUP_NICE=$(awk '{print $NF}' /proc/self/autogroup)
    echo "$NICE" >/proc/self/autogroup || AUTOGROUP_NICE=""
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
TICKS=$(getconf CLK_TCK)

free_ports BACKEND_PORTS 3
free_port >"$TMP/port"; PROXY_PORT=$(cat "$TMP/port")
free_port >"$TMP/port"; PROXY_H2_PORT=$(cat "$TMP/port")
write_backends "$TMP" "${BACKEND_PORTS[@]}"
write_proxies
start backends "${ON_LOAD_CPU[@]}" nginx -p "$TMP/backend" -c "$TMP/backend.conf" -e stderr
for port in "${BACKEND_PORTS[@]}"; do wait_port "$port"; done

printf 'scenario\tproxy\trep\trps\tp50_ms\tp99_ms\tcpu_s\treq_per_cpu_s\trss_kib\terrors\tother_cpu_s\tsys_pct\n' >"$TMP/results.tsv"
runs=$(( $(tr ',' '\n' <<<"$SCENARIOS" | wc -l) * $(tr ',' '\n' <<<"$PROXIES" | wc -l) * REPS ))
log "$runs runs of ${DURATION}s (+${WARMUP}s warm-up each); load average now $(cut -d" " -f1-3 /proc/loadavg)"
for scenario in ${SCENARIOS//,/ }; do
    for ((rep = 1; rep <= REPS; rep++)); do
        for proxy in ${PROXIES//,/ }; do
            start_proxy "$proxy"
            run_load "$scenario" "$proxy" "$WARMUP" >/dev/null
            read -r before sys_before < <(cpu_ticks "$PROXY_PID")
            busy_before=$(cpu_busy_ticks "$PROXY_CPU")
            read -r rps p50 p99 errors < <(run_load "$scenario" "$proxy" "$DURATION")
            read -r after sys_after < <(cpu_ticks "$PROXY_PID")
            busy_after=$(cpu_busy_ticks "$PROXY_CPU")
            rss=$(peak_rss_kib "$PROXY_PID")
            stop "$PROXY_PID"
            line=$(awk -v s="$scenario" -v p="$proxy" -v r="$rep" -v q="$rps" -v a="$p50" \
                -v b="$p99" -v t=$((after - before)) -v hz="$TICKS" -v d="$DURATION" -v m="$rss" \
                -v e="$errors" -v busy=$((busy_after - busy_before)) -v k=$((sys_after - sys_before)) 'BEGIN {
                cpu = t / hz; eff = (cpu > 0 ? q * d / cpu : 0)
                other = (busy - t) / hz; if (other < 0) other = 0
                kernel = (t > 0 ? 100 * k / t : 0)
                printf "%s\t%s\t%d\t%.1f\t%.3f\t%.3f\t%.2f\t%.0f\t%d\t%d\t%.2f\t%.0f\n",
                    s, p, r, q, a, b, cpu, eff, m, e, other, kernel }')
            echo "$line" >>"$TMP/results.tsv"
            log "$(tr '\t' ' ' <<<"$line")"
        done
    done
done

[ -n "${RESULTS:-}" ] && cp "$TMP/results.tsv" "$RESULTS"
if [ -n "${REPORT:-}" ]; then
    report | tee "$REPORT"
else
    report
fi
