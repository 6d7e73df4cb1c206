"""constraints_valid against a real database: no NOT VALID foreign key or check
constraint on a critical table."""

import psycopg

from exporter.checks.constraints_valid import CHECK
from tests.checks.catalog_support import (
    as_user, dbname, make_tables, role_without_privileges, run_prepared, run_while_locked,
)
from tests.checks.helpers import check_once
from tests.conftest import make_target, execute as _sql


def test_demo_passes(demo_db):
    result = check_once(CHECK, make_target(demo_db))
    assert result.outcome == "pass", result.message
    assert result.message == "12 foreign-key and check constraints on 7 critical tables, all validated"


def test_not_valid_foreign_key_fails(demo_db):
    _sql(demo_db, "ALTER TABLE call_logs ADD CONSTRAINT call_logs_org_fk2 FOREIGN KEY (organization_id) "
                  "REFERENCES organizations (id) NOT VALID")
    result = check_once(CHECK, make_target(demo_db))
    assert result.outcome == "fail"
    assert result.message == "NOT VALID (never checked against existing rows): call_logs.call_logs_org_fk2 (foreign key)"
    assert result.data["not_valid"] == ["call_logs.call_logs_org_fk2"]


def test_not_valid_check_fails_until_validated(demo_db):
    _sql(demo_db, "ALTER TABLE profiles ADD CONSTRAINT profiles_email_at CHECK (email LIKE '%@%') NOT VALID")
    result = check_once(CHECK, make_target(demo_db))
    assert result.outcome == "fail"
    assert "profiles.profiles_email_at (check)" in result.message

    _sql(demo_db, "ALTER TABLE profiles VALIDATE CONSTRAINT profiles_email_at")
    assert check_once(CHECK, make_target(demo_db)).outcome == "pass"


def test_not_null_constraints_are_not_this_checks_business(demo_db, pg_server):
    # PostgreSQL 18 keeps NOT NULL constraints in pg_constraint and lets them be NOT VALID.
    if pg_server.version_num >= 180000:
        _sql(demo_db, "ALTER TABLE contacts ADD CONSTRAINT contacts_phone_nn NOT NULL phone NOT VALID")
        with psycopg.connect(demo_db) as conn:
            assert conn.execute(
                "SELECT NOT convalidated FROM pg_constraint WHERE conname = 'contacts_phone_nn'"
            ).fetchone() == (True,)
    result = check_once(CHECK, make_target(demo_db))
    assert result.outcome == "pass", result.message


def test_missing_tables_are_skipped_but_named(demo_db):
    result = check_once(CHECK, make_target(demo_db, checks={"critical_tables": ["appointments", "billing.invoices"]}))
    assert result.outcome == "pass"
    assert result.message == (
        "4 foreign-key and check constraints on 1 critical table, all validated; "
        "not found, not checked here: billing.invoices"
    )


def test_role_without_privileges_sees_the_same_catalog(demo_db, pg_server):
    _sql(demo_db, "ALTER TABLE appointments ADD CONSTRAINT appointments_short CHECK (ends_at - starts_at < interval '1 day') NOT VALID")
    with role_without_privileges(pg_server, dbname(demo_db)) as role:
        result = check_once(CHECK, make_target(as_user(demo_db, role)))
    assert result.outcome == "fail"
    assert result.data["not_valid"] == ["appointments.appointments_short"]


def test_constant_statements_for_5_or_200_tables(make_db):
    dsn = make_db()
    names = make_tables(dsn, 200, rows=0)
    few, few_statements = run_prepared(CHECK, make_target(dsn, checks={"critical_tables": names[:5]}))
    many, many_statements = run_prepared(CHECK, make_target(dsn, checks={"critical_tables": names}))
    assert few.outcome == many.outcome == "pass"
    assert few_statements == many_statements == 2


def test_timeout_is_an_error(demo_db):
    result = run_while_locked(CHECK, make_target(demo_db, statement_timeout_seconds=0.5), "pg_constraint", "pg_catalog")
    assert result.outcome == "error" and "timed out" in result.message
