"""9. Replicas: three `pgbv run` replicas against one on the same fleet; the time
from a period's start until every target of that period is verified, and the runs
(and the work) each replica did.

Every database is a copy of the seed application with the seed's checks and a
directory backup source (a real pg_dump, read to its end), as in bench_fleet. The
schedule is one minute, run_on_start off, so the measured period is an ordinary
scheduled one: the replicas are started, then the next period's start is awaited.
The three replicas are shards 0 to 2 from their pod names (HOSTNAME pgbv-N, set in
each process, as a StatefulSet does). Times and runners are read from the rows
(verified_at, duration_seconds, verification_details.runner); CPU seconds of each
daemon process from /proc.

This machine's cores are shared by every replica (and by PostgreSQL): three replicas
here divide the work, not the CPU. The 'on separate machines' column projects what a
cluster with a node per replica gives: the largest shard's runs times the single
replica's mean run length, over max_concurrent_targets (with three replicas on
these cores each run takes longer: 3 x max_concurrent_targets runs share them).

    .venv/bin/python -m bench.bench_replicas [--quick] [--databases N]
"""

from __future__ import annotations

import os
import time
from collections import Counter, defaultdict

from bench.common import (
    SEED_CHECKS, Cluster, Report, RunningDaemon, arguments, cpu_seconds, discard, make_demo_template, pg_dump,
    workdir, write_config)

DATABASES = 60
PERIOD = 60
CONCURRENCY = 4


def period_rows(cluster: Cluster, names: list[str], since: float) -> dict[str, tuple[float, float, int, str]]:
    """target -> (verified_at, duration, runner shard, trigger) of its row in the period starting at since."""
    found = {}
    for name in names:
        rows = cluster.execute(
            "SELECT extract(epoch FROM verified_at)::float8, (verification_details->>'duration_seconds')::float8,"
            "       (verification_details->'runner'->>'shard')::int, verification_details->>'trigger'"
            "  FROM backup_verification_log WHERE verified_at >= to_timestamp(%s) ORDER BY verified_at",
            [since], dbname=name)
        if rows:
            assert len(rows) == 1, (name, rows)  # one row per target per period
            found[name] = rows[0]
    return found


def measure(cluster: Cluster, base, names: list[str], targets: list[dict], replicas: int) -> dict:
    for name in names:
        cluster.execute("TRUNCATE backup_verification_log", dbname=name)
    schedule = {"interval_minutes": PERIOD // 60, "run_on_start": False, "refresh_seconds": 5,
                "max_concurrent_targets": CONCURRENCY, "total_shards": replicas}
    if replicas > 1:
        schedule["shard"] = "auto"
    config = write_config(base / f"replicas_{replicas}.yml", targets, schedule=schedule,
                          http={"listen": "127.0.0.1:0"}, spool_dir=str(base / f"spool_{replicas}"))
    daemons = []
    try:
        for ordinal in range(replicas):
            daemons.append(RunningDaemon(config, start_timeout=300,
                                         preamble=f"import os; os.environ['HOSTNAME'] = 'pgbv-{ordinal}'"))
        start = (int(time.time() // PERIOD) + 1) * PERIOD
        if start - time.time() < 3:
            start += PERIOD  # every replica's loop must be in the period before
        print(f"{replicas} replica(s) up; measuring the period starting in {start - time.time():.0f} s", flush=True)
        time.sleep(max(0.0, start - 1 - time.time()))
        cpu_before = [cpu_seconds(d.pid) or 0.0 for d in daemons]
        deadline = start + PERIOD - 2
        rows: dict = {}
        while time.time() < deadline:
            rows = period_rows(cluster, names, start)
            if len(rows) == len(names):
                break
            time.sleep(0.5)
        cpu = [(cpu_seconds(d.pid) or 0.0) - b for d, b in zip(daemons, cpu_before)]
    finally:
        for daemon in daemons:
            daemon.terminate()
    assert len(rows) == len(names), f"{len(rows)} of {len(names)} targets verified in the period"
    done = max(at + (duration or 0.0) for at, duration, _, _ in rows.values()) - start
    runs = Counter(shard for _, _, shard, _ in rows.values())
    busy: dict[int, float] = defaultdict(float)
    for _, duration, shard, _ in rows.values():
        busy[shard] += duration or 0.0
    triggers = Counter(trigger for *_, trigger in rows.values())
    result = {"replicas": replicas, "done": done, "runs": [runs.get(s, 0) for s in range(replicas)],
              "busy": [busy.get(s, 0.0) for s in range(replicas)], "cpu": cpu, "triggers": dict(triggers),
              "mean_run": sum(busy.values()) / len(rows)}
    print(f"{replicas} replica(s): every target verified {done:.1f} s after the period's start; runs per replica "
          f"{result['runs']}; busy {['%.1f' % b for b in result['busy']]} s; CPU {['%.1f' % c for c in cpu]} s; "
          f"triggers {dict(triggers)}", flush=True)
    return result


def main() -> None:
    def extra(p):
        p.add_argument("--databases", type=int, default=None, help=f"default {DATABASES}, quick 12")

    args = arguments(__doc__, extra)
    count = args.databases or (12 if args.quick else DATABASES)
    report = Report("replicas", f"9. Replicas: 3 against 1 on {count} databases", quick=args.quick)
    base = workdir("replicas")
    cluster = Cluster(base, {"max_connections": "200"}).start()
    try:
        template = make_demo_template(cluster)
        backups = base / "backups"
        backups.mkdir()
        pg_dump(cluster, template, backups / "seed_app.dump")
        names = [f"replica_{i:03d}" for i in range(count)]
        for name in names:
            cluster.create_db(name, template)
        targets = [{
            "name": name, "dsn": cluster.dsn(name), "connect_timeout_seconds": 10,
            "backup": {"source": "directory", "path": str(backups), "pattern": "*.dump", "min_size_mb": 0.01},
            "checks": SEED_CHECKS,
        } for name in names]
        results = [measure(cluster, base, names, targets, 1), measure(cluster, base, names, targets, 3)]
    finally:
        discard(cluster, base, args.keep)
    # A run's own length is the one replica's mean: with three replicas here, 3 x CONCURRENCY runs
    # share the same cores and each takes longer, which a node per replica would not see.
    alone = results[0]["mean_run"]
    for r in results:
        r["projected"] = max(r["runs"]) * alone / CONCURRENCY

    cores = os.cpu_count() or 1
    report.say(f"{count} copies of the seed application on one PostgreSQL server (fsync off), seed checks and a "
               f"directory backup source each; schedule every minute, max_concurrent_targets {CONCURRENCY}, "
               f"run_on_start off; one ordinary period measured per setting. 'every target verified' runs from the "
               f"period's start (epoch-aligned, the same for every replica) to the end of the period's last run. "
               f"'busy' is the sum of a replica's run durations; 'on separate machines' is the largest shard's runs x "
               f"the mean run of the single replica ({alone:.3f} s) / {CONCURRENCY}, what a cluster with a node per "
               f"replica would give. This machine has {cores} "
               f"cores, shared by the replicas, PostgreSQL and other work: three replicas here split the runs but "
               f"not the CPU, so the measured time cannot fall by three; the work per replica does.")
    report.say()
    report.table(["replicas", "every target verified", "runs per replica", "busy per replica", "CPU per replica",
                  "on separate machines", "triggers"],
                 [[r["replicas"], f"{r['done']:.1f} s", " / ".join(map(str, r["runs"])),
                   " / ".join(f"{b:.1f} s" for b in r["busy"]), " / ".join(f"{c:.1f} s" for c in r["cpu"]),
                   f"{r['projected']:.1f} s", ", ".join(f"{k} {v}" for k, v in sorted(r["triggers"].items()))]
                  for r in results])
    one, three = results
    report.target("every replica runs a share of the fleet", ">= 1/5 of the runs each",
                  " / ".join(map(str, three["runs"])), min(three["runs"]) >= count / 5,
                  "ownership is sha256(name) mod 3: balanced on average, not exactly")
    report.target("work per replica, 3 replicas against 1", "the largest shard's runs < all runs",
                  f"{max(three['runs'])} of {count}", max(three["runs"]) < count)
    report.target("time until a period is verified, on a node per replica", "3 replicas < 1 replica",
                  f"{three['projected']:.1f} s against {one['projected']:.1f} s (projected)",
                  three["projected"] < one["projected"],
                  f"measured on these {cores} shared cores: {three['done']:.1f} s against {one['done']:.1f} s")
    report.data = {"results": results, "count": count, "cores": cores}
    report.finish(args.json)


if __name__ == "__main__":
    main()
