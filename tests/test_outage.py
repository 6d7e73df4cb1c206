"""The backups are still checked while the database is down (issue 12, item 6).

A real private cluster stopped under `pgbv verify` and under a running daemon, a
real pg_dump archive in a directory source, a real spool directory: the backup
checks run and say pass or fail, the skipped checks are named, /metrics moves
(a new backup shows, pgbv_up stays 0), and the spooled rows reach the log table
exactly once when the database is back.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
import yaml

from exporter import snapshot
from exporter.migrate import migrate
from exporter.pgtools import find_tool, run_tool
from exporter.result import BackupInfo, BackupLookup, CheckResult, RunResult
from exporter.spool import Spool, _lines_from_end
from exporter.verify import write
from tests.conftest import execute, make_target
from tests.pgcluster import Cluster
from tests.test_daemon import RunningDaemon, cluster  # noqa: F401 - cluster: the private cluster fixture
from tests.test_verify import pgbv

BACKUP_CHECKS = ["backup_age", "backup_size", "backup_readable", "backup_content"]


def seeded(cluster: Cluster, tmp_path: Path) -> tuple[str, Path, Path]:
    """The cluster's database with a critical table and the log table, and a folder
    holding a custom dump of it: (dsn, folder, archive)."""
    dsn = cluster.dsn()
    seed(dsn)
    backups = tmp_path / "backups"
    backups.mkdir()
    return dsn, backups, dump(dsn, backups / "app-1.dump")


def seed(dsn: str) -> None:
    migrate(make_target(dsn, checks={}))
    execute(dsn, "CREATE TABLE accounts (id int PRIMARY KEY, name text)",
            "INSERT INTO accounts SELECT g, 'n' || g FROM generate_series(1, 50) g",
            "ALTER TABLE accounts ENABLE ROW LEVEL SECURITY",
            "CREATE POLICY accounts_all ON accounts USING (true)",
            "ANALYZE accounts")


def dump(dsn: str, path: Path) -> Path:
    run_tool(find_tool("pg_dump"), ["--format=custom", f"--file={path}", f"--dbname={dsn}"], timeout=120)
    return path


def target_entry(dsn: str, backups: Path, **extra) -> dict:
    return {
        "name": "app", "dsn": dsn, "connect_timeout_seconds": 2,
        "checks": {"critical_tables": ["accounts"], "required_tables": ["accounts"]},
        "backup": {"source": "directory", "path": str(backups), "pattern": "*.dump", "min_size_mb": 0.001},
        **extra,
    }


def write_config(tmp_path: Path, entry: dict, **top) -> Path:
    path = tmp_path / "pgbv.yml"
    path.write_text(yaml.safe_dump({"targets": [entry], **top}))
    return path


def log_rows(dsn: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT id, status, checks_passed, checks_failed, error_details, verification_details"
            "  FROM backup_verification_log ORDER BY verified_at"
        ).fetchall()


# --- pgbv verify on a stopped database -------------------------------------------------------


def test_verify_on_a_stopped_database_runs_the_backup_checks_and_names_the_skipped(cluster, tmp_path):
    dsn, backups, archive = seeded(cluster, tmp_path)
    config = write_config(tmp_path, target_entry(dsn, backups))
    cluster.stop()

    text = pgbv("verify", "--config", str(config))
    assert text.returncode == 3, text.stdout + text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].startswith("target app: UNKNOWN: unreachable:"), text.stdout
    for name in BACKUP_CHECKS:
        assert any(line.split()[:2] == [name, "pass"] for line in lines), text.stdout
    skipped = next(line for line in lines if line.startswith("skipped, they need the database:"))
    assert "critical_tables" in skipped and "required_tables" in skipped and "log_table" in skipped, skipped

    proc = pgbv("verify", "--config", str(config), "--format", "json")
    assert proc.returncode == 3
    report = json.loads(proc.stdout)
    outcomes = {c["name"]: c["outcome"] for c in report["checks"]}
    assert outcomes == dict.fromkeys(BACKUP_CHECKS, "pass")
    assert {"critical_tables", "required_tables", "row_counts"} <= set(report["facts"]["skipped_checks"])
    assert report["status"] == "failure" and report["error"] and report["backup"]["id"] == "app-1.dump"

    # The checks that run in an outage still find a damaged backup.
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    proc = pgbv("verify", "--config", str(config), "--format", "json")
    assert proc.returncode == 3
    outcomes = {c["name"]: c["outcome"] for c in json.loads(proc.stdout)["checks"]}
    assert outcomes["backup_readable"] == "fail" and outcomes["backup_age"] == "pass", outcomes


def test_an_unreachable_run_is_recorded_with_the_backup_checks_in_a_log_database_elsewhere(cluster, demo_db, tmp_path):
    dsn, backups, _ = seeded(cluster, tmp_path)
    config = write_config(tmp_path, target_entry(dsn, backups, log_dsn=demo_db))
    healthy = pgbv("verify", "--config", str(config))
    assert healthy.returncode == 0, healthy.stdout
    cluster.stop()
    proc = pgbv("verify", "--config", str(config))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    (_, first, *_), (_, status, passed, failed, error_details, details) = log_rows(demo_db)
    assert first == "success" and status == "failure"
    assert (passed, failed) == (len(BACKUP_CHECKS), 0)
    assert error_details[0]["name"] == "connection"
    assert [c["name"] for c in details["checks"]] == BACKUP_CHECKS
    assert "critical_tables" in details["skipped_checks"] and details["unreachable"]
    # The tools were chosen by the version the previous run saw, carried on.
    with psycopg.connect(demo_db) as conn:
        seen = conn.execute("SELECT (verification_details->>'server_version_num')::int"
                            " FROM backup_verification_log ORDER BY verified_at").fetchall()
    assert seen[0][0] > 0 and seen[1][0] == seen[0][0]


# --- the daemon, with the database stopped under it ------------------------------------------


def test_the_daemon_keeps_checking_the_backups_while_the_database_is_down(cluster, tmp_path):
    dsn, backups, old = seeded(cluster, tmp_path)
    hours_ago = time.time() - 3 * 3600
    os.utime(old, (hours_ago, hours_ago))
    config = write_config(tmp_path, target_entry(dsn, backups), schedule={"interval_minutes": 1, "refresh_seconds": 1},
                          http={"listen": "127.0.0.1:0"}, spool_dir=str(tmp_path / "spool"))
    daemon = RunningDaemon(config)
    try:
        daemon.wait_for("pgbv_last_run_status", 1, target="app", status="success")
        before = daemon.scrape()
        assert before[("pgbv_backup_last_completion_timestamp_seconds", (("target", "app"),))] == pytest.approx(hours_ago, abs=1)
        cluster.stop()
        daemon.wait_for("pgbv_up", 0, target="app")
        # A new backup lands while the database is down (made from the stopped cluster's dump).
        shutil.copy(old, backups / "app-2.dump")
        # The next scheduled run (a minute after the start) cannot reach the database.
        daemon.wait_for("pgbv_last_run_status", 1, timeout=90, target="app", status="failure")
        during = daemon.scrape()
        key = (("target", "app"),)
        assert during[("pgbv_up", key)] == 0
        assert during[("pgbv_spool_rows", ())] == 1
        assert during[("pgbv_backup_last_completion_timestamp_seconds", key)] > time.time() - 120
        assert during[("pgbv_backup_age_seconds", key)] < 120 < before[("pgbv_backup_age_seconds", key)]
        assert during[("pgbv_last_run_timestamp_seconds", key)] > before[("pgbv_last_run_timestamp_seconds", key)]
        for name in BACKUP_CHECKS:
            assert during[("pgbv_check_success", (("check", name), ("target", "app")))] == 1
        assert ("pgbv_check_success", (("check", "critical_tables"), ("target", "app"))) not in during
        outage = [line for line in daemon.lines if "unreachable:" in line and "checks that need no database ran" in line]
        assert outage and "backup_age pass" in outage[0] and "critical_tables" in outage[0], daemon.lines
        assert not any("without the replica lock" in line for line in daemon.lines), daemon.lines
        cluster.start()
        daemon.wait_for("pgbv_spool_rows", 0)
        daemon.wait_for("pgbv_up", 1, target="app")
        time.sleep(2.5)  # more refreshes: a second write would show up now
        after = daemon.scrape()
    finally:
        assert daemon.terminate()[0] == 0
    recorded = log_rows(dsn)
    assert [r[1] for r in recorded] == ["success", "failure"], recorded
    outage_row = recorded[1][5]
    assert [c["name"] for c in outage_row["checks"]] == BACKUP_CHECKS
    assert outage_row["backup"]["id"] == "app-2.dump" and outage_row["trigger"] == "schedule"
    # The picture read back from the table is the one the spool showed.
    assert after[("pgbv_backup_last_completion_timestamp_seconds", key)] == during[
        ("pgbv_backup_last_completion_timestamp_seconds", key)]
    assert not any((tmp_path / "spool").glob("*.jsonl"))


# --- the snapshot merge, on a real spool directory --------------------------------------------


def run_at(verified_at: datetime, backup_finished: datetime, *, unreachable: str | None = None) -> RunResult:
    checks = [CheckResult("backup_age", "pass", "fresh", data={"backup_age_seconds": 60.0})]
    if unreachable is None:
        checks.insert(0, CheckResult("critical_tables", "pass", "1 table present"))
    result = RunResult(
        "app", verified_at, checks=checks, duration_seconds=0.5,
        backup=BackupLookup("directory", BackupInfo("b.dump", backup_finished, 4096, "pg_dump custom")),
        facts={"database_size_bytes": None if unreachable else 8_000_000},
    )
    result.unreachable = unreachable
    return result


def test_the_snapshot_shows_the_newest_spooled_run_over_an_older_table(demo_db, tmp_path):
    target = make_target(demo_db, checks={})
    now = datetime.now(timezone.utc)
    with psycopg.connect(demo_db) as conn:
        write(conn, run_at(now - timedelta(hours=2), now - timedelta(hours=5)))
        table = snapshot.read_target(conn, target, up=False)
    spool = Spool(tmp_path / "spool")
    assert snapshot.with_spooled(table, spool.newest("app")) is table  # nothing spooled
    spool.add("app", run_at(now - timedelta(hours=1), now - timedelta(hours=4), unreachable="refused"))
    newest = run_at(now - timedelta(minutes=1), now - timedelta(minutes=30), unreachable="refused")
    spool.add("app", newest)
    # A corrupt line and a line cut short after it are not shown (a flush would set them aside).
    with open(spool.path("app"), "ab") as handle:
        handle.write(b'{"not": "a row"}\n{"id": "cut')

    picture = snapshot.with_spooled(table, spool.newest("app"))
    assert picture.last_status == "failure" and picture.up is False
    assert picture.last_run_timestamp == pytest.approx(newest.verified_at.timestamp() + 0.5)
    assert picture.backup_completion_timestamp == pytest.approx((now - timedelta(minutes=30)).timestamp())
    assert picture.backup_age_seconds == pytest.approx(29 * 60)
    assert picture.check_success == {"backup_age": 1}
    assert picture.database_size_bytes is None
    assert picture.last_success_timestamp == table.last_success_timestamp  # the spooled run failed
    assert picture.success_ratio == table.success_ratio  # recorded rows only
    assert spool.pending("app") == 3  # read, not flushed

    # Once the table holds a run as new (the spool flushed), the table's picture stands.
    with psycopg.connect(demo_db) as conn:
        assert spool.flush("app", conn) == 2
        after = snapshot.read_target(conn, target, up=True)
    assert snapshot.with_spooled(after, {"verified_at": newest.verified_at.isoformat(), "status": "success"}) is after
    assert (after.last_run_timestamp, after.backup_completion_timestamp) == (picture.last_run_timestamp,
                                                                             picture.backup_completion_timestamp)


def test_the_newest_spooled_row_costs_its_own_size_not_the_spool(tmp_path):
    spool = Spool(tmp_path / "spool")
    now = datetime.now(timezone.utc)
    for minutes in range(400, 0, -1):
        spool.add("app", run_at(now - timedelta(minutes=minutes), now - timedelta(hours=1), unreachable="down"))
    size = spool.path("app").stat().st_size

    class Counting(io.BytesIO):
        read_bytes = 0

        def read(self, n=-1):
            data = super().read(n)
            Counting.read_bytes += len(data)
            return data

    handle = Counting(spool.path("app").read_bytes())
    last = next(_lines_from_end(handle, size, chunk=4096))
    assert json.loads(last)["verified_at"] == (now - timedelta(minutes=1)).isoformat()
    assert Counting.read_bytes <= 2 * 4096 < size // 10
    assert spool.newest("app")["verified_at"] == (now - timedelta(minutes=1)).isoformat()


def test_with_the_log_database_unreachable_the_picture_comes_from_the_spool(tmp_path):
    # A daemon restarted in an outage: its log database (the target) is down, and the
    # runs of the previous process wait in the spool. Without the merge, the picture
    # would be the configured zeros until the database came back.
    from tests.test_daemon import daemon_for, picture, target_data

    dead = "host=127.0.0.1 port=1 dbname=postgres user=postgres"
    daemon = daemon_for(tmp_path, [target_data("app", dead)])
    now = datetime.now(timezone.utc)
    spooled = run_at(now - timedelta(minutes=2), now - timedelta(hours=1), unreachable="refused")
    daemon.spool.add("app", spooled)
    daemon.refresh()
    shown = picture(daemon, "app")
    assert shown.up is False and shown.last_status == "failure"
    assert shown.backup_completion_timestamp == pytest.approx((now - timedelta(hours=1)).timestamp())
    assert shown.check_success == {"backup_age": 1}
    assert daemon.current_snapshot().spool_rows == 1
    # A run in the outage shows at once, without waiting for a refresh.
    result = daemon.run_target(daemon.settings.targets[0], "schedule")
    assert result.unreachable and picture(daemon, "app").last_run_timestamp > shown.last_run_timestamp
    assert daemon.current_snapshot().spool_rows == 2
