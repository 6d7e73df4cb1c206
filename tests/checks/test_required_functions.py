"""required_functions against a real database: each exists, with any argument list."""

import psycopg

from exporter.checks.required_functions import CHECK
from tests.checks.catalog_support import run_while_locked
from tests.checks.helpers import check_once
from tests.conftest import execute as _sql, make_target


def test_demo_passes(demo_db):
    result = check_once(CHECK, make_target(demo_db))
    assert result.outcome == "pass", result.message
    assert result.message == "all 2 required functions exist"
    assert result.observed["cleanup_old_webhook_logs"] == ["public.cleanup_old_webhook_logs(retention_days integer)"]


def test_dropped_function_fails_by_name(demo_db):
    _sql(demo_db, "DROP FUNCTION cleanup_old_webhook_logs(integer)")
    result = check_once(CHECK, make_target(demo_db))
    assert result.outcome == "fail"
    assert result.message == "1 of 2 required functions missing: cleanup_old_webhook_logs"


def test_any_argument_list_will_do(demo_db):
    _sql(
        demo_db,
        "CREATE FUNCTION cleanup_old_webhook_logs(retention interval) RETURNS integer LANGUAGE sql AS 'SELECT 0'",
        "DROP FUNCTION cleanup_old_webhook_logs(integer)",
    )
    result = check_once(CHECK, make_target(demo_db))
    assert result.outcome == "pass", result.message
    assert result.observed["cleanup_old_webhook_logs"] == ["public.cleanup_old_webhook_logs(retention interval)"]


def test_schema_qualified_and_hostile_names(demo_db):
    _sql(demo_db, "CREATE SCHEMA ops", "CREATE FUNCTION ops.rotate() RETURNS void LANGUAGE sql AS ''", "CREATE TABLE t (id int)")
    hostile = "f(); DROP TABLE t; --"
    names = ["ops.rotate", "public.rotate", "rotate", "public.book_appointment_with_lock", hostile]
    result = check_once(CHECK, make_target(demo_db, checks={"required_functions": names}))
    assert result.outcome == "fail"
    assert result.message == f"3 of 5 required functions missing: public.rotate, rotate, {hostile}"
    assert set(result.observed) == {"ops.rotate", "public.book_appointment_with_lock"}
    with psycopg.connect(demo_db) as conn:
        assert conn.execute("SELECT to_regclass('public.t') IS NOT NULL").fetchone()[0]


def test_timeout_is_an_error(demo_db):
    result = run_while_locked(CHECK, make_target(demo_db, statement_timeout_seconds=0.5), "pg_proc", "pg_catalog")
    assert result.outcome == "error" and "timed out" in result.message


def test_quoted_and_raw_mixed_case_names(demo_db):
    # Two functions whose names differ only in case: a raw name prefers its exact
    # spelling, then the lower-case fold; a quoted one is exact.
    _sql(
        demo_db,
        'CREATE FUNCTION "Audit"() RETURNS void LANGUAGE sql AS \'\'',
        "CREATE FUNCTION audit(n integer) RETURNS void LANGUAGE sql AS ''",
        'CREATE SCHEMA "Ops"', 'CREATE FUNCTION "Ops".rotate() RETURNS void LANGUAGE sql AS \'\'',
    )
    names = ["Audit", "AUDIT", '"audit"', '"Ops".ROTATE', "Ops.Rotate", '"AUDIT"', '"Ops"."Rotate"']
    result = check_once(CHECK, make_target(demo_db, checks={"required_functions": names}))
    assert result.observed == {
        "Audit": ["public.Audit()"], "AUDIT": ["public.audit(n integer)"],
        '"audit"': ["public.audit(n integer)"], '"Ops".ROTATE': ["Ops.rotate()"], "Ops.Rotate": ["Ops.rotate()"],
    }
    assert result.message == '2 of 7 required functions missing: "AUDIT", "Ops"."Rotate"'
