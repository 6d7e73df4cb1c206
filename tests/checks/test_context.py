"""CheckContext.tables: the checks of one run share one catalog look-up per table
name, so a run over 10,000 tables reads the catalog for them once, not six times,
and every check still sees what it would have seen alone."""

from __future__ import annotations

from datetime import datetime, timezone

import psycopg

from exporter import catalog
from exporter.checks import all_checks
from exporter.checks.base import CheckContext
from exporter.checks.runner import run_check
from exporter.db import connect
from tests.checks.helpers import check_once
from tests.conftest import SEED_CHECKS, make_target

TABLE_CHECKS = ("critical_tables", "row_counts", "rls_policies", "required_tables", "index_coverage", "constraints_valid")


class _RecordingCursor(psycopg.Cursor):
    def execute(self, query, params=None, **kwargs):
        self.connection.sent.append(query if isinstance(query, str) else str(query))
        return super().execute(query, params, **kwargs)


def _checks():
    return [check for check in all_checks() if check.name in TABLE_CHECKS]


def test_the_table_checks_of_one_run_look_tables_up_once_per_name(demo_db):
    target = make_target(demo_db, checks={**SEED_CHECKS, "critical_tables": SEED_CHECKS["critical_tables"] + ["no_such_table"]})
    with connect(target) as conn:
        conn.sent = []
        conn.cursor_factory = _RecordingCursor
        ctx = CheckContext(target=target, conn=conn, log_conn=conn, backup=None, previous=None,
                           now=datetime.now(timezone.utc))
        shared = {check.name: run_check(check, ctx) for check in _checks()}
        lookups = [query for query in conn.sent if query == catalog._TABLES_SQL]
    assert set(shared) == set(TABLE_CHECKS)
    # One for the critical tables (which rls_policies, index_coverage, constraints_valid
    # and row_counts ask about too), one for required_tables' own names. The missing
    # table is remembered as missing, not asked about again.
    assert len(lookups) == 2, conn.sent
    # Each check, run alone on its own context, says exactly the same.
    for check in _checks():
        alone = check_once(check, target)
        assert (alone.outcome, alone.message) == (shared[check.name].outcome, shared[check.name].message), check.name
    assert shared["critical_tables"].outcome == "fail" and "no_such_table" in shared["critical_tables"].message


class _FailFirstLookUp(psycopg.Cursor):
    # The first table look-up is cancelled, as a statement timeout would cancel it.
    def execute(self, query, params=None, **kwargs):
        if query == catalog._TABLES_SQL and not self.connection.failed:
            self.connection.failed = True
            query = "SELECT pg_sleep(1)"
            super().execute("SET LOCAL statement_timeout = '10ms'")
        return super().execute(query, params, **kwargs)


def test_a_failed_look_up_is_not_remembered(demo_db):
    target = make_target(demo_db, checks=SEED_CHECKS)
    with connect(target) as conn:
        conn.failed = False
        conn.cursor_factory = _FailFirstLookUp
        ctx = CheckContext(target=target, conn=conn, log_conn=conn, backup=None, previous=None,
                           now=datetime.now(timezone.utc))
        check = next(c for c in _checks() if c.name == "critical_tables")
        first = run_check(check, ctx)
        assert first.outcome == "error" and "timeout" in first.message, first.message
        assert run_check(check, ctx).outcome == "pass"


def test_a_name_in_critical_and_required_tables_is_looked_up_once(demo_db):
    # required_tables also counts materialized views; the names it shares with
    # critical_tables are still asked about once (bench/: at 10,000 tables a second
    # look-up cost 0.19 s), and each check sees only the kinds it counts.
    from tests.conftest import execute

    execute(demo_db, "CREATE MATERIALIZED VIEW busy AS SELECT 1 AS x")
    names = SEED_CHECKS["critical_tables"] + ["busy"]
    target = make_target(demo_db, checks={"critical_tables": names, "required_tables": names})
    with connect(target) as conn:
        conn.sent = []
        conn.cursor_factory = _RecordingCursor
        ctx = CheckContext(target=target, conn=conn, log_conn=conn, backup=None, previous=None,
                           now=datetime.now(timezone.utc))
        results = {check.name: run_check(check, ctx) for check in all_checks()
                   if check.name in ("critical_tables", "required_tables")}
        lookups = [query for query in conn.sent if query == catalog._TABLES_SQL]
    assert len(lookups) == 1, conn.sent
    assert results["required_tables"].outcome == "pass", results["required_tables"].message
    # A materialized view is no critical table (it carries no RLS or constraints).
    assert results["critical_tables"].outcome == "fail" and "busy" in results["critical_tables"].message
