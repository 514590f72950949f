#!/usr/bin/env bash
# Big bodies: 10 MB POST uploads through infergate and through nginx (`proxy_request_buffering
# off`, so that nginx streams the upload as infergate does) in front of the same mock model,
# side by side in one run. Layout: proxy + mock on CPU 0, the generator (`infergate-loadtest`,
# closed loop, CONC concurrent uploads on keep-alive connections) on CPU 1; one worker each.
# Per run: upload throughput (MB/s of request body), the proxy's CPU per MB, and the proxy's
# RSS (sampled every 50 ms) before and at the peak, growth per concurrent upload. ROUNDS
# interleaved rounds per concurrency; medians and ratios infergate / nginx.
#
#   bash benches/scripts/big-bodies.sh                       # ~4 minutes
#   ROUNDS=5 CONCS="1 8 32" SIZE=20971520 bash benches/scripts/big-bodies.sh
#
# Installs nginx-light (apt-get) when missing. Everything runs on 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROUNDS="${ROUNDS:-3}"; DURATION="${DURATION:-6}"; SIZE="${SIZE:-10485760}"; CONCS="${CONCS:-1 4 16}"
if ! command -v nginx >/dev/null; then
    echo "installing nginx-light (apt-get)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >&2
fi
for tool in nginx taskset python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install nginx-light util-linux python3" >&2; exit 1; }
done
TARGET="${CARGO_TARGET_DIR:-target}"
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release --quiet -p infergate -p mock-model -p infergate-loadtest
BIN="${BIN:-$TARGET/release}"
WORK="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

MOCK_PORT=18961; IG_PORT=18962; NGX_PORT=18963
cat >"$WORK/infergate.yaml" <<YAML
allowInsecureConnections: true
listen: {http: "127.0.0.1:$IG_PORT", admin: "127.0.0.1:18964"}
endpoints:
  - name: big
    auth: {mode: none}
    deployments: [{name: d, pods: ["127.0.0.1:$MOCK_PORT"]}]
YAML
mkdir -p "$WORK/ngx"
cat >"$WORK/nginx.conf" <<NGX
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log stderr warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/ngx/body;
    proxy_temp_path $WORK/ngx/proxy;
    fastcgi_temp_path $WORK/ngx/fcgi;
    uwsgi_temp_path $WORK/ngx/uwsgi;
    scgi_temp_path $WORK/ngx/scgi;
    client_max_body_size 0;
    upstream mock { server 127.0.0.1:$MOCK_PORT; keepalive 64; }
    server {
        listen 127.0.0.1:$NGX_PORT;
        location / {
            proxy_pass http://mock/score;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_request_buffering off;
            proxy_buffering off;
        }
    }
}
NGX

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# run NAME PORT CONC CMD...: one measured run, one line on stdout.
run() {
    local name=$1 port=$2 conc=$3; shift 3
    taskset -c 0 "$BIN/mock-model" --listen "127.0.0.1:$MOCK_PORT" --name mock >/dev/null 2>&1 &
    local mock=$!; PIDS+=("$mock")
    taskset -c 0 "$@" >"$WORK/$name.log" 2>&1 &
    local px=$!; PIDS+=("$px")
    for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
    # nginx runs its worker as a child: measure the worker.
    if [ "$name" = nginx ]; then sleep 0.3; px=$(pgrep -P "$px" | head -1); fi
    local url="http://127.0.0.1:$port/api/v1/endpoint/big/score"
    taskset -c 1 "$BIN/infergate-loadtest" -q -c "$conc" --body-size "$SIZE" -d 1s -w 0s "$url" >/dev/null
    local r0 c0 peak=0
    r0=$(rss_kb "$px"); c0=$(cpu "$px")
    ( while kill -0 "$px" 2>/dev/null; do rss_kb "$px"; sleep 0.05; done ) >"$WORK/rss.txt" &
    local sampler=$!
    taskset -c 1 "$BIN/infergate-loadtest" -q --json "$WORK/lt.json" -c "$conc" --body-size "$SIZE" \
        -d "${DURATION}s" -w 1s -t 120s "$url" >/dev/null
    local c1; c1=$(cpu "$px")
    kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null || true
    peak=$(sort -n "$WORK/rss.txt" | tail -1)
    kill "$px" "$mock" 2>/dev/null; wait "$px" "$mock" 2>/dev/null || true
    [ "$name" = nginx ] && { kill "$(cat "$WORK/nginx.pid" 2>/dev/null)" 2>/dev/null || true; sleep 0.2; }
    python3 - "$name" "$conc" "$WORK/lt.json" "$SIZE" "$r0" "$peak" "$c0" "$c1" "$(getconf CLK_TCK)" <<'PY'
import json, sys
name, conc, lt, size, r0, peak, c0, c1, tck = sys.argv[1:]
r = json.load(open(lt))["report"]
mb = r["ok"] * int(size) / 1e6
mbps = mb / r["elapsed_s"]
cpu_s = (int(c1) - int(c0)) / int(tck)
bad = r["requests"] - r["ok"]
grow = (int(peak) - int(r0)) / 1024
print(f"{name} {conc} {mbps:.0f} {cpu_s / max(mb, 1e-9) * 1e3:.2f} {int(r0) / 1024:.1f} {int(peak) / 1024:.1f} {grow / int(conc):.2f} {bad}")
PY
}

echo "target conc MB/s cpu_ms/MB rss_before_MiB rss_peak_MiB growth_MiB_per_upload failed" | tee "$WORK/runs.txt"
for conc in $CONCS; do
    for r in $(seq "$ROUNDS"); do
        run infergate "$IG_PORT" "$conc" env RUST_LOG=warn "$BIN/infergate" serve --config "$WORK/infergate.yaml" --workers 1
        run nginx "$NGX_PORT" "$conc" nginx -c "$WORK/nginx.conf" -p "$WORK/ngx"
    done | tee -a "$WORK/runs.txt"
done
python3 - "$WORK/runs.txt" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]).read().splitlines()[1:]]
by = {}
for name, conc, mbps, cpu, r0, peak, grow, bad in rows:
    by.setdefault((int(conc), name), []).append((float(mbps), float(cpu), float(peak), float(grow), int(bad)))
print("\nmedians (ratio = infergate / nginx):")
print(f"{'conc':>4} {'target':10} {'MB/s':>7} {'cpu ms/MB':>10} {'RSS peak MiB':>13} {'growth MiB/upload':>18} failed")
for conc in sorted({c for c, _ in by}):
    med = {}
    for name in ("infergate", "nginx"):
        v = by.get((conc, name))
        if not v:
            continue
        med[name] = [statistics.median(x[i] for x in v) for i in range(4)] + [sum(x[4] for x in v)]
        m = med[name]
        print(f"{conc:>4} {name:10} {m[0]:7.0f} {m[1]:10.2f} {m[2]:13.1f} {m[3]:18.2f} {m[4]}")
    if len(med) == 2:
        i, n = med["infergate"], med["nginx"]
        print(f"{conc:>4} {'ratio':10} {i[0] / n[0]:7.2f} {i[1] / n[1]:10.2f}")
PY
