#!/usr/bin/env bash
# Server-sent events at scale: STREAMS concurrent SSE streams of one event every INTERVAL_MS for
# DURATION_S seconds, to the mock pod directly (the peer) and through infergate, in the same run
# and at the same time, from one client process (infergate-sse-load). Reported per target:
# streams completed and cut, the gap between consecutive events (p50/p99/p99.9/max) and each
# event's lateness against its schedule; then what the router adds (routed - direct) and its
# RSS at the start, at the peak and at the end. The router runs with its default settings
# (streamIdleTimeoutMs 60 s, maxStreamDurationMs 1 h) but enough slots for every stream.
#
#   bash benches/scripts/sse.sh                        # 1,000 streams x 100 ms x 60 s, HTTP/1.1
#   H2=1 bash benches/scripts/sse.sh                   # the router side over HTTP/2 (h2c)
#   STREAMS=100 DURATION_S=10 bash benches/scripts/sse.sh
#
# The 30-minute stream (one event every 10 s, default timers, never cut):
#   STREAMS=1 INTERVAL_MS=10000 DURATION_S=1800 bash benches/scripts/sse.sh
#   (SSE_HTTP, SSE_ADMIN, SSE_POD: other ports, to run beside another script)
#
# PIN=1: the router with one worker and the mock pod on CPU 0, the client on CPU 1 (layout A of
# ../shared/BENCHMARKING.md), so that the client's scheduling is not shared with the router.
#
# Everything runs on 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

STREAMS="${STREAMS:-1000}"; INTERVAL_MS="${INTERVAL_MS:-100}"; DURATION_S="${DURATION_S:-60}"
H2="${H2:-0}"; HTTP="${SSE_HTTP:-18080}"; ADMIN="${SSE_ADMIN:-18090}"; POD="${SSE_POD:-18201}"
CHUNKS=$(( DURATION_S * 1000 / INTERVAL_MS ))
cargo build --release --quiet -p infergate -p mock-model -p infergate-loadtest
BIN="${CARGO_TARGET_DIR:-target}/release"
# Client: 2 x STREAMS sockets (HTTP/1.1); router: STREAMS in and out.
ulimit -Sn "$(ulimit -Hn)"
WORK="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

PIN="${PIN:-0}"
# CPU0 / CPU1: command prefixes (taskset execs the command: $! stays the router's pid).
CPU0=(); CPU1=(); WORKERS=()
[ "$PIN" = 1 ] && { CPU0=(taskset -c 0); CPU1=(taskset -c 1); WORKERS=(--workers 1); }

"${CPU0[@]}" "$BIN/mock-model" --listen "127.0.0.1:$POD" --name pod >/dev/null &
PIDS+=($!)
cat > "$WORK/infergate.yaml" <<YAML
allowInsecureConnections: true
listen: {http: "127.0.0.1:$HTTP", admin: "127.0.0.1:$ADMIN"}
defaults: {maxConcurrentRequestsPerInstance: $(( STREAMS + 100 ))}
requestSettingsCeilings: {maxConcurrentRequestsPerInstance: $(( STREAMS + 100 ))}
endpoints:
  - name: e
    auth: {mode: none}
    deployments: [{name: d, pods: ["127.0.0.1:$POD"]}]
YAML
RUST_LOG=warn "${CPU0[@]}" "$BIN/infergate" serve --config "$WORK/infergate.yaml" "${WORKERS[@]}" >"$WORK/router.log" 2>&1 &
ROUTER=$!
PIDS+=($ROUTER)
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$ADMIN/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -sf "http://127.0.0.1:$ADMIN/readyz" >/dev/null || { cat "$WORK/router.log"; exit 1; }

ARGS=(--direct "http://127.0.0.1:$POD/score" --routed "http://127.0.0.1:$HTTP/api/v1/endpoint/e/score"
      --streams "$STREAMS" --chunks "$CHUNKS" --interval "${INTERVAL_MS}ms" --router-pid "$ROUTER")
[ "$H2" = 1 ] && ARGS+=(--h2)
echo "commit $(git rev-parse --short HEAD), $(date '+%F %T'), $(nproc) cores"
"${CPU1[@]}" "$BIN/infergate-sse-load" "${ARGS[@]}"
echo "router stream timeouts: $(curl -s "http://127.0.0.1:$ADMIN/metrics" | grep '^infergate_stream_timeouts_total' | awk '{s+=$2} END {print s+0}')"
