#!/usr/bin/env python3
"""The console's pages at scale: 200 subscribers and 100,000 dead letters.

Each page of the console is the admin API requests it makes on every refresh (every 2 s),
made here with a logged-in session cookie, as the browser makes them:

    overview      GET /overview
    subscribers   GET /subscribers
    deliveries    GET /deliveries?status=dead&limit=50&count=true  (+ /subscribers)
    last page     the same at the last offset (the oldest 50)
    filtered      the same for one subscriber and one event type
    delivery      GET /deliveries/{subscriber}/{id}  (body and attempts)
    backfills     GET /backfills
    config        GET /config

The baseline is the same walhook with 3 subscribers and no dead letter, measured in the
same run; the dead letters are written straight into walhook's state tables (as walhook
writes them: 1 kB bodies and an attempt history), spread over the subscribers. Per page:
the median and p95 of `--requests` requests, the ratio to the baseline, and the target
(p95 under 250 ms).

    python3 bench/console.py                  # 200 subscribers, 100,000 dead letters
    python3 bench/console.py --subscribers 50 --dead 10000 --requests 20

Writes bench/results/console.md and console.json. Uses bench/run.py's cluster and helpers.
"""

import argparse
import json
import statistics
import sys
import time
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as b  # noqa: E402  (bench/run.py: Cluster, Proc, Bench, helpers)

TOKEN = "bench-console-token-7c1d0e9a4b"
P95_TARGET_MS = 250

DEAD_LETTERS = """
INSERT INTO walhook.dead_letters
  (slot, subscriber, lsn, seq, event_id, event_type, ordering_key, body, attempts, reason, died_at, history)
SELECT '{slot}', 'sub-' || (g % {subs}), 1000000 + g, 0, 'evt_bench_' || g,
       CASE WHEN g % 3 = 0 THEN 'price.changed' ELSE 'products.updated' END,
       'public.products|{{"id":' || (g % 5000) || '}}',
       convert_to(json_build_object('type', 'products.updated', 'timestamp', now(),
                  'data', json_build_object('table', 'public.products', 'op', 'update',
                  'new', json_build_object('id', g % 5000, 'description', repeat('x', 900))))::text, 'UTF8'),
       5, 'HTTP 500: internal error', now() - (g || ' seconds')::interval,
       '[{{"at":"2026-12-01T00:00:00Z","status":500,"ms":12,"error":"HTTP 500: internal error"}}]'::jsonb
FROM generate_series(1, {n}) g;
VACUUM ANALYZE walhook.dead_letters;
"""


class Session:
    """An admin API client with the session cookie of a console login."""

    def __init__(self, admin):
        self.base = f"http://{admin}"
        form = urllib.parse.urlencode({"token": TOKEN}).encode()

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *a, **k):
                return None

        opener = urllib.request.build_opener(NoRedirect)
        try:
            opener.open(urllib.request.Request(self.base + "/login", data=form), timeout=10)
            sys.exit("login did not answer 303")
        except urllib.error.HTTPError as e:
            if e.code != 303:
                sys.exit(f"login answered {e.code}")
            self.cookie = e.headers["set-cookie"].split(";")[0]

    def get(self, path):
        req = urllib.request.Request(self.base + path, headers={"cookie": self.cookie})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())


class Console(b.Bench):
    def pages(self, s, dead):
        """The pages as lists of requests."""
        pages = {
            "overview": ["/overview"],
            "subscribers": ["/subscribers"],
            "deliveries": ["/deliveries?status=dead&limit=50&offset=0&count=true", "/subscribers"],
            "last page": [f"/deliveries?status=dead&limit=50&offset={max(0, dead - 50)}&count=true", "/subscribers"],
            "filtered": ["/deliveries?status=dead&limit=50&offset=0&count=true&subscriber=sub-7&type=price.changed",
                         "/subscribers"],
            "backfills": ["/backfills"],
            "config": ["/config"],
        }
        first = s.get("/deliveries?status=dead&limit=1")["deliveries"]
        if first:
            d = first[0]
            pages["delivery"] = [f"/deliveries/{urllib.parse.quote(d['subscriber'])}/{urllib.parse.quote(d['id'])}"]
        return pages

    def measure(self, admin, dead):
        s = Session(admin)
        out = {}
        for name, requests in self.pages(s, dead).items():
            for path in requests:  # warm up
                s.get(path)
            took = []
            for _ in range(self.args.requests):
                t = time.perf_counter()
                for path in requests:
                    s.get(path)
                took.append((time.perf_counter() - t) * 1000)
            took.sort()
            out[name] = {"p50": statistics.median(took), "p95": took[int(len(took) * 0.95) - 1]}
        return out

    def setup(self, slot, n_subs, dead, rx_url):
        subs = [(f"sub-{i}", rx_url, ["*"]) for i in range(n_subs)]
        proc, admin = self.start_walhook(slot, subs, admin_extra=f'token = "{TOKEN}"\n')
        if dead:
            b.log(f"  writing {dead:,} dead letters over {n_subs} subscribers")
            self.pg.sql(DEAD_LETTERS.format(slot=slot, subs=n_subs, n=dead))
        time.sleep(6)  # the console's first samples
        return proc, admin

    def run_all(self):
        t0 = time.monotonic()
        b.build_release()
        self.pg = b.Cluster(self.work)
        rx = None
        try:
            self.pg.sql("CREATE DATABASE bench", db="postgres")
            self.pg.sql(b.SCHEMA)
            rx, url = self.start_receiver()
            results = {}
            for tag, n_subs, dead in [("baseline", 3, 0), ("scale", self.args.subscribers, self.args.dead)]:
                b.log(f"{tag}: {n_subs} subscribers, {dead:,} dead letters")
                proc, admin = self.setup(f"console_{tag}", n_subs, dead, url)
                try:
                    results[tag] = self.measure(admin, dead)
                    results[tag]["rss_mb"] = proc.rss_mb()
                finally:
                    proc.stop()
                    self.pg.drop_slot(f"console_{tag}")
                    self.pg.sql("DROP SCHEMA IF EXISTS walhook CASCADE")
            self.report(results, time.monotonic() - t0)
        finally:
            if rx:
                rx.stop()
            self.pg.stop()

    def report(self, results, took):
        base, scale = results["baseline"], results["scale"]
        lines = [
            "# Console pages at scale",
            "",
            f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {self.args.subscribers} subscribers and "
            f"{self.args.dead:,} dead letters against 3 subscribers and none (baseline, same run); "
            f"{self.args.requests} requests per page with a console session; {took:.0f} s in all. "
            "Command: `python3 bench/console.py`.",
            "",
            "| page | baseline p50 ms | at scale p50 ms | at scale p95 ms | p50 ratio | target p95 | |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        ok_all = True
        for page in scale:
            if page == "rss_mb":
                continue
            s, bs = scale[page], base.get(page, {"p50": float("nan")})
            ok = s["p95"] <= P95_TARGET_MS
            ok_all &= ok
            lines.append(f"| {page} | {bs['p50']:.1f} | {s['p50']:.1f} | {s['p95']:.1f} | "
                         f"{s['p50'] / bs['p50']:.1f}x | ≤ {P95_TARGET_MS} | {'met' if ok else 'NOT MET'} |")
        lines += ["", f"walhook RSS: {base['rss_mb']:.0f} MB (baseline), {scale['rss_mb']:.0f} MB at scale.", ""]
        text = "\n".join(lines)
        print(text)
        out = Path(self.args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "console.md").write_text(text)
        (out / "console.json").write_text(json.dumps(results, indent=2))
        b.log(f"written to {out}/console.md; every page within target: {ok_all}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subscribers", type=int, default=200)
    p.add_argument("--dead", type=int, default=100_000)
    p.add_argument("--requests", type=int, default=40)
    p.add_argument("--log", default="warn")
    p.add_argument("--out", default=str(b.BENCH / "results"))
    Console(p.parse_args()).run_all()


if __name__ == "__main__":
    main()
