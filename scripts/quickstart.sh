#!/usr/bin/env bash
# walhook quickstart: starts a throwaway PostgreSQL cluster with the PIM schema, a
# receiver that verifies signatures and prints each webhook, and walhook; makes a few
# product, price and stock changes; shows the webhooks arriving; cleans everything up.
# Needs Rust and Debian's postgresql package (installed here when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
    echo "== installing Debian's postgresql package"
    apt-get update && apt-get install -y postgresql
fi
command -v curl >/dev/null 2>&1 || { apt-get update && apt-get install -y curl; }
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -n "$bindir" ] || bindir=$(dirname "$(command -v initdb)")

echo "== building walhook"
# The binary is wherever cargo put it (CARGO_TARGET_DIR, build.target-dir): cargo says.
walhook=$(cargo build --quiet --bin walhook --message-format=json-render-diagnostics | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "walhook" and m.get("executable"):
        print(m["executable"])
')
[ -x "$walhook" ] || { echo "cargo build did not report the walhook binary" >&2; exit 1; }

work=$(mktemp -d /tmp/walhook-quickstart.XXXXXX)
as_pg=()
if [ "$(id -u)" = 0 ]; then
    chown postgres: "$work"
    as_pg=(runuser -u postgres --)
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pg_port=$(free_port)
rx_port=$(free_port)
admin_port=$(free_port)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    if [ -f "$work/data/postmaster.pid" ]; then
        kill -INT "$(head -n 1 "$work/data/postmaster.pid")" 2>/dev/null || true
        sleep 1
    fi
    rm -rf "$work"
}
trap cleanup EXIT

echo "== starting a throwaway PostgreSQL cluster (wal_level=logical) on port $pg_port"
"${as_pg[@]}" "$bindir/initdb" -D "$work/data" -U postgres -A trust --no-sync -E UTF8 --locale=C >/dev/null
cat >> "$work/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $pg_port
unix_socket_directories = '$work'
wal_level = logical
CONF
"${as_pg[@]}" "$bindir/pg_ctl" -D "$work/data" -l "$work/postgres.log" -w start >/dev/null
psql() { "$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$pg_port" -U postgres "$@"; }
psql -d postgres -c "CREATE DATABASE shop"
psql -d shop -f sql/examples/pim.sql

export QUICKSTART_DB_URL="postgres://postgres@127.0.0.1:$pg_port/shop"
export QUICKSTART_RECEIVER_URL="http://127.0.0.1:$rx_port/webhooks"
export QUICKSTART_SECRET="whsec_$(head -c 32 /dev/urandom | base64)"

echo "== starting a receiver on 127.0.0.1:$rx_port (verifies every signature)"
"$walhook" receive --listen "127.0.0.1:$rx_port" --secret "$QUICKSTART_SECRET" > "$work/receiver.out" 2>&1 &
pids+=($!)
tail -n +1 -f "$work/receiver.out" &
pids+=($!)

echo "== starting walhook with config/quickstart.toml"
WALHOOK_ADMIN__LISTEN="127.0.0.1:$admin_port" "$walhook" run --config config/quickstart.toml > "$work/walhook.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
    curl -fs "http://127.0.0.1:$admin_port/readyz" >/dev/null 2>&1 && break
    sleep 0.2
done
if ! curl -fs "http://127.0.0.1:$admin_port/readyz" >/dev/null 2>&1; then
    echo "walhook did not become ready:"; cat "$work/walhook.log"; exit 1
fi

echo "== making changes: a price, a stock level, a new product"
psql -d shop -c "UPDATE prices SET amount = 599.00 WHERE product_id = 1 AND currency = 'EUR'"
psql -d shop -c "UPDATE stock SET qty = 0 WHERE product_id = 2 AND warehouse = 'berlin'"
psql -d shop -c "INSERT INTO products (id, sku, title, brand) VALUES (4, 'SKU-4', 'Monitor arm', 'Lumo')"

expected=3
for _ in $(seq 1 150); do
    [ "$(grep -c '^\[signature ok\]' "$work/receiver.out" || true)" -ge "$expected" ] && break
    sleep 0.2
done
got=$(grep -c '^\[signature ok\]' "$work/receiver.out" || true)
sleep 0.3
echo
if [ "$got" -ge "$expected" ]; then
    echo "== quickstart ok: $got signed webhooks received and verified"
else
    echo "== quickstart FAILED: $got of $expected webhooks arrived. walhook log:"
    cat "$work/walhook.log"
    exit 1
fi
