"""Shards: who owns a target, which shard a pod is, the periods every replica agrees
on, and one replica taking over another's targets (in-process, on real databases).
The three-daemon test is tests/test_replicas.py."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

import psycopg
import pytest
import yaml

from exporter.config import ConfigError, Settings, load_settings
from exporter.daemon import Daemon
from exporter.shards import owner_shard, period_start, shard_from_hostname, takeover_delay
from tests.conftest import execute
from tests.test_daemon import count_rows, daemon_for, target_data


def test_ownership_is_sha256_of_the_name_and_never_changes():
    # Pinned: a change here moves targets between replicas on upgrade (docs/daemon.md says how it is computed).
    assert [owner_shard(f"tenant-0{i}", 3) for i in range(1, 6)] == [2, 1, 1, 1, 0]
    assert owner_shard("app", 7) == 2 and owner_shard("zürich", 5) == 0
    assert {owner_shard("app", 1), owner_shard("x", 1)} == {0}
    # The same in a fresh process, whose str hash() is salted differently.
    code = "from exporter.shards import owner_shard; print(owner_shard('tenant-01', 3), hash('tenant-01'))"
    outs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
            for _ in range(2)]
    assert outs[0][0] == outs[1][0] == "2" and outs[0][1] != outs[1][1]


def test_a_large_fleet_spreads_evenly():
    counts = [0] * 4
    for i in range(4000):
        counts[owner_shard(f"db-{i}", 4)] += 1
    assert all(900 <= n <= 1100 for n in counts), counts


@pytest.mark.parametrize("hostname,shard", [("pgbv-0", 0), ("pgbv-12", 12), ("my-app-pgbv-3", 3)])
def test_the_pod_ordinal_is_the_shard(hostname, shard):
    assert shard_from_hostname(hostname) == shard


def write(tmp_path, schedule):
    path = tmp_path / "pgbv.yml"
    path.write_text(yaml.safe_dump({"targets": [{"name": "app", "dsn": "dbname=app"}], "schedule": schedule}))
    return path


@pytest.mark.parametrize("hostname,schedule,expected", [
    ("pgbv-1", {"total_shards": 3, "shard": "auto"}, None),
    ("pgbv-3", {"total_shards": 3, "shard": "auto"},
     "schedule.shard: shard: auto gives 3 (HOSTNAME='pgbv-3') but total_shards is 3"),
    ("worker", {"total_shards": 3, "shard": "auto"},
     "schedule.shard: shard: auto takes the ordinal at the end of the pod name (pgbv-2 -> 2); HOSTNAME='worker' has none"),
    (None, {"total_shards": 2, "shard": "auto"}, "schedule.shard: shard: auto needs the pod name in HOSTNAME"),
    ("pgbv-0", {"total_shards": 3}, "schedule.shard: total_shards is 3: set shard to this replica's number (0 to 2)"),
    ("pgbv-0", {"total_shards": 3, "shard": 3}, "schedule.shard: shard must be between 0 and total_shards - 1 (2), got 3"),
    ("pgbv-0", {"total_shards": 3, "shard": 1.5}, "schedule.shard: must be a shard number (0 to total_shards - 1) or auto"),
    ("pgbv-0", {"interval_minutes": 1, "takeover_after_seconds": 61},
     "schedule.takeover_after_seconds: must not exceed the period (60 s), got 61"),
])
def test_shard_settings_are_checked_at_load(tmp_path, monkeypatch, hostname, schedule, expected):
    if hostname is None:
        monkeypatch.delenv("HOSTNAME", raising=False)
    else:
        monkeypatch.setenv("HOSTNAME", hostname)
    if expected is None:
        assert load_settings(write(tmp_path, schedule), environ={}).schedule.shard == "auto"
    else:
        with pytest.raises(ConfigError) as error:
            load_settings(write(tmp_path, schedule), environ={})
        assert str(error.value).startswith(expected), str(error.value)


def test_the_shard_comes_from_the_environment_too(tmp_path, monkeypatch):
    monkeypatch.setenv("HOSTNAME", "pgbv-2")
    settings = load_settings(write(tmp_path, {"total_shards": 3}),
                             environ={"PGBV_SCHEDULE__SHARD": "auto"})
    assert settings.schedule.shard == "auto"
    settings = load_settings(write(tmp_path, {"total_shards": 3}), environ={"PGBV_SCHEDULE__SHARD": "1"})
    assert settings.schedule.shard == 1
    assert settings.schedule.takeover_seconds == 8640  # a tenth of a day


def test_periods_are_aligned_to_the_epoch_whatever_the_start():
    at = datetime(2026, 12, 2, 16, 37, 42, tzinfo=timezone.utc)
    assert period_start(at, 60, "05:00") == datetime(2026, 12, 2, 16, 37, tzinfo=timezone.utc)
    assert period_start(at, 7 * 60, "05:00").timestamp() % 420 == 0
    assert period_start(at, None, "05:00") == datetime(2026, 12, 2, 5, 0, tzinfo=timezone.utc)
    assert period_start(at, None, "17:00") == datetime(2026, 12, 1, 17, 0, tzinfo=timezone.utc)


def test_the_next_shard_round_the_ring_takes_over_first():
    # Owner 2 of 3: shard 0 is next (one grace period), shard 1 after it (two).
    assert takeover_delay(0, 2, 3, 10) == 10
    assert takeover_delay(1, 2, 3, 10) == 20
    assert takeover_delay(2, 1, 3, 10) == 10


def rows(dsn):
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT verification_details->>'trigger', verification_details->'runner'"
                            "  FROM backup_verification_log").fetchall()


def wait_rows(dsn, n, timeout=30):
    deadline = time.monotonic() + timeout
    while count_rows(dsn) < n:
        assert time.monotonic() < deadline, f"{count_rows(dsn)} rows, expected {n}"
        time.sleep(0.1)


def test_a_replica_takes_over_after_the_grace_and_the_owner_then_does_not_run(make_db, tmp_path, monkeypatch):
    # tenant-05 belongs to shard 0 (this replica), tenant-01 to shard 2 (next round the ring: one
    # grace period), tenant-02 to shard 1 (two grace periods).
    dsns = {name: make_db(demo=True) for name in ("tenant-05", "tenant-01", "tenant-02")}
    targets = [target_data(name, dsn) for name, dsn in dsns.items()]
    monkeypatch.setenv("HOSTNAME", "pgbv-0")
    daemon = daemon_for(tmp_path / "zero", targets, total_shards=3, shard="auto", takeover_after_seconds=1)
    assert daemon.runner == {"host": "pgbv-0", "shard": 0}
    daemon.refresh()
    start = daemon.period_start(datetime.now(timezone.utc))
    at = start.timestamp()
    daemon.tick(datetime.fromtimestamp(at + 0.5, timezone.utc))  # the loop's first tick: own runs are start()'s
    time.sleep(1.1)  # the replica's own start-up grace
    daemon.tick(datetime.fromtimestamp(at + 0.5, timezone.utc))
    daemon.tick(datetime.fromtimestamp(at + 1.5, timezone.utc))
    wait_rows(dsns["tenant-01"], 1)
    assert count_rows(dsns["tenant-02"]) == 0 and count_rows(dsns["tenant-05"]) == 0
    assert rows(dsns["tenant-01"]) == [("takeover", {"host": "pgbv-0", "shard": 0})]
    daemon.tick(datetime.fromtimestamp(at + 2.5, timezone.utc))
    wait_rows(dsns["tenant-02"], 1)
    daemon.refresh()
    daemon.tick(datetime.fromtimestamp(at + 5, timezone.utc))  # rows there: nothing more to take
    time.sleep(0.5)
    assert [count_rows(dsn) for dsn in dsns.values()] == [0, 1, 1]
    # The owners, late in the same period (a restart, a slow start): the period has its row.
    monkeypatch.setenv("HOSTNAME", "pgbv-2")
    owner = daemon_for(tmp_path / "two", targets, total_shards=3, shard="auto")
    assert owner.run_target(owner.settings.targets[1], "schedule") is None
    assert owner.run_target(owner.settings.targets[1], "start") is None
    assert count_rows(dsns["tenant-01"]) == 1
    # pgbv history names the replica that ran it.
    config = tmp_path / "pgbv.yml"
    config.write_text(yaml.safe_dump({"targets": targets}))
    shown = subprocess.run([sys.executable, "-m", "exporter", "history", "--config", str(config), "--target",
                            "tenant-01"], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert "pgbv-0/shard 0 +takeover" in shown.stdout, shown.stdout


def test_a_daemon_that_cannot_tell_its_shard_does_not_start(tmp_path, monkeypatch):
    monkeypatch.setenv("HOSTNAME", "pgbv-0")
    settings_daemon = daemon_for(tmp_path, [target_data("app", "dbname=app")], total_shards=2, shard="auto")
    assert settings_daemon.shard == 0
    monkeypatch.setenv("HOSTNAME", "laptop")
    with pytest.raises(ConfigError, match="schedule.shard: shard: auto takes the ordinal"):
        Daemon(settings_daemon.settings)


def test_a_replica_runs_at_most_max_concurrent_drills(pg_server, make_db, tmp_path, caplog):
    from tests.restore.test_logical import dump, scratch_databases

    targets = []
    for i in range(3):
        dsn = make_db(demo=True)
        dump(pg_server, dsn, tmp_path / f"b{i}")
        targets.append(target_data(f"drill-{i}", dsn, backup={"source": "directory", "path": str(tmp_path / f"b{i}"),
                                                              "pattern": "*.dump", "min_size_mb": 0},
                                   restore={"enabled": True}))

    def round_of(limit: int) -> tuple[int, int]:
        """Every target run at once: (runs that drilled, most scratch copies seen at once)."""
        daemon = Daemon(Settings(targets=targets, restore={"max_concurrent_drills": limit},
                                 schedule={"interval_minutes": 60, "max_concurrent_targets": 3},
                                 http={"listen": "127.0.0.1:0"}, spool_dir=str(tmp_path / "spool")))
        results, peak = [], 0
        threads = [threading.Thread(target=lambda t=t: results.append(daemon.run_target(t, "takeover")))
                   for t in daemon.settings.targets]
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            peak = max(peak, len(scratch_databases(pg_server)))
            time.sleep(0.05)
        assert len(results) == 3 and None not in results, results
        for r in results:  # a drill that ran passed; a run without one lists no restore check
            assert r.check("restore") is None or r.check("restore").outcome == "pass", r.check("restore").message
        return sum(1 for r in results if r.check("restore") is not None), peak

    caplog.set_level("INFO", logger="pgbv.daemon")
    # Three drills due (never drilled), a limit of one: one drills, two wait, never two copies at once.
    assert round_of(1) == (1, 1)
    assert sum("restore drill due, but 1 drill(s) already run" in r.getMessage() for r in caplog.records) == 2
    # The next period, a limit of three: both drills still due run.
    for target in targets:
        execute(target["dsn"], "UPDATE backup_verification_log SET verified_at = verified_at - interval '2 hours'")
    assert round_of(3)[0] == 2


def test_a_takeover_of_an_unreachable_target_writes_nothing(tmp_path):
    # Nothing listens on port 1: no replica can ask the log whether the period has its row.
    targets = [target_data("tenant-01", "host=127.0.0.1 port=1 dbname=app", connect_timeout_seconds=1)]
    taker = daemon_for(tmp_path / "taker", targets, total_shards=3, shard=0)
    assert taker.run_target(taker.settings.targets[0], "takeover") is None
    assert taker.spool.pending() == 0
    # Its owner records the outage (a failure row, spooled until the database is back).
    owner = daemon_for(tmp_path / "owner", targets, total_shards=3, shard=2)
    result = owner.run_target(owner.settings.targets[0], "schedule")
    assert result is not None and result.status == "failure" and owner.spool.pending() == 1
