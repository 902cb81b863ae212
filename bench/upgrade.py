#!/usr/bin/env python3
"""Upgrade and rollback with a spill log in the state database, against an earlier
release: the check to run before landing a state migration.

    python3 bench/upgrade.py --old f58f3a8

Builds walhook at `--old` (a git revision; into target/upgrade-old, reused between runs)
and the working tree's walhook, starts a throwaway PostgreSQL cluster (bench/run.py's),
and runs two cases with a subscriber whose receiver fails every request, so a burst of
30,000 events is spilled in chunks:

- upgrade: the old walhook spills the burst and is SIGKILLed; the new one migrates the
  state schema, takes the log over and, once the receiver heals, delivers every event
  exactly once (its `delivered` count), leaving no spill log and no dead letter;
- rollback: the new walhook spills the burst and is SIGKILLed; the old one runs on the
  migrated schema for 12 s and must delete no chunk and write no row of them (it may
  fail, and should); then the new one again delivers every event exactly once.

Exits non-zero when a case fails. Takes about 5 minutes with both builds made.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402

ROOT = bench.ROOT
OLD_TARGET = ROOT / "target" / "upgrade-old"
N_TX = 300  # transactions of 100 changes
SLOT = "bench_u"


def build_old(rev):
    """Builds walhook at `rev` in a temporary worktree; returns the binary's path."""
    with tempfile.TemporaryDirectory(prefix="walhook-old-") as tree:
        subprocess.run(["git", "worktree", "add", "--detach", "-f", tree, rev], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "walhook",
                            "--target-dir", str(OLD_TARGET)], cwd=tree, check=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", tree], cwd=ROOT, check=False)
    return str(OLD_TARGET / "release" / "walhook")


class Check(bench.Bench):
    def __init__(self, args, old):
        super().__init__(args)
        self.old = old
        self.failed = []

    def chunks(self):
        return self.pg.sql("SELECT count(*) || ' chunks, ' || coalesce(sum(cardinality(lsns)), 0) "
                           "|| ' lsns entries' FROM walhook.spill_chunks")

    def spill_burst(self, url, binary):
        """Starts `binary`, writes the burst, waits until it is all spilled; SIGKILLs it."""
        proc, admin = self.start_walhook(SLOT, [("s", url, ["*"])], binary=binary)
        self.pg.sql(f"CALL burst({N_TX}, 7)")
        end = self.pg.lsn()
        self.wait("the burst spilled", lambda: self.confirmed_by(admin) >= end, 120, every=0.2)
        time.sleep(2)
        proc.p.kill()
        proc.p.wait()

    def deliver_all(self, url, case):
        """Starts the new walhook, heals the receiver, and checks every event arrives once."""
        proc, admin = self.start_walhook(SLOT, [("s", url, ["*"])])
        urllib.request.urlopen(urllib.request.Request(url + "/heal", method="POST", data=b""))
        want = N_TX * 100

        def delivered():
            return bench.metric(admin, 'walhook_deliveries_total{subscriber="s",outcome="delivered"}') or 0

        def left():
            return int(self.pg.sql("SELECT (SELECT count(*) FROM walhook.spill) "
                                   "+ (SELECT count(*) FROM walhook.spill_chunks)"))
        try:
            self.wait("every event delivered", lambda: delivered() >= want and left() == 0, 300, every=0.5)
        except TimeoutError:
            pass
        time.sleep(2)
        got, rest = delivered(), left()
        dead = int(self.pg.sql("SELECT count(*) FROM walhook.dead_letters"))
        ok = got == want and rest == 0 and dead == 0
        bench.log(f"  {case}: delivered {got:,.0f} of {want:,}, spill log left {rest}, dead letters {dead}: "
                  f"{'ok' if ok else 'FAILED'}")
        if not ok:
            self.failed.append(case)
        proc.stop()

    def upgrade(self):
        bench.log("upgrade: the old walhook spills the burst")
        rx, url = self.start_receiver(fail=True)
        self.spill_burst(url, self.old)
        version = self.pg.sql("SELECT max(version) FROM walhook.schema_migrations")
        bench.log(f"  state schema {version}, {self.chunks()}; the new walhook takes over")
        self.deliver_all(url, "upgrade")
        rx.stop()
        self.reset_walhook(SLOT)

    def rollback(self):
        bench.log("rollback: the new walhook spills the burst")
        rx, url = self.start_receiver(fail=True)
        self.spill_burst(url, self.walhook)
        before = self.chunks()
        bench.log(f"  {before}; the old walhook runs on it for 12 s")
        old = bench.Proc([self.old, "run", "--config", str(self.work / f"walhook-{SLOT}.toml")],
                         self.work / "old.log", env={**os.environ, "RUST_LOG": "warn"})
        time.sleep(12)
        old.p.kill()
        old.p.wait()
        after, rows = self.chunks(), self.pg.sql("SELECT count(*) FROM walhook.spill")
        lines = Path(old.log_path).read_text(errors="replace").splitlines()
        bench.log(f"  after the old walhook: {after}, {rows} spill rows; its last log line: "
                  f"{lines[-1][:200] if lines else '(none)'}")
        if after != before or rows != "0":
            bench.log("  rollback: the old walhook changed the spill log: FAILED")
            self.failed.append("rollback")
        self.deliver_all(url, "rollback, then the new walhook again")
        rx.stop()
        self.reset_walhook(SLOT)

    def run_checks(self):
        self.pg = bench.Cluster(self.work)
        try:
            self.pg.sql("CREATE DATABASE bench", db="postgres")
            bench.log("loading the dataset")
            self.pg.sql(bench.SCHEMA)
            self.upgrade()
            self.rollback()
        finally:
            self.pg.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True, help="git revision of the earlier release (e.g. a tag or commit)")
    ap.add_argument("--log", default="warn", help="RUST_LOG for walhook")
    args = ap.parse_args()
    bench.log(f"building walhook at {args.old} and the working tree's (release)")
    old = build_old(args.old)
    bench.build_release()
    check = Check(args, old)
    check.run_checks()
    if check.failed:
        sys.exit(f"failed: {', '.join(check.failed)}")
    bench.log("upgrade and rollback: ok")


if __name__ == "__main__":
    main()
