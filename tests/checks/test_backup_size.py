"""backup_size judges the backup source's answer: big enough passes; too small or
empty fails; no size reported, or no answer, is an error; no backup fails."""

from datetime import datetime, timezone

import pytest

from exporter.checks.backup_size import CHECK
from exporter.result import BackupInfo, BackupLookup
from tests.checks.helpers import check_once
from tests.conftest import make_target

NOW = datetime(2026, 1, 28, 5, 0, tzinfo=timezone.utc)
MIB = 1024 * 1024


def make(pg_server, min_size_mb: float = 1):
    # These checks send no SQL; any database will do for the runner's transaction.
    return make_target(
        pg_server.admin_dsn, checks={},
        backup={"source": "directory", "path": "/backups/app", "min_size_mb": min_size_mb},
    )


@pytest.fixture
def target(pg_server):
    return make(pg_server)


def sized(size: int | None) -> BackupLookup:
    return BackupLookup("directory", info=BackupInfo("app.dump", NOW, size, "file"))


def test_applies_only_with_a_backup_source(target, pg_server):
    assert CHECK.applies(target)
    assert not CHECK.applies(make_target(pg_server.admin_dsn, checks={}))


def test_big_enough_passes(target):
    result = check_once(CHECK, target, backup=sized(19 * MIB + MIB // 2), now=NOW)
    assert result.outcome == "pass", result.message
    assert result.message == "newest backup app.dump is 19.5 MB"
    assert result.expected == ">= 1 MB"
    assert result.data == {"backup_size_bytes": 19 * MIB + MIB // 2}


def test_exactly_the_minimum_passes(target):
    assert check_once(CHECK, target, backup=sized(MIB), now=NOW).outcome == "pass"


def test_too_small_fails(target):
    result = check_once(CHECK, target, backup=sized(MIB - 1), now=NOW)
    assert result.outcome == "fail"
    assert result.message == "newest backup app.dump is 1024.0 kB, smaller than min_size_mb 1 MB"
    assert result.data == {"backup_size_bytes": MIB - 1}


def test_header_only_dump_fails(target):
    result = check_once(CHECK, target, backup=sized(512), now=NOW)
    assert result.outcome == "fail"
    assert result.observed == "512 bytes"


def test_empty_backup_fails_even_without_a_minimum(pg_server):
    target = make(pg_server, min_size_mb=0)
    assert check_once(CHECK, target, backup=sized(10), now=NOW).outcome == "pass"
    result = check_once(CHECK, target, backup=sized(0), now=NOW)
    assert result.outcome == "fail"
    assert result.message == "newest backup app.dump is empty (0 bytes)"


def test_no_size_reported_is_an_error(target):
    result = check_once(CHECK, target, backup=sized(None), now=NOW)
    assert result.outcome == "error"
    assert result.message == "backup source directory did not report a size for backup app.dump"


def test_no_backup_fails(target):
    result = check_once(CHECK, target, backup=BackupLookup("directory", missing="folder /backups/app does not exist"), now=NOW)
    assert result.outcome == "fail"
    assert result.message == "no backup found: folder /backups/app does not exist"


def test_source_that_cannot_answer_is_an_error(target):
    result = check_once(CHECK, target, backup=BackupLookup("directory", error="cannot read folder /backups/app: Permission denied"), now=NOW)
    assert result.outcome == "error"
    assert "Permission denied" in result.message
