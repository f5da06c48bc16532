# shellcheck shell=bash
# What compare.sh, profile.sh and instructions.sh share on 127.0.0.1: free ports, waiting for
# a listener, work directories, the switchyard config they measure, and the NGINX backends
# every proxy forwards to (so that all three measure against the same backends). The
# sourcing script defines `log`.

# A free loopback port below the kernel's ephemeral range (so no outgoing connection of
# this run or another process can be holding it as its source port), not answering a
# connect and not handed out before by this script. Call it as `free_port >FILE` rather than
# in `$(...)`: a subshell would forget the ports already handed out.
EPHEMERAL_LOW=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
USED_PORTS=" "
free_port() {
    local port span=$((EPHEMERAL_LOW - 12000))
    while :; do
        port=$((12000 + RANDOM % span))
        [[ $USED_PORTS == *" $port "* ]] && continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            USED_PORTS+="$port "
            echo "$port"
            return
        fi
    done
}

# Fills the array named $1 with $2 free ports. Usage: free_ports PORTS 4
free_ports() {
    local -n into=$1
    local i file
    file=$(mktemp)
    into=()
    for ((i = 0; i < $2; i++)); do
        free_port >"$file"
        into+=("$(cat "$file")")
    done
    rm -f "$file"
}

# Waits up to SECONDS (default 10) for something to listen on PORT. Usage: wait_port PORT [SECONDS]
wait_port() {
    local i tries=$((${2:-10} * 20))
    for ((i = 0; i < tries; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    log "nothing listens on 127.0.0.1:$1 after ${2:-10} s"
    return 1
}

# Writes DIR/backend.conf: one NGINX worker with a server on each PORT answering `ok PORT`
# (and DIR/64k, a 64 KiB file, on /64k), its pid and temp files under DIR/backend.
# Usage: write_backends DIR PORT...
write_backends() {
    local dir=$1 port
    shift
    head -c 65536 /dev/zero | tr '\0' 'x' >"$dir/64k"
    mkdir -p "$dir/backend"
    {
        echo "worker_processes 1; daemon off; master_process on; pid $dir/backend/nginx.pid;"
        echo "error_log stderr error; worker_rlimit_nofile 16384;"
        echo "events { worker_connections 8192; }"
        echo "http { access_log off; keepalive_requests 1000000; keepalive_timeout 60s;"
        echo "  client_body_temp_path $dir/backend/body; proxy_temp_path $dir/backend/proxy;"
        for port in "$@"; do
            echo "  server { listen 127.0.0.1:$port reuseport backlog=4096;"
            echo "    location = /64k { alias $dir/64k; default_type application/octet-stream; }"
            echo "    location / { default_type text/plain; return 200 \"ok $port\n\"; } }"
        done
        echo "}"
    } >"$dir/backend.conf"
}

# Stops every process this script started (their PIDs are in the array PIDS), and only
# those: a TERM each, then a wait for each.
stop_started() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}

# The run's work directory $TMP (readable by the NGINX backends' workers) and $OUT, where
# results are kept ($TMP unless the caller set OUT). Usage: make_work_dirs NAME
make_work_dirs() {
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/switchyard-$1.XXXXXX")
    chmod 755 "$TMP"
    OUT=${OUT:-$TMP}
    mkdir -p "$OUT"
}

# Removes the work directory (kept results are in $OUT when the caller set it elsewhere).
remove_work_dirs() {
    rm -rf "$TMP"
}

# The switchyard config every script measures: one worker, one listener on 127.0.0.1:PORT,
# one route to a round-robin pool of the backends. ACCESS_LOG is `off` or a file.
# Usage: write_switchyard_config FILE PORT ACCESS_LOG BACKEND_PORT...
write_switchyard_config() {
    local file=$1 port=$2 log=$3 p
    shift 3
    {
        echo "workers: 1"
        echo "access_log: $log"
        echo "listeners:"
        echo "  - name: bench"
        echo "    bind: \"127.0.0.1:$port\""
        echo "    limits: { max_connections: 20000 }"
        echo "routes:"
        echo "  - name: all"
        echo "    pool: backends"
        echo "pools:"
        echo "  - name: backends"
        echo "    strategy: round_robin"
        echo "    upstreams:"
        for p in "$@"; do echo "      - { addr: \"127.0.0.1:$p\" }"; done
    } >"$file"
}
