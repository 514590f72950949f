#!/usr/bin/env bash
# Validates deploy/observability against a real Prometheus scraping a real router under load:
#
#   1. `promtool check rules` on the PrometheusRule's `spec` (extracted with sed: it is a rules file);
#   2. the router (TLS, Kubernetes discovery through the fake API server of crates/testkit, mock
#      model pods) under a load run from infergate-loadtest that makes every panel move: traffic
#      split, 401s, queue timeouts, retries and ejections (a pod whose port is closed), a
#      deployment with no ready pod, a certificate reload that works and one that fails, a
#      configuration reload, failed TLS handshakes, discovery publishes, spans exported to the
#      fake OpenTelemetry collector of crates/testkit; then the API server is stopped, so the
#      discovery watches go down;
#   3. Prometheus (scrape and rule evaluation every 1 s, the rules loaded) scraping it; every
#      dashboard panel query and template variable, and every alert expression, is evaluated
#      through Prometheus's HTTP API and must succeed and return data (a panel: at least one
#      series with a number, not only NaN); every alert must be pending or firing.
#
# Every alert is triggered on purpose, so each full expression is checked, thresholds included:
#   InfergateQueueTimeoutsRising      endpoint `slow`: 1 pod x 1 slot, 200 ms per request,
#                                     maxQueueWaitMs 50, ~10 requests/s: most time out.
#   InfergateDeploymentNoReadyPods    endpoint `empty`: its EndpointSlice lists a pod not ready.
#   InfergateDiscoveryWatchDown       the fake API server is stopped near the end.
#   InfergateCertificateReloadFailing the certificate file is replaced by garbage.
#   InfergateCertificateExpiringSoon  the served certificates are valid for 7 days.
#
#   bash deploy/observability/check.sh      # needs prometheus, promtool, python3, openssl, curl
#
# Binaries: $CARGO_TARGET_DIR/debug/{infergate,mock-model,infergate-loadtest,fake-apiserver,
# fake-otlp-collector}
# (`cargo test --workspace` builds them; built here when missing). Everything listens on
# 127.0.0.1 only (port 0, or a free port for Prometheus), and stops on exit; the whole run is
# bounded (CHECK_TIMEOUT, default 100 s). CHECK_KEEP=1 keeps the work directory (logs) after exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
HERE=deploy/observability
START=$SECONDS
RATE_INTERVAL=30s  # what $__rate_interval stands for in the panel queries

for tool in prometheus promtool python3 openssl curl; do
    command -v "$tool" >/dev/null || { echo "check.sh: $tool not found" >&2; exit 1; }
done

WORK="$(mktemp -d)"
pids=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    # Newest first: the load generator before the router, the router before its pods.
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[$i]}" 2>/dev/null || true; done
    for _ in $(seq 50); do
        local alive=0
        for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        ((alive)) || break
        sleep 0.1
    done
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if ((rc != 0)); then
        echo "check.sh: FAILED; the last lines of the logs:" >&2
        for f in "$WORK"/*.log; do
            [ -s "$f" ] && { echo "--- $(basename "$f")" >&2; tail -n 5 "$f" >&2; }
        done
    fi
    if [ "${CHECK_KEEP:-0}" = 1 ]; then echo "check.sh: logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "check.sh: stopped (timed out after ${CHECK_TIMEOUT:-100} s, or interrupted)" >&2; exit 1' INT TERM
# The watchdog: its sleep ends with it, and it holds no output open.
(
    sleep "${CHECK_TIMEOUT:-100}" &
    trap 'kill $! 2>/dev/null; exit 0' TERM
    wait $! && kill -TERM $$
) </dev/null >/dev/null 2>&1 &
pids+=($!)

# Starts "$@" in the background with its output in $WORK/$1.log (name first).
run() {
    local name="$1"
    shift
    "$@" >"$WORK/$name.log" 2>&1 &
    pids+=($!)
}

# Waits (at most $3 seconds, default 15) for a line of $WORK/$1.log matching the regex $2.
wait_line() {
    local deadline=$((SECONDS + ${3:-15}))
    until grep -Eq "$2" "$WORK/$1.log" 2>/dev/null; do
        ((SECONDS < deadline)) || { echo "check.sh: $1 did not log /$2/" >&2; exit 1; }
        sleep 0.05
    done
}

echo "== promtool check rules (the PrometheusRule's spec)"
# Everything after `spec:`, dedented: a plain rules file (the same file Prometheus loads below).
sed '1,/^spec:/d; s/^  //' "$HERE/prometheusrule.yaml" >"$WORK/rules.yml"
promtool check rules "$WORK/rules.yml"

# --- binaries -------------------------------------------------------------------------------
BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug"
for b in infergate mock-model infergate-loadtest fake-apiserver fake-otlp-collector; do
    if [ ! -x "$BIN/$b" ]; then
        echo "== building the binaries ($b is missing in $BIN)"
        cargo build --quiet -p infergate -p mock-model -p infergate-loadtest -p infergate-testkit --bins
        break
    fi
done

echo "== the router under load, scraped by Prometheus"
# --- certificates: a CA, and two leaves for 127.0.0.1 valid for 7 days ----------------------
mkdir -p "$WORK/tls"
(
    cd "$WORK/tls"
    ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
    openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.pem -days 30 -subj /CN=check-ca 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >ext
    for leaf in a b; do
        openssl req "${ec[@]}" -keyout "$leaf.key" -out "$leaf.csr" -subj /CN=localhost 2>/dev/null
        openssl x509 -req -in "$leaf.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 7 \
            -extfile ext -out "$leaf.pem" 2>/dev/null
    done
    cp a.pem tls.crt && cp a.key tls.key
)

# --- model pods -----------------------------------------------------------------------------
declare -A POD
for spec in blue1:5 blue2:5 green:5 slow:200 flaky:5 notready:5; do
    name="${spec%%:*}"
    run "pod-$name" "$BIN/mock-model" --listen 127.0.0.1:0 --name "$name" --latency-ms "${spec#*:}"
done
for name in blue1 blue2 green slow flaky notready; do
    wait_line "pod-$name" 'listening on 127\.0\.0\.1:[0-9]+'
    POD[$name]="$(grep -Eo '127\.0\.0\.1:[0-9]+' "$WORK/pod-$name.log" | head -n1 | cut -d: -f2)"
done
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
DEAD_PORT="$(free_port)" # nothing listens there: connections are refused (retries, ejections)

# --- the fake Kubernetes API server and the objects the router discovers ---------------------
run apiserver "$BIN/fake-apiserver" "$WORK/kubeconfig"
API_PID="${pids[-1]}"
wait_line apiserver 'listening on http://'
API="$(grep -Eo 'http://127\.0\.0\.1:[0-9]+' "$WORK/apiserver.log" | head -n1)"
post() { # post PATH JSON
    curl -fsS -o /dev/null -X POST -H 'content-type: application/json' --data-binary "$2" "$API$1"
}
IE=/apis/infergate.io/v1/namespaces/ml/inferenceendpoints
ES=/apis/discovery.k8s.io/v1/namespaces/ml/endpointslices
endpoint() { # endpoint NAME AUTH DEPLOYMENTS [TRAFFIC]
    post "$IE" "{\"apiVersion\": \"infergate.io/v1\", \"kind\": \"InferenceEndpoint\",
        \"metadata\": {\"name\": \"$1\", \"namespace\": \"ml\"},
        \"spec\": {\"auth\": $2, \"deployments\": $3 ${4:+, \"traffic\": $4}}}"
}
slice() { # slice NAME SERVICE PORT READY
    post "$ES" "{\"apiVersion\": \"discovery.k8s.io/v1\", \"kind\": \"EndpointSlice\",
        \"metadata\": {\"name\": \"$1\", \"namespace\": \"ml\", \"labels\": {\"kubernetes.io/service-name\": \"$2\",
            \"endpointslice.kubernetes.io/managed-by\": \"endpointslice-controller.k8s.io\"}},
        \"addressType\": \"IPv4\", \"ports\": [{\"name\": \"http\", \"port\": $3, \"protocol\": \"TCP\"}],
        \"endpoints\": [{\"addresses\": [\"127.0.0.1\"], \"conditions\": {\"ready\": $4},
                         \"targetRef\": {\"kind\": \"Pod\", \"name\": \"$1\", \"namespace\": \"ml\"}}]}"
}
NONE='{"mode": "none"}'
endpoint iris "$NONE" '[{"name": "blue", "serviceName": "iris-blue"}, {"name": "green", "serviceName": "iris-green"}]' \
    '{"blue": 80, "green": 20}'
endpoint slow "$NONE" '[{"name": "d", "serviceName": "slow",
    "requestSettings": {"maxConcurrentRequestsPerInstance": 1, "maxQueueWaitMs": 50}}]'
endpoint flaky "$NONE" '[{"name": "d", "serviceName": "flaky",
    "requestSettings": {"ejectAfterConsecutiveFailures": 2, "ejectionBaseMs": 500, "ejectionMaxMs": 1000}}]'
endpoint keyed '{"mode": "key", "secretName": "keyed-keys"}' '[{"name": "d", "serviceName": "iris-green"}]'
endpoint empty "$NONE" '[{"name": "d", "serviceName": "empty"}]'
post /api/v1/namespaces/ml/secrets "{\"apiVersion\": \"v1\", \"kind\": \"Secret\",
    \"metadata\": {\"name\": \"keyed-keys\", \"namespace\": \"ml\", \"labels\": {\"infergate.io/auth\": \"true\"}},
    \"data\": {\"primaryKey\": \"$(printf 'check-key-%s-%s' "$RANDOM$RANDOM" "$RANDOM$RANDOM" | base64)\"}}"
slice iris-blue-1 iris-blue "${POD[blue1]}" true
slice iris-blue-2 iris-blue "${POD[blue2]}" true
slice iris-green iris-green "${POD[green]}" true
slice slow slow "${POD[slow]}" true
slice flaky-ok flaky "${POD[flaky]}" true
slice flaky-dead flaky "$DEAD_PORT" true
slice empty empty "${POD[notready]}" false

# --- the OpenTelemetry collector the router exports its spans to ---------------------------
run collector "$BIN/fake-otlp-collector" 127.0.0.1:0
wait_line collector 'listening on http://'
OTLP="$(grep -Eo 'http://127\.0\.0\.1:[0-9]+' "$WORK/collector.log" | head -n1)"

# --- the router -----------------------------------------------------------------------------
cat >"$WORK/infergate.yaml" <<EOF
sslCertPemFile: $WORK/tls/tls.crt
sslKeyPemFile: $WORK/tls/tls.key
listen: {https: "127.0.0.1:0", http: "127.0.0.1:0", admin: "127.0.0.1:0"}
drainTimeoutMs: 1000
certReloadIntervalMs: 200
configReloadIntervalMs: 0
discovery: {kube: {namespaces: [ml]}}
tracing: {samplingRatio: 1, otlp: {endpoint: "$OTLP", exportIntervalMs: 200}}
EOF
run router env KUBECONFIG="$WORK/kubeconfig" "$BIN/infergate" serve --config "$WORK/infergate.yaml" --log-format json --workers 2
ROUTER_PID="${pids[-1]}"
listener() { # the address a listener bound, from the JSON log
    wait_line router "\"message\":\"listening\",\"listener\":\"$1\""
    grep -Eo "\"listener\":\"$1\",\"addr\":\"[^\"]+\"" "$WORK/router.log" | head -n1 | sed 's/.*"addr":"//; s/"$//'
}
HTTPS="$(listener https)"
ADMIN="$(listener admin)"
deadline=$((SECONDS + 15))
until curl -fsS -o /dev/null "http://$ADMIN/readyz"; do
    ((SECONDS < deadline)) || { echo "check.sh: the router never became ready" >&2; exit 1; }
    sleep 0.1
done

# --- Prometheus -----------------------------------------------------------------------------
PROM_PORT="$(free_port)"
while [ "$PROM_PORT" = "$DEAD_PORT" ]; do PROM_PORT="$(free_port)"; done
PROM="127.0.0.1:$PROM_PORT"
cat >"$WORK/prometheus.yml" <<EOF
global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}
rule_files: [$WORK/rules.yml]
scrape_configs:
  - job_name: infergate
    static_configs: [{targets: ["$ADMIN"]}]
EOF
run prometheus prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
    --web.listen-address="$PROM" --log.level=warn
deadline=$((SECONDS + 20))
until curl -fsS -o /dev/null "http://$PROM/-/ready" 2>/dev/null; do
    ((SECONDS < deadline)) || { echo "check.sh: Prometheus did not start" >&2; exit 1; }
    sleep 0.1
done
# Its first scrape (target discovery hands targets over every 5 s): from then on every event
# below is seen as a change.
deadline=$((SECONDS + 20))
until curl -fsS "http://$PROM/api/v1/query?query=up%7Bjob%3D%22infergate%22%7D%3D%3D1" | grep -q '"value"'; do
    ((SECONDS < deadline)) || { echo "check.sh: Prometheus did not scrape the router" >&2; exit 1; }
    sleep 0.2
done

# --- load and events ------------------------------------------------------------------------
S="https://127.0.0.1:${HTTPS##*:}/api/v1/endpoint"
run loadtest "$BIN/infergate-loadtest" --cacert "$WORK/tls/ca.pem" -r 60 -c 16 -w 0s -d 90s -t 5s -q --body-size 64 \
    "$S/iris/score" "$S/slow/score" "$S/iris/score" "$S/flaky/score" "$S/keyed/score" "$S/empty/score"
for _ in 1 2 3; do curl -s -o /dev/null "http://127.0.0.1:${HTTPS##*:}/" || true; done # plain HTTP: failed handshakes
sleep 1
cp "$WORK/tls/b.key" "$WORK/tls/tls.key.new" && cp "$WORK/tls/b.pem" "$WORK/tls/tls.crt.new"
mv "$WORK/tls/tls.key.new" "$WORK/tls/tls.key" && mv "$WORK/tls/tls.crt.new" "$WORK/tls/tls.crt"
wait_line router 'reloaded TLS certificate'
kill -HUP "$ROUTER_PID"
wait_line router 'configuration reloaded'
# Route-table publishes: the iris endpoint's traffic split changes a few times.
for split in '{"blue": 70, "green": 30}' '{"blue": 80, "green": 20}' '{"blue": 70, "green": 30}'; do
    curl -fsS -o /dev/null -X PATCH -H 'content-type: application/merge-patch+json' \
        --data-binary "{\"spec\": {\"traffic\": $split}}" "$API$IE/iris"
    sleep 1
done
echo 'this is not a certificate' >"$WORK/tls/tls.crt.new" && mv "$WORK/tls/tls.crt.new" "$WORK/tls/tls.crt"
wait_line router 'TLS certificate reload failed'
for split in '{"blue": 80, "green": 20}' '{"blue": 70, "green": 30}'; do
    curl -fsS -o /dev/null -X PATCH -H 'content-type: application/merge-patch+json' \
        --data-binary "{\"spec\": {\"traffic\": $split}}" "$API$IE/iris"
    sleep 1
done
# The API server goes away: every discovery watch fails (the router keeps serving).
kill "$API_PID"
wait_line router 'discovery: watch failed'

echo "== every panel query, template variable and alert, through Prometheus's HTTP API"
python3 - "$PROM" "$HERE/dashboard.json" "$WORK/rules.yml" "$RATE_INTERVAL" <<'PY'
import json
import math
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

prom, dashboard_file, rules_file, rate_interval = sys.argv[1:]
# What Grafana puts for the variables: the job Prometheus scrapes here, "All" elsewhere.
subst = {"$__rate_interval": rate_interval, "$job": "infergate", "$endpoint": ".*", "$deployment": ".*"}

# Each event the run makes happened and reached Prometheus (so the panels show it, not zeros).
SCENARIO = {
    "requests served": 'sum(increase(infergate_requests_total{status="200"}[5m])) > 0',
    "queue timeouts": 'sum(increase(infergate_admission_rejections_total{reason="queue_timeout"}[5m])) > 0',
    "no_pods refusals": 'sum(increase(infergate_admission_rejections_total{reason="no_pods"}[5m])) > 0',
    "401s": "sum(increase(infergate_auth_failures_total[5m])) > 0",
    "retries": "sum(increase(infergate_retries_total[5m])) > 0",
    "pooled connections": 'sum(increase(infergate_upstream_connect_seconds_count{pooled="true"}[5m])) > 0',
    "new connections": 'sum(increase(infergate_upstream_connect_seconds_count{pooled="false"}[5m])) > 0',
    "streamed answers": "sum(increase(infergate_response_stream_seconds_count[5m])) > 0",
    "ejections": "sum(increase(infergate_pod_ejections_total[5m])) > 0",
    "failed TLS handshakes": "sum(increase(infergate_tls_handshake_failures_total[5m])) > 0",
    "certificate reloaded": 'sum(increase(infergate_tls_cert_reloads_total{result="ok"}[5m])) > 0',
    "certificate rejected": 'sum(increase(infergate_tls_cert_reloads_total{result="failed"}[5m])) > 0',
    "configuration reloaded": 'sum(increase(infergate_config_reloads_total{result="applied"}[5m])) > 0',
    "route tables published": "sum(increase(infergate_discovery_publishes_total[5m])) > 0",
    "watch errors": "sum(increase(infergate_discovery_watch_errors_total[5m])) > 0",
    "spans exported": "sum(increase(infergate_otlp_spans_exported_total[5m])) > 0",
}


def expand(expr):
    for k in sorted(subst, key=len, reverse=True):
        expr = expr.replace(k, subst[k])
    leftover = re.findall(r"\$\{?\w+", expr)
    if leftover:
        raise SystemExit(f"unknown variable {leftover} in: {expr}")
    return expr


def api(path, **params):
    url = f"http://{prom}/api/v1/{path}?" + urllib.parse.urlencode(params, doseq=True)
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:  # 400/422: a bad query; the body says why
        return json.load(e)


def run_query(expr):
    """(None, what came back) when the query succeeds with data, else (why not, "")."""
    r = api("query", query=expr)
    if r.get("status") != "success":
        return f"error: {r.get('errorType')}: {r.get('error')}", ""
    result = r["data"]["result"]
    if r["data"]["resultType"] == "scalar":
        result = [{"value": result}]
    if not result:
        return "no series", ""
    numbers = [float(s["value"][1]) for s in result if math.isfinite(float(s["value"][1]))]
    if not numbers:
        return f"{len(result)} series, none with a number (NaN: no samples in the window)", ""
    return None, f"{len(result)} series, e.g. {numbers[0]:.4g}"


def run_variable(query):
    m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
    if not m:
        return f"error: not a label_values(selector, label) query", ""
    r = api(f"label/{m.group(2)}/values", **{"match[]": expand(m.group(1))})
    if r.get("status") != "success":
        return f"error: {r.get('error')}", ""
    return (None, f"{len(r['data'])} values: {', '.join(r['data'])}") if r["data"] else ("no values", "")


def panels(ps):
    for p in ps:
        yield p
        yield from panels(p.get("panels", []))


def one_line(expr):
    return " ".join(expr.split())


checks = []  # (what, run, argument)
dash = json.load(open(dashboard_file))
for v in dash["templating"]["list"]:
    if v["type"] == "query":
        checks.append((f"variable ${v['name']}", run_variable, v["query"]["query"]))
for p in panels(dash["panels"]):
    for t in p.get("targets", []):
        checks.append((f"panel \"{p['title']}\" {t['refId']}", run_query, expand(t["expr"])))

# The rules file is YAML; each alert's name and its `expr: |` block are all this needs (the
# block: the lines indented deeper than `expr:`). promtool has checked the file itself.
alerts = []
lines = open(rules_file).read().splitlines()
for i, line in enumerate(lines):
    m = re.match(r"\s*- alert: (\S+)$", line)
    if not m:
        continue
    j = next(k for k in range(i + 1, len(lines)) if lines[k].strip().startswith("expr: |"))
    indent = len(lines[j]) - len(lines[j].lstrip())
    body = []
    for k in range(j + 1, len(lines)):
        if lines[k].strip() and len(lines[k]) - len(lines[k].lstrip()) <= indent:
            break
        body.append(lines[k])
    alerts.append(m.group(1))
    checks.append((f"alert {m.group(1)}", run_query, "\n".join(body)))
if not alerts:
    raise SystemExit("no alert found in the rules file")
for what, expr in SCENARIO.items():
    checks.append((f"scenario: {what}", run_query, expr))


def alert_states():
    out = {}
    for g in api("rules", type="alert")["data"]["groups"]:
        for rule in g["rules"]:
            out[rule["name"]] = rule
    return out


# Data and alert states take a few scrapes and evaluations to appear: retry what is missing
# (not an error: a query Prometheus refuses fails at once).
deadline = time.monotonic() + 30
while True:
    results = {what: run(arg) for what, run, arg in checks}
    states = alert_states()
    for a in alerts:
        rule = states.get(a, {})
        if rule.get("health") == "ok" and rule.get("state") in ("pending", "firing"):
            results[f"alert {a}: state"] = (None, rule["state"])
        else:
            why = f"health {rule.get('health')}, state {rule.get('state')} {rule.get('lastError', '')}"
            results[f"alert {a}: state"] = (why.strip(), "")
    failed = [w for w, (why, _) in results.items() if why]
    errors = [w for w in failed if results[w][0].startswith("error")]
    if not failed or errors or time.monotonic() > deadline:
        break
    time.sleep(1)

args = {what: arg for what, _, arg in checks}
for what, (why, got) in results.items():
    query = f": {one_line(args[what])}" if what in args else ""
    print(f"{'FAIL' if why else 'ok  '} {what}{query}\n       -> {why or got}")
counts = {k: sum(1 for w in results if w.startswith(k)) for k in ("panel", "variable", "alert", "scenario")}
print(f"{counts['panel']} panel queries, {counts['variable']} variables, {len(alerts)} alert expressions "
      f"and {len(alerts)} alert states, {counts['scenario']} scenario checks: {len(failed)} failed")
sys.exit(1 if failed else 0)
PY
echo "check.sh: ok in $((SECONDS - START)) s"
