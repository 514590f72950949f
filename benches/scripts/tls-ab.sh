#!/usr/bin/env bash
# A/B of infergate builds on plain HTTP and on TLS: layout A of ../shared/BENCHMARKING.md (router
# + mock model on CPU 0, one worker each; `wrk -t1 -c64` keep-alive HTTP/1.1 with a JSON POST of
# BODY bytes, default 1 KiB, on CPU 1; TLS 1.3 with the example RSA certificate), ROUNDS
# interleaved rounds of DURATION seconds, the order of builds and protocols rotated each round. Per run: req/s and the
# router's CPU us/request (utime + stime from /proc). Then medians per build and protocol, each
# build's TLS/plain ratio, and each build's figures relative to the first one named.
#
#   bash benches/scripts/tls-ab.sh NAME=path/to/infergate [NAME=path ...]
#   ROUNDS=5 DURATION=5 bash benches/scripts/tls-ab.sh before=/tmp/a/infergate after=target/release/infergate
#   BODY=262144 bash benches/scripts/tls-ab.sh ...     # 256 KiB request bodies (records of 16 KiB)
#
# Needs wrk and taskset (apt-get install wrk util-linux) and a release mock-model (MOCK=path, or
# built here). Everything runs on 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
[ $# -ge 1 ] || { sed -n 2,14p "$0"; exit 2; }
ROUNDS="${ROUNDS:-4}"; DURATION="${DURATION:-5}"; BODY="${BODY:-1024}"
for tool in wrk taskset; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install wrk util-linux" >&2; exit 1; }
done
MOCK="${MOCK:-${CARGO_TARGET_DIR:-target}/release/mock-model}"
[ -x "$MOCK" ] || cargo build --release --quiet -p mock-model
WORK="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

MOCK_PORT=18951; HTTP=18960; HTTPS=18961; ADMIN=18969
URL_PATH=/api/v1/endpoint/bench/score
head -c "$((BODY - 12))" /dev/zero | tr '\0' 'x' | sed 's/^/{"data":"/; s/$/"}/' > "$WORK/body.json"
cat > "$WORK/post.lua" <<LUA
local f = io.open("$WORK/body.json", "rb")
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
LUA
cat > "$WORK/infergate.yaml" <<YAML
sslCertPemFile: $PWD/certs-example/server.pem
sslKeyPemFile: $PWD/certs-example/server-key.pem
allowInsecureConnections: true
listen: {https: "127.0.0.1:$HTTPS", http: "127.0.0.1:$HTTP", admin: "127.0.0.1:$ADMIN"}
defaults: {maxConcurrentRequestsPerInstance: 1000, maxQueueWaitMs: 500, requestTimeoutMs: 5000}
endpoints:
  - name: bench
    auth: {mode: none}
    deployments:
      - name: d
        pods: ["127.0.0.1:$MOCK_PORT"]
YAML

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# run NAME PROTO BINARY: one measured run, one line on stdout.
run() {
    local name=$1 proto=$2 bin=$3 port
    if [ "$proto" = https ]; then port=$HTTPS; else port=$HTTP; fi
    taskset -c 0 env TOKIO_WORKER_THREADS=1 "$MOCK" --listen "127.0.0.1:$MOCK_PORT" --name mock >/dev/null 2>&1 &
    local mock=$!; PIDS+=("$mock")
    taskset -c 0 env RUST_LOG=warn "$bin" serve --config "$WORK/infergate.yaml" --workers 1 >"$WORK/$name.log" 2>&1 &
    local px=$!; PIDS+=("$px")
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
    local url="$proto://127.0.0.1:$port$URL_PATH"
    taskset -c 1 wrk -t1 -c64 -d1s -s "$WORK/post.lua" "$url" >/dev/null
    local c0 c1 out
    c0=$(cpu "$px")
    out=$(taskset -c 1 wrk -t1 -c64 -d"${DURATION}s" -s "$WORK/post.lua" "$url")
    c1=$(cpu "$px")
    kill "$px" "$mock" 2>/dev/null; wait "$px" "$mock" 2>/dev/null || true
    python3 - "$name" "$proto" "$out" "$c0" "$c1" "$(getconf CLK_TCK)" <<'PY'
import re, sys
name, proto, out, c0, c1, tck = sys.argv[1:]
n = int(re.search(r"(\d+) requests in", out).group(1))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
errs = re.search(r"Socket errors: (.*)", out)
us = (int(c1) - int(c0)) / int(tck) / n * 1e6
print(f"{name} {proto} {rps:.0f} {us:.1f} {bad.group(1) if bad else 0} {'errors:' + errs.group(1).replace(' ', '') if errs else '-'}")
PY
}

echo "build proto req/s router_us/req non2xx socket_errors" | tee "$WORK/runs.txt"
runs=()
for v in "$@"; do runs+=("$v http" "$v https"); done
for r in $(seq "$ROUNDS"); do
    n=${#runs[@]}
    for i in $(seq 0 $((n - 1))); do
        v="${runs[$(((i + r) % n))]}"   # rotated each round
        spec="${v% *}"; proto="${v##* }"
        run "${spec%%=*}" "$proto" "${spec#*=}"
    done | tee -a "$WORK/runs.txt"
done
python3 - "$WORK/runs.txt" "$@" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]).read().splitlines()[1:]]
order = [a.split("=", 1)[0] for a in sys.argv[2:]]
by = {}
for name, proto, rps, cpu, *_ in rows:
    by.setdefault((name, proto), []).append((float(rps), float(cpu)))
def med(k, i):
    return statistics.median(x[i] for x in by[k])
def span(k, i):
    v = [x[i] for x in by[k]]
    return f"[{min(v):.0f}..{max(v):.0f}]" if i == 0 else f"[{min(v):.1f}..{max(v):.1f}]"
print("\nmedians [min..max]:")
for name in order:
    for proto in ("http", "https"):
        k = (name, proto)
        print(f"  {name:10s} {proto:5s} {med(k, 0):8.0f} req/s {span(k, 0):16s} {med(k, 1):6.1f} router us/req {span(k, 1)}")
    print(f"  {name:10s} TLS/plain: {med((name, 'https'), 0) / med((name, 'http'), 0):.2f}x req/s, "
          f"{med((name, 'https'), 1) / med((name, 'http'), 1):.2f}x CPU/req")
base = order[0]
for name in order[1:]:
    for proto in ("http", "https"):
        print(f"  {name} / {base} {proto}: {med((name, proto), 0) / med((base, proto), 0):.3f}x req/s, "
              f"{med((name, proto), 1) / med((base, proto), 1):.3f}x CPU/req")
PY
