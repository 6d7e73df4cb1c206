"""The spool against a real PostgreSQL: rows spooled while the log database is
"down" (simply not inserted) reach the table later with their own verified_at
and id, exactly once, whatever crash or fault happens in between."""

from __future__ import annotations

import dataclasses
import json
import logging
import stat
import threading
import uuid
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from exporter import record
from exporter.db import TargetUnreachable, connect
from exporter.result import BackupInfo, BackupLookup, CheckResult, RunResult
from exporter.spool import CORRUPT_SUFFIX, Spool, SpoolError, row_for_spool
from tests.conftest import make_target

MIB = 1024 * 1024
DEAD_DSN = "host=127.0.0.1 port=1 dbname=postgres user=postgres"


def make_result(verified_at: datetime, target: str = "app", failing: bool = False) -> RunResult:
    checks = [
        CheckResult("critical_tables", "pass", "7 tables present", observed=7, expected=7, duration_seconds=0.01),
        CheckResult("backup_age", "warn", "newest backup is 30.0 h old", observed=30.0, expected=26),
    ]
    if failing:
        checks.append(CheckResult("rls_policies", "fail", "appointments has 3 policies, 5 expected", observed=3, expected=5))
    backup = BackupLookup(
        source="directory",
        info=BackupInfo(id=f"{target}-{verified_at:%Y%m%d}.dump", finished_at=verified_at - timedelta(hours=30),
                        size_bytes=42 * MIB, kind="pg_dump custom", location="/backups"),
    )
    return RunResult(target, verified_at, checks=checks, backup=backup, duration_seconds=0.41, facts={"trigger": "schedule"})


def writer(dsn: str) -> psycopg.Connection:
    return connect(make_target(dsn), log=True, read_only=False, autocommit=True)


def rows_by_id(dsn: str, ids) -> dict[uuid.UUID, dict]:
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(
            "SELECT id, verified_at, backup_id, backup_age_hours, backup_size_mb, status, checks_passed,"
            "       checks_failed, error_details, verification_details"
            "  FROM backup_verification_log WHERE id = ANY(%s)",
            [list(ids)],
        )
        names = [column.name for column in cur.description]
        return {row[0]: dict(zip(names, row)) for row in cur.fetchall()}


def count_ids(dsn: str, ids) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM backup_verification_log WHERE id = ANY(%s)", [list(ids)]).fetchone()[0]


@pytest.fixture
def spool(tmp_path) -> Spool:
    return Spool(tmp_path / "spool")


@pytest.fixture
def three_runs() -> list[RunResult]:
    # Old, distinct instants with microseconds: a lossy round trip would show.
    now = datetime.now(timezone.utc).replace(microsecond=123456)
    return [make_result(now - timedelta(days=days, minutes=7)) for days in (3, 2, 1)]


def spool_three(spool: Spool, runs: list[RunResult]) -> list[uuid.UUID]:
    return [spool.add("app", run) for run in runs]


# --- the round trip ----------------------------------------------------------------------


def test_spooled_rows_reach_the_table_with_their_verified_at_and_id(spool, demo_db, three_runs):
    ids = spool_three(spool, three_runs)
    assert spool.pending("app") == 3

    with writer(demo_db) as conn:
        assert spool.flush("app", conn) == 3

    rows = rows_by_id(demo_db, ids)
    assert set(rows) == set(ids)
    for row_id, run in zip(ids, three_runs):
        assert rows[row_id]["verified_at"] == run.verified_at, "the run's own time, not the time of the flush"
        assert rows[row_id]["status"] == "warning"
        assert rows[row_id]["verification_details"]["target"] == "app"
    assert spool.pending("app") == 0
    assert not spool.path("app").exists()


def test_a_spooled_row_is_the_row_a_direct_insert_writes(spool, demo_db):
    run = make_result(datetime.now(timezone.utc) - timedelta(hours=5), failing=True)
    with writer(demo_db) as conn:
        direct_id = record.insert(conn, run)
        # The same run under another id, so both rows exist side by side to compare.
        spooled_id = spool.add("app", row_for_spool(dataclasses.replace(run, id=None)))
        assert spool.flush("app", conn) == 1

    rows = rows_by_id(demo_db, [direct_id, spooled_id])
    direct, spooled = rows[direct_id], rows[spooled_id]
    for row in (direct, spooled):
        del row["id"]
    assert spooled == direct
    assert spooled["error_details"] == [{"name": "rls_policies", "outcome": "fail",
                                         "message": "appointments has 3 policies, 5 expected"}]


def test_row_for_spool_is_json_with_a_zoned_time_and_an_id():
    run = make_result(datetime(2026, 11, 27, 5, 0, 1, 410000, tzinfo=timezone.utc))
    row = row_for_spool(run)
    assert json.loads(json.dumps(row)) == row
    assert row["verified_at"] == "2026-11-27T05:00:01.410000+00:00"
    uuid.UUID(row["id"])
    assert row["backup_size_mb"] == 42 and row["backup_age_hours"] == 30
    # A run that already has an id keeps it: inserted and spooled, it is still one row.
    run.id = uuid.uuid4()
    assert row_for_spool(run)["id"] == str(run.id)


# --- exactly once ------------------------------------------------------------------------


def test_flushing_twice_inserts_once(spool, demo_db, three_runs):
    ids = spool_three(spool, three_runs)
    replay = spool.path("app").read_bytes()
    with writer(demo_db) as conn:
        assert spool.flush("app", conn) == 3
        assert spool.flush("app", conn) == 0
        spool.path("app").write_bytes(replay)  # the same lines once more
        assert spool.flush("app", conn) == 0
    assert count_ids(demo_db, ids) == 3
    assert not (spool.directory / f"app{CORRUPT_SUFFIX}").exists(), "a replayed row is skipped, not refused"


def test_a_crash_between_the_commit_and_the_removal_does_not_double_rows(spool, demo_db, three_runs):
    ids = spool_three(spool, three_runs)
    before_flush = spool.path("app").read_bytes()
    with writer(demo_db) as conn:
        assert spool.flush("app", conn) == 3
    # What a crash right after the commit leaves: the rows are in, the file is still there.
    spool.path("app").write_bytes(before_flush)
    late = spool.add("app", make_result(datetime.now(timezone.utc)))

    with writer(demo_db) as conn:
        assert spool.flush("app", conn) == 1, "only the run spooled after the crash is new"

    assert count_ids(demo_db, ids) == 3
    with psycopg.connect(demo_db) as conn:
        per_id = conn.execute(
            "SELECT id, count(*) FROM backup_verification_log WHERE id = ANY(%s) GROUP BY id", [ids + [late]]
        ).fetchall()
    assert sorted(n for _, n in per_id) == [1, 1, 1, 1]
    assert spool.pending() == 0
    assert not (spool.directory / f"app{CORRUPT_SUFFIX}").exists(), "a replayed row is skipped, not refused"


# --- the database not there --------------------------------------------------------------


def test_an_unreachable_log_database_leaves_the_spool_as_it_was(spool, three_runs):
    spool_three(spool, three_runs)
    before = spool.path("app").read_bytes()
    with pytest.raises(TargetUnreachable):
        with writer(DEAD_DSN) as conn:
            spool.flush("app", conn)
    assert spool.path("app").read_bytes() == before
    assert spool.pending("app") == 3


def test_a_connection_lost_during_the_flush_leaves_the_spool_and_a_later_flush_writes_it(
    spool, demo_db, three_runs, pg_server
):
    ids = spool_three(spool, three_runs)
    before = spool.path("app").read_bytes()
    conn = writer(demo_db)
    try:
        pg_server.execute("SELECT pg_terminate_backend(%s)", [conn.info.backend_pid])
        with pytest.raises(psycopg.OperationalError):
            spool.flush("app", conn)
    finally:
        conn.close()
    assert spool.path("app").read_bytes() == before
    assert count_ids(demo_db, ids) == 0

    with writer(demo_db) as conn:
        assert spool.flush("app", conn) == 3
    assert count_ids(demo_db, ids) == 3


def test_a_database_without_the_log_table_leaves_the_spool(spool, make_db, three_runs):
    spool_three(spool, three_runs)
    before = spool.path("app").read_bytes()
    with writer(make_db()) as conn, pytest.raises(psycopg.errors.UndefinedTable):
        spool.flush("app", conn)
    assert spool.path("app").read_bytes() == before


def test_flush_refuses_a_connection_inside_a_transaction(spool, demo_db, three_runs):
    # Inside the caller's transaction the insert would be a savepoint: the file would go
    # before anything is committed.
    spool_three(spool, three_runs)
    with connect(make_target(demo_db), log=True, read_only=False) as conn:
        conn.execute("SELECT 1")
        with pytest.raises(ValueError, match="no transaction open"):
            spool.flush("app", conn)
    assert spool.pending("app") == 3


def test_flushing_an_empty_spool_writes_nothing(spool, demo_db):
    with writer(demo_db) as conn:
        assert spool.flush("app", conn) == 0
    assert not spool.directory.exists()


# --- damaged lines -----------------------------------------------------------------------


def test_a_line_cut_short_by_a_crash_is_set_aside_and_the_rest_written(spool, demo_db, three_runs, caplog):
    first_two = [spool.add("app", run) for run in three_runs[:2]]
    whole = json.dumps(row_for_spool(three_runs[2])).encode()
    with spool.path("app").open("ab") as f:
        f.write(whole[:40])  # the crash: no rest, no newline
    assert spool.pending("app") == 2, "a cut-short line is not a waiting row"

    # The next run after the restart starts on its own line instead of gluing onto the fragment.
    after_restart = spool.add("app", make_result(datetime.now(timezone.utc)))
    with writer(demo_db) as conn, caplog.at_level(logging.WARNING, logger="pgbv.spool"):
        assert spool.flush("app", conn) == 3

    assert count_ids(demo_db, first_two + [after_restart]) == 3
    aside = spool.directory / f"app{CORRUPT_SUFFIX}"
    assert aside.read_bytes() == whole[:40] + b"\n"
    assert not spool.path("app").exists()
    assert any(str(aside) in message and "line 3" in message for message in caplog.messages), caplog.messages


def test_a_trailing_fragment_is_set_aside_and_the_valid_lines_written(spool, demo_db, three_runs, caplog):
    ids = spool_three(spool, three_runs)
    with spool.path("app").open("ab") as f:
        f.write(b'{"id": "0b9c')
    with writer(demo_db) as conn, caplog.at_level(logging.WARNING, logger="pgbv.spool"):
        assert spool.flush("app", conn) == 3
    assert count_ids(demo_db, ids) == 3
    assert (spool.directory / f"app{CORRUPT_SUFFIX}").read_bytes() == b'{"id": "0b9c\n'
    assert "cut short" in caplog.text


def test_invalid_lines_are_set_aside_without_blocking_the_valid_ones(spool, demo_db, three_runs):
    ids = spool_three(spool, three_runs)
    lines = spool.path("app").read_bytes().splitlines(keepends=True)
    bad_status = json.dumps({**json.loads(lines[0]), "id": str(uuid.uuid4()), "status": "ok"}).encode() + b"\n"
    spool.path("app").write_bytes(lines[0] + b"not json at all\n" + lines[1] + bad_status + b"[1, 2]\n" + lines[2])
    assert spool.pending("app") == 6

    with writer(demo_db) as conn:
        assert spool.flush("app", conn) == 3
    assert count_ids(demo_db, ids) == 3
    aside = (spool.directory / f"app{CORRUPT_SUFFIX}").read_bytes().splitlines()
    assert aside == [b"not json at all", bad_status.rstrip(b"\n"), b"[1, 2]"]


def test_a_row_the_database_refuses_is_set_aside_and_the_others_written(spool, demo_db, three_runs, caplog):
    # jsonb cannot hold a NUL character: valid JSON, refused by PostgreSQL only.
    ids = [spool.add("app", three_runs[0])]
    poisoned = row_for_spool(three_runs[1])
    poisoned["verification_details"]["checks"][0]["message"] = "bad\x00byte"
    poisoned_id = spool.add("app", poisoned)
    ids.append(spool.add("app", three_runs[2]))

    with writer(demo_db) as conn, caplog.at_level(logging.WARNING, logger="pgbv.spool"):
        assert spool.flush("app", conn) == 2
    assert count_ids(demo_db, ids) == 2
    assert count_ids(demo_db, [poisoned_id]) == 0
    assert str(poisoned_id) in (spool.directory / f"app{CORRUPT_SUFFIX}").read_text()
    assert "refused by the database" in caplog.text
    assert spool.pending() == 0


# --- concurrency -------------------------------------------------------------------------


def test_concurrent_adds_make_one_whole_line_each(spool):
    base = datetime.now(timezone.utc)
    errors: list[BaseException] = []

    def add_many(worker: int) -> None:
        try:
            for i in range(25):
                spool.add("app", make_result(base - timedelta(minutes=worker * 100 + i)))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=add_many, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not errors
    data = spool.path("app").read_bytes()
    assert data.endswith(b"\n")
    lines = data.splitlines()
    assert len(lines) == 100
    rows = [json.loads(line) for line in lines]
    assert len({row["id"] for row in rows}) == 100
    assert spool.pending("app") == 100


def test_adding_while_another_spool_object_flushes_loses_nothing(tmp_path, demo_db):
    # Two Spool objects share no thread lock, like two pgbv processes: only the file lock
    # keeps a flush from removing a line appended after it read the file.
    directory = tmp_path / "spool"
    adder, flusher = Spool(directory), Spool(directory)
    base = datetime.now(timezone.utc)
    ids: list[uuid.UUID] = []
    done = threading.Event()

    def add_all() -> None:
        try:
            for i in range(60):
                ids.append(adder.add("app", make_result(base - timedelta(minutes=i))))
        finally:
            done.set()

    thread = threading.Thread(target=add_all)
    thread.start()
    written = 0
    with writer(demo_db) as conn:
        while not done.is_set():
            written += flusher.flush("app", conn)
        thread.join()
        written += flusher.flush("app", conn)

    assert len(ids) == 60
    assert written == 60
    assert count_ids(demo_db, ids) == 60
    assert flusher.pending() == 0


# --- pending, the directory, refusals ----------------------------------------------------


def test_pending_counts_per_target_and_in_all(spool, three_runs):
    assert spool.pending() == 0 and spool.pending("app") == 0  # no directory yet
    spool_three(spool, three_runs)
    spool.add("billing", make_result(datetime.now(timezone.utc), target="billing"))
    assert spool.pending("app") == 3
    assert spool.pending("billing") == 1
    assert spool.pending("other") == 0
    assert spool.pending() == 4


def test_the_directory_is_created_private(spool, three_runs):
    spool.add("app", three_runs[0])
    assert stat.S_IMODE(spool.directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(spool.path("app").stat().st_mode) == 0o600


def test_an_unwritable_directory_is_a_spool_error_naming_the_path(tmp_path, three_runs):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a regular file where the spool directory should go\n")
    spool = Spool(blocker / "spool")
    with pytest.raises(SpoolError) as caught:
        spool.add("app", three_runs[0])
    assert str(blocker / "spool") in str(caught.value)
    assert spool.pending() == 0


def test_a_row_that_could_never_be_inserted_is_refused_when_spooled(spool):
    row = row_for_spool(make_result(datetime.now(timezone.utc)))
    with pytest.raises(SpoolError, match="no time zone"):
        spool.add("app", {**row, "verified_at": datetime(2026, 1, 1, 5, 0)})
    with pytest.raises(SpoolError, match="status"):
        spool.add("app", {**row, "status": "ok"})
    with pytest.raises(SpoolError, match="checks_passed"):
        spool.add("app", {**row, "checks_passed": "14"})
    assert spool.pending() == 0


def test_a_row_without_an_id_gets_one_before_it_is_written(spool, demo_db):
    row = row_for_spool(make_result(datetime.now(timezone.utc)))
    del row["id"]
    row_id = spool.add("app", row)
    assert json.loads(spool.path("app").read_text())["id"] == str(row_id)


def test_target_names_cannot_leave_the_directory(spool):
    for name in ("../etc/passwd", ".hidden", "a/b", "app\n", ""):
        with pytest.raises(ValueError):
            spool.path(name)


def test_a_run_inserted_and_then_spooled_is_one_row(spool, demo_db):
    # The connection dropped after the server committed: the daemon spools the same result.
    run = make_result(datetime.now(timezone.utc) - timedelta(hours=1))
    with writer(demo_db) as conn:
        inserted_id = record.insert(conn, run)
        assert spool.add("app", run) == inserted_id
        assert spool.flush("app", conn) == 0
    assert list(rows_by_id(demo_db, [inserted_id])) == [inserted_id]
