"""index_coverage against a real database: every critical and required table has an index."""

import psycopg
import pytest

from exporter.checks.index_coverage import CHECK
from tests.checks.catalog_support import make_tables, run_prepared, run_while_locked
from tests.checks.helpers import check_once
from tests.conftest import SEED_CHECKS, make_target, execute as _sql

SEED_INDEXES = {
    "organizations": 3, "profiles": 1, "agents": 2, "appointments": 3, "contacts": 2,
    "call_logs": 2, "knowledge_base_chunks": 1, "webhook_delivery_log": 2, "audit_logs": 1,
}


def test_demo_passes(demo_db):
    result = check_once(CHECK, make_target(demo_db))
    assert result.outcome == "pass", result.message
    assert result.message == "9 tables checked, each with an index (17 indexes in all)"
    assert result.data["index_counts"] == SEED_INDEXES


def test_table_without_any_index_fails(demo_db):
    _sql(demo_db, "ALTER TABLE knowledge_base_chunks DROP CONSTRAINT knowledge_base_chunks_pkey")
    result = check_once(CHECK, make_target(demo_db))
    assert result.outcome == "fail"
    assert result.message == "no valid index on knowledge_base_chunks"
    assert result.data["index_counts"]["knowledge_base_chunks"] == 0


def test_an_invalid_index_does_not_count(demo_db):
    _sql(demo_db, "ALTER TABLE audit_logs DROP CONSTRAINT audit_logs_pkey")
    with psycopg.connect(demo_db, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("CREATE UNIQUE INDEX CONCURRENTLY idx_audit_action ON audit_logs (action)")
    result = check_once(CHECK, make_target(demo_db))
    assert result.outcome == "fail"
    assert result.message == "no valid index on audit_logs"


def test_missing_tables_are_skipped_but_named(demo_db):
    _sql(demo_db, "DROP TABLE audit_logs")
    result = check_once(CHECK, make_target(demo_db))
    assert result.outcome == "pass"
    assert result.message == "8 tables checked, each with an index (16 indexes in all); not found, not checked here: audit_logs"
    assert "audit_logs" not in result.data["index_counts"]


def test_constant_statements_for_5_or_200_tables(make_db):
    dsn = make_db()
    names = make_tables(dsn, 200, rows=0)
    few, few_statements = run_prepared(CHECK, make_target(dsn, checks={"required_tables": names[:5]}))
    many, many_statements = run_prepared(CHECK, make_target(dsn, checks={"required_tables": names}))
    assert many.data["index_counts"] == dict.fromkeys(names, 1)
    assert few_statements == many_statements == 1


def test_timeout_is_an_error(demo_db):
    result = run_while_locked(CHECK, make_target(demo_db, statement_timeout_seconds=0.5), "pg_index", "pg_catalog")
    assert result.outcome == "error" and "timed out" in result.message


def test_exempt_tables_need_no_index_and_the_others_still_do(demo_db):
    _sql(
        demo_db,
        "ALTER TABLE knowledge_base_chunks DROP CONSTRAINT knowledge_base_chunks_pkey",
        "ALTER TABLE audit_logs DROP CONSTRAINT audit_logs_pkey",
    )
    exempt = check_once(CHECK, make_target(demo_db, checks=dict(SEED_CHECKS, index_coverage_exempt=["knowledge_base_chunks"])))
    assert exempt.outcome == "fail"
    assert exempt.message == "no valid index on audit_logs; exempt (index_coverage_exempt): knowledge_base_chunks"
    both = dict(SEED_CHECKS, index_coverage_exempt=["knowledge_base_chunks", "public.audit_logs"])
    result = check_once(CHECK, make_target(demo_db, checks=both))
    assert result.outcome == "pass", result.message
    assert result.message == ("7 tables checked, each with an index (15 indexes in all); "
                              "exempt (index_coverage_exempt): knowledge_base_chunks, audit_logs")
    assert result.data["exempt"] == ["knowledge_base_chunks", "audit_logs"]


def test_an_exemption_matches_the_table_however_it_is_spelled(demo_db):
    _sql(demo_db, 'CREATE SCHEMA "Billing"', 'CREATE TABLE "Billing"."Ledger" (id int)')
    checks = {"critical_tables": ["Billing.Ledger"], "index_coverage_exempt": ['"Billing"."Ledger"']}
    assert check_once(CHECK, make_target(demo_db, checks=checks)).outcome == "pass"
    other = {"critical_tables": ["Billing.Ledger"], "index_coverage_exempt": ["Billing.Invoices"]}
    assert check_once(CHECK, make_target(demo_db, checks=other)).message == "no valid index on Billing.Ledger"


def test_a_required_materialized_view_is_covered_too(demo_db):
    _sql(demo_db, "CREATE MATERIALIZED VIEW agent_summary AS SELECT organization_id, count(*) FROM agents GROUP BY 1")
    checks = {"critical_tables": ["agents"], "required_tables": ["agent_summary"]}
    assert check_once(CHECK, make_target(demo_db, checks=checks)).message == "no valid index on agent_summary"
    _sql(demo_db, "CREATE UNIQUE INDEX ON agent_summary (organization_id)")
    indexed = check_once(CHECK, make_target(demo_db, checks=checks))
    assert indexed.outcome == "pass" and indexed.data["index_counts"] == {"agents": 2, "agent_summary": 1}
