"""backup_age judges the backup source's answer: fresh passes, old warns then fails,
a finish time in the future warns, "no backup" fails, "cannot tell" is an error."""

from datetime import datetime, timedelta, timezone

import pytest

from exporter.checks.backup_age import CHECK
from exporter.result import BackupInfo, BackupLookup
from tests.checks.helpers import check_once
from tests.conftest import make_target

NOW = datetime(2026, 1, 28, 5, 0, tzinfo=timezone.utc)


@pytest.fixture
def target(pg_server):
    # These checks send no SQL; any database will do for the runner's transaction.
    return make_target(
        pg_server.admin_dsn, checks={},
        backup={"source": "directory", "path": "/backups/app", "warn_age_hours": 26, "max_age_hours": 49},
    )


def found(age: timedelta) -> BackupLookup:
    return BackupLookup("directory", info=BackupInfo("app-20260127.dump", NOW - age, 50 * 1024 * 1024, "file"))


def test_applies_only_with_a_backup_source(target, pg_server):
    assert CHECK.applies(target)
    assert not CHECK.applies(make_target(pg_server.admin_dsn, checks={}))
    assert not CHECK.uses_log_db


def test_fresh_backup_passes(target):
    result = check_once(CHECK, target, backup=found(timedelta(hours=12, minutes=30)), now=NOW)
    assert result.outcome == "pass", result.message
    assert result.observed == "12.5 h" and result.expected == "< 26 h"
    assert result.data == {"backup_age_seconds": 45000.0}
    assert result.message == "newest backup app-20260127.dump is 12.5 h old (finished 2026-01-27T16:30:00+00:00)"


def test_at_the_warn_limit_still_passes(target):
    assert check_once(CHECK, target, backup=found(timedelta(hours=26)), now=NOW).outcome == "pass"


def test_older_than_warn_age_warns(target):
    result = check_once(CHECK, target, backup=found(timedelta(hours=30)), now=NOW)
    assert result.outcome == "warn"
    assert result.message == (
        "newest backup app-20260127.dump is 30.0 h old (finished 2026-01-26T23:00:00+00:00), "
        "older than warn_age_hours 26 h"
    )


def test_older_than_max_age_fails(target):
    result = check_once(CHECK, target, backup=found(timedelta(hours=49, minutes=6)), now=NOW)
    assert result.outcome == "fail"
    assert result.observed == "49.1 h"
    assert "older than max_age_hours 49 h" in result.message
    assert result.data["backup_age_seconds"] == 176760.0


def test_finish_time_in_the_future_warns(target):
    result = check_once(CHECK, target, backup=found(-timedelta(minutes=30)), now=NOW)
    assert result.outcome == "warn"
    assert "30 minutes in the future" in result.message and "clock" in result.message
    assert result.data == {"backup_age_seconds": -1800.0}


def test_small_clock_skew_passes(target):
    result = check_once(CHECK, target, backup=found(-timedelta(minutes=4)), now=NOW)
    assert result.outcome == "pass", result.message
    assert result.observed == "0.0 h"


def test_no_backup_fails(target):
    lookup = BackupLookup("directory", missing="no file or folder matching '*.dump' in /backups/app")
    result = check_once(CHECK, target, backup=lookup, now=NOW)
    assert result.outcome == "fail"
    assert result.message == "no backup found: no file or folder matching '*.dump' in /backups/app"


def test_source_that_cannot_answer_is_an_error(target):
    lookup = BackupLookup("directory", error="listing /backups/app took longer than 60s")
    result = check_once(CHECK, target, backup=lookup, now=NOW)
    assert result.outcome == "error"
    assert result.message == "backup source directory could not answer: listing /backups/app took longer than 60s"


def test_no_lookup_is_an_error(target):
    assert check_once(CHECK, target, backup=None, now=NOW).outcome == "error"
