"""rls_policies against a real database: RLS on and enough policies, per table."""

import psycopg

from exporter.checks.rls_policies import CHECK
from tests.checks.catalog_support import make_tables, run_prepared, run_while_locked
from tests.checks.helpers import check_once
from tests.conftest import SEED_CHECKS, make_target, execute as _sql

SEED_POLICIES = {
    "organizations": 3, "profiles": 1, "agents": 4, "appointments": 5,
    "contacts": 5, "call_logs": 3, "knowledge_base_chunks": 2,
}


def test_demo_passes(demo_db):
    result = check_once(CHECK, make_target(demo_db))
    assert result.outcome == "pass", result.message
    assert result.message == "RLS enabled on 7 tables with 23 policies, each at its minimum"
    assert result.data["policies"] == SEED_POLICIES
    assert result.data["rls_enabled"] == dict.fromkeys(SEED_POLICIES, True)


def test_rls_disabled_fails(demo_db):
    _sql(demo_db, "ALTER TABLE contacts DISABLE ROW LEVEL SECURITY")
    result = check_once(CHECK, make_target(demo_db))
    assert result.outcome == "fail"
    assert result.message == "RLS disabled on contacts"
    assert result.data["rls_enabled"]["contacts"] is False


def test_policy_dropped_below_minimum_fails(demo_db):
    _sql(demo_db, "DROP POLICY appointments_service ON appointments", "DROP POLICY profiles_own ON profiles")
    result = check_once(CHECK, make_target(demo_db))
    assert result.outcome == "fail"
    assert result.message == "profiles has 0 policies, needs 1; appointments has 4 policies, needs 5"
    assert result.data["policies"]["appointments"] == 4


def test_rls_tables_replace_critical_tables(demo_db):
    checks = {**SEED_CHECKS, "rls_tables": ["webhook_delivery_log", "contacts"], "min_policies": {"contacts": 6}}
    result = check_once(CHECK, make_target(demo_db, checks=checks))
    assert result.outcome == "fail"
    assert result.message == (
        "RLS disabled on webhook_delivery_log; webhook_delivery_log has 0 policies, needs 1; contacts has 5 policies, needs 6"
    )
    assert set(result.data["policies"]) == {"webhook_delivery_log", "contacts"}


def test_minimum_of_zero_still_needs_rls_enabled(demo_db):
    _sql(demo_db, "DROP POLICY profiles_own ON profiles")
    checks = {"rls_tables": ["profiles"], "min_policies": {"profiles": 0}}
    assert check_once(CHECK, make_target(demo_db, checks=checks)).outcome == "pass"
    _sql(demo_db, "ALTER TABLE profiles DISABLE ROW LEVEL SECURITY")
    assert check_once(CHECK, make_target(demo_db, checks=checks)).outcome == "fail"


def test_missing_and_hostile_tables_fail_by_name(demo_db):
    _sql(demo_db, "CREATE TABLE t (id int)")
    hostile = 'x"; DROP TABLE t; --'
    result = check_once(CHECK, make_target(demo_db, checks={"rls_tables": ["agents", hostile, "billing.invoices"]}))
    assert result.outcome == "fail"
    assert result.message == f"{hostile} not found; billing.invoices not found"
    with psycopg.connect(demo_db) as conn:
        assert conn.execute("SELECT to_regclass('public.t') IS NOT NULL").fetchone()[0]


def test_table_in_another_schema(demo_db):
    _sql(
        demo_db,
        "CREATE SCHEMA billing",
        "CREATE TABLE billing.invoices (id int)",
        "ALTER TABLE billing.invoices ENABLE ROW LEVEL SECURITY",
        "CREATE POLICY invoices_all ON billing.invoices USING (true)",
    )
    result = check_once(CHECK, make_target(demo_db, checks={"rls_tables": ["billing.invoices"]}))
    assert result.outcome == "pass", result.message
    assert result.data["policies"] == {"billing.invoices": 1}


def test_constant_statements_for_5_or_200_tables(make_db):
    dsn = make_db()
    names = make_tables(dsn, 200, rows=0)
    few, few_statements = run_prepared(CHECK, make_target(dsn, checks={"rls_tables": names[:5]}))
    many, many_statements = run_prepared(CHECK, make_target(dsn, checks={"rls_tables": names}))
    assert few.outcome == many.outcome == "pass"
    assert many.data["policies"] == dict.fromkeys(names, 1)
    assert few_statements == many_statements == 1


def test_timeout_is_an_error(demo_db):
    result = run_while_locked(CHECK, make_target(demo_db, statement_timeout_seconds=0.5), "pg_policy", "pg_catalog")
    assert result.outcome == "error" and "timed out" in result.message


def test_min_policies_zero_exempts_a_table(demo_db):
    _sql(demo_db, "ALTER TABLE contacts DISABLE ROW LEVEL SECURITY")
    checks = dict(SEED_CHECKS, min_policies={**SEED_CHECKS["min_policies"], "contacts": 0})
    result = check_once(CHECK, make_target(demo_db, checks=checks))
    assert result.outcome == "pass", result.message
    assert "contacts" not in result.data["policies"]
    assert CHECK.applies(make_target(demo_db, checks={"critical_tables": ["contacts"], "min_policies": {"contacts": 0}})) is False
