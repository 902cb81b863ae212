#!/usr/bin/env python3
"""walhook benchmarks: throughput, latency, memory and cost to the source, measured side
by side in one run against pg_recvlogical (the decode ceiling) and a trigger outbox.

Starts its own throwaway PostgreSQL cluster (wal_level=logical), loads a PIM-sized
dataset, runs the scenarios, prints a table and writes it as markdown and JSON under
bench/results/. Standard library only; PostgreSQL's own tools (initdb, psql, pgbench,
pg_recvlogical) do the rest. See bench/README.md.
"""

import argparse
import json
import os
import platform
import pwd
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
T0 = time.monotonic()

TARGETS = {
    "decode_ratio": ("walhook / pg_recvlogical changes/s", ">=", 0.8),
    "e2e_one": ("end to end, one subscriber, events/s", ">=", 25000),
    "isolation_ratio": ("healthy subscriber beside a failing one / alone", ">=", 0.9),
    "latency_p50_ms": ("latency p50 at 1,000 changes/s (ms)", "<=", 10),
    "latency_p99_ms": ("latency p99 at 1,000 changes/s (ms)", "<=", 50),
    "cost_vs_slot": ("pgbench TPS with walhook / with a bare slot", ">=", 0.95),
    "peak_rss_mb": ("peak RSS in every memory scenario (MB)", "<=", 150),
    "mapping_ratio": ("end to end with conditions and a template / plain rules", ">=", 0.9),
}

# The rules of every scenario: one per table, every change an event.
PLAIN_RULES = ('[[events]]\ntable = "products"\n'
               '[[events]]\ntable = "prices"\nname = "price.changed"\n'
               '[[events]]\ntable = "stock"\nname = "stock.changed"\n')

# The same events through conditions (each holds for every change of the burst, so both
# configurations deliver the same number of events) ...
RICH_RULES = ('[[events]]\ntable = "products"\nwhen = "op == \'update\' && new.status == \'approved\'"\n'
              '[[events]]\ntable = "prices"\nname = "price.changed"\nchanged = ["amount"]\n'
              'when = "new.amount > 0.0 && (op == \'insert\' || new.amount != old.amount)"\n'
              '[[events]]\ntable = "stock"\nname = "stock.changed"\nignore_changes = ["warehouse"]\n'
              'when = "new.qty > old.qty || new.qty <= 0"\n')
# ... and a body template: the chat message of the example (a join, string
# concatenation and tojson over the body's fields), with the commit time and the row
# data beside it, so bodies stay as big as the standard ones and the receiver's and the
# kernel's work per event is the same in both configurations.
RICH_SUB = ('format = "template"\n'
            'template = \'{"text":{{ (data.table ~ ": " ~ (data.changed or [])|join(", ") ~ " changed")|tojson }},'
            '"timestamp":{{ timestamp|tojson }},"data":{{ data|tojson }}}\'\n')


# Scenario 7 compares the cost of mapping, so both configurations keep the whole burst in
# the WAL rather than spill: with the default spill_after (10 s) a 1M-change burst ends
# about 10 s ahead of delivery on 2 cores, and whether a run crosses that line (and then
# also writes spill chunks) is decided by the machine's noise, not by the rules.
NO_SPILL = 'spill_after = "10m"\n'


def log(msg):
    print(f"[{time.monotonic() - T0:7.1f}s] {msg}", flush=True)


def build_release():
    """Builds walhook and the bench receiver (into walhook's target directory, reusing
    its compiled dependencies), release mode."""
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "walhook"], cwd=ROOT, check=True)
    subprocess.run(["cargo", "build", "--release", "--quiet", "--target-dir", str(ROOT / "target")],
                   cwd=BENCH / "receiver", check=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def pg_bindir():
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / "initdb").exists():
            return d
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    sys.exit("PostgreSQL server binaries not found: apt-get install -y postgresql")


class Cluster:
    """A throwaway cluster, run as `postgres` when we are root."""

    def __init__(self, work):
        self.bin = pg_bindir()
        self.dir = Path(work) / "pg"
        self.dir.mkdir()
        self.port = free_port()
        self.as_pg = os.geteuid() == 0
        if self.as_pg:
            pw = pwd.getpwnam("postgres")
            os.chown(work, pw.pw_uid, pw.pw_gid)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self.run("initdb", "-D", str(self.dir / "data"), "-U", "postgres", "-A", "trust",
                 "-E", "UTF8", "--locale=C")
        with open(self.dir / "data" / "postgresql.conf", "a") as f:
            f.write(f"""
listen_addresses = '127.0.0.1'
port = {self.port}
unix_socket_directories = '{self.dir}'
wal_level = logical
max_replication_slots = 20
max_wal_senders = 20
shared_buffers = 512MB
max_wal_size = 8GB
checkpoint_timeout = 30min
max_connections = 100
log_min_messages = warning
log_min_duration_statement = 50
log_parameter_max_length = 0
""")
        self.run("pg_ctl", "-D", str(self.dir / "data"), "-l", str(self.dir / "log"), "-w", "start")

    def cmd(self, tool, *args):
        exe = [str(self.bin / tool), *args]
        return (["runuser", "-u", "postgres", "--"] + exe) if self.as_pg else exe

    def run(self, tool, *args):
        subprocess.run(self.cmd(tool, *args), check=True, stdout=subprocess.DEVNULL)

    def url(self, db):
        return f"postgres://postgres@127.0.0.1:{self.port}/{db}"

    def sql(self, sql, db="bench"):
        """Runs statements one by one (as a script, not one transaction); returns the output."""
        out = subprocess.run(
            [str(self.bin / "psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
             "-p", str(self.port), "-U", "postgres", "-d", db, "-f", "-"],
            input=sql, capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"SQL failed: {out.stderr.strip()}\n{sql[:300]}")
        return out.stdout.strip()

    def lsn(self):
        return int(self.sql("SELECT (pg_current_wal_lsn() - '0/0')::bigint"))

    def confirmed(self, slot):
        v = self.sql(f"SELECT (confirmed_flush_lsn - '0/0')::bigint FROM pg_replication_slots WHERE slot_name = '{slot}'")
        return int(v) if v else 0

    def drop_slot(self, slot):
        self.sql(f"SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{slot}'")

    def stop(self):
        subprocess.run(self.cmd("pg_ctl", "-D", str(self.dir / "data"), "-m", "fast", "stop"),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


SCHEMA = """
CREATE TABLE products (
    id bigint PRIMARY KEY, sku text NOT NULL, title text NOT NULL, description text,
    brand text, status text NOT NULL DEFAULT 'approved', attributes jsonb NOT NULL DEFAULT '{}',
    updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE prices (
    product_id bigint NOT NULL, currency char(3) NOT NULL, amount numeric(12,2) NOT NULL,
    PRIMARY KEY (product_id, currency));
ALTER TABLE prices REPLICA IDENTITY FULL;
CREATE TABLE stock (
    product_id bigint NOT NULL, warehouse text NOT NULL, qty integer NOT NULL,
    PRIMARY KEY (product_id, warehouse));
ALTER TABLE stock REPLICA IDENTITY FULL;
INSERT INTO products (id, sku, title, description, brand, attributes)
SELECT i, 'SKU-' || i, 'Product ' || i, repeat(md5(i::text), 16), 'Brand ' || (i % 97),
       jsonb_build_object('color', 'c' || (i % 12), 'weight_kg', (i % 50) + 0.5, 'tags', jsonb_build_array('a', 'b'))
FROM generate_series(1, 100000) i;
INSERT INTO prices SELECT i, c, 10 + (i % 1000) FROM generate_series(1, 100000) i, unnest(ARRAY['EUR', 'USD']) c;
INSERT INTO stock SELECT i, w, i % 100 FROM generate_series(1, 100000) i, unnest(ARRAY['w1', 'w2', 'w3']) w;
VACUUM ANALYZE;
CREATE PUBLICATION bench FOR TABLE products, prices, stock;

-- n_tx transactions of 100 row changes: 60 stock, 30 price, 10 product updates.
CREATE PROCEDURE burst(n_tx int, seed int) LANGUAGE plpgsql AS $$
DECLARE p bigint;
BEGIN
  FOR i IN 0 .. n_tx - 1 LOOP
    p := ((i::bigint * 20 + seed * 7919) % 99980) + 1;
    UPDATE stock SET qty = qty + 1 WHERE product_id BETWEEN p AND p + 19;
    UPDATE prices SET amount = amount + 0.01 WHERE product_id BETWEEN p AND p + 14;
    UPDATE products SET updated_at = clock_timestamp() WHERE id BETWEEN p AND p + 9;
    COMMIT;
  END LOOP;
END $$;

-- `seconds` of 100 transactions a second of 10 stock updates each: 1,000 changes/s.
CREATE PROCEDURE steady(seconds int) LANGUAGE plpgsql AS $$
DECLARE start timestamptz := clock_timestamp(); p bigint;
BEGIN
  FOR i IN 0 .. seconds * 100 - 1 LOOP
    p := ((i::bigint * 4) % 99990) + 1;
    UPDATE stock SET qty = qty + 1 WHERE product_id BETWEEN p AND p + 3 AND warehouse <> 'w3'
      OR product_id BETWEEN p AND p + 1 AND warehouse = 'w3';
    COMMIT;
    PERFORM pg_sleep(greatest(0, extract(epoch FROM (start + (i + 1) * interval '10 ms' - clock_timestamp()))));
  END LOOP;
END $$;

-- The trigger outbox (what Hasura event triggers and Supabase database webhooks do).
CREATE TABLE outbox (id bigserial PRIMARY KEY, tbl text, op text, payload json, created_at timestamptz DEFAULT now());
CREATE FUNCTION outbox_capture() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO outbox (tbl, op, payload) VALUES (TG_TABLE_NAME, TG_OP, row_to_json(NEW));
  RETURN NEW;
END $$;
"""

PGBENCH_SCRIPT = """\\set pid random(1, 100000)
\\set wh random(1, 3)
UPDATE stock SET qty = qty + 1 WHERE product_id = :pid AND warehouse = 'w' || :wh;
UPDATE prices SET amount = amount + 0.01 WHERE product_id = :pid AND currency = 'EUR';
"""


class Proc:
    """A child process with its peak RSS (VmHWM) readable while it runs."""

    def __init__(self, args, log_path, env=None):
        self.log_path = log_path
        self.f = open(log_path, "ab")
        self.p = subprocess.Popen(args, stdout=self.f, stderr=subprocess.STDOUT, env=env,
                                  preexec_fn=default_sigint)

    def status_mb(self, field):
        """A size field of /proc/PID/status (VmHWM, VmRSS) in MB; 0 once it has exited."""
        try:
            for line in open(f"/proc/{self.p.pid}/status"):
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def peak_rss_mb(self):
        return self.status_mb("VmHWM")

    def rss_mb(self):
        return self.status_mb("VmRSS")

    def cpu_seconds(self):
        """User plus system CPU time used so far."""
        try:
            fields = open(f"/proc/{self.p.pid}/stat").read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return 0.0

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.f.close()


def default_sigint():
    """For `preexec_fn`: SIGINT as by default in the child. A shell runs a background job
    with SIGINT ignored and children inherit that, so pgbench and pg_recvlogical would not
    stop on it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def http_json(url, method="GET"):
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=10) as r:
        body = r.read().decode()
    try:
        return json.loads(body)
    except ValueError:
        return body


def metric(admin, name):
    try:
        text = http_json(f"http://{admin}/metrics")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{") and line.split(" ")[0] == name:
            return float(line.rsplit(" ", 1)[1])
    return None


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="walhook-bench-"))
        os.chmod(self.work, 0o755)
        self.walhook = str(ROOT / "target" / "release" / "walhook")
        # Built into walhook's target directory, reusing its compiled dependencies.
        self.receiver = str(ROOT / "target" / "release" / "walhook-bench-receiver")
        self.results = {}
        self.raw = {}
        self.pg = None
        # CPU sets while pinning (the cost scenario), else None.
        self.db_cpus = None
        self.client_cpus = None

    # ---- helpers -------------------------------------------------------------------

    def pinned(self, cpus):
        """A command prefix that runs a program on these CPUs (none when not pinning)."""
        return ["taskset", "-c", cpus] if cpus else []

    def start_receiver(self, fail=False, fail_rate=None, delay_ms=0):
        """A bench receiver: healthy, failing every request (fail), or failing that share
        of them (fail_rate); answering each webhook delay_ms after it arrived."""
        port = free_port()
        args = self.pinned(self.client_cpus) + [self.receiver, "--listen", f"127.0.0.1:{port}", "--secret", SECRET]
        if fail:
            args.append("--fail")
        if fail_rate is not None:
            args += ["--fail-rate", str(fail_rate)]
        if delay_ms:
            args += ["--delay-ms", str(delay_ms)]
        proc = Proc(args, self.work / f"receiver-{port}.log")
        for _ in range(100):
            try:
                http_json(f"http://127.0.0.1:{port}/stats")
                break
            except OSError:
                time.sleep(0.05)
        return proc, f"http://127.0.0.1:{port}"

    def start_walhook(self, slot, subscribers, state_url=None, no_delivery=False, extra_sub="", rules=PLAIN_RULES,
                      binary=None, admin_extra=""):
        admin = f"127.0.0.1:{free_port()}"
        subs = ""
        for name, url, events in subscribers:
            ev = ", ".join(f'"{e}"' for e in events)
            subs += (f'[[subscribers]]\nname = "{name}"\nurl = "{url}/hook"\nevents = [{ev}]\n'
                     f'secrets = ["{SECRET}"]\nallow_private_targets = true\nmax_in_flight = 64\n{extra_sub}\n')
        state = f'[state]\nurl = "{state_url}"\n' if state_url else ""
        cfg = (f'[source]\nurl = "{self.pg.url("bench")}"\nslot = "{slot}"\npublication = "bench"\n{state}'
               f'[admin]\nlisten = "{admin}"\n{admin_extra}' + rules + subs)
        path = self.work / f"walhook-{slot}.toml"
        path.write_text(cfg)
        args = self.pinned(self.client_cpus) + [binary or self.walhook, "run", "--config", str(path)] + \
            (["--no-delivery"] if no_delivery else [])
        proc = Proc(args, self.work / f"walhook-{slot}.log", env={**os.environ, "RUST_LOG": self.args.log})
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://{admin}/readyz", timeout=2)
                return proc, admin
            except OSError:
                if proc.p.poll() is not None:
                    break
                time.sleep(0.05)
        sys.exit(f"walhook did not start; see {proc.log_path}:\n{Path(proc.log_path).read_text()[-2000:]}")

    def reset_walhook(self, slot, state_db="bench"):
        self.pg.drop_slot(slot)
        self.pg.sql("DROP SCHEMA IF EXISTS walhook CASCADE", db=state_db)

    @staticmethod
    def confirmed_by(admin):
        """The LSN a walhook last confirmed to its slot, from its metrics. Conditions that
        poll every 20 ms ask walhook, not the database: a psql each time was 50 new
        backends a second, which took CPU from the walsender being measured."""
        return metric(admin, "walhook_confirmed_flush_lsn") or 0

    def wait(self, what, cond, timeout, every=0.02):
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while not cond():
            if time.monotonic() > deadline:
                raise TimeoutError(what)
            if time.monotonic() - last > 10:
                log(f"  ... still waiting for {what}")
                last = time.monotonic()
            time.sleep(every)

    def burst_async(self, n_tx, seed):
        return subprocess.Popen(
            [str(self.pg.bin / "psql"), "-X", "-q", "-h", "127.0.0.1", "-p", str(self.pg.port), "-U", "postgres",
             "-d", "bench", "-c", f"CALL burst({n_tx}, {seed})"], stdout=subprocess.DEVNULL)

    def record(self, key, values, unit):
        vals = sorted(values)
        self.raw[key] = {"runs": values, "median": statistics.median(vals), "min": vals[0], "max": vals[-1],
                         "unit": unit}
        return self.raw[key]["median"]

    # ---- scenarios -----------------------------------------------------------------

    def decode_ceiling(self):
        n_tx = self.args.changes // 100
        rl, wh = [], []
        # One burst, read by a slot per tool and run, all made before it: each run
        # pg_recvlogical drains its slot, then walhook drains its own.
        runs = range(self.args.runs)
        for run in runs:
            for slot in (f"bench_r{run}", f"bench_w{run}"):
                self.pg.sql(f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')")
        # Asynchronous commit: the burst is written faster (it is not what is timed).
        self.pg.sql(f"SET synchronous_commit = off; CALL burst({n_tx}, 0)")
        end = self.pg.lsn()
        for run in runs:
            t = time.monotonic()
            subprocess.run([str(self.pg.bin / "pg_recvlogical"), "-h", "127.0.0.1", "-p", str(self.pg.port), "-U", "postgres",
                                       "-d", "bench", "--slot", f"bench_r{run}", "--start", "-o", "proto_version=1",
                                       "-o", "publication_names=bench", "-E", f"{end >> 32:X}/{end & 0xFFFFFFFF:X}",
                                       "-f", "/dev/null", "--no-loop"], check=True)
            rl.append(self.args.changes / (time.monotonic() - t))
            self.pg.drop_slot(f"bench_r{run}")

            slot = f"bench_w{run}"
            t = time.monotonic()
            proc, admin = self.start_walhook(slot, [("sink", "http://127.0.0.1:9", ["*"])], no_delivery=True)
            self.wait("walhook to drain the burst", lambda: self.confirmed_by(admin) >= end, 600)
            wh.append(self.args.changes / (time.monotonic() - t))
            decoded = metric(admin, "walhook_changes_decoded_total")
            proc.stop()
            self.reset_walhook(slot)
            log(f"  run {run + 1}: pg_recvlogical {rl[-1]:,.0f}/s, walhook (no delivery) {wh[-1]:,.0f}/s, decoded {decoded:,.0f}")
        a = self.record("decode_pg_recvlogical", rl, "changes/s")
        b = self.record("decode_walhook", wh, "changes/s")
        self.results["decode_ratio"] = b / a

    def end_to_end(self, subscribers, key, memory_key=None, factor=1):
        rates, rss = [], []
        for run in range(self.args.runs):
            rate, peak = self.end_to_end_run(subscribers, run, factor)
            rates.append(rate)
            rss.append(peak)
        self.results[key] = self.record(key, rates, "events/s")
        if memory_key:
            self.record(memory_key, rss, "MB")
        return self.results[key]

    def end_to_end_run(self, subscribers, run, factor=1, rules=PLAIN_RULES, extra_sub="", changes=None, binary=None,
                       delay_ms=0):
        """One burst delivered to these subscribers (their receivers answering delay_ms
        after a request arrived): events/s and walhook's peak RSS; its CPU per event
        (microseconds) is left in `last_cpu_us`."""
        changes = changes or self.args.changes
        n_tx = changes // 100
        receivers = [self.start_receiver(delay_ms=delay_ms) for _ in subscribers]
        subs = [(f"s{i}", url, events) for i, ((_, url), events) in enumerate(zip(receivers, subscribers))]
        proc, admin = self.start_walhook("bench_e", subs, extra_sub=self.args.sub_extra + extra_sub, rules=rules,
                                         binary=binary)
        cpu0 = proc.cpu_seconds()
        expected = changes * factor
        start = time.time()
        burst = self.burst_async(n_tx, run + 200)

        def received():
            return sum(http_json(url + "/stats")["count"] for _, url in receivers)

        # Rates come from the receivers' arrival times, not from when the wait sees the
        # last event, so the polls need not be frequent: each asks every receiver, and 50
        # receivers asked every 20 ms (a new connection each, from Python) took most of a
        # core from the machine walhook ran on. 50 asks a second, however many receivers.
        self.wait("every event delivered", lambda: received() >= expected, 900, every=0.02 * len(receivers))
        burst.wait()
        stats = [http_json(url + "/stats") for _, url in receivers]
        last = max(s["last_us"] for s in stats) / 1e6
        rate = expected / (last - start)
        rss = proc.peak_rss_mb()
        self.last_cpu_us = (proc.cpu_seconds() - cpu0) / expected * 1e6
        bad = sum(s["bad_signatures"] for s in stats)
        sampled = sum(s["sampled"] for s in stats)
        assert bad == 0, f"{bad} bad signatures"
        who = "baseline " if binary else ""
        log(f"  {who}run {run + 1}: {expected:,.0f} events in {last - start:.1f}s = {rate:,.0f} events/s, "
            f"walhook {self.last_cpu_us:.1f} us CPU/event, peak RSS {rss:.0f} MB, {sampled} signatures verified")
        proc.stop()
        for r, _ in receivers:
            r.stop()
        self.reset_walhook("bench_e")
        return rate, rss

    def against(self):
        """This build beside a baseline binary (--against), run by run and in alternating
        order, so each pair sees the same machine: decode (no delivery) and end to end with
        one subscriber and with 3+1. Records both sides and each pair's ratio (this build /
        baseline); the baseline's own spread is the run-to-run noise to read them against."""
        base = str(Path(self.args.against).resolve())
        n_tx = self.args.changes // 100
        fig = {}

        def add(key, this, baseline, unit):
            for side, v in (("this", this), ("baseline", baseline)):
                fig.setdefault((key, side), []).append(v)
            fig.setdefault((key, "ratio"), []).append(this / baseline)
            fig[(key, "unit")] = unit

        for run in range(self.args.runs):
            order = [None, base] if run % 2 == 0 else [base, None]
            # Decode: a slot per side, made before this run's burst, each drained to its end.
            for i, _ in enumerate(order):
                self.pg.sql(f"SELECT pg_create_logical_replication_slot('bench_ab{i}', 'pgoutput')")
            self.pg.sql(f"SET synchronous_commit = off; CALL burst({n_tx}, {run + 500})")
            end = self.pg.lsn()
            dec = {}
            for i, binary in enumerate(order):
                slot = f"bench_ab{i}"
                t = time.monotonic()
                proc, admin = self.start_walhook(slot, [("sink", "http://127.0.0.1:9", ["*"])], no_delivery=True,
                                                 binary=binary)
                self.wait("walhook to drain the burst", lambda: self.confirmed_by(admin) >= end, 600)
                dec[binary] = (self.args.changes / (time.monotonic() - t),
                               proc.cpu_seconds() / self.args.changes * 1e6)
                proc.stop()
                self.reset_walhook(slot)
            add("decode", dec[None][0], dec[base][0], "changes/s")
            add("decode_cpu", dec[None][1], dec[base][1], "us CPU/change")
            log(f"  run {run + 1} decode: this {dec[None][0]:,.0f}/s ({dec[None][1]:.1f} us), "
                f"baseline {dec[base][0]:,.0f}/s ({dec[base][1]:.1f} us)")
            for key, subs, factor in (("e2e_one", [["*"]], 1),
                                      ("e2e_four", [["price.*"], ["stock.*"], ["products.*"], ["*"]], 2)):
                got = {}
                for binary in order:
                    rate, _ = self.end_to_end_run(subs, run, factor, binary=binary)
                    got[binary] = (rate, self.last_cpu_us)
                add(key, got[None][0], got[base][0], "events/s")
                add(key + "_cpu", got[None][1], got[base][1], "us CPU/event")
        for key in ("decode", "decode_cpu", "e2e_one", "e2e_one_cpu", "e2e_four", "e2e_four_cpu"):
            unit = fig[(key, "unit")]
            self.record(f"{key}_this", fig[(key, "this")], unit)
            b = self.record(f"{key}_baseline", fig[(key, "baseline")], unit)
            r = self.record(f"{key}_vs_baseline", fig[(key, "ratio")], "x baseline")
            self.results[f"{key}_vs_baseline"] = r
            # The baseline's own spread, as a share of its median: the noise of one side.
            self.results[f"{key}_baseline_spread"] = (max(fig[(key, "baseline")]) - min(fig[(key, "baseline")])) / b
            log(f"  {key}: this / baseline = {r:.3f} (median of {len(fig[(key, 'ratio')])} pairs, "
                f"{min(fig[(key, 'ratio')]):.3f}-{max(fig[(key, 'ratio')]):.3f}); baseline's own spread "
                f"{self.results[f'{key}_baseline_spread']:.1%}")

    def one_and_isolation(self, isolation):
        """Scenario 2 with one subscriber and, run by run, scenario 3: each isolation run is
        compared with the one-subscriber run just before it, so both see the same machine."""
        one, one_rss, iso = [], [], []
        for run in range(self.args.runs):
            log(f"scenario 2: end to end, one subscriber (run {run + 1})")
            rate, peak = self.end_to_end_run([["*"]], run)
            one.append(rate)
            one_rss.append(peak)
            if isolation:
                log(f"scenario 3: isolation, one subscriber answering 500 forever (run {run + 1})")
                iso.append(self.isolation_run(run, rate))
        self.results["e2e_one"] = self.record("e2e_one", one, "events/s")
        self.record("memory_e2e", one_rss, "MB")
        if iso:
            rates, ratios, spilled, log_rows, lag, rss = zip(*iso)
            self.record("isolation_healthy", list(rates), "events/s")
            self.results["isolation_ratio"] = self.record("isolation_ratio", list(ratios), "x alone")
            self.record("isolation_spilled_events", list(spilled), "events")
            self.record("isolation_spill_log_rows", list(log_rows), "rows")
            self.record("isolation_slot_lag", list(lag), "bytes")
            self.record("memory_isolation", list(rss), "MB")

    def isolation_run(self, run, alone):
        n_tx = self.args.changes // 100
        ok_rx, ok_url = self.start_receiver()
        bad_rx, bad_url = self.start_receiver(fail=True)
        proc, admin = self.start_walhook("bench_i", [("healthy", ok_url, ["*"]), ("broken", bad_url, ["*"])])
        start = time.time()
        burst = self.burst_async(n_tx, run + 300)
        self.wait("the healthy subscriber's events",
                  lambda: http_json(ok_url + "/stats")["count"] >= self.args.changes, 900)
        burst.wait()
        st = http_json(ok_url + "/stats")
        rate = self.args.changes / (st["last_us"] / 1e6 - start)
        time.sleep(2)
        spilled = metric(admin, 'walhook_spill_rows_written_total{subscriber="broken"}') or 0
        spill_held = metric(admin, 'walhook_lane_spill_held_seconds_total{subscriber="broken"}') or 0
        held = metric(admin, 'walhook_lane_held_seconds_total{subscriber="healthy"}') or 0
        log_rows = int(self.pg.sql(
            "SELECT (SELECT count(*) FROM walhook.spill WHERE subscriber = 'broken') "
            "+ (SELECT count(*) FROM walhook.spill_chunks WHERE subscriber = 'broken')"))
        lag = int(self.pg.sql(
            "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint FROM pg_replication_slots "
            "WHERE slot_name = 'bench_i'"))
        rss = proc.peak_rss_mb()
        log(f"  run {run + 1}: healthy {rate:,.0f} events/s ({rate / alone:.2f}x alone), "
            f"spilled {spilled:,.0f} events in {log_rows:,} rows (the reader waited {spill_held:.1f}s for them, "
            f"{held:.1f}s for the healthy one), slot lag {lag:,} bytes, peak RSS {rss:.0f} MB")
        proc.stop()
        ok_rx.stop()
        bad_rx.stop()
        self.reset_walhook("bench_i")
        return rate, rate / alone, spilled, log_rows, lag, rss

    def mapping_cost(self):
        """Scenario 7: one subscriber, plain rules against the same events through `when`,
        `changed` and `ignore_changes` conditions and a body template, run by run in
        turning order; the ratios are taken per pair."""
        log("  warm-up: a 100,000-change burst (not counted)")
        self.end_to_end_run([["*"]], 399, changes=100_000, extra_sub=NO_SPILL)
        plain, rich, ratios, cpu_plain, cpu_rich, cpu_ratios = [], [], [], [], [], []
        for run in range(self.args.runs):
            rates, cpu = {}, {}
            for kind in (("plain", "rich") if run % 2 == 0 else ("rich", "plain")):
                log(f"  run {run + 1}: {kind} rules")
                if kind == "plain":
                    rates[kind], _ = self.end_to_end_run([["*"]], run + 400, extra_sub=NO_SPILL)
                else:
                    rates[kind], _ = self.end_to_end_run([["*"]], run + 400, rules=RICH_RULES,
                                                         extra_sub=NO_SPILL + RICH_SUB)
                cpu[kind] = self.last_cpu_us
            plain.append(rates["plain"])
            rich.append(rates["rich"])
            ratios.append(rates["rich"] / rates["plain"])
            cpu_plain.append(cpu["plain"])
            cpu_rich.append(cpu["rich"])
            cpu_ratios.append(cpu["rich"] / cpu["plain"])
            log(f"  run {run + 1}: conditions and template / plain = {ratios[-1]:.2f} in events/s, "
                f"{cpu_ratios[-1]:.2f} in walhook's CPU per event")
        self.record("mapping_plain", plain, "events/s")
        self.record("mapping_rich", rich, "events/s")
        self.results["mapping_ratio"] = self.record("mapping_ratio", ratios, "x plain")
        self.record("mapping_cpu_plain", cpu_plain, "us/event")
        self.record("mapping_cpu_rich", cpu_rich, "us/event")
        self.results["mapping_cpu_ratio"] = self.record("mapping_cpu_ratio", cpu_ratios, "x plain")

    def latency(self):
        p50, p99, mx = [], [], []
        for run in range(self.args.runs):
            rx, url = self.start_receiver()
            proc, admin = self.start_walhook("bench_l", [("s", url, ["*"])])
            self.pg.sql(f"CALL steady({self.args.steady_seconds})")
            self.wait("the steady stream", lambda: http_json(url + "/stats")["count"] >= self.args.steady_seconds * 1000, 60)
            lat = http_json(url + "/latency")
            p50.append(lat["p50"] / 1000)
            p99.append(lat["p99"] / 1000)
            mx.append(lat["max"] / 1000)
            log(f"  run {run + 1}: p50 {p50[-1]:.1f} ms, p99 {p99[-1]:.1f} ms, max {mx[-1]:.1f} ms over {lat['n']:,} events")
            proc.stop()
            rx.stop()
            self.reset_walhook("bench_l")
        self.results["latency_p50_ms"] = self.record("latency_p50_ms", p50, "ms")
        self.results["latency_p99_ms"] = self.record("latency_p99_ms", p99, "ms")
        self.record("latency_max_ms", mx, "ms")

    def pgbench(self, tag):
        script = self.work / "pgbench.sql"
        script.write_text(PGBENCH_SCRIPT)
        os.chmod(script, 0o644)
        logdir = self.work / f"pgbench-{tag}"
        logdir.mkdir(exist_ok=True)
        os.chmod(logdir, 0o777)
        out = subprocess.run(
            self.pinned(self.db_cpus) + [str(self.pg.bin / "pgbench"), "-n", "-h", "127.0.0.1", "-p", str(self.pg.port), "-U", "postgres",
             "-c", "4", "-j", "2", "-T", str(self.args.pgbench_seconds), "-f", str(script), "-l",
             "--log-prefix", str(logdir / "tx"), "bench"],
            check=True, capture_output=True, text=True, cwd=logdir)
        tps = next(float(l.split("=")[1].split()[0]) for l in out.stdout.splitlines() if l.startswith("tps ="))
        lats = []
        for f in logdir.glob("tx*"):
            for line in open(f):
                parts = line.split()
                if len(parts) >= 3:
                    lats.append(int(parts[2]))
            f.unlink()
        lats.sort()
        p99 = lats[int(len(lats) * 0.99)] / 1000 if lats else 0
        return tps, p99

    def pin_postgres(self, cpus):
        """Sets the CPU affinity of the cluster's processes (new backends inherit it)."""
        postmaster = (self.pg.dir / "data" / "postmaster.pid").read_text().split()[0]
        children = subprocess.run(["pgrep", "-P", postmaster], capture_output=True, text=True).stdout.split()
        for pid in [postmaster] + children:
            subprocess.run(["taskset", "-a", "-p", "-c", cpus, pid], capture_output=True)

    def cost(self):
        configs = ["none", "slot", "walhook_source_state", "walhook_separate_state", "trigger_outbox"]
        tps = {c: [] for c in configs}
        p99 = {c: [] for c in configs}
        self.pg.sql("CREATE DATABASE walhook_state", db="postgres")
        # The database and its load on one half of the cores, the capture clients
        # (pg_recvlogical, walhook and its receiver) on the other, in every configuration:
        # what is measured is the cost to the source, not the clients' share of the CPUs.
        n = os.cpu_count() or 2
        half = max(1, n // 2)
        self.db_cpus = f"0-{half - 1}"
        self.client_cpus = f"{half}-{n - 1}" if n > 1 else "0"
        self.pin_postgres(self.db_cpus)
        try:
            self.cost_runs(configs, tps, p99)
        finally:
            self.pin_postgres(f"0-{n - 1}")
            self.client_cpus = self.db_cpus = None
        for c in configs:
            self.record(f"cost_tps_{c}", tps[c], "TPS")
            self.record(f"cost_p99_{c}", p99[c], "ms")
        # Ratios are taken run by run (the configurations of one run are minutes apart at
        # most, and their order turns from run to run), then the median of those.
        def ratio(c, to):
            return [a / b for a, b in zip(tps[c], tps[to])]
        self.results["cost_vs_slot"] = self.record("cost_walhook_vs_slot", ratio("walhook_source_state", "slot"), "x")
        self.results["cost_separate_vs_slot"] = self.record(
            "cost_separate_vs_slot", ratio("walhook_separate_state", "slot"), "x")
        self.results["cost_trigger_vs_slot"] = self.record("cost_trigger_vs_slot", ratio("trigger_outbox", "slot"), "x")
        for c in configs:
            self.results[f"cost_ratio_{c}"] = self.record(f"cost_ratio_{c}", ratio(c, "none"), "x none")

    def cost_runs(self, configs, tps, p99):
        for run in range(self.args.runs):
            # Each run starts one configuration later, so no configuration always runs in
            # the same part of the run (this machine's speed drifts).
            for c in configs[run % len(configs):] + configs[:run % len(configs)]:
                procs = []
                if c == "slot":
                    self.pg.sql("SELECT pg_create_logical_replication_slot('bench_c', 'pgoutput')")
                    procs.append(Proc(self.pinned(self.client_cpus) + [str(self.pg.bin / "pg_recvlogical"), "-h", "127.0.0.1", "-p", str(self.pg.port),
                                                  "-U", "postgres", "-d", "bench", "--slot", "bench_c", "--start",
                                                  "-o", "proto_version=1", "-o", "publication_names=bench",
                                                  "-f", "/dev/null", "--no-loop"], self.work / "recvlogical.log"))
                elif c.startswith("walhook"):
                    rx, url = self.start_receiver()
                    state = self.pg.url("walhook_state") if c == "walhook_separate_state" else None
                    proc, _ = self.start_walhook("bench_c", [("s", url, ["*"])], state_url=state)
                    procs += [proc, rx]
                elif c == "trigger_outbox":
                    for t in ["stock", "prices"]:
                        self.pg.sql(f"CREATE TRIGGER outbox AFTER INSERT OR UPDATE ON {t} "
                                    "FOR EACH ROW EXECUTE FUNCTION outbox_capture()")
                t, p = self.pgbench(c)
                tps[c].append(t)
                p99[c].append(p)
                for proc in procs:
                    proc.stop(signal.SIGINT if "recvlogical" in str(proc.log_path) else signal.SIGTERM)
                if c == "slot":
                    self.wait("pg_recvlogical to let go of the slot", lambda: self.pg.sql(
                        "SELECT active FROM pg_replication_slots WHERE slot_name = 'bench_c'") != "t", 30)
                    self.pg.drop_slot("bench_c")
                elif c.startswith("walhook"):
                    self.reset_walhook("bench_c", "walhook_state" if "separate" in c else "bench")
                elif c == "trigger_outbox":
                    for tbl in ["stock", "prices"]:
                        self.pg.sql(f"DROP TRIGGER outbox ON {tbl}")
                    self.pg.sql("TRUNCATE outbox")
                log(f"  run {run + 1} {c}: {t:,.0f} TPS, p99 {p:.2f} ms")

    def big_transaction(self):
        rss = []
        for run in range(self.args.runs):
            rx, url = self.start_receiver()
            # Every change is decoded and mapped; the products' events (a sixth) are
            # delivered, which fills the lane past max_buffered all the same.
            proc, admin = self.start_walhook("bench_m", [("s", url, ["products.*"])])
            k = self.args.big_tx_products
            one = f"UPDATE stock SET qty = qty + 1 WHERE product_id <= {k}; " \
                  f"UPDATE prices SET amount = amount + 0.01 WHERE product_id <= {k}; " \
                  f"UPDATE products SET updated_at = now() WHERE id <= {k}; "
            self.pg.sql("BEGIN; " + one + one + "COMMIT;")
            n = 2 * 6 * k
            self.wait(f"the {n:,}-row transaction's product events delivered",
                      lambda: http_json(url + "/stats")["count"] >= 2 * k, self.args.big_tx_timeout)
            rss.append(proc.peak_rss_mb())
            decoded = metric(admin, "walhook_changes_decoded_total")
            log(f"  run {run + 1}: {n:,} rows in one transaction, {decoded:,.0f} changes decoded, "
                f"{2 * k:,} events delivered, peak RSS {rss[-1]:.0f} MB")
            proc.stop()
            rx.stop()
            self.reset_walhook("bench_m")
        self.record("memory_big_transaction", rss, "MB")

    # ---- driver --------------------------------------------------------------------

    def run(self):
        log("building walhook and the receiver (release)")
        build_release()
        self.build_seconds = time.monotonic() - T0
        log(f"built in {self.build_seconds / 60:.1f} minutes")
        log("starting a throwaway PostgreSQL cluster")
        self.pg = Cluster(self.work)
        try:
            self.version = self.pg.sql("SHOW server_version", db="postgres")
            self.pg.sql("CREATE DATABASE bench", db="postgres")
            log("loading the dataset: 100k products, 200k prices, 300k stock rows")
            self.pg.sql(SCHEMA)
            scen = self.args.scenarios
            if "decode" in scen:
                log(f"scenario 1: decode ceiling, {self.args.changes:,} changes already in the WAL")
                self.decode_ceiling()
            if "e2e" in scen or "isolation" in scen:
                self.one_and_isolation("isolation" in scen)
            if "e2e" in scen:
                log("scenario 2: end to end, 3 subscribers with a third of the types each + 1 with all")
                self.end_to_end([["price.*"], ["stock.*"], ["products.*"], ["*"]], "e2e_four", "memory_e2e_four", factor=2)
            if "latency" in scen:
                log(f"scenario 4: latency at 1,000 changes/s for {self.args.steady_seconds}s per run")
                self.latency()
            if "cost" in scen:
                log(f"scenario 5: cost to the source, pgbench {self.args.pgbench_seconds}s per configuration and run")
                self.cost()
            if "memory" in scen:
                log(f"scenario 6: memory through one {12 * self.args.big_tx_products:,}-row transaction")
                self.big_transaction()
            if self.args.against:
                log(f"against {self.args.against}: decode and end to end, alternating, {self.args.runs} pairs")
                self.against()
            if "mapping" in scen:
                log("scenario 7: cost of conditions and templates, end to end, one subscriber")
                self.mapping_cost()
        finally:
            self.pg.stop()
            if self.args.keep:
                log(f"kept {self.work}")
            else:
                shutil.rmtree(self.work, ignore_errors=True)
        mem = [self.raw[k]["max"] for k in ("memory_e2e", "memory_e2e_four", "memory_isolation", "memory_big_transaction") if k in self.raw]
        if mem:
            self.results["peak_rss_mb"] = max(mem)
        self.report()

    def report(self):
        now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        machine = f"{os.cpu_count()} cores, {mem_gb:.0f} GiB, {platform.machine()}, PostgreSQL {self.pg_version()}"
        total = time.monotonic() - T0
        build = getattr(self, "build_seconds", 0.0)
        lines = ["# walhook benchmark results", "", f"{now}; {machine}; {self.args.runs} runs each "
                 f"(median, min-max); {self.args.changes:,} changes per burst; latency over "
                 f"{self.args.steady_seconds}s per run; pgbench {self.args.pgbench_seconds}s per configuration and run; "
                 f"big transaction of {12 * self.args.big_tx_products:,} rows.", "",
                 f"The command took {total / 60:.1f} minutes: {build / 60:.1f} building (nothing was built before "
                 f"when this is the time of a fresh clone), {(total - build) / 60:.1f} running the scenarios.", "",
                 f"Command: `python3 bench/run.py {' '.join(sys.argv[1:])}`", "",
                 "| figure | median | min | max | unit |", "|---|---:|---:|---:|---|"]
        for k, v in self.raw.items():
            lines.append(f"| {k} | {v['median']:,.2f} | {v['min']:,.2f} | {v['max']:,.2f} | {v['unit']} |")
        lines += ["", "| target | measured | goal | met |", "|---|---:|---:|---|"]
        for k, (desc, op, goal) in TARGETS.items():
            if k in self.results:
                val = self.results[k]
                met = val >= goal if op == ">=" else val <= goal
                lines.append(f"| {desc} | {val:,.2f} | {op} {goal:,} | {'yes' if met else 'NO'} |")
        extra = {k: v for k, v in self.results.items() if k not in TARGETS}
        if extra:
            lines += ["", "| other result | value |", "|---|---:|"]
            lines += [f"| {k} | {v:.3f} |" for k, v in extra.items()]
        text = "\n".join(lines) + "\n"
        print("\n" + text)
        out = Path(self.args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "latest.md").write_text(text)
        (out / "latest.json").write_text(json.dumps(
            {"date": now, "machine": machine, "runs": self.args.runs, "changes": self.args.changes,
             "minutes_total": round(total / 60, 2), "minutes_building": round(build / 60, 2),
             "figures": self.raw, "results": self.results}, indent=2) + "\n")
        log(f"wrote {out / 'latest.md'} and {out / 'latest.json'}")

    def pg_version(self):
        return getattr(self, "version", "?")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--changes", type=int, default=1_000_000, help="row changes per burst")
    ap.add_argument("--steady-seconds", type=int, default=20,
                    help="seconds of the steady stream per run (3 runs: the issue's 60 s)")
    ap.add_argument("--pgbench-seconds", type=int, default=20)
    ap.add_argument("--big-tx-timeout", type=int, default=900)
    ap.add_argument("--big-tx-products", type=int, default=83334,
                    help="products touched by the big transaction (12 row changes each)")
    ap.add_argument("--scenarios", default="decode,e2e,isolation,latency,cost,memory",
                    help="comma-separated; also: mapping (conditions and templates against plain rules)")
    ap.add_argument("--out", default=str(BENCH / "results"), help="where latest.md and latest.json go")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs, configs)")
    ap.add_argument("--log", default="warn", help="RUST_LOG for walhook")
    ap.add_argument("--against", metavar="BINARY",
                    help="a baseline walhook binary (say, built from an earlier commit): decode and end to end "
                         "run it beside this build, alternating run by run, and report this build / baseline")
    ap.add_argument("--sub-extra", default="", help="extra TOML lines for every subscriber (experiments)")
    args = ap.parse_args()
    args.scenarios = set(args.scenarios.split(","))
    Bench(args).run()


if __name__ == "__main__":
    main()
