#!/usr/bin/env python3
"""Where capture costs the source: CPU of the database's processes per transaction.

Runs the cost scenario's pgbench workload at a fixed rate (so every configuration does
the same work), and reports the CPU time the cluster spent per committed transaction, by
process: the workload's backends, the walsender, walhook's SQL sessions, autovacuum,
checkpointer and so on. For no capture, a bare slot drained by pg_recvlogical, and
walhook with its state in the source database and in a separate one. Unlike the TPS
figures of `run.py`, these hardly depend on how busy the shared machine is.

Usage: python3 bench/cost_profile.py [--rate 800] [--seconds 20] [--runs 2]
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench_run  # noqa: E402


def long_lived(pg):
    """CPU seconds so far of every child of the postmaster, by pid, with a label."""
    postmaster = (pg.dir / "data" / "postmaster.pid").read_text().split()[0]
    labels = {}
    rows = pg.sql("SELECT string_agg(pid || '|' || backend_type || '|' || coalesce(datname, '') || '|' "
                  "|| coalesce(application_name, ''), E'\\n') FROM pg_stat_activity", db="postgres") or ""
    for row in rows.splitlines():
        pid, kind, db, app = row.split("|", 3)
        if kind == "walsender":
            labels[pid] = "walsender"
        elif kind == "client backend":
            labels[pid] = f"session on {db}" + (f" ({app})" if app else "")
        else:
            labels[pid] = kind
    # Children that exited (the workload's backends) are in the postmaster's cutime/cstime.
    fields = open(f"/proc/{postmaster}/stat").read().rsplit(")", 1)[1].split()
    out = {"exited": ("workload backends", (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK"))}
    children = subprocess.run(["pgrep", "-P", postmaster], capture_output=True, text=True).stdout.split()
    for pid in children:
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        out[pid] = (labels.get(pid, "other"), cpu)
    return out


def measure(b, args, tag):
    script = b.work / "pgbench.sql"
    script.write_text(bench_run.PGBENCH_SCRIPT)
    os.chmod(script, 0o644)
    before = long_lived(b.pg)
    out = subprocess.run(
        [str(b.pg.bin / "pgbench"), "-n", "-h", "127.0.0.1", "-p", str(b.pg.port), "-U", "postgres",
         "-c", "4", "-j", "2", "-R", str(args.rate), "-T", str(args.seconds), "-f", str(script), "bench"],
        capture_output=True, text=True, check=True)
    time.sleep(0.5)  # the workload's backends exit and are reaped
    after = long_lived(b.pg)
    tps = next(float(l.split("=")[1].split()[0]) for l in out.stdout.splitlines() if l.startswith("tps ="))
    n = tps * args.seconds
    groups = {}
    for pid, (label, cpu) in after.items():
        if pid in before:
            groups[label] = groups.get(label, 0.0) + cpu - before[pid][1]
    total = sum(groups.values())
    parts = ", ".join(f"{k} {v / n * 1e6:.0f}" for k, v in sorted(groups.items(), key=lambda kv: -kv[1])
                      if v / n * 1e6 >= 1)
    print(f"{tag:<24} {tps:7.0f} TPS  {total / n * 1e6:6.0f} us of database CPU per transaction ({parts})",
          flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=800, help="pgbench transactions per second")
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    args.changes, args.keep, args.log, args.sub_extra = 1000, False, "warn", ""
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "walhook"], cwd=bench_run.ROOT, check=True)
    subprocess.run(["cargo", "build", "--release", "--quiet", "--target-dir", str(bench_run.ROOT / "target")],
                   cwd=bench_run.BENCH / "receiver", check=True)
    b = bench_run.Bench(args)
    b.pg = bench_run.Cluster(b.work)
    try:
        b.pg.sql("CREATE DATABASE bench", db="postgres")
        b.pg.sql(bench_run.SCHEMA)
        b.pg.sql("CREATE DATABASE walhook_state", db="postgres")
        for _ in range(args.runs):
            measure(b, args, "no capture")
            b.pg.sql("SELECT pg_create_logical_replication_slot('bench_c', 'pgoutput')")
            recv = bench_run.Proc(
                [str(b.pg.bin / "pg_recvlogical"), "-h", "127.0.0.1", "-p", str(b.pg.port), "-U", "postgres",
                 "-d", "bench", "--slot", "bench_c", "--start", "-o", "proto_version=1",
                 "-o", "publication_names=bench", "-f", "/dev/null", "--no-loop"], b.work / "recvlogical.log")
            measure(b, args, "bare slot")
            recv.stop(signal.SIGINT)
            time.sleep(1)
            b.pg.drop_slot("bench_c")
            for state in (None, b.pg.url("walhook_state")):
                rx, url = b.start_receiver()
                proc, _ = b.start_walhook("bench_c", [("s", url, ["*"])], state_url=state)
                measure(b, args, "walhook, separate state" if state else "walhook, state in source")
                proc.stop()
                rx.stop()
                b.reset_walhook("bench_c", "walhook_state" if state else "bench")
    finally:
        b.pg.stop()
        shutil.rmtree(b.work, ignore_errors=True)


if __name__ == "__main__":
    main()
