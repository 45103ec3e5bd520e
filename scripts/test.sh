#!/usr/bin/env bash
# Runs the whole test suite against local PostgreSQL and Redis (started or
# installed first if absent). Extra arguments go to the test runner.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
if cargo nextest --version >/dev/null 2>&1; then
  exec cargo nextest run --workspace --no-fail-fast "$@"
else
  exec cargo test --workspace --no-fail-fast "$@"
fi
