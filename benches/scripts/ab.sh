#!/usr/bin/env bash
# A/B of infergate builds against HAProxy, for tuning the data path: layout A of
# ../shared/BENCHMARKING.md (proxy + mock on CPU 0, `wrk -t1 -c64` with a 1 KiB JSON POST on
# CPU 1), one worker each, ROUNDS interleaved rounds of DURATION seconds. Per run: req/s, proxy
# CPU us/request (utime + stime from /proc), the mock's CPU us/request, and the proxy's
# voluntary / involuntary context switches per request; then medians per target and each
# target's CPU per request as a multiple of HAProxy's in the same rounds.
#
#   bash benches/scripts/ab.sh NAME=path/to/infergate[+extra.yaml] [NAME=path ...]
#   ROUNDS=5 DURATION=4 bash benches/scripts/ab.sh old=/tmp/infergate.old new=target/release/infergate
#
# RATE=5000 (open loop, layout C of BENCHMARKING.md): the proxy alone on CPU 0, the mock and
# `infergate-loadtest -r RATE -c 64` on CPU 1 (LOADTEST=path, else built), and a direct run to the
# mock each round; per run the p50 / p99 and what the proxy adds to the direct run's.
#
# Build variants with `cargo build --profile fastbench -p infergate` (no LTO, incremental) and
# copy each binary aside. Needs haproxy and wrk (apt-get install haproxy wrk). Everything runs on
# 127.0.0.1 and stops by itself.
#
# `+extra.yaml` appends that file to the target's configuration (the same binary can run twice,
# with and without a section). With OTLP=1 a fake OpenTelemetry collector (crates/testkit's
# `fake-otlp-collector`, decoding every export) listens on 127.0.0.1:18970 on CPU 1 for the whole
# run, for targets with `+benches/scripts/otlp.yaml` (every request's spans exported to it):
#   OTLP=1 bash benches/scripts/ab.sh off=/tmp/ig otlp=/tmp/ig+benches/scripts/otlp.yaml
#
# `@N` at the end of a target runs it with `--workers N` on CPUs 0..N-1 (default: 1 worker on
# CPU 0); on this 2-core machine `@2` shares CPU 1 with the generator:
#   bash benches/scripts/ab.sh w1=target/release/infergate w2=target/release/infergate@2
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
[ $# -ge 1 ] || { sed -n 2,29p "$0"; exit 2; }
ROUNDS="${ROUNDS:-4}"; DURATION="${DURATION:-4}"; RATE="${RATE:-}"
for tool in haproxy wrk taskset; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install haproxy wrk" >&2; exit 1; }
done
MOCK="${MOCK:-${CARGO_TARGET_DIR:-target}/release/mock-model}"
[ -x "$MOCK" ] || cargo build --release --quiet -p mock-model
LOADTEST="${LOADTEST:-${CARGO_TARGET_DIR:-target}/release/infergate-loadtest}"
[ -z "$RATE" ] || [ -x "$LOADTEST" ] || cargo build --release --quiet -p infergate-loadtest
COLLECTOR="${COLLECTOR:-${CARGO_TARGET_DIR:-target}/release/fake-otlp-collector}"
if [ "${OTLP:-0}" = 1 ] && [ ! -x "$COLLECTOR" ]; then
    cargo build --release --quiet -p infergate-testkit --bin fake-otlp-collector
fi
WORK="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

MOCK_PORT=18901; IG_PORT=18910; HA_PORT=18930
URL_PATH=/api/v1/endpoint/bench/score
head -c 1000 /dev/zero | tr '\0' 'x' | sed 's/^/{"data":"/; s/$/"}/' > "$WORK/body.json"
cat > "$WORK/post.lua" <<LUA
local f = io.open("$WORK/body.json", "rb")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
LUA
cat > "$WORK/infergate.yaml" <<YAML
allowInsecureConnections: true
listen: {http: "127.0.0.1:$IG_PORT", admin: "127.0.0.1:18919"}
defaults: {maxConcurrentRequestsPerInstance: 1000, maxQueueWaitMs: 500, requestTimeoutMs: 5000}
endpoints:
  - name: bench
    auth: {mode: none}
    deployments:
      - name: d
        pods: ["127.0.0.1:$MOCK_PORT"]
YAML
cat > "$WORK/haproxy.cfg" <<CFG
global
    nbthread 1
    maxconn 4000
defaults
    mode http
    option http-keep-alive
    option forwardfor
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 60s
frontend f
    bind 127.0.0.1:$HA_PORT
    default_backend b
backend b
    http-reuse always
    http-request set-path /score
    server mock 127.0.0.1:$MOCK_PORT
CFG

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# open NAME PORT [CMD...]: one open-loop run (no CMD: straight to the mock), one line on stdout.
open_run() {
    local name=$1 port=$2; shift 2
    taskset -c 1 env TOKIO_WORKER_THREADS=1 "$MOCK" --listen "127.0.0.1:$MOCK_PORT" --name mock >/dev/null 2>&1 &
    local mock=$! px=""; PIDS+=("$mock")
    if [ $# -gt 0 ]; then
        taskset -c "${CPUS:-0}" "$@" >"$WORK/$name.log" 2>&1 &
        px=$!; PIDS+=("$px")
    fi
    for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
    local path=$URL_PATH; [ -n "$px" ] || path=/score
    local c0=0 c1=0
    [ -z "$px" ] || c0=$(cpu "$px")
    taskset -c 1 "$LOADTEST" "http://127.0.0.1:$port$path" -r "$RATE" -c 64 --threads 1 --warmup 2s \
        --duration "${DURATION}s" --body "$WORK/body.json" --quiet --json "$WORK/lt.json" >/dev/null
    [ -z "$px" ] || c1=$(cpu "$px")
    kill $px "$mock" 2>/dev/null; wait $px "$mock" 2>/dev/null || true
    python3 - "$name" "$WORK/lt.json" "$c0" "$c1" "$(getconf CLK_TCK)" "$DURATION" <<'PY'
import json, sys
name, path, c0, c1, tck, dur = sys.argv[1:]
r = json.load(open(path))["report"]
# Proxy CPU over the warm-up and the measured run, per request of both.
n = r["requests"] * (float(dur) + 2) / float(dur)
us = (int(c1) - int(c0)) / int(tck) / n * 1e6
print(f"{name} {r['throughput_rps']:.0f} {us:.1f} {r['latency_us']['p50_us']:.0f} {r['latency_us']['p99_us']:.0f} {r['errors']['total']}")
PY
}

COLLECTOR_PID=
if [ "${OTLP:-0}" = 1 ]; then
    taskset -c 1 "$COLLECTOR" 127.0.0.1:18970 >"$WORK/collector.log" 2>&1 &
    COLLECTOR_PID=$!; PIDS+=("$COLLECTOR_PID")
fi
# Each target's configuration: the common one, plus its `+extra.yaml`.
for v in "$@"; do
    spec="${v#*=}"; spec="${spec%@*}"
    cp "$WORK/infergate.yaml" "$WORK/${v%%=*}.yaml"
    [ "$spec" = "${spec#*+}" ] || cat "${spec#*+}" >> "$WORK/${v%%=*}.yaml"
done

if [ -n "$RATE" ]; then
    echo "target req/s proxy_us/req p50_us p99_us errors" | tee "$WORK/open.txt"
    for r in $(seq "$ROUNDS"); do
        open_run direct "$MOCK_PORT"
        for v in "$@" haproxy; do
            if [ "$v" = haproxy ]; then
                open_run haproxy "$HA_PORT" haproxy -f "$WORK/haproxy.cfg" -db
            else
                spec="${v#*=}"; n=1; [ "$spec" = "${spec%@*}" ] || n="${spec##*@}"; spec="${spec%@*}"
                CPUS="0-$((n - 1))" open_run "${v%%=*}" "$IG_PORT" env RUST_LOG=warn "${spec%%+*}" serve --config "$WORK/${v%%=*}.yaml" --workers "$n"
            fi
        done
    done | tee -a "$WORK/open.txt"
    python3 - "$WORK/open.txt" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]).read().splitlines()[1:]]
rounds, cur = [], {}
for name, rps, cpu, p50, p99, err in rows:
    if name == "direct" and cur:
        rounds.append(cur); cur = {}
    cur[name] = (float(rps), float(cpu), float(p50), float(p99), int(err))
rounds.append(cur)
names = [n for n in rounds[0] if n != "direct"]
print("\nmedians (added = the target's percentile minus the direct run's of the same round):")
d = rounds[0]["direct"]
print(f"  {'direct':12s} p50 {statistics.median(r['direct'][2] for r in rounds):6.0f} us  p99 {statistics.median(r['direct'][3] for r in rounds):8.0f} us")
for n in names:
    a50 = statistics.median(r[n][2] - r["direct"][2] for r in rounds)
    a99 = statistics.median(r[n][3] - r["direct"][3] for r in rounds)
    per = ", ".join(f"{r[n][3] / 1000:.1f}" for r in rounds)
    cpu = statistics.median(r[n][1] for r in rounds)
    err = sum(r[n][4] for r in rounds)
    print(f"  {n:12s} added p50 {a50:+6.0f} us  added p99 {a99:+8.0f} us  (p99 per round, ms: {per})  {cpu:6.1f} proxy us/req  errors {err}")
PY
    exit 0
fi
switches() { cat /proc/"$1"/task/*/status | awk '/^voluntary_ctxt/ {v += $2} /^nonvoluntary_ctxt/ {n += $2} END {print v, n}'; }

# run NAME PORT CMD...: one measured run, one line on stdout.
run() {
    local name=$1 port=$2; shift 2
    taskset -c 0 env TOKIO_WORKER_THREADS=1 "$MOCK" --listen "127.0.0.1:$MOCK_PORT" --name mock >/dev/null 2>&1 &
    local mock=$!; PIDS+=("$mock")
    taskset -c "${CPUS:-0}" "$@" >"$WORK/$name.log" 2>&1 &
    local px=$!; PIDS+=("$px")
    for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
    local url="http://127.0.0.1:$port$URL_PATH"
    taskset -c 1 wrk -t1 -c64 -d1s -s "$WORK/post.lua" "$url" >/dev/null
    local c0 m0 x0 c1 m1 x1 out
    c0=$(cpu "$px"); m0=$(cpu "$mock"); x0=$(switches "$px")
    out=$(taskset -c 1 wrk -t1 -c64 -d"${DURATION}s" -s "$WORK/post.lua" "$url")
    c1=$(cpu "$px"); m1=$(cpu "$mock"); x1=$(switches "$px")
    kill "$px" "$mock" 2>/dev/null; wait "$px" "$mock" 2>/dev/null || true
    python3 - "$name" "$out" "$c0" "$c1" "$m0" "$m1" "$x0" "$x1" "$(getconf CLK_TCK)" <<'PY'
import re, sys
name, out, c0, c1, m0, m1, x0, x1, tck = sys.argv[1:]
n = int(re.search(r"(\d+) requests in", out).group(1))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
v0, i0 = map(int, x0.split()); v1, i1 = map(int, x1.split())
us = lambda a, b: (int(b) - int(a)) / int(tck) / n * 1e6
print(f"{name} {rps:.0f} {us(c0, c1):.1f} {us(m0, m1):.1f} {(v1 - v0) / n:.2f} {(i1 - i0) / n:.2f} {bad.group(1) if bad else 0}")
PY
}

echo "target req/s proxy_us/req mock_us/req vol_cs/req invol_cs/req non2xx" | tee "$WORK/runs.txt"
for r in $(seq "$ROUNDS"); do
    for v in "$@" haproxy; do
        if [ "$v" = haproxy ]; then
            run haproxy "$HA_PORT" haproxy -f "$WORK/haproxy.cfg" -db
        else
            spec="${v#*=}"; n=1; [ "$spec" = "${spec%@*}" ] || n="${spec##*@}"; spec="${spec%@*}"
            CPUS="0-$((n - 1))" run "${v%%=*}" "$IG_PORT" env RUST_LOG=warn "${spec%%+*}" serve --config "$WORK/${v%%=*}.yaml" --workers "$n"
        fi
    done | tee -a "$WORK/runs.txt"
done
python3 - "$WORK/runs.txt" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]).read().splitlines()[1:]]
by = {}
for name, rps, cpu, mock, vol, inv, bad in rows:
    by.setdefault(name, []).append((float(rps), float(cpu), float(mock), float(inv)))
med = {k: [statistics.median(x[i] for x in v) for i in range(4)] for k, v in by.items()}
ha = med["haproxy"][1]
first = rows[0][0]
print("\nmedians:")
for k, (rps, cpu, mock, inv) in med.items():
    print(f"  {k:12s} {rps:8.0f} req/s  {cpu:6.1f} proxy us/req ({cpu / ha:.2f}x HAProxy, {cpu / med[first][1]:.3f}x {first})  mock {mock:5.1f} us/req  {inv:.2f} preemptions/req")
# Paired: each round's CPU per request against the first target's in the same round.
print(f"\nCPU per request / {first}'s in the same round (median, range):")
for k, v in by.items():
    r = sorted(x[1] / y[1] for x, y in zip(v, by[first]))
    print(f"  {k:12s} {statistics.median(r):.3f}  ({r[0]:.3f} to {r[-1]:.3f})")
PY
if [ -n "$COLLECTOR_PID" ]; then
    kill -TERM "$COLLECTOR_PID" 2>/dev/null || true
    wait "$COLLECTOR_PID" 2>/dev/null || true
    echo "collector: $(grep received "$WORK/collector.log" || echo 'no summary')"
fi
