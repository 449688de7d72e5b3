#!/usr/bin/env bash
# Installs what tenant-router needs on a fresh Debian-like machine: PostgreSQL server binaries (for the
# demo, tests and benchmarks; only if none are installed), PgBouncer and psql/pgbench for the
# benchmarks, and the Python package with its development tools.
set -euo pipefail
cd "$(dirname "$0")"

have_pg_server() {
    command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}

need=()
have_pg_server || need+=(postgresql)
command -v psql >/dev/null 2>&1 || need+=(postgresql-client)
command -v pgbench >/dev/null 2>&1 || need+=(postgresql-contrib)
command -v pgbouncer >/dev/null 2>&1 || need+=(pgbouncer)
if [ ${#need[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq || true
        apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null || \
            echo "setup.sh: could not install ${need[*]} with apt-get; install them by hand" >&2
        # Debian starts a cluster on 5432 when it installs the server; we never use it.
    else
        echo "setup.sh: please install: ${need[*]}" >&2
    fi
fi

python3 -m pip install -q --disable-pip-version-check -e '.[dev]'
