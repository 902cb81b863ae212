#!/usr/bin/env python3
"""Channel sync benchmarks: a backfill of 1,000,000 rows and documents from a bulk import.

Backfill: one walhook with one subscriber (the bench receiver, fast) and a rule on a
table of 1,000,000 product rows. Per run it measures pgbench's TPS on that table with
walhook attached and idle (20 s), then starts a backfill of the table
(`walhook backfill start`) with the same pgbench load running beside it: rows/s of the
backfill (rows / time from its start to done), pgbench's TPS during it (the per-second
progress of the seconds it ran) against without, and walhook's peak RSS.

Documents: one walhook with a `[[documents]]` product document (the product with its
prices and stock, as in config/examples/13-product-documents.toml) over 100,000 products,
and a bulk import that updates every product and both prices of each in one
transaction (300,000 row changes). Documents/s = 100,000 / time from the import's
commit to the last document received (the 1 s window included); beside it, in the same
run, the same import with plain per-row rules (300,000 events) as the baseline, and
walhook's peak RSS in both.

    python3 bench/sync.py                       # both, 2 runs each
    python3 bench/sync.py --scenarios documents --runs 3

Writes bench/results/sync.md and sync.json. Uses bench/run.py's cluster and helpers.
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as b  # noqa: E402  (bench/run.py: Cluster, Proc, Bench, helpers)

# The admin API's token (the API is off without one).
TOKEN = "bench-admin-token-0123456789abcdef"

TARGETS = {
    "backfill_rows_per_s": ("backfill of 1,000,000 rows, rows/s", ">=", 50000),
    "backfill_batched_rows_per_s": ("the same backfill to a subscriber with batch = { max_events = 100 }, rows/s",
                                    ">=", 50000),
    "backfill_tps_ratio": ("pgbench TPS during the backfill / without", ">=", 0.8),
    "backfill_peak_rss_mb": ("peak RSS during the backfill (MB)", "<=", 150),
    "documents_per_s": ("documents/s from a bulk import of 100,000 products", ">=", 10000),
    "documents_peak_rss_mb": ("peak RSS while making them (MB)", "<=", 150),
}

ITEMS = """
CREATE TABLE items (
    id bigint PRIMARY KEY, sku text NOT NULL, title text NOT NULL, brand text, status text NOT NULL,
    amount numeric(12,2) NOT NULL, qty integer NOT NULL, attributes jsonb NOT NULL);
INSERT INTO items
SELECT i, 'SKU-' || i, 'Item ' || i || ' ' || md5(i::text), 'Brand ' || (i % 97), 'approved',
       10 + (i % 1000) / 100.0, i % 100, jsonb_build_object('color', 'c' || (i % 12), 'weight_kg', (i % 50) + 0.5)
FROM generate_series(1, {rows}) i;
VACUUM ANALYZE items;
CREATE PUBLICATION items FOR TABLE items;
"""

PGBENCH_ITEMS = """\\set id random(1, {rows})
UPDATE items SET qty = qty + 1 WHERE id = :id;
"""

DOCUMENT = '''
[[documents]]
name = "product.updated"
key = "product_id"
query = """
  select p.id, p.sku, p.title, p.brand, p.status, p.attributes,
         (select jsonb_agg(jsonb_build_object('currency', currency, 'amount', amount) order by currency)
            from prices where product_id = p.id) as prices,
         (select coalesce(sum(qty), 0) from stock where product_id = p.id) as stock
    from products p where p.id = $1"""
sources = [
  { table = "public.products", key = "id" },
  { table = "public.prices",   key = "product_id" },
  { table = "public.stock",    key = "product_id" },
]
window = "1s"
'''

IMPORT = ("BEGIN; UPDATE products SET updated_at = clock_timestamp(); "
          "UPDATE prices SET amount = amount + 1; COMMIT;")


class Sync(b.Bench):
    def __init__(self, args):
        args.sub_extra = ""
        super().__init__(args)

    def start(self, slot, url, rules, publication="bench", extra="", sub_extra=""):
        """walhook with one subscriber at `url` (more settings in `sub_extra`); returns (proc,
        admin, config path)."""
        admin = f"127.0.0.1:{b.free_port()}"
        cfg = (f'[source]\nurl = "{self.pg.url("bench")}"\nslot = "{slot}"\npublication = "{publication}"\n'
               f'[admin]\nlisten = "{admin}"\ntoken = "{TOKEN}"\n{extra}{rules}'
               f'[[subscribers]]\nname = "channel"\nurl = "{url}/hook"\nevents = ["*"]\nsecrets = ["{b.SECRET}"]\n'
               f'allow_private_targets = true\nmax_in_flight = 64\n{sub_extra}')
        path = self.work / f"walhook-{slot}.toml"
        path.write_text(cfg)
        proc = b.Proc(self.pinned(self.client_cpus) + [self.walhook, "run", "--config", str(path)], self.work / f"walhook-{slot}.log",
                      env={**os.environ, "RUST_LOG": self.args.log})
        self.wait("walhook ready", lambda: self.ready(admin, proc), 60)
        return proc, admin, path

    @staticmethod
    def ready(admin, proc):
        if proc.p.poll() is not None:
            sys.exit(f"walhook exited; see {proc.log_path}:\n{Path(proc.log_path).read_text()[-2000:]}")
        try:
            return "role=leader" in b.http_json(f"http://{admin}/readyz")
        except OSError:
            return False

    def pgbench_start(self, tag):
        """pgbench on items with per-second progress until stopped."""
        script = self.work / "items.sql"
        script.write_text(PGBENCH_ITEMS.format(rows=self.args.rows))
        os.chmod(script, 0o644)
        err = open(self.work / f"pgbench-{tag}.log", "w")
        p = subprocess.Popen(
            self.pinned(self.db_cpus) + [str(self.pg.bin / "pgbench"), "-n", "-h", "127.0.0.1", "-p", str(self.pg.port), "-U", "postgres",
             "-c", "4", "-j", "2", "-T", "3600", "-P", "1", "-f", str(script), "bench"],
            stdout=subprocess.DEVNULL, stderr=err, cwd=self.work,
            # pgbench must stop on the SIGINT below however this bench was started.
            preexec_fn=b.default_sigint)
        return p, err

    def pgbench_stop(self, started, tag):
        """Stops pgbench; the mean TPS of its whole seconds."""
        p, err = started
        p.send_signal(signal.SIGINT)
        p.wait(30)
        err.close()
        tps = [float(m.group(1)) for m in re.finditer(r"progress: [\d.]+ s, ([\d.]+) tps",
                                                        (self.work / f"pgbench-{tag}.log").read_text())]
        # The first second is warm-up.
        tps = tps[1:] or tps
        return sum(tps) / max(len(tps), 1)

    def backfill_list(self, path):
        out = subprocess.run([self.walhook, "backfill", "list", "--json", "--config", str(path)],
                             check=True, capture_output=True, text=True).stdout
        return json.loads(out)["backfills"]

    def backfill(self, path, admin, before, url):
        """One backfill of the subscriber: (rows, seconds) once it is done and delivered.
        Its status is polled twice a second on the admin API, as a console would: a
        `walhook backfill list` every 20 ms (this bench's first version) connected to the
        database 50 times a second, and those backends took a fifth of the database's CPU
        from pgbench."""
        subprocess.run([self.walhook, "backfill", "start", "--config", str(path), "--subscriber", "channel"],
                       check=True, stdout=subprocess.DEVNULL)

        def status():
            req = urllib.request.Request(f"http://{admin}/backfills", headers={"Authorization": f"Bearer {TOKEN}"})
            with urllib.request.urlopen(req, timeout=10) as r:
                return json.loads(r.read())["backfills"][0]

        self.wait("the backfill", lambda: status()["status"] == "done", 1800, every=0.5)
        bf = self.backfill_list(path)[0]
        self.wait("its rows delivered", lambda: b.http_json(url + "/stats")["count"] - before >= bf["rows_done"], 600)
        assert b.http_json(url + "/stats")["bad_signatures"] == 0
        return bf["rows_done"], bf["seconds"]

    def backfill_run(self, run):
        """A backfill alone (every core free), then pgbench alone and pgbench beside a
        second backfill with the database and pgbench on one half of the cores and walhook
        and its receiver on the other (as bench/run.py's cost scenario), so the TPS ratio
        is the backfill's cost to the source, not its clients' share of the CPUs."""
        n = os.cpu_count() or 2
        half = max(1, n // 2)
        rx, url = self.start_receiver()
        proc, admin, path = self.start("bench_bf", url, '[[events]]\ntable = "items"\n', publication="items",
                                       extra=self.args.backfill_extra.replace("\\n", "\n"))
        try:
            rows, secs = self.backfill(path, admin, 0, url)
            alone = rows / secs
            b.log(f"  run {run + 1}: alone {rows:,} rows in {secs:.1f}s = {alone:,.0f} rows/s")
            self.db_cpus, self.client_cpus = f"0-{half - 1}", (f"{half}-{n - 1}" if n > 1 else "0")
            self.pin_postgres(self.db_cpus)
            for p in (proc, rx):
                subprocess.run(["taskset", "-a", "-p", "-c", self.client_cpus, str(p.p.pid)], capture_output=True)
            base = self.pgbench_start(f"without-{run}")
            time.sleep(self.args.pgbench_seconds)
            without = self.pgbench_stop(base, f"without-{run}")
            time.sleep(2)
            before = b.http_json(url + "/stats")["count"]
            load = self.pgbench_start(f"during-{run}")
            time.sleep(2)
            rows, secs = self.backfill(path, admin, before, url)
            during = self.pgbench_stop(load, f"during-{run}")
            rate = rows / secs
            peak = proc.peak_rss_mb()
            b.log(f"  run {run + 1}: beside pgbench {rows:,} rows in {secs:.1f}s = {rate:,.0f} rows/s; "
                  f"pgbench {during:,.0f} TPS during vs {without:,.0f} without ({during / without:.2f}x); "
                  f"peak RSS {peak:.0f} MB")
            return alone, rate, during / without, peak, without, during
        finally:
            proc.stop()
            rx.stop()
            self.pg.drop_slot("bench_bf")
            self.pg.sql("DROP SCHEMA IF EXISTS walhook CASCADE")
            self.pin_postgres(f"0-{n - 1}")
            self.db_cpus = self.client_cpus = None

    def backfill_batched_run(self, run):
        """A backfill alone to a subscriber with `batch = { max_events = 100 }`, as a new
        channel taking the whole catalog would be set up: rows/s."""
        rx, url = self.start_receiver()
        proc, admin, path = self.start("bench_bfb", url, '[[events]]\ntable = "items"\n', publication="items",
                                       extra=self.args.backfill_extra.replace("\\n", "\n"),
                                       sub_extra="batch = { max_events = 100 }\n")
        try:
            rows, secs = self.backfill(path, admin, 0, url)
            b.log(f"  run {run + 1}: batched {rows:,} rows in {secs:.1f}s = {rows / secs:,.0f} rows/s, "
                  f"peak RSS {proc.peak_rss_mb():.0f} MB")
            return rows / secs
        finally:
            proc.stop()
            rx.stop()
            self.pg.drop_slot("bench_bfb")
            self.pg.sql("DROP SCHEMA IF EXISTS walhook CASCADE")

    def import_run(self, run, rules, expected, label):
        """The bulk import into one walhook; (events/s from commit to the last, peak RSS)."""
        rx, url = self.start_receiver()
        proc, admin, _ = self.start(f"bench_doc{run}", url, rules)
        try:
            time.sleep(1)
            self.pg.sql(IMPORT)
            committed = time.time()
            self.wait(f"{expected:,} {label}", lambda: b.http_json(url + "/stats")["count"] >= expected, 900)
            stats = b.http_json(url + "/stats")
            assert stats["bad_signatures"] == 0
            took = stats["last_us"] / 1e6 - committed
            peak = proc.peak_rss_mb()
            b.log(f"  run {run + 1}: {expected:,} {label} in {took:.1f}s after the commit = {expected / took:,.0f}/s, "
                  f"peak RSS {peak:.0f} MB")
            return expected / took, peak
        finally:
            proc.stop()
            rx.stop()
            self.pg.drop_slot(f"bench_doc{run}")
            self.pg.sql("DROP SCHEMA IF EXISTS walhook CASCADE")

    def run_all(self):
        t0 = time.monotonic()
        b.build_release()
        self.pg = b.Cluster(self.work)
        try:
            self.pg.sql("CREATE DATABASE bench", db="postgres")
            b.log("loading the dataset")
            self.pg.sql(b.SCHEMA)
            if "backfill" in self.args.scenarios:
                self.pg.sql(ITEMS.format(rows=self.args.rows))
                b.log(f"backfill of {self.args.rows:,} rows, pgbench beside it")
                runs = [self.backfill_run(r) for r in range(self.args.runs)]
                self.results["backfill_rows_per_s"] = self.record("backfill_rows_per_s", [r[0] for r in runs], "rows/s")
                self.record("backfill_rows_per_s_beside_pgbench", [r[1] for r in runs], "rows/s")
                self.results["backfill_tps_ratio"] = self.record("backfill_tps_ratio", [r[2] for r in runs], "x")
                self.results["backfill_peak_rss_mb"] = self.record("backfill_peak_rss_mb", [r[3] for r in runs], "MB")
                self.record("backfill_tps_without", [r[4] for r in runs], "TPS")
                self.record("backfill_tps_during", [r[5] for r in runs], "TPS")
                batched = [self.backfill_batched_run(r) for r in range(self.args.runs)]
                self.results["backfill_batched_rows_per_s"] = self.record(
                    "backfill_batched_rows_per_s", batched, "rows/s")
            if "documents" in self.args.scenarios:
                b.log("documents from a bulk import of 100,000 products (and plain rules beside it)")
                docs, plain, rss = [], [], []
                for r in range(self.args.runs):
                    rate, peak = self.import_run(r, DOCUMENT, 100_000, "documents")
                    docs.append(rate)
                    rss.append(peak)
                    rate, peak = self.import_run(r, b.PLAIN_RULES, 300_000, "row events")
                    plain.append(rate)
                self.results["documents_per_s"] = self.record("documents_per_s", docs, "documents/s")
                self.results["documents_peak_rss_mb"] = self.record("documents_peak_rss_mb", rss, "MB")
                self.record("import_row_events_per_s", plain, "events/s")
                self.results["documents_vs_row_events"] = self.record(
                    "documents_vs_row_events", [d / p for d, p in zip(docs, plain)], "x")
        finally:
            self.pg.stop()
        self.report(time.monotonic() - t0)

    def report(self, took):
        lines = ["# walhook channel sync", "",
                 f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} cores; took {took / 60:.1f} "
                 f"minutes. Command: `python3 bench/sync.py {' '.join(sys.argv[1:])}`. Median of {self.args.runs} "
                 "runs (min-max); ratios taken within each run.", "",
                 "| figure | median | min | max | target |", "|---|---:|---:|---:|---|"]
        for key, r in self.raw.items():
            target = TARGETS.get(key)
            t = f"{target[1]} {target[2]:,}" if target else ""
            if target:
                ok = r["median"] >= target[2] if target[1] == ">=" else r["median"] <= target[2]
                t += " met" if ok else " NOT met"
            name = target[0] if target else key
            lines.append(f"| {name} ({r['unit']}) | {r['median']:,.2f} | {r['min']:,.2f} | {r['max']:,.2f} | {t} |")
        text = "\n".join(lines) + "\n"
        print(text)
        out = Path(self.args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "sync.md").write_text(text)
        (out / "sync.json").write_text(json.dumps(self.raw, indent=1))
        b.log(f"written to {out}/sync.md")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenarios", type=lambda s: set(s.split(",")), default={"backfill", "documents"})
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--rows", type=int, default=1_000_000, help="rows the backfill reads")
    p.add_argument("--pgbench-seconds", type=int, default=20, help="pgbench alone, per run")
    p.add_argument("--backfill-extra", default="", help="TOML for the backfill's walhook, e.g. "
                   "'[backfill]\\nchunk_rows = 20000\\n'")
    p.add_argument("--out", default=str(b.BENCH / "results"))
    p.add_argument("--log", default="info")
    Sync(p.parse_args()).run_all()


if __name__ == "__main__":
    main()
