"""backup_size judges the backup source's answer: big enough passes; too small or
empty fails; no size reported, or no answer, is an error; no backup fails. And the
trend: much smaller than the median of the previous backups (as the source lists them,
or as earlier runs recorded them) fails, half as much warns."""

import os
import shutil
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from exporter import record
from exporter.backups import source_for
from exporter.checks.backup_size import CHECK, _human
from exporter.pgtools import find_tool, run_tool
from exporter.result import BackupInfo, BackupLookup, RunResult
from tests.checks.helpers import check_once
from tests.conftest import execute, make_target

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


def sized(size: int | None, previous: tuple[int, ...] | None = ()) -> BackupLookup:
    return BackupLookup("directory", info=BackupInfo("app.dump", NOW, size, "file", previous_sizes=previous))


def test_applies_only_with_a_backup_source(target, pg_server):
    assert CHECK.applies(target)
    assert not CHECK.applies(make_target(pg_server.admin_dsn, checks={}))


def test_big_enough_passes(target):
    result = check_once(CHECK, target, backup=sized(19 * MIB + MIB // 2), now=NOW)
    assert result.outcome == "pass", result.message
    assert result.message == (
        "newest backup app.dump is 19.5 MB; no previous file backup that the directory source lists to compare "
        "its size with (the size trend starts with the next one)"
    )
    assert result.expected == ">= 1 MB, at most 50% below the median of the previous backups"
    assert result.data == {"backup_size_bytes": 19 * MIB + MIB // 2, "previous_count": 0}


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


# --- the size trend --------------------------------------------------------------------


@pytest.mark.parametrize(
    "previous, size, outcome, words",
    [
        # The median, not the mean: one odd backup (the 2 MB one) does not move it.
        ((10 * MIB, 2 * MIB, 10 * MIB), 10 * MIB, "pass", "the same size as the median 10.0 MB of the 3 previous"),
        ((10 * MIB, 11 * MIB, 9 * MIB), 12 * MIB, "pass", "20% larger than the median 10.0 MB of the 3 previous"),
        ((10 * MIB,) * 4, 8 * MIB, "pass", "20% smaller than the median 10.0 MB of the 4 previous"),
        ((10 * MIB,) * 4, 7 * MIB, "warn", "30% smaller than the median 10.0 MB of the 4 previous"),
        ((10 * MIB,) * 4, 4 * MIB, "fail", "60% smaller than the median 10.0 MB of the 4 previous"),
        ((10 * MIB,) * 4, 5 * MIB, "warn", "50% smaller"),  # exactly the limit: not more than it
    ],
)
def test_trend_against_the_median_of_the_listed_backups(target, previous, size, outcome, words):
    result = check_once(CHECK, target, backup=sized(size, previous), now=NOW)
    assert result.outcome == outcome, result.message
    assert words in result.message and "file backup(s) the directory source lists" in result.message
    assert result.data["previous_count"] == len(previous)
    assert result.data["previous_median_bytes"] == sorted(previous)[len(previous) // 2]


def test_the_limit_is_configurable(pg_server):
    strict = make_target(pg_server.admin_dsn, checks={}, backup={
        "source": "directory", "path": "/b", "min_size_mb": 0, "max_size_drop_percent": 10})
    result = check_once(CHECK, strict, backup=sized(8 * MIB, (10 * MIB,)), now=NOW)
    assert result.outcome == "fail" and "(max_size_drop_percent 10)" in result.message
    assert check_once(CHECK, strict, backup=sized(9_500_000, (10 * MIB,)), now=NOW).outcome == "warn"


def test_min_size_still_fails_first(target):
    result = check_once(CHECK, target, backup=sized(512, (600,)), now=NOW)
    assert result.outcome == "fail" and "smaller than min_size_mb" in result.message


# Real dumps: the same table at its full size, after losing 30% of its rows and after
# losing 80% (the 47.5 MB -> 9.5 MB, scaled down: the ratio is what counts).
ROWS = 20000


@pytest.fixture(scope="module")
def shrinking_dumps(pg_server, tmp_path_factory):
    name = f"pgbv_test_{uuid.uuid4().hex[:12]}"
    pg_server.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    folder = tmp_path_factory.mktemp("shrinking")
    dumps = {}
    try:
        dsn = pg_server.dsn(name)
        pg_dump = find_tool("pg_dump", pg_server.version_num)
        execute(dsn, f"CREATE TABLE t AS SELECT g AS id, md5(g::text) || md5((g + 1)::text) AS payload FROM generate_series(1, {ROWS}) g")
        for label, keep in (("full", ROWS), ("minus30", ROWS * 7 // 10), ("minus80", ROWS // 5)):
            execute(dsn, f"DELETE FROM t WHERE id > {keep}")
            dumps[label] = folder / f"{label}.dump"
            # Uncompressed: the dump's size follows the rows it holds.
            run_tool(pg_dump, ["-Fc", "-Z0", "-f", str(dumps[label]), "-d", dsn], timeout=120)
            if label == "full":  # the same rows, compressed (pg_dump's default)
                dumps["full_compressed"] = folder / "full_compressed.dump"
                run_tool(pg_dump, ["-Fc", "-f", str(dumps["full_compressed"]), "-d", dsn], timeout=120)
    finally:
        pg_server.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    return dumps


def backup_folder(tmp_path: Path, dumps: dict[str, Path], *labels: str) -> Path:
    """A backup folder holding copies of the dumps, one a day, the last one newest."""
    folder = tmp_path / "backups"
    folder.mkdir()
    start = time.time() - 86400 * len(labels)
    for day, label in enumerate(labels):
        copy = folder / f"app-2026-01-{day + 1:02d}.dump"
        shutil.copyfile(dumps[label], copy)
        os.utime(copy, (start + 86400 * day, start + 86400 * day))
    return folder


def run_on_folder(pg_server, folder: Path, **backup):
    target = make_target(pg_server.admin_dsn, checks={}, backup={
        "source": "directory", "path": str(folder), "pattern": "*.dump", "min_size_mb": 0, **backup})
    lookup = source_for(target.backup).lookup()
    assert lookup.info is not None, lookup
    return check_once(CHECK, target, backup=lookup)


def test_real_dumps_shrinking_to_a_fifth_fail(pg_server, shrinking_dumps, tmp_path):
    full, shrunk = (shrinking_dumps[k].stat().st_size for k in ("full", "minus80"))
    folder = backup_folder(tmp_path, shrinking_dumps, "full", "full", "full", "minus80")
    result = run_on_folder(pg_server, folder)
    print(f"\n{full} -> {shrunk} bytes: {result.message}")
    assert result.outcome == "fail", result.message
    assert result.message.startswith("newest backup app-2026-01-04.dump is ")
    assert f"smaller than the median {_human(full)} of the 3 previous pg_dump custom backup(s) the directory source lists" in result.message
    assert result.data["previous_median_bytes"] == full and result.data["backup_size_bytes"] == shrunk


def test_real_dumps_shrinking_by_30_percent_warn(pg_server, shrinking_dumps, tmp_path):
    result = run_on_folder(pg_server, backup_folder(tmp_path, shrinking_dumps, "full", "full", "minus30"))
    assert result.outcome == "warn", result.message
    assert "(fails above max_size_drop_percent 50)" in result.message


def test_real_dumps_of_a_steady_database_pass(pg_server, shrinking_dumps, tmp_path):
    result = run_on_folder(pg_server, backup_folder(tmp_path, shrinking_dumps, "minus30", "full", "full", "full"))
    assert result.outcome == "pass", result.message
    assert "the same size as the median" in result.message


def test_real_dumps_of_another_kind_are_not_compared(pg_server, shrinking_dumps, tmp_path):
    folder = backup_folder(tmp_path, shrinking_dumps, "full", "minus80")
    # An older, bigger plain SQL dump next to the custom ones: not the same kind.
    plain = folder / "app-2025-12-31.sql"
    plain.write_bytes(b"--\n-- PostgreSQL database dump\n" + b"x" * (4 * shrinking_dumps["full"].stat().st_size))
    os.utime(plain, (time.time() - 10 * 86400,) * 2)
    result = run_on_folder(pg_server, folder, pattern="*")
    assert result.outcome == "fail", result.message
    assert "of the 1 previous pg_dump custom backup(s)" in result.message


def test_a_compressed_dump_after_uncompressed_ones_is_not_a_drop(pg_server, shrinking_dumps, tmp_path):
    # Same rows, -Z0 three days then compressed: far smaller, and no data lost. The
    # archive header says how each was compressed; only like is compared with like.
    full, compressed = (shrinking_dumps[k].stat().st_size for k in ("full", "full_compressed"))
    assert compressed * 2 < full
    folder = backup_folder(tmp_path, shrinking_dumps, "full", "full", "full", "full_compressed")
    result = run_on_folder(pg_server, folder)
    assert result.outcome == "pass", result.message
    assert "no previous pg_dump custom backup that the directory source lists" in result.message
    # The uncompressed ones are still compared with each other (see the tests above).


def test_an_error_message_in_place_of_the_newest_dump_is_compared_with_the_dumps(pg_server, shrinking_dumps, tmp_path):
    # pg_dump failed and the job saved its error text under the dump's name, with
    # min_size_mb 0: no kind of its own to start a trend, so it faces the dumps.
    folder = backup_folder(tmp_path, shrinking_dumps, "full", "full", "full")
    error = folder / "app-2026-01-09.dump"
    error.write_bytes(b'pg_dump: error: connection to server failed: FATAL:  database "app" does not exist\n')
    result = run_on_folder(pg_server, folder)
    assert result.outcome == "fail", result.message
    assert "of the 3 previous" in result.message


def test_first_real_dump_passes_and_says_so(pg_server, shrinking_dumps, tmp_path):
    result = run_on_folder(pg_server, backup_folder(tmp_path, shrinking_dumps, "minus80"))
    assert result.outcome == "pass"
    assert "no previous pg_dump custom backup that the directory source lists" in result.message


# --- sources that list only the newest: the sizes earlier runs recorded ------------------


def record_run(dsn: str, target: str, backup_id: str, size: int, kind: str = "command", at: datetime | None = None) -> None:
    result = RunResult(target, at or NOW - timedelta(days=1))
    result.backup = BackupLookup("command", info=BackupInfo(backup_id, result.verified_at, size, kind))
    with psycopg.connect(dsn, autocommit=True) as conn:
        record.insert(conn, result)


def command_lookup(size: int, backup_id: str = "new") -> BackupLookup:
    return BackupLookup("command", info=BackupInfo(backup_id, NOW, size, "command"))


def command_target(dsn: str, name: str = "app"):
    return make_target(dsn, name=name, checks={}, backup={"source": "command", "command": ["true"], "min_size_mb": 0})


def test_recorded_sizes_are_the_fallback(demo_db):
    target = command_target(demo_db)
    hour = timedelta(hours=1)
    # b2 was seen by three runs: counted once. Another target's and another kind's
    # backups, and the newest backup's own earlier records, are not compared.
    record_run(demo_db, "app", "b1", 10 * MIB, at=NOW - 48 * hour)
    for n in range(3):
        record_run(demo_db, "app", "b2", 12 * MIB, at=NOW - (30 - n) * hour)
    record_run(demo_db, "app", "b3", 11 * MIB, at=NOW - 24 * hour)
    record_run(demo_db, "other", "o1", 100 * MIB, at=NOW - 2 * hour)
    record_run(demo_db, "app", "x1", 100 * MIB, kind="pg_dump custom", at=NOW - 2 * hour)
    record_run(demo_db, "app", "new", 100 * MIB, at=NOW - hour)
    result = check_once(CHECK, target, backup=command_lookup(2 * MIB), now=NOW)
    assert result.outcome == "fail", result.message
    assert "the median 11.0 MB of the 3 previous command backup(s) earlier pgbv runs recorded" in result.message
    healthy = check_once(CHECK, target, backup=command_lookup(11 * MIB), now=NOW)
    assert healthy.outcome == "pass", healthy.message


def test_no_recorded_sizes_passes_and_says_so(demo_db):
    result = check_once(CHECK, command_target(demo_db), backup=command_lookup(2 * MIB), now=NOW)
    assert result.outcome == "pass"
    assert "no previous command backup that earlier pgbv runs recorded" in result.message


def test_recorded_sizes_that_cannot_be_read_warn(pg_server, make_db):
    # A database without the log table: the trend could not be checked, which is said.
    result = check_once(CHECK, command_target(make_db()), backup=command_lookup(2 * MIB), now=NOW)
    assert result.outcome == "warn"
    assert "its size trend was not checked: the sizes earlier pgbv runs recorded could not be read" in result.message
    assert "backup_verification_log" in result.message
