#!/usr/bin/env bash
# A swagger consumer pointed at the router's swagger URL alone finds the scoring URL by itself:
# schemathesis (PyPI) loads /api/v1/endpoint/demo/swagger.json through the router, takes the base
# URL from the document's `servers` (which the router rewrites to name itself), and calls the
# scoring operation with generated valid requests (`--mode positive`: the mock pod is lenient
# with malformed parameters, which is the pod's business, not the router's); every check (no
# undocumented status such as a 404, documented content types, response schemas) must pass. Bounded: 30 examples, 5 s per request,
# 5 minutes in all. The router and a mock pod run on 127.0.0.1 and stop at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TARGET="${CARGO_TARGET_DIR:-$PWD/target}"
VERSION=4.32.5
VENV="$TARGET/schemathesis-venv"
if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$VERSION"; then
    echo "swagger-tools.sh: installing schemathesis==$VERSION with pip"
    python3 -m venv "$VENV" && "$VENV/bin/pip" install -q "schemathesis==$VERSION"
fi
cargo build -q --locked -p infergate -p mock-model
BIN="$TARGET/debug"
WORK="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

# Free ports, chosen by the kernel.
read -r POD HTTP ADMIN < <(python3 -c '
import socket
s = [socket.socket() for _ in range(3)]
for x in s: x.bind(("127.0.0.1", 0))
print(*(x.getsockname()[1] for x in s))')
"$BIN/mock-model" --listen "127.0.0.1:$POD" --name pod >"$WORK/pod.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$POD/swagger.json" >/dev/null 2>&1 && break
    sleep 0.1
done
cat >"$WORK/infergate.yaml" <<YAML
allowInsecureConnections: true
listen: {http: "127.0.0.1:$HTTP", admin: "127.0.0.1:$ADMIN"}
endpoints:
  - name: demo
    auth: {mode: none}
    deployments: [{name: blue, pods: ["127.0.0.1:$POD"]}]
YAML
RUST_LOG=warn "$BIN/infergate" serve --config "$WORK/infergate.yaml" --workers 1 >"$WORK/router.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$ADMIN/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done

URL="http://127.0.0.1:$HTTP/api/v1/endpoint/demo/swagger.json"
if ! timeout 300 "$VENV/bin/schemathesis" run "$URL" --mode positive --max-examples 30 --request-timeout 5 \
    --seed 1 --no-color >"$WORK/st.log" 2>&1; then
    cat "$WORK/st.log"; echo "--- router log"; cat "$WORK/router.log"
    echo "swagger-tools.sh: schemathesis found failures through the router"; exit 1
fi
grep -q "Base URL: *http://127.0.0.1:$HTTP/api/v1/endpoint/demo" "$WORK/st.log" || {
    cat "$WORK/st.log"; echo "swagger-tools.sh: schemathesis did not take the router's URL from the document"; exit 1
}
calls=$(curl -s "http://127.0.0.1:$ADMIN/metrics" |
    awk '/^infergate_requests_total\{.*endpoint="demo".*status="2[0-9][0-9]"/ {s += $2} END {print s + 0}')
[ "$calls" -gt 0 ] || { cat "$WORK/st.log"; echo "swagger-tools.sh: no scoring call reached the pod"; exit 1; }
echo "swagger-tools.sh: schemathesis $VERSION passed against $URL ($calls scoring calls answered 2xx through the router)"
