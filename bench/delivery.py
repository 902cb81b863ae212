#!/usr/bin/env python3
"""Delivery at scale: fan-out to many subscribers, many idle subscribers, and the drain of
a large backlog, each against a baseline measured in the same run.

- fan-out: a burst of changes delivered to 50 subscribers that each want every event
  (each its own bench receiver), against a burst 50 times larger to 1 subscriber (the
  same number of deliveries): deliveries/s of 50 against 1 (target >= 0.8x) and
  walhook's peak RSS with 50 (target <= 300 MB).
- idle: 1,000 subscribers and no changes: time from start to ready (target <= 2 s), RSS
  (target <= 150 MB) and CPU over 30 s (target <= 1% of a core), against 1 subscriber.
- batched: a burst of 1,000,000 changes already in the WAL (300,000 decoded in 1.5 s, too
  short: the rate swung 178,000-304,000/s), then walhook started on it:
  decoding alone, and delivering to one subscriber without batches, then with `batch = {
  max_events = 100 }`, to a receiver that answers each request after 2 ms (as one that
  writes what it gets to its database) and to one that answers at once: events/s batched
  against unbatched (target >= 3x with the 2 ms receiver; with the instant one, unbatched
  delivery is so near walhook's decode rate that the report gives the ceiling instead)
  and against walhook's decode rate (no delivery) of the same burst (target >= 0.5x).
- drain: a subscriber down (its receiver answers 500) through a burst of 200,000 events
  of about 8 kB each, which walhook spills; then the receiver heals. Drain rate (events/s
  from its first delivery after healing to its last) and walhook's peak RSS over the
  whole run (target <= 200 MB), against the same burst to a healthy subscriber.

    python3 bench/delivery.py                              # all four
    python3 bench/delivery.py --scenarios drain --drain-events 50000

Writes bench/results/delivery.md and delivery.json. Uses bench/run.py's cluster and
helpers.
"""

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as b  # noqa: E402  (bench/run.py: Cluster, Proc, Bench, helpers)

TARGETS = {
    "fanout_ratio": ("deliveries/s to 50 subscribers / to 1", ">=", 0.8),
    "fanout_peak_rss_mb": ("peak RSS fanning out to 50 (MB)", "<=", 300),
    "idle_rss_mb": ("RSS with 1,000 idle subscribers (MB)", "<=", 150),
    "idle_cpu_pct": ("CPU with 1,000 idle subscribers (% of a core)", "<=", 1.0),
    "idle_start_s": ("start to ready with 1,000 subscribers (s)", "<=", 2.0),
    "batched_ratio": ("events/s batched (max_events = 100) / unbatched, receiver answering in 2 ms", ">=", 3.0),
    "batched_decode_ratio": ("events/s batched / walhook's decode rate, receiver answering in 2 ms", ">=", 0.5),
    "batched_decode_ratio_instant": ("events/s batched / walhook's decode rate, receiver answering at once", ">=", 0.5),
    "drain_peak_rss_mb": ("peak RSS through a 200,000 x 8 kB backlog and its drain (MB)", "<=", 200),
}

DOCS = """
CREATE TABLE IF NOT EXISTS docs (id bigint PRIMARY KEY, body text NOT NULL);
CREATE OR REPLACE PROCEDURE fill_docs(n int, base bigint) LANGUAGE plpgsql AS $$
BEGIN
  FOR t IN 0 .. n / 100 - 1 LOOP
    INSERT INTO docs SELECT base + g, repeat(md5((base + g)::text), 250)
    FROM generate_series(t * 100 + 1, t * 100 + 100) g;
    COMMIT;
  END LOOP;
END $$;
"""
DOC_RULES = '[[events]]\ntable = "docs"\n'


class Delivery(b.Bench):
    def fanout(self):
        changes = self.args.fanout_changes
        one, many, rss = [], [], []
        for run in range(self.args.runs):
            # As many deliveries to one subscriber as to the 50 (a burst 50 times larger), so
            # both take long enough to measure (20,000 events to one take 0.3 s).
            rate, _ = self.end_to_end_run([["*"]], run, changes=changes * 50)
            one.append(rate)
            rate, peak = self.end_to_end_run([["*"]] * 50, run, factor=50, changes=changes)
            many.append(rate * 1.0)
            rss.append(peak)
        # end_to_end_run's rate is deliveries/s (events x subscribers over the time).
        a = self.record("fanout_one_deliveries_per_s", one, "deliveries/s")
        m = self.record("fanout_50_deliveries_per_s", many, "deliveries/s")
        self.results["fanout_ratio"] = m / a
        self.results["fanout_peak_rss_mb"] = self.record("fanout_peak_rss_mb", rss, "MB")

    def idle(self):
        rx, url = self.start_receiver()
        try:
            out = {1: [], 1000: []}
            for run in range(self.args.runs):
                for n in (1, 1000):
                    t = time.monotonic()
                    proc, _ = self.start_walhook(f"bench_idle{n}", [(f"s{i}", url, ["*"]) for i in range(n)])
                    ready = time.monotonic() - t
                    time.sleep(3)
                    cpu0, t0 = proc.cpu_seconds(), time.monotonic()
                    time.sleep(self.args.idle_seconds)
                    cpu = (proc.cpu_seconds() - cpu0) / (time.monotonic() - t0) * 100
                    rss = proc.rss_mb()
                    proc.stop()
                    self.reset_walhook(f"bench_idle{n}")
                    b.log(f"  run {run + 1}: {n} subscribers: ready in {ready:.2f}s, RSS {rss:.0f} MB, "
                          f"CPU {cpu:.2f}% of a core")
                    out[n].append((ready, rss, cpu))
            self.record("idle_one_rss_mb", [r[1] for r in out[1]], "MB")
            self.record("idle_one_cpu_pct", [r[2] for r in out[1]], "%")
            self.results["idle_start_s"] = self.record("idle_start_s", [r[0] for r in out[1000]], "s")
            self.results["idle_rss_mb"] = self.record("idle_rss_mb", [r[1] for r in out[1000]], "MB")
            self.results["idle_cpu_pct"] = self.record("idle_cpu_pct", [r[2] for r in out[1000]], "%")
        finally:
            rx.stop()

    def prewritten(self, run, tag, seed, extra_sub=None, delay_ms=0):
        """A burst written before walhook starts on its slot (made before the burst), then
        walhook from its start to the end of the burst: with `extra_sub` None, decoding
        alone (no delivery) until it confirms the burst's end; else delivering to one
        subscriber (`extra_sub` its settings) until the receiver has every event.
        Returns events (changes) per second."""
        changes = self.args.batch_changes
        slot = f"bench_b{tag}{run}"
        self.pg.sql(f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')")
        self.pg.sql(f"SET synchronous_commit = off; CALL burst({changes // 100}, {seed})")
        end = self.pg.lsn()
        rx = None
        try:
            if extra_sub is None:
                t = time.monotonic()
                proc, admin = self.start_walhook(slot, [("sink", "http://127.0.0.1:9", ["*"])], no_delivery=True)
                self.wait("walhook to decode the burst", lambda: self.confirmed_by(admin) >= end, 600)
                rate = changes / (time.monotonic() - t)
            else:
                rx, url = self.start_receiver(delay_ms=delay_ms)
                t = time.time()
                proc, _ = self.start_walhook(slot, [("sink", url, ["*"])], extra_sub=self.args.sub_extra + extra_sub)
                self.wait("every event delivered", lambda: b.http_json(url + "/stats")["count"] >= changes, 900)
                stats = b.http_json(url + "/stats")
                assert stats["bad_signatures"] == 0, f"{stats['bad_signatures']} bad signatures"
                rate = changes / (stats["last_us"] / 1e6 - t)
            proc.stop()
        finally:
            if rx:
                rx.stop()
            self.reset_walhook(slot)
        return rate

    def batched(self):
        """Every figure from the same kind of run: a burst already in the WAL, and walhook
        started on it, so delivery is compared with decoding on equal terms (a burst
        written while walhook runs would bound both by how fast the database writes it)."""
        decode = []
        rates = {}
        for run in range(self.args.runs):
            decode.append(self.prewritten(run, "d", run + 700))
            b.log(f"  run {run + 1}: walhook decodes {decode[-1]:,.0f} changes/s (no delivery)")
            for delay, suffix in ((2, ""), (0, "_instant")):
                for batch, extra in ((False, ""), (True, "batch = { max_events = 100 }\n")):
                    rate = self.prewritten(run, f"{'b' if batch else 'u'}{delay}", run + 700, extra, delay)
                    rates.setdefault((suffix, batch), []).append(rate)
                    b.log(f"  run {run + 1}: receiver answering after {delay} ms, "
                          f"{'batched' if batch else 'unbatched'}: {rate:,.0f} events/s")
        d = self.record("batched_decode_changes_per_s", decode, "changes/s")
        for suffix in ("", "_instant"):
            one = self.record(f"batched_unbatched_events_per_s{suffix}", rates[(suffix, False)], "events/s")
            many = self.record(f"batched_events_per_s{suffix}", rates[(suffix, True)], "events/s")
            self.results[f"batched_ratio{suffix}"] = many / one
            self.results[f"batched_decode_ratio{suffix}"] = many / d

    def drain_run(self, run, down):
        """The burst to one subscriber, down through it (then healed) or healthy: the rate
        of its delivery and walhook's peak RSS."""
        n = self.args.drain_events
        rx, url = self.start_receiver(fail=down)
        slot = f"bench_drain{run}{'d' if down else 'h'}"
        proc, admin = self.start_walhook(slot, [("sink", url, ["*"])], rules=DOC_RULES)
        try:
            self.pg.sql("TRUNCATE docs")
            b.http_json(url + "/reset", method="POST")
            start = time.time()
            self.pg.sql(f"CALL fill_docs({n}, 0)")
            end = self.pg.lsn()
            if down:
                self.wait("the burst spilled", lambda: self.confirmed_by(admin) >= end, 1800)
                spilled = time.time() - start
                b.log(f"  run {run + 1}: {n:,} events spilled in {spilled:.1f}s, RSS so far {proc.peak_rss_mb():.0f} MB")
                b.http_json(url + "/reset", method="POST")
                b.http_json(url + "/heal", method="POST")
            self.wait("every event delivered", lambda: b.http_json(url + "/stats")["count"] >= n, 1800)
            s = b.http_json(url + "/stats")
            assert s["bad_signatures"] == 0
            first = start if not down else s["first_us"] / 1e6
            rate = n / (s["last_us"] / 1e6 - first)
            peak = proc.peak_rss_mb()
            what = "drained after the outage" if down else "delivered healthy"
            b.log(f"  run {run + 1}: {n:,} events of ~8 kB {what} at {rate:,.0f}/s, peak RSS {peak:.0f} MB")
            return rate, peak
        finally:
            proc.stop()
            rx.stop()
            self.reset_walhook(slot)

    def drain(self):
        self.pg.sql(DOCS)
        healthy, drained, rss, rss_h = [], [], [], []
        for run in range(self.args.runs):
            rate, peak = self.drain_run(run, down=False)
            healthy.append(rate)
            rss_h.append(peak)
            rate, peak = self.drain_run(run, down=True)
            drained.append(rate)
            rss.append(peak)
        h = self.record("drain_healthy_events_per_s", healthy, "events/s")
        d = self.record("drain_events_per_s", drained, "events/s")
        self.record("drain_healthy_peak_rss_mb", rss_h, "MB")
        self.results["drain_ratio"] = d / h
        self.results["drain_peak_rss_mb"] = self.record("drain_peak_rss_mb", rss, "MB")

    def run_all(self):
        t0 = time.monotonic()
        b.build_release()
        self.pg = b.Cluster(self.work)
        try:
            self.pg.sql("CREATE DATABASE bench", db="postgres")
            self.pg.sql(b.SCHEMA)
            for s in self.args.scenarios.split(","):
                b.log(f"scenario {s}")
                getattr(self, s)()
            self.report(time.monotonic() - t0)
        finally:
            self.pg.stop()

    def report(self, took):
        lines = [
            "# Delivery at scale",
            "",
            f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {self.args.runs} run(s), {took:.0f} s in all. "
            f"Command: `python3 bench/delivery.py --scenarios {self.args.scenarios} --runs {self.args.runs}`.",
            "",
            "| target | measured | goal | |",
            "|---|---:|---:|---|",
        ]
        for key, (label, op, goal) in TARGETS.items():
            if key not in self.results:
                continue
            v = self.results[key]
            ok = v >= goal if op == ">=" else v <= goal
            lines.append(f"| {label} | {v:,.2f} | {op} {goal} | {'met' if ok else 'NOT MET'} |")
        lines += ["", "| figure | median | min | max | unit |", "|---|---:|---:|---:|---|"]
        for key, r in self.raw.items():
            lines.append(f"| {key} | {r['median']:,.2f} | {r['min']:,.2f} | {r['max']:,.2f} | {r['unit']} |")
        if "batched_ratio_instant" in self.results:
            # Batches cannot deliver faster than walhook decodes; against a receiver that
            # answers at once, unbatched delivery is a large share of that rate already.
            ratio, share = self.results["batched_ratio_instant"], self.results["batched_decode_ratio_instant"]
            ceiling = ratio / share
            lines.append(f"\nReceiver answering at once: unbatched delivery runs at {1 / ceiling:.2f}x the decode "
                         f"rate, so batches can give at most {ceiling:.2f}x (decode rate / unbatched); they gave "
                         f"{ratio:.2f}x. The 3x goal is measured against the 2 ms receiver above.")
        if "drain_ratio" in self.results:
            lines.append(f"\nDrain rate after the outage / delivery rate while healthy: {self.results['drain_ratio']:.2f}x")
        text = "\n".join(lines) + "\n"
        print(text)
        out = Path(self.args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "delivery.md").write_text(text)
        (out / "delivery.json").write_text(json.dumps({"results": self.results, "raw": self.raw}, indent=2))
        b.log(f"written to {out}/delivery.md")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenarios", default="fanout,idle,batched,drain")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--fanout-changes", type=int, default=20_000)
    p.add_argument("--drain-events", type=int, default=200_000)
    p.add_argument("--batch-changes", type=int, default=1_000_000)
    p.add_argument("--idle-seconds", type=float, default=30)
    p.add_argument("--sub-extra", default="")
    p.add_argument("--log", default="warn")
    p.add_argument("--out", default=str(b.BENCH / "results"))
    Delivery(p.parse_args()).run_all()


if __name__ == "__main__":
    main()
