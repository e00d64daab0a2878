#!/usr/bin/env bash
# Start a local PostgreSQL (Debian's package) for the scale-out tests and print its URL.
# Installs the package when missing; idempotent. Needs root (CI and these machines have it).
set -euo pipefail
if ! command -v pg_lsclusters >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq postgresql >/dev/null
fi
version=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h | grep -q "^$version main"; then
  pg_createcluster "$version" main >/dev/null
fi
pg_ctlcluster "$version" main start >/dev/null 2>&1 || true
for _ in $(seq 30); do
  pg_isready -q -h 127.0.0.1 -p 5432 && break
  sleep 1
done
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='autocompress'\"" | grep -q 1 \
  || su postgres -c "psql -qc \"CREATE ROLE autocompress LOGIN PASSWORD 'autocompress' CREATEDB\""
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname='autocompress_test'\"" | grep -q 1 \
  || su postgres -c "createdb -O autocompress autocompress_test"
echo "postgresql://autocompress:autocompress@127.0.0.1:5432/autocompress_test"
