#!/usr/bin/env bash
# Autoscaler benchmark (closed loop): the real `infergate serve` against the fake API server,
# which plays the Deployment controller (each scale write starts mock pods, ready after a
# start-up delay, or stops surplus ones), under an open-loop load on 127.0.0.1. The harness is
# crates/infergate/tests/e2e/autoscale.rs; this runs its ignored long form, `autoscale_long`:
#
#   1. AS_LOW_S of AS_LOW_RPS, then a AS_STEP_FACTOR x step held for AS_SETTLE_S + AS_STEADY_S
#      (the steady part: 0 scale changes expected);
#   2. the load stops: the scale-down to minInstances after scaleDownDelaySeconds;
#   3. the same step with autoscaling off (no scaleSettings): the 503s to compare.
#
# Prints: time from the step to the first scale write, time to enough ready pods (the ideal
# `ideal_replicas(rps, latency, slots, target)`), 503s over the first AS_COMPARE_S of the step
# (on vs off), steady-state replicas vs ideal, scale changes during the constant load, and the
# scale-down timing; then a markdown table.
#
#   bash benches/scripts/autoscale.sh
#   AS_STEADY_S=60 AS_DOWN_DELAY_S=10 bash benches/scripts/autoscale.sh
#
# Environment (defaults): AS_LOW_RPS (20), AS_STEP_FACTOR (10), AS_LATENCY_MS (50), AS_SLOTS (1),
# AS_TARGET (70), AS_STARTUP_MS (1500), AS_LOW_S (5), AS_SETTLE_S (AS_DOWN_DELAY_S + 10: panic mode may
# overshoot at the step, sizing from the backlog, and its one scale-down after the delay belongs
# to settling), AS_STEADY_S (300),
# AS_COMPARE_S (10), AS_DOWN_DELAY_S (30), AS_MAX (40). A run takes about
# AS_LOW_S + AS_SETTLE_S + AS_STEADY_S + AS_DOWN_DELAY_S + AS_LOW_S + AS_COMPARE_S + ~10 s.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

export AS_LOW_RPS AS_STEP_FACTOR AS_LATENCY_MS AS_SLOTS AS_TARGET AS_STARTUP_MS AS_LOW_S \
    AS_SETTLE_S AS_STEADY_S AS_COMPARE_S AS_DOWN_DELAY_S AS_MAX
echo "== autoscale: steady ${AS_STEADY_S:-300} s (long form); building the release test binary"
cargo test --release -p infergate --test e2e autoscale_long -- --ignored --nocapture --test-threads 1
