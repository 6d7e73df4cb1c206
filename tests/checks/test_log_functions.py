"""log_functions (seed tests 4, 5, 6) against real databases: the migrated functions
pass and answer from the table; missing or different ones fail by name; cleanup is
never called."""

from datetime import datetime, timedelta, timezone

import psycopg

from exporter.checks.log_functions import CHECK
from tests.checks.catalog_support import run_prepared
from tests.checks.helpers import check_once
from tests.conftest import make_target


def alter(dsn: str, statement: str, params=None) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statement, params)


def insert_runs(dsn: str, *rows: tuple[timedelta, timedelta]) -> list[datetime]:
    """Rows verified ``ago`` and written ``written_ago`` before now; their verified_at."""
    now = datetime.now(timezone.utc)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for ago, written_ago in rows:
            conn.execute(
                "INSERT INTO backup_verification_log (verified_at, created_at, status) VALUES (%s, %s, 'success')",
                [now - ago, now - written_ago],
            )
    return [now - ago for ago, _ in rows]


def test_always_applies(demo_db):
    assert CHECK.applies(make_target(demo_db, checks={}))
    assert CHECK.uses_log_db


def test_empty_log_passes(demo_db):
    result, statements = run_prepared(CHECK, make_target(demo_db))
    assert result.outcome == "pass", result.message
    assert result.message == (
        "all 3 functions present with the expected signatures; get_latest_backup_verification() returned "
        "no row (the log is empty); get_backup_verification_history(7) returned 0 rows"
    )
    assert result.data == {"latest_verified_at": None, "history_rows_7d": 0}
    assert statements == 2


def test_functions_answer_from_the_table(demo_db):
    newest, recent, old = insert_runs(
        demo_db,
        (timedelta(hours=2), timedelta(hours=2)),
        (timedelta(days=3), timedelta(days=3)),
        (timedelta(days=10), timedelta(days=10)),
    )
    result = check_once(CHECK, make_target(demo_db))
    assert result.outcome == "pass", result.message
    assert result.data == {"latest_verified_at": newest.isoformat(), "history_rows_7d": 2}
    assert result.observed["get_latest_backup_verification()"] == {"rows": 1, "verified_at": newest.isoformat()}
    assert result.observed["get_backup_verification_history(7)"]["rows"] == 2
    assert f"returned the run of {newest.isoformat()}" in result.message


def test_cleanup_is_never_called(demo_db):
    insert_runs(demo_db, (timedelta(days=400), timedelta(days=400)))
    assert check_once(CHECK, make_target(demo_db)).outcome == "pass"
    with psycopg.connect(demo_db) as conn:
        assert conn.execute("SELECT count(*) FROM backup_verification_log").fetchone()[0] == 1


def test_absent_functions_fail(make_db):
    result = check_once(CHECK, make_target(make_db()))
    assert result.outcome == "fail"
    assert result.observed == [
        "function get_latest_backup_verification() is missing in schema public",
        "function get_backup_verification_history(days integer) is missing in schema public",
        "function cleanup_old_backup_verification_logs(retention_days integer) is missing in schema public",
    ]
    assert result.message == "; ".join(result.observed)


def test_dropped_function_fails(demo_db):
    alter(demo_db, "DROP FUNCTION cleanup_old_backup_verification_logs(integer)")
    result = check_once(CHECK, make_target(demo_db))
    assert result.outcome == "fail"
    assert result.message == "function cleanup_old_backup_verification_logs(retention_days integer) is missing in schema public"


def test_other_signature_fails(demo_db):
    alter(demo_db, """
        DROP FUNCTION get_backup_verification_history(integer);
        CREATE FUNCTION get_backup_verification_history(days bigint)
        RETURNS SETOF backup_verification_log LANGUAGE sql STABLE
        AS $$ SELECT * FROM backup_verification_log $$;
    """)
    result = check_once(CHECK, make_target(demo_db))
    assert result.outcome == "fail"
    assert result.message == (
        "function get_backup_verification_history(days integer) is missing in schema public; "
        "found get_backup_verification_history(days bigint) instead"
    )


def test_cleanup_without_its_default_fails(demo_db):
    alter(demo_db, """
        DROP FUNCTION cleanup_old_backup_verification_logs(integer);
        CREATE FUNCTION cleanup_old_backup_verification_logs(retention_days integer)
        RETURNS integer LANGUAGE sql AS $$ SELECT 0 $$;
    """)
    result = check_once(CHECK, make_target(demo_db))
    assert result.outcome == "fail"
    assert "expected (retention_days integer DEFAULT 90)" in result.message


def test_latest_by_created_at_fails(demo_db):
    # A spooled result reaches the table late: the newest run is not the newest row.
    alter(demo_db, """
        CREATE OR REPLACE FUNCTION get_latest_backup_verification()
        RETURNS TABLE (id uuid, verified_at timestamptz, status text, backup_id text, backup_age_hours integer,
                       backup_size_mb integer, checks_passed integer, checks_failed integer,
                       error_details jsonb, verification_details jsonb)
        LANGUAGE sql STABLE AS $$
            SELECT l.id, l.verified_at, l.status, l.backup_id, l.backup_age_hours, l.backup_size_mb,
                   l.checks_passed, l.checks_failed, l.error_details, l.verification_details
              FROM backup_verification_log l ORDER BY l.created_at DESC LIMIT 1
        $$;
    """)
    newest, spooled = insert_runs(
        demo_db, (timedelta(hours=1), timedelta(hours=1)), (timedelta(hours=5), timedelta(minutes=10))
    )
    result = check_once(CHECK, make_target(demo_db))
    assert result.outcome == "fail"
    assert result.message == (
        f"get_latest_backup_verification() returned the run of {spooled.isoformat()}, but the newest run in "
        f"backup_verification_log is of {newest.isoformat()} (it must go by verified_at)"
    )


def test_history_oldest_first_or_wrong_window_fails(demo_db):
    alter(demo_db, """
        CREATE OR REPLACE FUNCTION get_backup_verification_history(days integer)
        RETURNS TABLE (id uuid, verified_at timestamptz, status text, backup_id text, backup_age_hours integer,
                       backup_size_mb integer, checks_passed integer, checks_failed integer,
                       error_details jsonb, verification_details jsonb)
        LANGUAGE sql STABLE AS $$
            SELECT l.id, l.verified_at, l.status, l.backup_id, l.backup_age_hours, l.backup_size_mb,
                   l.checks_passed, l.checks_failed, l.error_details, l.verification_details
              FROM backup_verification_log l ORDER BY l.verified_at
        $$;
    """)
    insert_runs(demo_db, (timedelta(hours=1), timedelta(hours=1)), (timedelta(days=9), timedelta(days=9)))
    result = check_once(CHECK, make_target(demo_db))
    assert result.outcome == "fail"
    assert result.data["differences"] == [
        "get_backup_verification_history(7) returned 2 rows, but backup_verification_log holds 1 of the last 7 days",
        "get_backup_verification_history(7) does not return the newest run first",
    ]


def test_hand_applied_functions_returning_fewer_columns_pass(demo_db):
    alter(demo_db, """
        DROP FUNCTION get_latest_backup_verification();
        CREATE FUNCTION get_latest_backup_verification()
        RETURNS TABLE (verified_at timestamptz, status text, backup_age_hours integer,
                       checks_passed integer, checks_failed integer, error_details jsonb)
        LANGUAGE sql STABLE AS $$
            SELECT l.verified_at, l.status, l.backup_age_hours, l.checks_passed, l.checks_failed, l.error_details
              FROM backup_verification_log l ORDER BY l.verified_at DESC LIMIT 1
        $$;
    """)
    [newest] = insert_runs(demo_db, (timedelta(hours=1), timedelta(hours=1)))
    result = check_once(CHECK, make_target(demo_db))
    assert result.outcome == "pass", result.message
    assert result.data["latest_verified_at"] == newest.isoformat()


def test_functions_without_their_table_fail(demo_db):
    # SQL function bodies are resolved when called, so the table can go and leave them behind.
    alter(demo_db, "DROP TABLE backup_verification_log")
    result = check_once(CHECK, make_target(demo_db))
    assert result.outcome == "fail"
    assert result.message == "the functions exist but backup_verification_log does not; run pgbv migrate"


def test_function_that_breaks_when_called_is_an_error(demo_db):
    alter(demo_db, """
        CREATE OR REPLACE FUNCTION get_backup_verification_history(days integer)
        RETURNS TABLE (id uuid, verified_at timestamptz, status text, backup_id text, backup_age_hours integer,
                       backup_size_mb integer, checks_passed integer, checks_failed integer,
                       error_details jsonb, verification_details jsonb)
        LANGUAGE plpgsql STABLE AS $$ BEGIN RAISE EXCEPTION 'history is broken'; END $$;
    """)
    result = check_once(CHECK, make_target(demo_db))
    assert result.outcome == "error"
    assert "history is broken" in result.message


def test_times_are_reported_in_utc_whatever_the_session_time_zone(demo_db):
    with psycopg.connect(demo_db, autocommit=True) as conn:
        dbname = conn.info.dbname
        conn.execute(f'ALTER DATABASE "{dbname}" SET timezone = \'Asia/Kolkata\'')
    [newest] = insert_runs(demo_db, (timedelta(hours=1), timedelta(hours=1)))
    result = check_once(CHECK, make_target(demo_db))
    assert result.data["latest_verified_at"] == newest.isoformat()
    assert result.data["latest_verified_at"].endswith("+00:00")
