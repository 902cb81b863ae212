#!/usr/bin/env python3
"""walhook with large rows: what one big row costs in memory, and whether it is given back.

For each row kind (a `text` column, a `jsonb` document of product records) and size
(50 and 200 MiB by default) it starts a walhook with one subscriber (the bench receiver)
and writes one row, either to a healthy subscriber or to a paused one (its lane spills
the event to the state database; then it is resumed and the event delivered from the
spill log). Last, five 200 MiB text rows to a paused subscriber (issue 19's case).

Every scenario runs in a fresh walhook process, first with the baseline binary (the
commit before the large-row work, built from a git worktree into the same target
directory) and then with this tree's, so both see the same machine minutes apart. Per
scenario it prints:

- idle: RSS of walhook before the rows (the baseline of the run);
- peak / row: (VmHWM - idle) / bytes of the rows, the memory the rows cost at their peak;
- after: RSS 5 s after the rows were done (delivered, or durably spilled) minus idle, in
  MiB and per byte of the rows.

    python3 bench/bigrows.py                      # every scenario, baseline and current
    python3 bench/bigrows.py --sizes 50 --kinds text --modes healthy --baseline none

Writes bench/results/bigrows.md and bigrows.json. Uses bench/run.py's cluster and helpers
(see bench/README.md); the cluster needs about 2 GB of memory for the 200 MiB jsonb.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as b  # noqa: E402  (bench/run.py: Cluster, Proc, helpers)

MIB = 1024 * 1024
TOKEN = "bench-admin-token-0123456789"
# The commit before the large-row work (issue 19): the baseline binary.
BASELINE_REV = "a72d927"

# Logged by every paused scenario: not reported.
EXPECTED_WARNING = "the subscriber is paused or disabled"

SCHEMA = """
CREATE TABLE big_text (id int PRIMARY KEY, body text);
CREATE TABLE big_json (id int PRIMARY KEY, doc jsonb);
CREATE PUBLICATION big FOR TABLE big_text, big_json;
"""

# Rows are built by the server: a text of md5 hex digits, and a jsonb array of product
# records ({"id": 1, "sku": "SKU-1", "price": 1.5, "title": "<md5>"}, about 98 bytes of
# text each) whose text is about the size asked for. jsonb holds at most 256 MiB of
# binary array elements, about 1.2 times their text here: 200 MiB of text is near the top.
ROW_SQL = {
    "text": "INSERT INTO big_text VALUES ({id}, (SELECT string_agg(md5(i::text), '') "
            "FROM generate_series(1, {n}) i))",
    "jsonb": "INSERT INTO big_json VALUES ({id}, (SELECT ('[' || string_agg(format("
             "'{{\"id\": %s, \"sku\": \"SKU-%s\", \"price\": %s.5, \"title\": \"%s\"}}', i, i, i % 1000, "
             "md5(i::text)), ', ') || ']')::jsonb FROM generate_series(1, {n}) i))",
}
ITEM_BYTES = {"text": 32, "jsonb": 98}
SIZE_SQL = {
    "text": "SELECT octet_length(body) FROM big_text WHERE id = {id}",
    "jsonb": "SELECT octet_length(doc::text) FROM big_json WHERE id = {id}",
}


def build(tree, target):
    """Builds walhook in `tree` into `target` (release); returns the binary's path."""
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "walhook", "--target-dir", str(target)],
                   cwd=tree, check=True)
    return target / "release" / "walhook"


class BigRows:
    def __init__(self, args):
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="walhook-bigrows-"))
        os.chmod(self.work, 0o755)
        self.pg = None
        self.next_id = 1
        self.results = []
        self.failures = []

    def binaries(self):
        target = b.ROOT / "target"
        bins = []
        if os.path.isfile(self.args.baseline):
            bins.append(("baseline", self.args.baseline))
        elif self.args.baseline != "none":
            tree = self.work / "baseline-tree"
            b.log(f"building the baseline ({self.args.baseline}) from a git worktree")
            subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(tree), self.args.baseline],
                           cwd=b.ROOT, check=True)
            try:
                built = build(tree, target)
                keep = target / "release" / "walhook-bigrows-baseline"
                shutil.copy2(built, keep)
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=b.ROOT, check=True)
            bins.append(("baseline", str(keep)))
        b.log("building this tree")
        bins.append(("current", str(build(b.ROOT, target))))
        subprocess.run(["cargo", "build", "--release", "--quiet", "--target-dir", str(target)],
                       cwd=b.BENCH / "receiver", check=True)
        return bins

    def start_walhook(self, binary, name, receiver_url):
        admin = f"127.0.0.1:{b.free_port()}"
        cfg = (f'[source]\nurl = "{self.pg.url("bench")}"\nslot = "big"\npublication = "big"\n'
               f'[admin]\nlisten = "{admin}"\ntoken = "{TOKEN}"\n'
               '[[events]]\ntable = "big_text"\n[[events]]\ntable = "big_json"\n'
               f'[[subscribers]]\nname = "big"\nurl = "{receiver_url}/hook"\nevents = ["*"]\n'
               f'secrets = ["{b.SECRET}"]\nallow_private_targets = true\ntimeout = "120s"\n')
        path = self.work / f"walhook-{name}.toml"
        path.write_text(cfg)
        proc = b.Proc([binary, "run", "--config", str(path)], self.work / f"walhook-{name}.log",
                      env={**os.environ, "RUST_LOG": self.args.log})
        for _ in range(600):
            try:
                if "role=leader" in b.http_json(f"http://{admin}/readyz"):
                    return proc, admin, path
            except OSError:
                if proc.p.poll() is not None:
                    break
            time.sleep(0.1)
        sys.exit(f"walhook did not start; see {proc.log_path}")

    def cli(self, binary, config, *args):
        subprocess.run([binary, "subscribers", *args, "--config", str(config), "big"], check=True,
                       stdout=subprocess.DEVNULL)

    def wait(self, what, cond, timeout):
        """Waits for `cond`; False (and a log line) when it did not hold within `timeout`."""
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                b.log(f"  {what}: not within {timeout} s")
                return False
            time.sleep(0.1)
        return True

    def settle(self, proc):
        """RSS 5 s after the rows were done (MiB)."""
        time.sleep(5)
        return proc.rss_mb()

    def write_rows(self, kind, size_mib, count):
        """Writes `count` rows of about `size_mib`, one transaction each; returns their bytes
        and the LSN after the last."""
        total = 0
        for _ in range(count):
            row_id = self.next_id
            self.next_id += 1
            n = size_mib * MIB // ITEM_BYTES[kind]
            self.pg.sql(ROW_SQL[kind].format(id=row_id, n=n))
            total += int(self.pg.sql(SIZE_SQL[kind].format(id=row_id)))
        return total, self.pg.lsn()

    def scenario(self, label, binary, kind, size_mib, mode, count=1):
        rx, url = self.bench_receiver()
        proc, admin, config = self.start_walhook(binary, f"{label}-{count}x{kind}-{size_mib}-{mode}", url)
        try:
            if mode == "paused":
                self.cli(binary, config, "pause")
                self.wait("the lane to spill", lambda: b.metric(
                    admin, 'walhook_subscriber_stopped{subscriber="big"}') == 1, 30)
            time.sleep(2)
            idle = proc.rss_mb()
            rows, lsn = self.write_rows(kind, size_mib, count)
            done = lambda: self.pg.confirmed("big") >= lsn  # noqa: E731
            r = {"binary": label, "kind": kind, "size_mib": size_mib, "rows": count, "mode": mode,
                 "row_bytes": rows, "idle_mb": round(idle, 1)}
            if mode == "healthy":
                r["done"] = self.wait("delivery", lambda: b.http_json(url + "/stats")["count"] >= count and done(),
                                      self.args.timeout)
            else:
                r["done"] = self.wait("the spill write", done, self.args.timeout)
            r["peak_mb"] = round(proc.peak_rss_mb(), 1)
            r["after_mb"] = round(self.settle(proc), 1)
            if mode == "paused" and r["done"]:
                self.cli(binary, config, "resume")
                r["resumed"] = self.wait("delivery after resume",
                                         lambda: b.http_json(url + "/stats")["count"] >= count, self.args.timeout)
                r["resume_peak_mb"] = round(proc.peak_rss_mb(), 1)
                r["resume_after_mb"] = round(self.settle(proc), 1)
            errors = [line for line in Path(proc.log_path).read_text(errors="replace").splitlines()
                      if ("WARN" in line or "ERROR" in line) and EXPECTED_WARNING not in line]
            r["log_warnings"] = errors[:5]
            self.results.append(r)
            b.log("  " + self.describe(r))
        finally:
            proc.stop()
            rx.stop()
            self.pg.drop_slot("big")
            self.pg.sql("DROP SCHEMA IF EXISTS walhook CASCADE; TRUNCATE big_text, big_json;")
        return r

    def try_scenario(self, label, binary, kind, size_mib, mode, count=1):
        """A scenario; one that fails is reported as such and the run goes on."""
        try:
            self.scenario(label, binary, kind, size_mib, mode, count)
        except Exception as e:  # noqa: BLE001  (any failure is reported, not fatal)
            b.log(f"  {label} {count} x {kind} {size_mib} MiB {mode}: failed: {e}")
            self.failures.append(f"{label} {count} x {kind} {size_mib} MiB {mode}: {str(e)[:300]}")

    def bench_receiver(self):
        port = b.free_port()
        receiver = str(b.ROOT / "target" / "release" / "walhook-bench-receiver")
        proc = b.Proc([receiver, "--listen", f"127.0.0.1:{port}", "--secret", b.SECRET, "--sample", "1"],
                      self.work / f"receiver-{port}.log")
        url = f"http://127.0.0.1:{port}"
        self.wait("the receiver", lambda: self.answers(url), 10)
        return proc, url

    @staticmethod
    def answers(url):
        try:
            b.http_json(url + "/stats")
            return True
        except OSError:
            return False

    @staticmethod
    def ratios(r):
        rows = r["row_bytes"] / MIB
        out = {"peak": (r["peak_mb"] - r["idle_mb"]) / rows, "after": (r["after_mb"] - r["idle_mb"]) / rows}
        if "resume_peak_mb" in r:
            out["resume_peak"] = (r["resume_peak_mb"] - r["idle_mb"]) / rows
            out["resume_after"] = (r["resume_after_mb"] - r["idle_mb"]) / rows
        return out

    def describe(self, r):
        q = self.ratios(r)
        s = (f"{r['binary']:8} {r['rows']} x {r['kind']:5} {r['row_bytes'] / r['rows'] / MIB:5.0f} MiB "
             f"{r['mode']:7}: idle {r['idle_mb']:6.1f} MiB, peak {r['peak_mb']:7.1f} MiB = {q['peak']:.2f}x rows, "
             f"after {r['after_mb']:7.1f} MiB (+{q['after']:.2f}x rows)")
        if not r["done"]:
            s += " [NOT DONE]"
        if "resume_peak_mb" in r:
            s += (f"; resumed: peak {r['resume_peak_mb']:.1f} MiB = {q['resume_peak']:.2f}x, after "
                  f"{r['resume_after_mb']:.1f} MiB (+{q['resume_after']:.2f}x)")
            if not r["resumed"]:
                s += " [NOT DELIVERED]"
        return s

    def run(self):
        t0 = time.monotonic()
        bins = self.binaries()
        self.pg = b.Cluster(self.work)
        try:
            self.pg.sql("CREATE DATABASE bench", db="postgres")
            self.pg.sql(SCHEMA)
            for kind in self.args.kinds:
                for size in self.args.sizes:
                    for mode in self.args.modes:
                        b.log(f"{kind} {size} MiB, {mode} subscriber")
                        for label, binary in bins:
                            self.try_scenario(label, binary, kind, size, mode)
            if self.args.five:
                b.log("five 200 MiB text rows, paused subscriber")
                for label, binary in bins:
                    self.try_scenario(label, binary, "text", 200, "paused", count=5)
        finally:
            self.pg.stop()
        self.report(time.monotonic() - t0)
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)

    def report(self, took):
        lines = [
            "# walhook with large rows",
            "",
            f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} cores, "
            f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB; took {took / 60:.1f} minutes. "
            f"Command: `python3 bench/bigrows.py {' '.join(sys.argv[1:])}`. Baseline: `{self.args.baseline}`.",
            "",
            "One walhook process per line. idle: RSS before the rows; peak: VmHWM; after: RSS 5 s after the "
            "rows were delivered (healthy) or durably spilled (paused); resumed: the paused subscriber resumed "
            "and its events delivered from the spill log (peak over the whole run, RSS 5 s after). Ratios: "
            "(figure - idle) / bytes of the rows.",
            "",
            "| binary | rows | kind | MiB each | subscriber | idle MiB | peak MiB | peak / rows | after MiB "
            "| after / rows | resumed: peak MiB | peak / rows | after MiB | after / rows |",
            "|---|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in self.results:
            q = self.ratios(r)
            cells = [r["binary"], str(r["rows"]), r["kind"], f"{r['row_bytes'] / r['rows'] / MIB:.0f}", r["mode"],
                     f"{r['idle_mb']:.1f}", f"{r['peak_mb']:.1f}", f"{q['peak']:.2f}x", f"{r['after_mb']:.1f}",
                     f"{q['after']:.2f}x"]
            if not r["done"]:
                cells[6] += " (not done)"
            if "resume_peak_mb" in r:
                cells += [f"{r['resume_peak_mb']:.1f}", f"{q['resume_peak']:.2f}x", f"{r['resume_after_mb']:.1f}",
                          f"{q['resume_after']:.2f}x"]
                if not r["resumed"]:
                    cells[-4] += " (not delivered)"
            else:
                cells += ["", "", "", ""]
            lines.append("| " + " | ".join(cells) + " |")
        warned = [r for r in self.results if r["log_warnings"]]
        if warned:
            lines += ["", "Warnings logged:", ""]
            for r in warned:
                lines.append(f"- {r['binary']} {r['rows']} x {r['kind']} {r['size_mib']} MiB {r['mode']}: "
                             + " / ".join(w[-200:] for w in r["log_warnings"][:2]))
        if self.failures:
            lines += ["", "Scenarios that failed:", ""] + [f"- {f}" for f in self.failures]
        text = "\n".join(lines) + "\n"
        print(text)
        out = Path(self.args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bigrows.md").write_text(text)
        (out / "bigrows.json").write_text(json.dumps(self.results, indent=1))
        b.log(f"written to {out}/bigrows.md")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[50, 200],
                   help="row sizes in MiB (jsonb at most 250)")
    p.add_argument("--kinds", type=lambda s: s.split(","), default=["text", "jsonb"])
    p.add_argument("--modes", type=lambda s: s.split(","), default=["healthy", "paused"])
    p.add_argument("--no-five", dest="five", action="store_false", help="skip the five 200 MiB rows")
    p.add_argument("--baseline", default=BASELINE_REV, help="git revision to compare with (built from a worktree), a walhook binary, or none")
    p.add_argument("--timeout", type=float, default=300, help="seconds a phase may take")
    p.add_argument("--out", default=str(b.BENCH / "results"))
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs, configs)")
    p.add_argument("--log", default="info")
    BigRows(p.parse_args()).run()


if __name__ == "__main__":
    main()
