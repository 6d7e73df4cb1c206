"""Physical restore drills of real Barman backups: `barman recover --target-immediate`
into a pgbv_restore_ folder, started as a private PostgreSQL, checked, compared with
live, stopped and deleted; and backup_readable through a whole run, healthy and
damaged. The Barman repository is tests/backups/test_barman_real.py's."""

from __future__ import annotations

import dataclasses
import shutil
import threading
import time
from pathlib import Path

import pytest

from exporter.backups import source_for
from exporter.restore import active, drill
from exporter.restore.result import DrillError, RestoreFailed
from exporter.verify import verify_target
from tests.backups.test_barman_real import ROWS, SERVER, BarmanRepo, barman_wrapper, real_barman  # noqa: F401 (fixtures)
from tests.conftest import make_target
from tests.restore.test_physical import scratch_dir  # noqa: F401 (fixture)


def barman_target(repo: BarmanRepo, wrapper: Path, scratch: Path, **restore):
    return make_target(
        f"host={repo.socket_dir} dbname=postgres user=postgres",
        checks={"critical_tables": ["t"], "min_policies": {"t": 0}, "max_row_drop_percent": 10},
        backup={"source": "barman", "server": SERVER, "config_file": str(repo.conf), "binary": str(wrapper),
                "timeout_seconds": 300},
        restore={"enabled": True, "scratch_dir": str(scratch), **restore},
    )


def test_barman_backup_is_readable_restores_and_matches_live(real_barman, barman_wrapper, scratch_dir):
    started = time.monotonic()
    result = verify_target(barman_target(real_barman, barman_wrapper, scratch_dir), record_result=False, drill=True)
    readable, restore = result.check("backup_readable"), result.check("restore")
    print(f"\nBarman run with drill ({time.monotonic() - started:.1f}s): {readable.outcome}: {readable.message}\n"
          f"  {restore.outcome}: {restore.message}")
    assert readable.outcome == "pass", readable.message
    assert restore.outcome == "pass", restore.message
    report = restore.data["restore"]
    assert report["kind"] == "physical" and report["rows"] == {"t": ROWS}
    assert {c["outcome"] for c in report["checks"]} == {"pass"}
    assert list(scratch_dir.iterdir()) == []  # stopped and deleted


def test_barman_backup_with_a_file_removed_fails_backup_readable_and_is_cleaned_up(real_barman, barman_wrapper, scratch_dir):
    copy = real_barman.copy()
    try:
        target = barman_target(copy, barman_wrapper, scratch_dir)
        info = source_for(target.backup).latest()
        victim = copy.data_dir(info.id) / "global" / "pg_control"
        victim.unlink()
        result = verify_target(target, record_result=False, drill=True)
        readable, restore = result.check("backup_readable"), result.check("restore")
        print(f"\nBarman, pg_control removed: {readable.outcome}: {readable.message}\n  {restore.outcome}: {restore.message}")
        assert readable.outcome == "fail", readable.message
        assert '"global/pg_control" is present in the manifest but not on disk' in readable.message
        assert restore.outcome in ("fail", "error") and restore.outcome != "pass", restore.message
        assert list(scratch_dir.iterdir()) == []
    finally:
        shutil.rmtree(copy.base, ignore_errors=True)


def test_barman_recover_that_barman_refuses_fails_the_drill(real_barman, barman_wrapper, scratch_dir):
    target = barman_target(real_barman, barman_wrapper, scratch_dir)
    info = source_for(target.backup).latest()
    gone = dataclasses.replace(info, id="20000101T000000")
    with pytest.raises(RestoreFailed, match="barman recover pg 20000101T000000: Unknown backup"):
        drill(target, gone)
    assert list(scratch_dir.iterdir()) == []


def test_barman_missing_is_a_drill_error(real_barman, barman_wrapper, scratch_dir, tmp_path):
    target = barman_target(real_barman, barman_wrapper, scratch_dir)
    info = source_for(target.backup).latest()
    missing = barman_target(real_barman, tmp_path / "no-such-barman", scratch_dir)
    with pytest.raises(DrillError, match="cannot run no-such-barman"):
        drill(missing, info)
    assert list(scratch_dir.iterdir()) == []


def slow_recover(folder: Path, wrapper: Path) -> Path:
    """barman, except that recover hangs for a minute first."""
    slow = folder / "barman-slow-recover"
    slow.write_text(f'#!/bin/sh\ncase " $* " in *" recover "*) sleep 60 ;; esac\nexec {wrapper} "$@"\n')
    slow.chmod(0o755)
    return slow


def test_a_recover_over_the_drills_time_is_stopped_and_cleaned_up(real_barman, barman_wrapper, scratch_dir, tmp_path):
    target = barman_target(real_barman, slow_recover(tmp_path, barman_wrapper), scratch_dir, timeout_minutes=0.02)
    info = source_for(target.backup).latest()
    started = time.monotonic()
    with pytest.raises(DrillError, match="barman recover: barman-slow-recover timed out after"):
        drill(target, info)
    assert time.monotonic() - started < 15
    assert list(scratch_dir.iterdir()) == []


def test_a_stopping_daemon_kills_barman_recover_and_removes_the_folder(real_barman, barman_wrapper, scratch_dir, tmp_path):
    # What the daemon does on SIGTERM (active.abort_all), while barman recover copies.
    target = barman_target(real_barman, slow_recover(tmp_path, barman_wrapper), scratch_dir)
    info = source_for(target.backup).latest()
    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            drill(target, info)
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            outcome["raised"] = exc

    thread = threading.Thread(target=run)
    started = time.monotonic()
    thread.start()
    while not list(scratch_dir.iterdir()) and time.monotonic() - started < 20:
        time.sleep(0.05)
    assert [p.name.startswith("pgbv_restore_") for p in scratch_dir.iterdir()] == [True]
    time.sleep(0.5)  # barman recover (here: its stand-in's sleep) is running
    assert active.abort_all() == 1
    thread.join(20)
    assert not thread.is_alive()
    assert time.monotonic() - started < 20  # killed, not waited for
    assert isinstance(outcome.get("raised"), (DrillError, RestoreFailed)), outcome
    assert list(scratch_dir.iterdir()) == []
