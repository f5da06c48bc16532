# shellcheck shell=bash
# The HAProxy config that compare.sh and profile.sh run, so that both measure the same proxy:
# one thread, HTTP mode, round robin over the backends, X-Forwarded-For added, keep-alive on
# both sides, and idle backend connections reused by any request (`http-reuse always`, as
# switchyard and NGINX do; HAProxy's default, `safe`, opens a new one for the first request of
# every client connection).

# Prints the config. Usage: haproxy_config BIND... -- BACKEND_PORT...
# Each BIND is what follows `bind` (an address, maybe with `proto h2` for h2c).
haproxy_config() {
    local binds=() port i=0
    while [ "$1" != -- ]; do
        binds+=("$1")
        shift
    done
    shift
    echo "global"
    echo "  nbthread 1"
    echo "  maxconn 4096"
    echo "defaults"
    echo "  mode http"
    echo "  maxconn 4096"
    echo "  timeout connect 5s"
    echo "  timeout client 60s"
    echo "  timeout server 60s"
    echo "  option forwardfor"
    echo "  http-reuse always"
    echo "frontend bench"
    for bind in "${binds[@]}"; do echo "  bind $bind"; done
    echo "  default_backend backends"
    echo "backend backends"
    echo "  balance roundrobin"
    for port in "$@"; do
        i=$((i + 1))
        echo "  server b$i 127.0.0.1:$port"
    done
}
