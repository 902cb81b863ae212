#!/usr/bin/env python3
"""walhook soak: a steady workload for a long time (10 minutes by default) with one
healthy subscriber and one flaky one (20% of its requests answered 500). Every 30 s it
prints walhook's RSS, the size and row count of every table in the `walhook` schema, the
spill backlog and the deliveries so far; at the end it compares the last third of the
run with the middle third and says whether both stayed flat.

    python3 bench/soak.py [--minutes 10] [--every 30]

Uses the cluster, receiver and helpers of bench/run.py (see bench/README.md).
"""

import argparse
import json
import statistics
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as b  # noqa: E402  (bench/run.py: Cluster, Proc, helpers)

# Retries of the flaky subscriber: exponential from 1 s to 30 s. The default schedule
# retries after 5 s, 5 min, 30 min, ...: a 10-minute run would then measure that horizon
# (events waiting half an hour pile up by design) rather than a steady state.
FLAKY = 'retry_initial = "1s"\nretry_max = "30s"\nmax_attempts = 12\n'

TABLES_SQL = """
SELECT c.relname, pg_total_relation_size(c.oid), coalesce(s.n_live_tup, 0), coalesce(s.n_dead_tup, 0)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE n.nspname = 'walhook' AND c.relkind = 'r' ORDER BY 1
"""


class Soak:
    def __init__(self, args):
        self.args = args
        self.bench = b.Bench(argparse.Namespace(scenarios=[], runs=1, out=None, changes=0, pin=False))
        self.samples = []

    def steady(self):
        """The workload: bench/run.py's `steady`, 1,000 changes/s, for the whole run."""
        self.bench.pg.sql(f"CALL steady({int(self.args.minutes * 60)})")

    def sample(self, walhook, admin, receivers, t):
        rows = self.bench.pg.sql(TABLES_SQL)
        tables = {}
        for line in rows.splitlines():
            name, size, live, dead = line.split("|")
            tables[name] = {"bytes": int(size), "live": int(live), "dead": int(dead)}
        counts = self.bench.pg.sql(
            "SELECT (SELECT count(*) FROM walhook.spill), (SELECT count(*) FROM walhook.spill_chunks), "
            "(SELECT count(*) FROM walhook.dead_letters)")
        spill, chunks, dead = (int(x) for x in counts.split("|"))
        got = {name: b.http_json(url + "/stats")["count"] for name, (_, url) in receivers.items()}
        s = {
            "t": round(t),
            "rss_mb": round(walhook.rss_mb(), 1),
            "state_bytes": sum(v["bytes"] for v in tables.values()),
            "tables": tables,
            "spill_rows": spill,
            "spill_chunks": chunks,
            "dead_letters": dead,
            "requests": got,
            "spilling": b.metric(admin, 'walhook_lane_spilling{subscriber="flaky"}'),
        }
        self.samples.append(s)
        b.log(f"t={s['t']:>4}s  rss {s['rss_mb']:6.1f} MB  walhook tables {s['state_bytes'] / 1024:8.0f} kB  "
              f"spill rows {spill:>6}  chunks {chunks:>4}  dead {dead:>3}  "
              f"requests healthy {got['healthy']:>8,}  flaky {got['flaky']:>8,}")

    def verdict(self):
        n = len(self.samples)
        mid = self.samples[n // 3: 2 * n // 3]
        last = self.samples[2 * n // 3:]
        out = {}
        for key in ("rss_mb", "state_bytes"):
            a = statistics.mean(s[key] for s in mid)
            z = statistics.mean(s[key] for s in last)
            out[key] = {"middle": a, "last": z, "ratio": z / a if a else 1.0}
        # Flat: the last third within 15% of the middle third (noise, autovacuum timing).
        out["flat"] = all(out[k]["ratio"] <= 1.15 for k in ("rss_mb", "state_bytes"))
        return out

    def run(self):
        args = self.args
        b.log("building walhook and the receiver (release)")
        b.build_release()
        bench = self.bench
        bench.pg = b.Cluster(bench.work)
        walhook = None
        receivers = {}
        try:
            bench.pg.sql("CREATE DATABASE bench", db="postgres")
            b.log("loading the dataset")
            bench.pg.sql(b.SCHEMA)
            receivers["healthy"] = bench.start_receiver()
            receivers["flaky"] = bench.start_receiver(fail_rate=0.2)
            walhook, admin = self.start_walhook(receivers)
            writer = threading.Thread(target=self.steady, daemon=True)
            start = time.monotonic()
            writer.start()
            b.log(f"soaking for {args.minutes} minutes at 1,000 changes/s; flaky subscriber: 20% 500s")
            while writer.is_alive():
                time.sleep(args.every - ((time.monotonic() - start) % args.every))
                self.sample(walhook, admin, receivers, time.monotonic() - start)
            writer.join()
            result = self.verdict()
            self.report(result)
            return 0 if result["flat"] else 1
        finally:
            if walhook:
                walhook.stop()
            for proc, _ in receivers.values():
                proc.stop()
            bench.pg.stop()

    def start_walhook(self, receivers):
        admin = f"127.0.0.1:{b.free_port()}"
        subs = ""
        for name, (_, url) in receivers.items():
            extra = FLAKY if name == "flaky" else ""
            subs += (f'[[subscribers]]\nname = "{name}"\nurl = "{url}/hook"\nevents = ["*"]\n'
                     f'secrets = ["{b.SECRET}"]\nallow_private_targets = true\n{extra}\n')
        cfg = (f'[source]\nurl = "{self.bench.pg.url("bench")}"\nslot = "soak"\npublication = "bench"\n'
               f'[admin]\nlisten = "{admin}"\n[[events]]\ntable = "stock"\nname = "stock.changed"\n' + subs)
        path = self.bench.work / "walhook-soak.toml"
        path.write_text(cfg)
        proc = b.Proc([self.bench.walhook, "run", "--config", str(path)], self.bench.work / "walhook-soak.log")
        for _ in range(600):
            try:
                if "role=leader" in b.http_json(f"http://{admin}/readyz"):
                    break
            except OSError:
                pass
            time.sleep(0.1)
        else:
            raise RuntimeError(f"walhook did not become ready; see {self.bench.work / 'walhook-soak.log'}")
        return proc, admin

    def report(self, result):
        lines = [
            "# walhook soak",
            "",
            f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {self.args.minutes} minutes at "
            "1,000 changes/s of `stock` (`steady`); subscribers `healthy` and `flaky` (20% of "
            "requests answered 500, retries 1 s doubling to 30 s). Command: "
            f"`python3 bench/soak.py --minutes {self.args.minutes}`.",
            "",
            "| t (s) | walhook RSS (MB) | walhook tables (kB) | spill rows | chunks | dead letters | healthy requests | flaky requests |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for s in self.samples:
            lines.append(f"| {s['t']} | {s['rss_mb']:.1f} | {s['state_bytes'] / 1024:.0f} | {s['spill_rows']} | "
                         f"{s['spill_chunks']} | {s['dead_letters']} | {s['requests']['healthy']:,} | "
                         f"{s['requests']['flaky']:,} |")
        r = result
        lines += [
            "",
            f"Last third vs middle third: RSS {r['rss_mb']['last']:.1f} / {r['rss_mb']['middle']:.1f} MB "
            f"= {r['rss_mb']['ratio']:.2f}x; walhook tables {r['state_bytes']['last'] / 1024:.0f} / "
            f"{r['state_bytes']['middle'] / 1024:.0f} kB = {r['state_bytes']['ratio']:.2f}x. "
            f"Flat (both within 1.15x): **{'yes' if r['flat'] else 'no'}**.",
            "",
            "Per table at the end (bytes, live rows, dead rows):",
            "",
        ]
        for name, t in self.samples[-1]["tables"].items():
            lines.append(f"- `walhook.{name}`: {t['bytes']:,} B, {t['live']} live, {t['dead']} dead")
        text = "\n".join(lines) + "\n"
        print(text)
        out = Path(self.args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "soak.md").write_text(text)
        (out / "soak.json").write_text(json.dumps({"samples": self.samples, "verdict": r}, indent=1))
        b.log(f"written to {out}/soak.md")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--every", type=float, default=30, help="seconds between samples")
    p.add_argument("--out", default=str(b.BENCH / "results"))
    sys.exit(Soak(p.parse_args()).run())


if __name__ == "__main__":
    main()
