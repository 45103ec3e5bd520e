#!/usr/bin/env bash
# Starts the writer against local PostgreSQL and Redis (started or installed
# first if absent), with the settings of the local setup. Override any
# setting through the environment (see README, Configuration).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
cargo build --release --bin writer
# `writer run` applies pending migrations itself.
exec "${CARGO_TARGET_DIR:-target}/release/writer" "${@:-run}"
