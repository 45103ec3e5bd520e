#!/usr/bin/env bash
# Runs the whole test suite against local PostgreSQL and Redis (started or
# installed first if absent). Extra arguments go to the test runner.
#
# `--coverage` runs the same suite once, instrumented, with cargo-llvm-cov
# (installed first if absent: rustup's llvm-tools, cargo-llvm-cov from
# crates.io) and fails when line coverage is below COVERAGE_MIN_LINES.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
runner=(test)
if cargo nextest --version >/dev/null 2>&1; then runner=(nextest); fi
if [ "${1:-}" = "--coverage" ]; then
  shift
  rustup component list --installed 2>/dev/null | grep -q '^llvm-tools' \
    || rustup component add llvm-tools
  cargo llvm-cov --version >/dev/null 2>&1 || cargo install --locked cargo-llvm-cov
  # Writer processes started by the tests write their profiles here too. The
  # figure is the service's own code: test support (testkit) is left out.
  exec cargo llvm-cov "${runner[@]}" --workspace --no-fail-fast --summary-only \
    --ignore-filename-regex '(^|/)testkit/' \
    --fail-under-lines "${COVERAGE_MIN_LINES:-0}" "$@"
fi
if [ "${runner[0]}" = nextest ]; then
  exec cargo nextest run --workspace --no-fail-fast "$@"
else
  exec cargo test --workspace --no-fail-fast "$@"
fi
