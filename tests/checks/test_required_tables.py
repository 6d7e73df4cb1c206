"""required_tables against a real database: tables must exist, empty or not."""

import psycopg

from exporter.checks.required_tables import CHECK
from tests.checks.catalog_support import run_while_locked
from tests.checks.helpers import check_once
from tests.conftest import execute as _sql, make_target


def test_demo_passes_even_with_an_empty_required_table(demo_db):
    with psycopg.connect(demo_db, autocommit=True) as conn:
        conn.execute("TRUNCATE webhook_delivery_log")
    result = check_once(CHECK, make_target(demo_db))
    assert result.outcome == "pass", result.message
    assert result.message == "all 2 required tables exist"
    assert result.observed == ["public.webhook_delivery_log", "public.audit_logs"]


def test_not_applied_without_required_tables(demo_db):
    assert not CHECK.applies(make_target(demo_db, checks={"critical_tables": ["agents"]}))


def test_dropped_table_fails_by_name(demo_db):
    with psycopg.connect(demo_db, autocommit=True) as conn:
        conn.execute("DROP TABLE audit_logs")
    result = check_once(CHECK, make_target(demo_db))
    assert result.outcome == "fail"
    assert result.message == "1 of 2 required tables missing: audit_logs"
    assert result.observed == ["public.webhook_delivery_log"]


def test_hostile_and_schema_qualified_names(demo_db):
    with psycopg.connect(demo_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int); CREATE SCHEMA ops; CREATE TABLE ops.jobs (id int)")
    names = ["ops.jobs", 'x"; DROP TABLE t; --', "public.jobs"]
    result = check_once(CHECK, make_target(demo_db, checks={"required_tables": names}))
    assert result.outcome == "fail"
    assert result.message == '2 of 3 required tables missing: x"; DROP TABLE t; --, public.jobs'
    assert result.observed == ["ops.jobs"]
    with psycopg.connect(demo_db) as conn:
        assert conn.execute("SELECT to_regclass('public.t') IS NOT NULL").fetchone()[0]


def test_timeout_is_an_error(demo_db):
    result = run_while_locked(CHECK, make_target(demo_db, statement_timeout_seconds=0.5), "pg_policy", "pg_catalog")
    assert result.outcome == "error" and "timed out" in result.message


def test_materialized_views_and_partitioned_tables_count(demo_db):
    _sql(
        demo_db,
        "CREATE MATERIALIZED VIEW agent_summary AS SELECT organization_id, count(*) FROM agents GROUP BY 1",
        'CREATE MATERIALIZED VIEW "Daily Stats" AS SELECT 1 AS n WITH NO DATA',  # not populated: it still exists
        "CREATE TABLE events (at date NOT NULL) PARTITION BY RANGE (at)",
        "CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')",
        "CREATE VIEW agent_names AS SELECT name FROM agents",
    )
    names = ["agent_summary", '"Daily Stats"', "events", "webhook_delivery_log"]
    result = check_once(CHECK, make_target(demo_db, checks={"required_tables": names}))
    assert result.outcome == "pass", result.message
    assert result.observed == ["public.agent_summary", "public.Daily Stats", "public.events", "public.webhook_delivery_log"]
    # A plain view holds no rows of its own: it is not a required table.
    view = check_once(CHECK, make_target(demo_db, checks={"required_tables": ["agent_names"]}))
    assert view.outcome == "fail" and view.message == "1 of 1 required tables missing: agent_names"
