"""required_indexes against a real database: present, valid and ready."""

import psycopg
import pytest

from exporter.checks.required_indexes import CHECK
from tests.checks.catalog_support import run_while_locked
from tests.checks.helpers import check_once
from tests.conftest import SEED_CHECKS, make_target


def _failed_concurrent_index(dsn, name):
    # All contacts share one organization: a unique index on it cannot be built,
    # and CREATE INDEX CONCURRENTLY leaves the half-built index behind, invalid.
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(f"CREATE UNIQUE INDEX CONCURRENTLY {name} ON contacts (organization_id)")


def test_demo_passes(demo_db):
    result = check_once(CHECK, make_target(demo_db))
    assert result.outcome == "pass", result.message
    assert result.message == "all 2 required indexes exist and are valid"
    assert result.observed == ["public.idx_appointments_scheduling_lookup", "public.idx_appointments_time_range"]


def test_dropped_index_fails_by_name(demo_db):
    with psycopg.connect(demo_db, autocommit=True) as conn:
        conn.execute("DROP INDEX idx_appointments_time_range")
    result = check_once(CHECK, make_target(demo_db))
    assert result.outcome == "fail"
    assert result.message == "missing: idx_appointments_time_range"
    assert result.data["missing"] == ["idx_appointments_time_range"]


def test_invalid_index_from_failed_concurrent_build_fails(demo_db):
    _failed_concurrent_index(demo_db, "idx_contacts_one_per_org")
    checks = {**SEED_CHECKS, "required_indexes": [*SEED_CHECKS["required_indexes"], "idx_contacts_one_per_org"]}
    result = check_once(CHECK, make_target(demo_db, checks=checks))
    assert result.outcome == "fail"
    assert result.message.startswith("idx_contacts_one_per_org on contacts is INVALID")
    assert result.data["invalid"] == ["idx_contacts_one_per_org"]
    assert "public.idx_contacts_one_per_org" not in result.observed


def test_schema_qualified_and_hostile_names(demo_db):
    with psycopg.connect(demo_db, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA billing; CREATE TABLE billing.invoices (id int); CREATE INDEX idx_inv ON billing.invoices (id)")
        conn.execute("CREATE TABLE t (id int)")
    hostile = "idx\"; DROP TABLE t; --"
    names = ["billing.idx_inv", "public.idx_inv", hostile]
    result = check_once(CHECK, make_target(demo_db, checks={"required_indexes": names}))
    assert result.outcome == "fail"
    assert result.message == f"missing: public.idx_inv, {hostile}"
    assert result.observed == ["billing.idx_inv"]
    with psycopg.connect(demo_db) as conn:
        assert conn.execute("SELECT to_regclass('public.t') IS NOT NULL").fetchone()[0]


def test_timeout_is_an_error(demo_db):
    result = run_while_locked(CHECK, make_target(demo_db, statement_timeout_seconds=0.5), "pg_index", "pg_catalog")
    assert result.outcome == "error" and "timed out" in result.message


def test_quoted_and_raw_mixed_case_names(demo_db):
    with psycopg.connect(demo_db, autocommit=True) as conn:
        conn.execute('CREATE SCHEMA "Billing"; CREATE TABLE "Billing"."Invoices" (id int, due date)')
        conn.execute('CREATE INDEX "Idx_Invoices_Id" ON "Billing"."Invoices" (id)')
        conn.execute('CREATE INDEX Idx_Invoices_Due ON "Billing"."Invoices" (due)')  # unquoted: idx_invoices_due
    names = ['"Billing"."Idx_Invoices_Id"', "Billing.Idx_Invoices_Id", "Billing.IDX_INVOICES_DUE", '"Billing".idx_invoices_due']
    result = check_once(CHECK, make_target(demo_db, checks={"required_indexes": names}))
    assert result.outcome == "pass", result.message
    assert result.observed == ["Billing.Idx_Invoices_Id", "Billing.Idx_Invoices_Id",
                               "Billing.idx_invoices_due", "Billing.idx_invoices_due"]
    quoted = ['"Billing"."IDX_INVOICES_DUE"', '"billing"."Idx_Invoices_Id"']
    missing = check_once(CHECK, make_target(demo_db, checks={"required_indexes": quoted}))
    assert missing.message == f"missing: {quoted[0]}, {quoted[1]}"
