#!/usr/bin/env bash
# Installs what tenant-router needs on a fresh Debian-like machine: PostgreSQL server binaries (for the
# demo, tests and benchmarks; only if none are installed), PgBouncer and psql/pgbench for the
# benchmarks, Prometheus for the dashboard's test, and the Python package with its development tools.
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
# Prometheus, for the test that evaluates every panel of the shipped Grafana dashboard against it
# (skipped, saying so, where it cannot be installed). On its own: if it fails, nothing else does.
if ! command -v prometheus >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 || \
            { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive \
              apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1; } || \
            echo "setup.sh: could not install prometheus; the dashboard test will be skipped" >&2
    else
        echo "setup.sh: install prometheus to run the dashboard test" >&2
    fi
fi

python3 -m pip install -q --disable-pip-version-check -e '.[dev]'

# The forwarding path compiled with mypyc (router/native.py, setup.py): about a third less CPU per
# forwarded transaction. Old builds go first, so a failed build leaves the pure-Python modules, which
# behave the same, rather than stale compiled ones.
find router -name '*.so' -delete
rm -f router/native.json
if python3 setup.py -q build_ext --inplace >/tmp/tenant-router-native-build.log 2>&1; then
    python3 -c 'import router.native as n; print("setup.sh:", n.describe())'
else
    echo "setup.sh: could not compile the forwarding path (see /tmp/tenant-router-native-build.log);" \
        "the router runs as pure Python, slower" >&2
fi
