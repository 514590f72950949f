#!/usr/bin/env bash
# Every test of the project: formatting, the crypto-provider guard, all cargo tests
# (unit, property, end-to-end over 127.0.0.1), the dashboard and alerts against a real
# Prometheus (when installed), schemathesis against the router's swagger URL, a check of the
# release feature set (no `demo`), and offline schema validation of the manifests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== only ring as rustls crypto provider (two providers panic at run time)"
if cargo tree --workspace -i aws-lc-sys >/dev/null 2>&1; then
    echo "aws-lc-sys is in the dependency tree:"; cargo tree --workspace -i aws-lc-sys; exit 1
fi

echo "== cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log"

echo "== observability: the dashboard and alerts against a real Prometheus (deploy/observability/check.sh)"
if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
    bash deploy/observability/check.sh
else
    echo "skipped: prometheus not installed (apt-get install --no-install-recommends prometheus; .ci/run installs it)"
fi

echo "== swagger tools: schemathesis through the router's swagger URL alone (tests/swagger-tools.sh)"
bash tests/swagger-tools.sh

echo "== the release build's features: infergate without \`demo\` (as the Dockerfile builds it)"
cargo check -p infergate --no-default-features --locked

echo "== manifests: kustomize overlays and render modes against the Kubernetes schemas"
bash deploy/validate.sh

# One closing line for the whole run (the last cargo summary is often a 0-test doc-test run).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
