#!/usr/bin/env bash
# HA benchmarks (issue 12): several infergate replicas in front of the same mock pods, the pods'
# own high-water mark (GET /stats maxInFlight) as the truth. Modes:
#
#   cluster       3 replicas with the `cluster` section (global slots: the HA design)
#   per-replica   3 replicas WITHOUT it: today's behaviour, each replica keeps its own slots
#   static-split  3 replicas without it, each given a disjoint subset of the pods (pod j ->
#                 replica j mod 3; a replica left without a pod answers 503 NoPodAvailable):
#                 the Knative-activator-style split that keeps limits exact by wasting capacity
#   single        1 replica, no cluster (the reference of the cost scenario only)
#
# Scenarios (each bounded in time; everything on 127.0.0.1; routers pinned to CPU 0, pods and
# the load generator to CPU 1):
#
#   high-water  1 pod x 1 slot (HW_LATENCY_MS), 3 replicas, 9 closed-loop clients (connections) spread evenly:
#               the pod's maxInFlight over R requests; then during a rolling restart (SIGTERM each
#               replica, start it again on the same ports); then SIGKILL of each replica in turn
#               (one of them is the owner), each restarted after KILL_GAP_S.
#   goodput     4 pods x 1 slot x 20 ms (precise: mock-model --precise-latency), 3 replicas, open
#               loop at GOODPUT_RATE req/s (default 240 = 1.2 x the ideal 200) spread evenly:
#               completed (2xx) req/s vs the ideal 200, and vs one router (`single`: exact limits,
#               no coordination).
#   goodput-closed  the same pods and replicas, closed loop: GOODPUT_CLIENTS (24) clients spread
#               evenly, always more requests than slots (saturating without overload refusals).
#   cost        3 pods x 100 slots x 0 ms, open loop at COST_RATE (1000) req/s: p50/p99 and router
#               CPU per request (utime+stime from /proc/<pid>/stat, all router processes, over
#               every request sent) against `single`.
#   failover    1 pod x 1 slot x 5 ms, open loop at FAILOVER_RATE (100) req/s spread evenly;
#               replica (round-1) mod 3 is SIGKILLed 3 s in; from the survivors' access logs:
#               the time from the kill until a request that arrived after it completed with 200
#               (worst survivor), their non-2xx answers after the kill, and the pod's maxInFlight.
#
#   bash benches/scripts/ha.sh                                   # every mode, every scenario
#   bash benches/scripts/ha.sh --mode per-replica --mode static-split
#   R=20000 ROUNDS=1 bash benches/scripts/ha.sh --scenario high-water --scenario goodput
#
# Options: --mode M (repeatable; default cluster, per-replica, static-split), --scenario S
# (repeatable; default all). Environment: R (100000), HW_LATENCY_MS (1), HW_MAX_S (150),
# KILL_GAP_S (2.5), ROUNDS (3), DURATION (10), GOODPUT_RATE (240), COST_RATE (1000),
# FAILOVER_RATE (100), BIN (target/release). Builds the three binaries when missing.
# Prints one markdown table per scenario (medians over ROUNDS where there are rounds).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

MODES=(); SCENARIOS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --mode) MODES+=("$2"); shift 2 ;;
        --scenario) SCENARIOS+=("$2"); shift 2 ;;
        -h|--help) sed -n 2,40p "$0"; exit 0 ;;
        *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ ${#MODES[@]} -gt 0 ] || MODES=(cluster per-replica static-split)
[ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(high-water goodput goodput-closed cost failover)
for m in "${MODES[@]}"; do
    case "$m" in cluster|per-replica|static-split) ;; *) echo "unknown mode $m" >&2; exit 2 ;; esac
done
for s in "${SCENARIOS[@]}"; do
    case "$s" in high-water|goodput|goodput-closed|cost|failover) ;; *) echo "unknown scenario $s" >&2; exit 2 ;; esac
done

R="${R:-100000}"; HW_LATENCY_MS="${HW_LATENCY_MS:-1}"; HW_MAX_S="${HW_MAX_S:-150}"
KILL_GAP_S="${KILL_GAP_S:-2.5}"; ROUNDS="${ROUNDS:-3}"; DURATION="${DURATION:-10}"
GOODPUT_RATE="${GOODPUT_RATE:-240}"; COST_RATE="${COST_RATE:-1000}"; FAILOVER_RATE="${FAILOVER_RATE:-100}"
GOODPUT_CLIENTS="${GOODPUT_CLIENTS:-24}"
BIN="${BIN:-${CARGO_TARGET_DIR:-target}/release}"
for b in infergate mock-model infergate-loadtest; do
    [ -x "$BIN/$b" ] || { cargo build --release --quiet -p infergate -p mock-model -p infergate-loadtest; break; }
done
for tool in curl python3 taskset; do
    command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
ROUTER_CPU="${ROUTER_CPU:-0}"; LOAD_CPU="${LOAD_CPU:-1}"

WORK="$(mktemp -d)"
PODS=(); ROUTERS=(); OTHER=()
cleanup() {
    for p in "${ROUTERS[@]}" "${PODS[@]}" "${OTHER[@]}"; do
        [ -n "$p" ] && kill -CONT "$p" 2>/dev/null; [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
log() { echo "[ha.sh $(date +%T)] $*" >&2; }

head -c 32 /dev/urandom > "$WORK/secret"
N=3
HTTP_BASE=19100; ADMIN_BASE=19110; PEER_BASE=19120; POD_BASE=19200
ENDPOINT_PATH=/api/v1/endpoint/e/score

# --- pods -------------------------------------------------------------------------------------
start_pods() { # count latency_ms [extra mock flags]
    PODS=()
    for ((j = 0; j < $1; j++)); do
        # shellcheck disable=SC2086
        taskset -c "$LOAD_CPU" "$BIN/mock-model" --listen "127.0.0.1:$((POD_BASE + j))" --name "pod$j" \
            --latency-ms "$2" ${3:-} >/dev/null &
        PODS+=($!)
    done
    for ((j = 0; j < $1; j++)); do
        for _ in $(seq 100); do curl -sf "http://127.0.0.1:$((POD_BASE + j))/" >/dev/null && break; sleep 0.05; done
    done
}
stop_pods() { for p in "${PODS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; PODS=(); }
pod_field() { # field -> max over the pods (maxInFlight) or sum (served)
    local vals=""
    for ((j = 0; j < ${#PODS[@]}; j++)); do
        vals+="$(curl -sf "http://127.0.0.1:$((POD_BASE + j))/stats") "$'\n'
    done
    python3 -c '
import json, sys
field = sys.argv[1]
vals = [json.loads(l)[field] for l in sys.stdin.read().splitlines() if l.strip()]
print(max(vals) if field == "maxInFlight" else sum(vals))' "$1" <<<"$vals"
}

# --- routers ----------------------------------------------------------------------------------
write_cfg() { # mode replica npods slots queue_ms timeout_ms -> file
    local mode=$1 i=$2 npods=$3 slots=$4 queue=$5 timeout=$6 pods="" peers=""
    for ((j = 0; j < npods; j++)); do
        if [ "$mode" != static-split ] || [ $((j % N)) = "$i" ]; then
            pods+="${pods:+, }\"127.0.0.1:$((POD_BASE + j))\""
        fi
    done
    local f="$WORK/replica-$i.yaml"
    cat > "$f" <<YAML
allowInsecureConnections: true
listen: {https: "127.0.0.1:0", http: "127.0.0.1:$((HTTP_BASE + i))", admin: "127.0.0.1:$((ADMIN_BASE + i))"}
drainTimeoutMs: 3000
defaults: {maxConcurrentRequestsPerInstance: $slots, maxQueueWaitMs: $queue, requestTimeoutMs: $timeout}
endpoints:
  - name: e
    auth: {mode: none}
    deployments: [{name: d, pods: [$pods]}]
YAML
    if [ "$mode" = cluster ]; then
        for ((k = 0; k < N; k++)); do peers+="${peers:+, }\"127.0.0.1:$((PEER_BASE + k))\""; done
        cat >> "$f" <<YAML
cluster:
  listen: "127.0.0.1:$((PEER_BASE + i))"
  peers: [$peers]
  secretFile: "$WORK/secret"
YAML
    fi
    echo "$f"
}
replicas_of() { [ "$1" = single ] && echo 1 || echo "$N"; }
start_router() { # mode replica (config already written)
    RUST_LOG="${RUST_LOG_ROUTER:-warn}" taskset -c "$ROUTER_CPU" "$BIN/infergate" serve \
        --config "$WORK/replica-$2.yaml" --workers 1 >>"$WORK/router-$2.log" 2>&1 &
    ROUTERS[$2]=$!
}
wait_ready() { # replica
    for _ in $(seq 200); do
        curl -sf "http://127.0.0.1:$((ADMIN_BASE + $1))/readyz" >/dev/null && return 0
        sleep 0.05
    done
    log "replica $1 not ready; its log:"; tail -5 "$WORK/router-$1.log" >&2; return 1
}
start_routers() { # mode npods slots queue_ms timeout_ms
    local mode=$1 n; n=$(replicas_of "$mode")
    ROUTERS=()
    for ((i = 0; i < n; i++)); do
        : > "$WORK/router-$i.log"
        write_cfg "$mode" "$i" "$2" "$3" "$4" "$5" >/dev/null
        start_router "$mode" "$i"
    done
    for ((i = 0; i < n; i++)); do wait_ready "$i"; done
    # Let the peers find each other (heartbeats every 200 ms).
    [ "$mode" = cluster ] && sleep 1
    return 0
}
stop_routers() {
    for p in "${ROUTERS[@]}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    for p in "${ROUTERS[@]}"; do [ -n "$p" ] && wait "$p" 2>/dev/null || true; done
    ROUTERS=()
}
cluster_runtime_present() {
    curl -sf "http://127.0.0.1:$ADMIN_BASE/metrics" | grep -q '^infergate_cluster_peers'
}
urls() { # mode
    local n; n=$(replicas_of "$1")
    for ((i = 0; i < n; i++)); do printf 'http://127.0.0.1:%d%s ' $((HTTP_BASE + i)) "$ENDPOINT_PATH"; done
}
router_ticks() { # utime+stime of every running router, in clock ticks
    local t=0
    for p in "${ROUTERS[@]}"; do
        [ -n "$p" ] && [ -r "/proc/$p/stat" ] || continue
        t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    done
    echo "$t"
}
loadtest() { # json_out args...
    local out=$1; shift
    taskset -c "$LOAD_CPU" "$BIN/infergate-loadtest" -q --json "$out" --body-size 64 "$@"
}
jq_py() { python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['report']; print($2)" "$1"; }
mode_label() { # mode -> label (flags a cluster mode without the runtime)
    if [ "$1" = cluster ] && ! cluster_runtime_present; then echo "cluster (no runtime: ran per-replica)"; else echo "$1"; fi
}

# --- scenarios --------------------------------------------------------------------------------
RESULTS="$WORK/results"; mkdir -p "$RESULTS"

high_water() { # mode -> one table row
    local mode=$1 label steady_max served ok_pct rps rolling_max rolling_err kill_max kill_err
    # 1. steady: R requests
    start_pods 1 "$HW_LATENCY_MS"; start_routers "$mode" 1 1 10000 5000
    label=$(mode_label "$mode")
    local t0=$SECONDS ok=0 total=0 chunk=0
    while [ "$(pod_field served)" -lt "$R" ] && [ $((SECONDS - t0)) -lt "$HW_MAX_S" ]; do
        chunk=$((chunk + 1))
        # shellcheck disable=SC2046
        loadtest "$WORK/hw-$chunk.json" $(urls "$mode") -c 9 -w 0s -d 5s -t 15s
        ok=$((ok + $(jq_py "$WORK/hw-$chunk.json" "r['ok']")))
        total=$((total + $(jq_py "$WORK/hw-$chunk.json" "r['requests']")))
    done
    served=$(pod_field served); steady_max=$(pod_field maxInFlight)
    rps=$(python3 -c "print(f'{$served / max(1, $SECONDS - $t0):.0f}')")
    ok_pct=$(python3 -c "print(f'{100 * $ok / max(1, $total):.1f}')")
    log "high-water $mode steady: served $served, pod maxInFlight $steady_max, ok $ok / $total"
    stop_routers; stop_pods

    # 2. rolling restart under load
    start_pods 1 "$HW_LATENCY_MS"; start_routers "$mode" 1 1 10000 5000
    # shellcheck disable=SC2046
    loadtest "$WORK/hw-roll.json" $(urls "$mode") -c 9 -w 0s -d 20s -t 15s &
    local lt=$!; OTHER+=("$lt")
    sleep 2
    for ((i = 0; i < N; i++)); do
        kill -TERM "${ROUTERS[$i]}"; wait "${ROUTERS[$i]}" 2>/dev/null || true
        start_router "$mode" "$i"; wait_ready "$i"; sleep 2
    done
    wait "$lt" || true
    rolling_max=$(pod_field maxInFlight)
    rolling_err=$(jq_py "$WORK/hw-roll.json" "f\"{100 * r['ok'] / max(1, r['requests']):.1f}% 2xx\"")
    log "high-water $mode rolling: pod maxInFlight $rolling_max, $rolling_err"
    stop_routers; stop_pods

    # 3. SIGKILL each replica in turn (one of them is the owner), restarted after KILL_GAP_S
    start_pods 1 "$HW_LATENCY_MS"; start_routers "$mode" 1 1 10000 1000
    # shellcheck disable=SC2046
    loadtest "$WORK/hw-kill.json" $(urls "$mode") -c 9 -w 0s -d 22s -t 15s &
    lt=$!; OTHER+=("$lt")
    sleep 2
    for ((i = 0; i < N; i++)); do
        kill -9 "${ROUTERS[$i]}"; wait "${ROUTERS[$i]}" 2>/dev/null || true
        sleep "$KILL_GAP_S"
        start_router "$mode" "$i"; wait_ready "$i"; sleep 2
    done
    wait "$lt" || true
    kill_max=$(pod_field maxInFlight)
    kill_err=$(jq_py "$WORK/hw-kill.json" "f\"{100 * r['ok'] / max(1, r['requests']):.1f}% 2xx\"")
    log "high-water $mode kill: pod maxInFlight $kill_max, $kill_err"
    stop_routers; stop_pods
    echo "| $label | $served | $rps | $ok_pct | **$steady_max** | **$rolling_max** ($rolling_err) | **$kill_max** ($kill_err) |"
}

goodput_run() { # mode -> "ok_rps pod_max p50_ms p99_ms non2xx"
    local mode=$1
    # Precise pods: 20 ms is 20 ms, so the ideal 200 req/s is what the pods can do.
    start_pods 4 20 --precise-latency; start_routers "$mode" 4 1 500 5000
    # shellcheck disable=SC2046
    loadtest "$WORK/gp.json" $(urls "$mode") -r "$GOODPUT_RATE" -c 256 -w 2s -d "${DURATION}s" -t 5s
    local max; max=$(pod_field maxInFlight)
    echo "$(jq_py "$WORK/gp.json" "f\"{r['ok_rps']:.1f} $max {r['latency_us']['p50_us']/1e3:.1f} {r['latency_us']['p99_us']/1e3:.1f} {r['requests'] - r['ok']}\"")"
    stop_routers; stop_pods
}

goodput_closed_run() { # mode -> "ok_rps pod_max p50_ms p99_ms non2xx"
    local mode=$1
    start_pods 4 20 --precise-latency; start_routers "$mode" 4 1 5000 5000
    # shellcheck disable=SC2046
    loadtest "$WORK/gpc.json" $(urls "$mode") -c "$GOODPUT_CLIENTS" -w 2s -d "${DURATION}s" -t 10s
    local max; max=$(pod_field maxInFlight)
    echo "$(jq_py "$WORK/gpc.json" "f\"{r['ok_rps']:.1f} $max {r['latency_us']['p50_us']/1e3:.1f} {r['latency_us']['p99_us']/1e3:.1f} {r['requests'] - r['ok']}\"")"
    stop_routers; stop_pods
}

cost_run() { # mode -> "p50_us p99_us cpu_us_per_req"
    local mode=$1
    start_pods 3 0; start_routers "$mode" 3 100 500 5000
    local before after requests
    before=$(router_ticks)
    # shellcheck disable=SC2046
    loadtest "$WORK/cost.json" $(urls "$mode") -r "$COST_RATE" -c 32 -w 2s -d "${DURATION}s" -t 5s
    after=$(router_ticks)
    requests=$(python3 -c "print(int($COST_RATE * ($DURATION + 2)))")
    local tck; tck=$(getconf CLK_TCK)
    echo "$(jq_py "$WORK/cost.json" "f\"{r['latency_us']['p50_us']} {r['latency_us']['p99_us']} {($after - $before) / $tck * 1e6 / $requests:.1f} {r['requests'] - r['ok']}\"")"
    stop_routers; stop_pods
}

failover_run() { # mode round -> "recovery_ms survivor_non2xx pod_max"
    local mode=$1 victim=$((($2 - 1) % N))
    start_pods 1 5
    RUST_LOG_ROUTER=info start_routers "$mode" 1 1 5000 1000
    # shellcheck disable=SC2046
    loadtest "$WORK/fo.json" $(urls "$mode") -r "$FAILOVER_RATE" -c 16 -w 0s -d 9s -t 6s &
    local lt=$!; OTHER+=("$lt")
    sleep 3
    local killed; killed=$(date +%s.%N)
    kill -9 "${ROUTERS[$victim]}"; wait "${ROUTERS[$victim]}" 2>/dev/null || true
    ROUTERS[$victim]=""
    wait "$lt" || true
    local max; max=$(pod_field maxInFlight)
    local logs=()
    for ((i = 0; i < N; i++)); do [ "$i" = "$victim" ] || logs+=("$WORK/router-$i.log"); done
    python3 - "$killed" "$max" "${logs[@]}" <<'PY'
import json, sys
from datetime import datetime
killed, pod_max, logs = float(sys.argv[1]), sys.argv[2], sys.argv[3:]
worst, bad = 0.0, 0
for path in logs:
    first = None
    for line in open(path):
        if '"infergate::access"' not in line:
            continue
        j = json.loads(line)
        done = datetime.fromisoformat(j["timestamp"].replace("Z", "+00:00")).timestamp()
        arrived = done - j["total_ms"] / 1e3
        if arrived < killed:
            continue
        if j["status"] != 200:
            bad += 1
        elif first is None or done < first:
            first = done
    worst = max(worst, float("inf") if first is None else first - killed)
print(f"{worst * 1e3:.0f} {bad} {pod_max}")
PY
    stop_routers; stop_pods
}

last() { local x=${1%;}; echo "${x##*;}"; }
median_cols() { # "row;row;..." -> medians of each column
    python3 -c '
import statistics, sys
rows = [r.split() for r in sys.argv[1].split(";") if r.strip()]
print(" ".join(f"{statistics.median(float(r[i]) for r in rows):g}" for i in range(len(rows[0]))))' "$1"
}

log "modes: ${MODES[*]}; scenarios: ${SCENARIOS[*]}; R=$R, ROUNDS=$ROUNDS, DURATION=${DURATION}s"
OUT="$WORK/out.md"; : > "$OUT"
for s in "${SCENARIOS[@]}"; do
    case "$s" in
    high-water)
        {
            echo; echo "### High-water mark: 1 pod x 1 slot (${HW_LATENCY_MS} ms), 3 replicas, 9 clients spread evenly"
            echo; echo "| mode | requests served | req/s | 2xx % | pod maxInFlight, $R requests | pod maxInFlight, rolling restart (2xx share) | pod maxInFlight, SIGKILL each replica in turn (2xx share) |"
            echo "|---|---|---|---|---|---|---|"
        } >> "$OUT"
        for m in "${MODES[@]}"; do high_water "$m" >> "$OUT"; done ;;
    goodput|goodput-closed)
        declare -A GP=()
        # `single`: one router, exact limits, no coordination: the best an exact limiter gets
        # from these pods.
        gmodes=(single "${MODES[@]}")
        run=goodput_run
        title="Goodput: 4 pods x 1 slot x 20 ms, 3 replicas, open loop $GOODPUT_RATE req/s spread evenly (ideal 200 req/s); medians of $ROUNDS"
        if [ "$s" = goodput-closed ]; then
            run=goodput_closed_run
            title="Goodput, closed loop: 4 pods x 1 slot x 20 ms, 3 replicas, $GOODPUT_CLIENTS clients spread evenly (saturating; ideal 200 req/s); medians of $ROUNDS"
        fi
        for r in $(seq "$ROUNDS"); do for m in "${gmodes[@]}"; do
            GP[$m]+="$($run "$m");"; log "$s round $r $m: $(last "${GP[$m]}")"
        done; done
        read -r sok _ <<<"$(median_cols "${GP[single]}")"
        {
            echo; echo "### $title"
            echo; echo "| mode | 2xx req/s | % of ideal | % of single | pod maxInFlight | p50 ms | p99 ms | non-2xx + errors |"
            echo "|---|---|---|---|---|---|---|---|"
        } >> "$OUT"
        for m in "${gmodes[@]}"; do
            read -r ok max p50 p99 bad <<<"$(median_cols "${GP[$m]}")"
            echo "| $m | $ok | $(python3 -c "print(f'{100 * $ok / 200:.1f}')") | $(python3 -c "print(f'{100 * $ok / $sok:.1f}')") | $max | $p50 | $p99 | $bad |" >> "$OUT"
        done
        unset GP ;;
    cost)
        declare -A CO=()
        cmodes=(single "${MODES[@]}")
        for r in $(seq "$ROUNDS"); do for m in "${cmodes[@]}"; do
            CO[$m]+="$(cost_run "$m");"; log "cost round $r $m: $(last "${CO[$m]}")"
        done; done
        read -r s50 s99 scpu _ <<<"$(median_cols "${CO[single]}")"
        {
            echo; echo "### Cost: 3 pods x 100 slots x 0 ms, open loop $COST_RATE req/s, routers on 1 core (1 worker each); medians of $ROUNDS"
            echo; echo "| mode | p50 µs | p99 µs | added p50 µs | added p99 µs | router CPU µs/request | CPU vs single | non-2xx + errors |"
            echo "|---|---|---|---|---|---|---|---|"
        } >> "$OUT"
        for m in "${cmodes[@]}"; do
            read -r p50 p99 cpu bad <<<"$(median_cols "${CO[$m]}")"
            python3 -c "print(f'| $m | {$p50:.0f} | {$p99:.0f} | {$p50 - $s50:+.0f} | {$p99 - $s99:+.0f} | {$cpu:.1f} | {$cpu / $scpu:.2f}x | {$bad:.0f} |')" >> "$OUT"
        done ;;
    failover)
        declare -A FO=()
        for r in $(seq "$ROUNDS"); do for m in "${MODES[@]}"; do
            FO[$m]+="$(failover_run "$m" "$r");"; log "failover round $r $m (killed replica $(((r - 1) % N))): $(last "${FO[$m]}")"
        done; done
        {
            echo; echo "### Failover: 1 pod x 1 slot x 5 ms, open loop $FAILOVER_RATE req/s, replica (round-1) mod 3 SIGKILLed; $ROUNDS rounds"
            echo; echo "| mode | recovery ms (median) | recovery ms (worst round) | survivors' non-2xx after the kill (median) | pod maxInFlight (worst) |"
            echo "|---|---|---|---|---|"
        } >> "$OUT"
        for m in "${MODES[@]}"; do
            python3 -c '
import statistics, sys
name, rows = sys.argv[1], [r.split() for r in sys.argv[2].split(";") if r.strip()]
rec = [float(r[0]) for r in rows]
fmt = lambda v: "never" if v == float("inf") else f"{v:.0f}"
print(f"| {name} | {fmt(statistics.median(rec))} | {fmt(max(rec))} | {statistics.median(float(r[1]) for r in rows):g} | {max(int(r[2]) for r in rows)} |")' "$m" "${FO[$m]}" >> "$OUT"
        done ;;
    esac
done
echo
echo "## HA benchmark ($(date -u +%F), $(nproc) cores, $(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
cat "$OUT"
