#!/usr/bin/env bash
# PostgreSQL server binaries for tests/test_zoo.py (distributed Optuna tuning through a real server on loopback).
# Run as root by .ci/run before the tests. The test fixture creates, starts and removes its own throwaway cluster
# (initdb in a temporary directory, run as the `postgres` user, on a free loopback port): nothing is started here.
# The Python driver (psycopg 3, the default of SQLAlchemy 2.1 for postgresql:// URLs) is a pip dependency of the `zoo` extra.
set -euo pipefail

if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then
    echo "PostgreSQL server binaries already installed: $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | tr '\n' ' ')"
else
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # The package's post-install tries to start a default cluster: not needed (and not possible without an init system)
    apt-get install -y -q --no-install-recommends postgresql
fi

# The server refuses to run as root: the fixture runs it as `postgres` (created by the package; created here if absent)
id -u postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
command -v runuser >/dev/null 2>&1 || { echo "runuser (util-linux) is required to start the server as postgres" >&2; exit 1; }
echo "PostgreSQL ready for the tests: $(ls /usr/lib/postgresql/*/bin/postgres 2>/dev/null || command -v postgres)"
