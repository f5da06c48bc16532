#!/usr/bin/env bash
# New connections per second through the release proxy on one core: plaintext HTTP/1.1 beside
# TLS 1.3 full handshakes (ECDSA P-256 and RSA 2048 certificates) and resumed handshakes.
#
# Method: the proxy runs with one worker thread pinned to CPU 0, h2load with one thread pinned
# to CPU 1. Every connection carries one HTTP/1.1 GET, which matches no route, so the proxy
# answers 404 itself (no upstream cost in the figure).
# - "new": h2load -c N -n N, so every connection is a new client with a new TLS session: a
#   full handshake each (h2load starts them all at once; the proxy's backlog is 1024).
# - "resumed": 50 clients send `Connection: close`; h2load reconnects and resumes its
#   session (TLS 1.3 PSK with ECDHE, no certificate signature).
# Two figures per run: connections per wall-clock second, and connections per CPU-second of
# the proxy process (utime + stime from /proc), which stays meaningful on a busy machine.
#
# Needs h2load (Debian: nghttp2-client), openssl and taskset. Loopback only; stops the proxy
# it started, by PID, on exit. Usage: benches/tls_handshake.sh [N]   (default N = 1000)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000}
runs=${RUNS:-3}
plain=127.0.0.1:18480
tls_ec=127.0.0.1:18481
tls_rsa=127.0.0.1:18482

cargo build --release --quiet
dir=$(mktemp -d)
proxy_pid=""
cleanup() {
  if [ -n "$proxy_pid" ]; then kill "$proxy_pid" 2>/dev/null || true; wait "$proxy_pid" 2>/dev/null || true; fi
  rm -rf "$dir"
}
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench.test \
  -addext subjectAltName=DNS:bench.test -keyout "$dir/ec-key.pem" -out "$dir/ec.pem" 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=bench.test \
  -addext subjectAltName=DNS:bench.test -keyout "$dir/rsa-key.pem" -out "$dir/rsa.pem" 2>/dev/null
cat >"$dir/bench.yaml" <<EOF
workers: 1
access_log: off
listeners:
  - { name: plain, bind: "$plain" }
  - name: tls-ec
    bind: "$tls_ec"
    tls: { certificates: [{ cert: ec.pem, key: ec-key.pem }] }
  - name: tls-rsa
    bind: "$tls_rsa"
    tls: { certificates: [{ cert: rsa.pem, key: rsa-key.pem }] }
EOF

taskset -c 0 target/release/switchyard --config "$dir/bench.yaml" --log-level warn &
proxy_pid=$!
for _ in $(seq 100); do
  (exec 3<>/dev/tcp/127.0.0.1/${tls_rsa##*:}) 2>/dev/null && break
  sleep 0.05
done
tick=$(getconf CLK_TCK)

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$proxy_pid/stat"; }

# One h2load run; prints "wall-rate/cpu-rate" in connections per second.
rate() {
  local before out after done errored secs
  before=$(cpu_ticks)
  out=$(taskset -c 1 timeout 120 h2load -t 1 -n "$n" "$@" 2>&1)
  after=$(cpu_ticks)
  # "requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout";
  # the proxy's 404 counts as "failed" (not 2xx/3xx), a broken connection as "errored".
  done=$(awk '/^requests:/ { print $6 }' <<<"$out")
  errored=$(awk '/^requests:/ { print $12 + $14 }' <<<"$out")
  # "finished in 1.23s," or "251.97ms," or "980us,".
  secs=$(awk '/^finished in/ { v = $3; sub(/,$/, "", v); d = 1
    if (v ~ /ms$/) { d = 1e3 } else if (v ~ /us$/) { d = 1e6 }
    sub(/[mu]?s$/, "", v); print v / d }' <<<"$out")
  if [ -z "$done" ] || [ -z "$secs" ] || [ "$errored" != 0 ] || [ "$done" != "$n" ]; then
    echo "h2load failed:" >&2
    echo "$out" >&2
    exit 1
  fi
  awk -v n="$n" -v s="$secs" -v t=$((after - before)) -v hz="$tick" \
    'BEGIN { printf "%.0f/%.0f", n / s, (t > 0 ? n * hz / t : 0) }'
}

printf '%-36s %s\n' "connections, one GET each" "per wall second / per proxy CPU second ($n per run)"
for case in "plaintext HTTP/1.1, new|-c $n http://$plain/" \
            "TLS 1.3 ECDSA P-256, new (full)|-c $n https://$tls_ec/" \
            "TLS 1.3 RSA 2048, new (full)|-c $n https://$tls_rsa/" \
            "TLS 1.3 ECDSA P-256, resumed|-c 50 -H Connection:close https://$tls_ec/"; do
  name=${case%%|*}
  read -r -a args <<<"${case#*|}"
  results=()
  for _ in $(seq "$runs"); do
    results+=("$(rate --h1 "${args[@]}")")
  done
  printf '%-36s %s\n' "$name" "${results[*]}"
done
