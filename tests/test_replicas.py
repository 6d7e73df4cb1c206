"""Three real `pgbv run` replicas share one fleet: each runs the targets its shard owns,
they never make two rows for one target in one period, one killed with SIGKILL is
covered by the others within a grace period, one restarted mid-period runs nothing
twice, and one that comes back takes its targets back at the next period.

About four minutes of wall time: the periods are real minutes (interval_minutes is
whole minutes), and the test needs three of them plus the one a killed replica misses.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter, defaultdict
from pathlib import Path

import psycopg
import yaml

from exporter.shards import owner_shard
from tests.test_daemon import RunningDaemon

PERIOD = 60
GRACE = 10
SHARDS = 3
# Hash ownership balances in expectation only; these 12 names split 4/4/4 (asserted below),
# so that the share each replica must reach is a property of the code, not of luck.
NAMES = [f"tenant-{i:02d}" for i in range(1, 13)]


def period_of(epoch: float) -> int:
    return int(epoch // PERIOD)


def wait_until(epoch: float) -> None:
    time.sleep(max(0.0, epoch - time.time()))


def start_replica(config: Path, ordinal: int) -> RunningDaemon:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGBV_")}
    env["HOSTNAME"] = f"pgbv-{ordinal}"  # as in a StatefulSet pod: shard: auto reads the ordinal
    return RunningDaemon(config, env=env)


def daemon_rows(dsns: dict[str, str]) -> list[tuple[str, float, str, str, int]]:
    """(target, verified_at epoch, trigger, host, shard) of every daemon row of the fleet."""
    out = []
    for name, dsn in dsns.items():
        with psycopg.connect(dsn) as conn:
            for at, trigger, host, shard in conn.execute(
                "SELECT extract(epoch FROM verified_at)::float8, verification_details->>'trigger',"
                "       verification_details->'runner'->>'host', (verification_details->'runner'->>'shard')::int"
                "  FROM backup_verification_log ORDER BY verified_at"
            ).fetchall():
                out.append((name, at, trigger, host, shard))
    return out


def per_period(rows) -> dict[int, Counter]:
    counts: dict[int, Counter] = defaultdict(Counter)
    for name, at, *_ in rows:
        counts[period_of(at)][name] += 1
    return counts


def test_three_replicas_share_the_fleet_and_cover_a_killed_one(make_db, tmp_path):
    owners = {name: owner_shard(name, SHARDS) for name in NAMES}
    assert sorted(Counter(owners.values()).values()) == [4, 4, 4], owners
    dsns = {name: make_db(demo=True) for name in NAMES}
    config = tmp_path / "pgbv.yml"
    config.write_text(yaml.safe_dump({
        "targets": [{"name": name, "dsn": dsn, "connect_timeout_seconds": 3,
                     "checks": {"critical_tables": ["organizations"]}} for name, dsn in dsns.items()],
        "schedule": {"interval_minutes": 1, "refresh_seconds": 2, "total_shards": SHARDS, "shard": "auto",
                     "takeover_after_seconds": GRACE},
        "http": {"listen": "127.0.0.1:0"},
        "spool_dir": str(tmp_path / "spool"),
    }))
    replicas: dict[int, RunningDaemon] = {}
    if time.time() % PERIOD > 40:  # all three start, and run, in one period
        wait_until((period_of(time.time()) + 1) * PERIOD + 1)
    try:
        for ordinal in range(SHARDS):  # started apart, as a StatefulSet starts its pods
            replicas[ordinal] = start_replica(config, ordinal)
            time.sleep(3)
        first = period_of(time.time())
        # Period first+1: all three up. Mid-period, after its runs, replica 1 is killed and
        # restarted at once: it must not run its targets again in that period.
        wait_until((first + 1) * PERIOD + 20)
        replicas[1].proc.send_signal(signal.SIGKILL)
        replicas[1].proc.wait(10)
        replicas[1] = start_replica(config, 1)
        # Period first+2: all three up; replica 2 is killed for good after its runs.
        wait_until((first + 2) * PERIOD + 20)
        replicas[2].proc.send_signal(signal.SIGKILL)
        replicas[2].proc.wait(10)
        killed_at = time.time()
        # Period first+3: replica 2's targets must be taken over within one grace period.
        # It comes back mid-period (their rows are there by then) and runs nothing twice.
        wait_until((first + 3) * PERIOD + 25)
        replicas[2] = start_replica(config, 2)
        # Period first+4: replica 2 has its targets back.
        wait_until((first + 4) * PERIOD + GRACE + 5)
        rows = daemon_rows(dsns)
        logs = {ordinal: list(replica.lines) for ordinal, replica in replicas.items()}
    finally:
        for replica in replicas.values():
            if replica.proc.poll() is None:
                replica.terminate()

    counts = per_period(rows)
    for period in range(first, first + 5):
        missing = [name for name in NAMES if counts[period][name] == 0]
        twice = {name: n for name, n in counts[period].items() if n > 1}
        assert not missing and not twice, f"period {period - first}: missing {missing}, twice {twice}\n{rows}"
    assert set(counts) <= set(range(first, first + 5)), sorted(counts)

    by = {period: {name: (at, trigger, host, shard) for name, at, trigger, host, shard in rows if period_of(at) == period}
          for period in counts}
    # Every runner is a pod of the set and says its shard: the one its pod name gives.
    assert {(host, shard) for *_, host, shard in rows} <= {(f"pgbv-{n}", n) for n in range(SHARDS)}
    # Periods first+1 and first+2 (all up): each replica ran its own targets, a third each.
    for period in (first + 1, first + 2):
        for name, (at, trigger, host, shard) in by[period].items():
            assert (shard, trigger) == (owners[name], "schedule"), (period - first, name, by[period][name])
    alive = [shard for period in (first + 1, first + 2) for (_, _, _, shard) in by[period].values()]
    for ordinal in range(SHARDS):
        assert alive.count(ordinal) >= len(alive) / 5, Counter(alive)
    all_runs = Counter(shard for *_, shard in rows)
    assert all(all_runs[ordinal] >= len(rows) / 5 for ordinal in range(SHARDS)), all_runs

    # first+3: the killed replica's targets ran once each, by the next shard round the ring,
    # one grace period after the start (plus the loop's half-second tick and a run's start-up).
    start3 = (first + 3) * PERIOD
    for name in NAMES:
        at, trigger, host, shard = by[first + 3][name]
        if owners[name] == 2:
            assert (trigger, shard) == ("takeover", 0), (name, by[first + 3][name])
            assert GRACE <= at - start3 <= GRACE + 4, (name, at - start3)
        else:
            assert (trigger, shard) == ("schedule", owners[name]), (name, by[first + 3][name])
    assert killed_at < start3
    # The restarted replica 2 took nothing in first+3 and has its targets back in first+4.
    for name in NAMES:
        assert by[first + 4][name][3] == owners[name], (name, by[first + 4][name])
    assert any("trying it for shard 2" in line for line in logs[0]), "\n".join(logs[0][-40:])
    assert any("shard 2 of 3: owns 4 of 12 targets" in line for line in logs[2]), "\n".join(logs[2][-40:])
