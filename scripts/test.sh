#!/usr/bin/env bash
# Runs the whole test suite: unit tests and integration tests against real PostgreSQL
# clusters (started and stopped by the tests) and real HTTP receivers on loopback.
# Installs Debian's postgresql package when its server binaries are missing.
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

if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --profile "${NEXTEST_PROFILE:-default}" "$@"
else
    cargo test -- --test-threads 2 "$@"
fi
