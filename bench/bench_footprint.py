"""6. Footprint: resident memory and CPU of `pgbv run` with 10 targets, during its
start-up runs (one of which is a restore drill) and then idle for 10 minutes.

Nine targets are copies of the seed application; the tenth is the order system of
bench_restore (a few hundred MiB) with restore drills enabled and none recorded
yet, so run-on-start drills it. The daemon's process is sampled from /proc
(VmRSS; utime + stime), its children (pg_restore) apart. While idle it refreshes
its snapshot every 30 s (the default) and is scraped every 15 s, as one Prometheus
would.

    .venv/bin/python -m bench.bench_footprint [--quick] [--idle-seconds 600]
"""

from __future__ import annotations

import time

from bench.bench_restore import populate
from bench.common import (
    SEED_CHECKS, Cluster, ProcSampler, Report, RunningDaemon, arguments, discard, make_demo_template, pg_dump,
    workdir, write_config)

TARGETS = 10
IDLE_MARK = "footprint: the idle window starts"


def main() -> None:
    def extra(p):
        p.add_argument("--idle-seconds", type=float, default=None, help="idle window (default 600, quick 20)")
        p.add_argument("--drill-orders", type=int, default=None, help="size of the drilled database (default 300000)")

    args = arguments(__doc__, extra)
    idle_seconds = args.idle_seconds or (20 if args.quick else 600)
    orders = args.drill_orders or (20_000 if args.quick else 300_000)
    report = Report("footprint", "6. Footprint of the daemon", quick=args.quick)
    base = workdir("footprint")
    cluster = Cluster(base).start()
    daemon = None
    try:
        template = make_demo_template(cluster)
        shared = base / "backups"
        shared.mkdir()
        pg_dump(cluster, template, shared / "seed_app.dump")
        targets = []
        for i in range(1, TARGETS):
            name = f"fp_{i:02d}"
            cluster.create_db(name, template)
            targets.append({"name": name, "dsn": cluster.dsn(name),
                            "backup": {"source": "directory", "path": str(shared), "pattern": "*.dump",
                                       "min_size_mb": 0.01},
                            "checks": SEED_CHECKS})
        cluster.execute("CREATE DATABASE fp_00")
        populate(cluster, "fp_00", orders)
        cluster.migrate_sql("fp_00")
        drilled = base / "backups_00"
        drilled.mkdir()
        pg_dump(cluster, "fp_00", drilled / "fp_00.dump")
        dump_bytes = (drilled / "fp_00.dump").stat().st_size
        targets.insert(0, {"name": "fp_00", "dsn": cluster.dsn("fp_00"),
                           "backup": {"source": "directory", "path": str(drilled), "pattern": "*.dump"},
                           "checks": {"critical_tables": ["customers", "orders", "order_items", "events"],
                                      "min_policies": {"orders": 1, "customers": 1, "order_items": 0, "events": 0}},
                           "restore": {"enabled": True, "jobs": 2}})
        config = write_config(base / "pgbv.yml", targets, schedule={"interval_minutes": 1440},
                              http={"listen": "127.0.0.1:0"}, spool_dir=str(base / "spool"))

        daemon = RunningDaemon(config, wait=False)
        with ProcSampler(daemon.pid, interval=0.2) as busy:
            daemon.wait_started()
            daemon.wait_runs(TARGETS, timeout=900)
        drill_run = next(r for r in daemon.runs if r.get("target") == "fp_00")
        statuses = sorted({r.get("status") for r in daemon.runs})
        time.sleep(3)  # the refresh that follows the last run
        scrapes = 0
        print(f"{IDLE_MARK} ({idle_seconds:.0f} s)", flush=True)  # run_all.py starts the other benchmarks here
        with ProcSampler(daemon.pid, interval=1.0) as idle:
            deadline = time.monotonic() + idle_seconds
            while time.monotonic() < deadline:
                daemon.get("/metrics", gzip=True)
                scrapes += 1
                time.sleep(min(15.0, max(0.0, deadline - time.monotonic())))
        problems = [line for line in daemon.lines if '"level": "ERROR"' in line or '"level": "WARNING"' in line]
    finally:
        if daemon is not None:
            daemon.terminate()
        discard(cluster, base, args.keep)

    b, i = busy.summary(), idle.summary()
    report.say(f"10 targets (9 seed applications, 1 order system whose {dump_bytes / 2**20:.0f} MiB dump is drilled at "
               f"start); statuses of the start-up runs: {', '.join(statuses)}; the drill run took "
               f"{float(drill_run.get('duration_seconds', 0)):.1f} s. Sampled from /proc: every 0.2 s during start-up, "
               f"every 1 s while idle ({i['seconds']:.0f} s, {scrapes} scrapes of /metrics with gzip, the snapshot "
               f"refreshed every 30 s). CPU % is of one core.")
    report.say()
    report.table(["phase", "seconds", "RSS max", "RSS mean", "RSS at end", "CPU seconds", "CPU %", "threads max",
                  "children (pg_restore...) RSS max / CPU s"],
                 [[name, f"{s['seconds']:.0f}", f"{s['rss_max_mib']:.1f} MiB", f"{s['rss_mean_mib']:.1f} MiB",
                   f"{s['rss_last_mib']:.1f} MiB", f"{s['cpu_seconds']:.2f}", f"{s['cpu_percent']:.2f}",
                   s["threads_max"], f"{s['child_rss_max_mib']:.1f} MiB / {s['child_cpu_seconds']:.1f}"]
                  for name, s in (("start-up: 10 runs, 1 drill", b), ("idle", i))])
    if problems:
        report.say(f"Warnings or errors in the daemon's log: {len(problems)}; first: `{problems[0][:300]}`")
        report.say()
    rss_max = max(b["rss_max_mib"], i["rss_max_mib"])
    report.target("resident memory (idle and during a drill)", "< 80 MB",
                  f"idle max {i['rss_max_mib']:.1f} MiB, during the drill max {b['rss_max_mib']:.1f} MiB",
                  rss_max * 2**20 < 80e6, "pg_restore's own memory is a child process's, shown apart")
    report.target(f"idle CPU over {i['seconds'] / 60:.0f} min", "< 1 %", f"{i['cpu_percent']:.2f} %",
                  i["cpu_percent"] < 1.0, "" if idle_seconds >= 600 else "shorter than the 10 minutes asked")
    report.data = {"busy": b, "idle": i, "scrapes": scrapes}
    report.finish(args.json)


if __name__ == "__main__":
    main()
