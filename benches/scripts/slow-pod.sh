#!/usr/bin/env bash
# Slow-pod scenario, side by side: infergate vs HAProxy (maxconn + queue) vs nginx
# (least_conn + max_conns; open-source nginx has no queue), all in front of the same mock pods.
#
# Four pods, one request at a time each: three answer in FAST_MS, one in SLOW_MS. CLIENTS
# closed-loop connections POST 1 KiB of JSON for DURATION seconds through each proxy (wrk).
# Reported: goodput (2xx/s), p50/p99 latency, and the non-2xx count (503s from queue limits,
# 502s from nginx when every server is at max_conns).
#
#   bash benches/scripts/slow-pod.sh            # needs: nginx, haproxy, wrk (apt), cargo
#   ROUNDS=3 DURATION=10 CLIENTS=8 bash benches/scripts/slow-pod.sh
#
# Everything runs on 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

ROUNDS="${ROUNDS:-3}"; DURATION="${DURATION:-10}"; CLIENTS="${CLIENTS:-8}"
FAST_MS="${FAST_MS:-20}"; SLOW_MS="${SLOW_MS:-400}"; QUEUE_MS="${QUEUE_MS:-500}"
for tool in nginx haproxy wrk; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install nginx-light haproxy wrk" >&2; exit 1; }
done
cargo build --release --quiet -p infergate -p mock-model
BIN="${CARGO_TARGET_DIR:-target}/release"
WORK="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

PORTS=(18101 18102 18103 18104)
for i in 0 1 2 3; do
    lat=$FAST_MS; [ "$i" = 3 ] && lat=$SLOW_MS
    "$BIN/mock-model" --listen "127.0.0.1:${PORTS[$i]}" --name "pod$i" --latency-ms "$lat" >/dev/null &
    PIDS+=($!)
done

cat > "$WORK/infergate.yaml" <<YAML
allowInsecureConnections: true
listen: {http: "127.0.0.1:18080", admin: "127.0.0.1:18090"}
defaults: {maxConcurrentRequestsPerInstance: 1, maxQueueWaitMs: $QUEUE_MS, requestTimeoutMs: 10000}
endpoints:
  - name: e
    auth: {mode: none}
    deployments:
      - name: d
        pods: ["127.0.0.1:${PORTS[0]}", "127.0.0.1:${PORTS[1]}", "127.0.0.1:${PORTS[2]}", "127.0.0.1:${PORTS[3]}"]
YAML
cat > "$WORK/haproxy.cfg" <<CFG
global
    nbthread 1
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout queue ${QUEUE_MS}ms
frontend f
    bind 127.0.0.1:18081
    default_backend b
backend b
    balance leastconn
    http-reuse always
    server p0 127.0.0.1:${PORTS[0]} maxconn 1
    server p1 127.0.0.1:${PORTS[1]} maxconn 1
    server p2 127.0.0.1:${PORTS[2]} maxconn 1
    server p3 127.0.0.1:${PORTS[3]} maxconn 1
CFG
mkdir -p "$WORK/nginx"
cat > "$WORK/nginx.conf" <<CFG
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx/error.log crit;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx; proxy_temp_path $WORK/nginx;
    fastcgi_temp_path $WORK/nginx; uwsgi_temp_path $WORK/nginx; scgi_temp_path $WORK/nginx;
    upstream pods {
        least_conn;
        server 127.0.0.1:${PORTS[0]} max_conns=1;
        server 127.0.0.1:${PORTS[1]} max_conns=1;
        server 127.0.0.1:${PORTS[2]} max_conns=1;
        server 127.0.0.1:${PORTS[3]} max_conns=1;
        keepalive 16;
    }
    server {
        listen 127.0.0.1:18082;
        location / { proxy_pass http://pods/score; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
}
CFG
body=$(python3 -c 'import json; print(json.dumps({"data": [[0.5] * 180]})[:1024])')
cat > "$WORK/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '$body'
wrk.headers["Content-Type"] = "application/json"
LUA

INFERGATE_WORKERS=1 "$BIN/infergate" serve --config "$WORK/infergate.yaml" >"$WORK/infergate.log" &
PIDS+=($!)
haproxy -f "$WORK/haproxy.cfg" -db >"$WORK/haproxy.log" 2>&1 &
PIDS+=($!)
nginx -c "$WORK/nginx.conf" -g 'daemon off;' >"$WORK/nginx.log" 2>&1 &
PIDS+=($!)
sleep 1

declare -A URL=(
    [infergate]="http://127.0.0.1:18080/api/v1/endpoint/e/score"
    [haproxy]="http://127.0.0.1:18081/score"
    [nginx]="http://127.0.0.1:18082/"
)
run() { # target -> "goodput p50_ms p99_ms non2xx"
    local out; out=$(wrk -t1 -c"$CLIENTS" -d"${DURATION}s" --latency -s "$WORK/post.lua" "${URL[$1]}")
    python3 - "$out" "$DURATION" <<'PY'
import re, sys
out, dur = sys.argv[1], float(sys.argv[2])
def ms(v):
    n, u = float(re.match(r"([\d.]+)", v).group(1)), re.sub(r"[\d.]", "", v)
    return n * {"us": 1e-3, "ms": 1, "s": 1e3, "m": 6e4}[u]
total = int(re.search(r"(\d+) requests in", out).group(1))
bad = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
errs = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
p50 = ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)); p99 = ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
print(f"{(total - bad) / dur:.1f} {p50:.1f} {p99:.1f} {bad + errs}")
PY
}

declare -A RES
targets=(infergate haproxy nginx)
for r in $(seq "$ROUNDS"); do
    # rotate the order each round
    order=("${targets[@]:$((r % 3))}" "${targets[@]:0:$((r % 3))}")
    for t in "${order[@]}"; do
        RES[$t]+="$(run "$t");"
        echo "round $r $t: ${RES[$t]##*;}" >&2 || true
    done
done

echo
echo "Slow-pod scenario: 4 pods x 1 slot (3 x ${FAST_MS} ms, 1 x ${SLOW_MS} ms), ${CLIENTS} closed-loop clients, ${DURATION} s x ${ROUNDS} rounds, queue limit ${QUEUE_MS} ms; medians"
echo
echo "| proxy | goodput (2xx/s) | p50 ms | p99 ms | non-2xx + errors |"
echo "|---|---|---|---|---|"
for t in "${targets[@]}"; do
    python3 - "$t" "${RES[$t]}" <<'PY'
import statistics, sys
name, rows = sys.argv[1], [r.split() for r in sys.argv[2].split(";") if r.strip()]
col = lambda i: statistics.median(float(r[i]) for r in rows)
print(f"| {name} | {col(0):.1f} | {col(1):.1f} | {col(2):.1f} | {col(3):.0f} |")
PY
done
