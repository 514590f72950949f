#!/usr/bin/env bash
# Edge limits: many connections that hold the router without asking anything of it.
#
# Scenarios, each CONNS connections from 4 client addresses (127.0.0.1-4, so that the default
# per-address cap of 5,000 does not refuse them), against a fresh router with the default
# limits (maxConnections raised to CONNS + 1000, so that the probe fits beside them):
#   tls-silent    TLS handshake done (ALPN http/1.1), then nothing: closed by headerReadTimeoutMs
#   h2-silent     TLS with ALPN h2, then nothing (not even the preface)
#   plain-silent  TCP connect, then nothing: closed by headerReadTimeoutMs
#   keepalive     one HTTP/1.1 request, then nothing on the kept-alive connection: idleTimeoutMs
#   tls-keepalive the same over TLS
# Reported per scenario (by infergate-idle-conns, a separate process with its own fd limit):
# how many the router closed and when, its RSS before / at the peak / after, and the latency of
# a normal request (new connection, + TLS handshake on TLS) every 250 ms while all are open.
#
#   bash benches/scripts/idle-conns.sh                  # needs: cargo, curl; ~6 minutes
#   CONNS=2000 SCENARIOS="plain-silent" bash benches/scripts/idle-conns.sh
#   BIN=DIR SKIP_BUILD=1 bash benches/scripts/idle-conns.sh   # binaries built elsewhere (A/B)
#
# Everything runs on 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

CONNS="${CONNS:-10000}"
SCENARIOS="${SCENARIOS:-tls-silent h2-silent plain-silent keepalive tls-keepalive}"
HTTPS=18443; HTTP=18080; ADMIN=18090; POD=18201
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    cargo build --release --quiet -p infergate -p mock-model -p infergate-loadtest
fi
BIN="${BIN:-${CARGO_TARGET_DIR:-target}/release}"
# The client holds CONNS sockets: its soft open-files limit goes to the hard one.
ulimit -Sn "$(ulimit -Hn)"
WORK="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

"$BIN/mock-model" --listen "127.0.0.1:$POD" --name pod >/dev/null &
PIDS+=($!)
cat > "$WORK/infergate.yaml" <<YAML
sslCertPemFile: certs-example/server.pem
sslKeyPemFile: certs-example/server-key.pem
allowInsecureConnections: true
listen: {https: "127.0.0.1:$HTTPS", http: "127.0.0.1:$HTTP", admin: "127.0.0.1:$ADMIN"}
defaults: {maxConcurrentRequestsPerInstance: 64}
# Every limit at its default, except room for the probe beside the CONNS idle connections
# (the default maxConnections is 10000).
limits: {maxConnections: $((CONNS + 1000))}
endpoints:
  - name: e
    auth: {mode: none}
    deployments: [{name: d, pods: ["127.0.0.1:$POD"]}]
YAML
# Each scenario gets a fresh router, started with a low soft open-files limit (as under a
# default shell or systemd unit): it raises it to the hard one itself and logs both.
ROUTER=
start_router() {
    ( ulimit -Sn 1024; exec "$BIN/infergate" serve --config "$WORK/infergate.yaml" --log-format text ) \
        > "$WORK/router.log" 2>&1 &
    ROUTER=$!
    PIDS+=($ROUTER)
    for _ in $(seq 100); do
        curl -fsS "http://127.0.0.1:$ADMIN/readyz" >/dev/null 2>&1 && break
        sleep 0.1
    done
}
stop_router() { kill -TERM "$ROUTER"; wait "$ROUTER" 2>/dev/null || true; }
start_router
sed -n 's/.*\(open-files limit.*\)/router: \1/p' "$WORK/router.log" | head -1
echo "router soft/hard open-files limit now: $(awk '/Max open files/ {print $4 "/" $5}' /proc/$ROUTER/limits)"
stop_router

metric() { curl -fsS "http://127.0.0.1:$ADMIN/metrics" | awk -v m="$1" 'index($0, m) == 1 {s += $NF} END {print s + 0}'; }
for s in $SCENARIOS; do
    echo
    echo "=== $s: $CONNS connections ==="
    start_router
    CLIENT=("$BIN/infergate-idle-conns" --conns "$CONNS" --router-pid "$ROUTER"
            --sources 127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4)
    header0=$(metric 'infergate_connection_timeouts_total{timeout="header_read"}')
    idle0=$(metric 'infergate_connection_timeouts_total{timeout="idle"}')
    case "$s" in
        tls-silent)   "${CLIENT[@]}" --target "127.0.0.1:$HTTPS" --tls-ca certs-example/ca.pem ;;
        h2-silent)    "${CLIENT[@]}" --target "127.0.0.1:$HTTPS" --tls-ca certs-example/ca.pem --alpn h2 ;;
        plain-silent) "${CLIENT[@]}" --target "127.0.0.1:$HTTP" ;;
        keepalive)    "${CLIENT[@]}" --target "127.0.0.1:$HTTP" --mode keepalive ;;
        tls-keepalive) "${CLIENT[@]}" --target "127.0.0.1:$HTTPS" --tls-ca certs-example/ca.pem --mode keepalive ;;
        *) echo "unknown scenario $s" >&2; exit 2 ;;
    esac
    header1=$(metric 'infergate_connection_timeouts_total{timeout="header_read"}')
    idle1=$(metric 'infergate_connection_timeouts_total{timeout="idle"}')
    echo "router: closed by headerReadTimeoutMs $((header1 - header0)), by idleTimeoutMs $((idle1 - idle0)); open now $(metric infergate_connections_open)"
    stop_router
done
