#!/usr/bin/env bash
# Makes sure local PostgreSQL (127.0.0.1:5432, trust auth, user postgres,
# database test) and Redis (127.0.0.1:6379) are running, installing them
# from Debian's packages when they are missing, and that `promtool` (the
# tests check deploy/alerts.yml with it) is installed, from Debian's
# `prometheus` package. Idempotent: on a machine where all of it is there it
# only checks.
set -euo pipefail

log() { printf '[services] %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root to run: $*"; return 1; fi
}

apt_install() {
  log "installing $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

wait_for() { # description, command...
  local what=$1; shift
  for _ in $(seq 1 60); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  log "$what did not come up"; return 1
}

ensure_postgres() {
  if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    :
  else
    local fresh=0
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
      apt_install postgresql postgresql-client
      fresh=1
    fi
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    if [ "$fresh" -eq 1 ]; then
      # A cluster we installed ourselves: trust local connections, as the
      # test setup expects (never done to a cluster that was already there).
      local hba=/etc/postgresql/$version/main/pg_hba.conf
      as_root sed -i -E 's/^(local|host)(\s+all\s+all\s+.*\s)(peer|md5|scram-sha-256)$/\1\2trust/' "$hba"
      as_root sed -i -E 's/^(local\s+all\s+postgres\s+)peer$/\1trust/' "$hba"
    fi
    log "starting PostgreSQL $version"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    wait_for "PostgreSQL" pg_isready -q -h 127.0.0.1 -p 5432
  fi
  if ! psql -h 127.0.0.1 -U postgres -d test -qAtc 'SELECT 1' >/dev/null 2>&1; then
    log "creating database test"
    psql -h 127.0.0.1 -U postgres -d postgres -qc 'CREATE DATABASE test' >/dev/null
  fi
}

ensure_redis() {
  if redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then
    return 0
  fi
  command -v redis-server >/dev/null || apt_install redis-server
  log "starting Redis"
  local dir=/var/lib/redis
  [ -w "$dir" ] || dir=$(mktemp -d)
  as_root redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no --dir "$dir"
  wait_for "Redis" sh -c 'redis-cli -h 127.0.0.1 -p 6379 ping | grep -q PONG'
}

ensure_promtool() {
  command -v promtool >/dev/null || apt_install --no-install-recommends prometheus
}

ensure_postgres
ensure_redis
ensure_promtool
log "PostgreSQL and Redis are up; promtool is installed"
