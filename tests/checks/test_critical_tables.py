"""critical_tables against a real database: the demo passes, every planted fault fails."""

import psycopg

from exporter.checks.critical_tables import CHECK
from tests.checks.catalog_support import as_user, dbname, role_without_privileges, run_while_locked
from tests.checks.helpers import check_once
from tests.conftest import SEED_CHECKS, execute as _sql, make_target

HOSTILE = 'x"; DROP TABLE t; --'


def test_demo_passes(demo_db):
    result = check_once(CHECK, make_target(demo_db))
    assert result.outcome == "pass", result.message
    assert result.message == "all 7 critical tables exist"
    assert result.observed == [f"public.{name}" for name in SEED_CHECKS["critical_tables"]]
    assert result.expected == SEED_CHECKS["critical_tables"]


def test_dropped_and_renamed_tables_fail_by_name(demo_db):
    with psycopg.connect(demo_db, autocommit=True) as conn:
        conn.execute("DROP TABLE knowledge_base_chunks")
        conn.execute("ALTER TABLE contacts RENAME TO contacts_old")
    result = check_once(CHECK, make_target(demo_db))
    assert result.outcome == "fail"
    assert result.message == "2 of 7 critical tables missing: contacts, knowledge_base_chunks"
    assert "public.contacts" not in result.observed and len(result.observed) == 5


def test_hostile_name_is_missing_and_drops_nothing(demo_db):
    with psycopg.connect(demo_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int)")
    result = check_once(CHECK, make_target(demo_db, checks={"critical_tables": ["organizations", HOSTILE]}))
    assert result.outcome == "fail"
    assert HOSTILE in result.message
    with psycopg.connect(demo_db) as conn:
        assert conn.execute("SELECT to_regclass('public.t') IS NOT NULL").fetchone()[0]


def test_table_in_another_schema(demo_db):
    with psycopg.connect(demo_db, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA billing; CREATE TABLE billing.invoices (id int PRIMARY KEY)")
    qualified = check_once(CHECK, make_target(demo_db, checks={"critical_tables": ["billing.invoices", "public.agents"]}))
    assert qualified.outcome == "pass", qualified.message
    assert qualified.observed == ["billing.invoices", "public.agents"]
    # A bare name follows search_path, which does not include billing.
    bare = check_once(CHECK, make_target(demo_db, checks={"critical_tables": ["invoices"]}))
    assert bare.outcome == "fail" and "invoices" in bare.message


def test_a_view_is_not_a_table(demo_db):
    with psycopg.connect(demo_db, autocommit=True) as conn:
        conn.execute("ALTER TABLE call_logs RENAME TO call_logs_v2; CREATE VIEW call_logs AS SELECT * FROM call_logs_v2")
    result = check_once(CHECK, make_target(demo_db))
    assert result.outcome == "fail" and "call_logs" in result.message


def test_timeout_is_an_error(demo_db):
    # The catalog query reads pg_policy; another session holding it locked makes it wait.
    result = run_while_locked(CHECK, make_target(demo_db, statement_timeout_seconds=0.5), "pg_policy", "pg_catalog")
    assert result.outcome == "error"
    assert "timed out" in result.message


def test_role_without_privileges_sees_the_same_catalog(demo_db, pg_server):
    with psycopg.connect(demo_db, autocommit=True) as conn:
        conn.execute("DROP TABLE knowledge_base_chunks")
    with role_without_privileges(pg_server, dbname(demo_db)) as role:
        result = check_once(CHECK, make_target(as_user(demo_db, role)))
    assert result.outcome == "fail"
    assert result.message.endswith("missing: knowledge_base_chunks")


# --- names as DBAs write them (docs/checks.md, "Names") ------------------------------------


def test_quoted_and_raw_mixed_case_names(demo_db):
    _sql(
        demo_db,
        'CREATE SCHEMA "Billing"', 'CREATE TABLE "Billing"."Invoices" (id int PRIMARY KEY)',
        "CREATE SCHEMA sales", "CREATE TABLE sales.orders (id int PRIMARY KEY)",  # created unquoted: folded
        'CREATE SCHEMA "my.schema"', 'CREATE TABLE "my.schema"."a table" (id int)', 'CREATE TABLE "has""quote" (id int)',
    )
    names = ['"Billing"."Invoices"', "Billing.Invoices", "Sales.Orders", "sales.orders",
             '"my.schema"."a table"', '"has""quote"']
    result = check_once(CHECK, make_target(demo_db, checks={"critical_tables": names}))
    assert result.outcome == "pass", result.message
    assert result.observed == ["Billing.Invoices", "Billing.Invoices", "sales.orders", "sales.orders",
                               "my.schema.a table", 'public.has"quote']
    # Quoted, a name means exactly that spelling: "Sales"."Orders" does not exist.
    quoted = check_once(CHECK, make_target(demo_db, checks={"critical_tables": ['"Sales"."Orders"', '"billing".invoices']}))
    assert quoted.outcome == "fail"
    assert quoted.message == '2 of 2 critical tables missing: "Sales"."Orders", "billing".invoices'


def test_a_name_that_exists_in_two_foldings(demo_db):
    # "Accounts" and accounts are two tables; a raw name prefers its exact spelling
    # (what it found before quotes were understood), then PostgreSQL's lower-case fold.
    _sql(demo_db, 'CREATE TABLE "Accounts" (id int)', "CREATE TABLE accounts (id int)")
    names = ["Accounts", "accounts", "ACCOUNTS", '"Accounts"', '"accounts"', '"ACCOUNTS"']
    result = check_once(CHECK, make_target(demo_db, checks={"critical_tables": names}))
    assert result.observed == ["public.Accounts", "public.accounts", "public.accounts", "public.Accounts", "public.accounts"]
    assert result.message == '1 of 6 critical tables missing: "ACCOUNTS"'
    # The same for a schema: "Ops" and ops.
    _sql(demo_db, 'CREATE SCHEMA "Ops"', "CREATE SCHEMA ops", 'CREATE TABLE "Ops".jobs (id int)', "CREATE TABLE ops.jobs (id int)")
    names = ["Ops.jobs", "OPS.jobs", '"Ops".jobs', '"ops".JOBS']
    schemas = check_once(CHECK, make_target(demo_db, checks={"critical_tables": names}))
    assert schemas.observed == ["Ops.jobs", "ops.jobs", "Ops.jobs", "ops.jobs"]


def test_a_materialized_view_is_not_a_critical_table(demo_db):
    # Critical tables hold rows under row-level security and constraints: a
    # materialized view has neither (required_tables accepts it).
    _sql(demo_db, "CREATE MATERIALIZED VIEW agent_summary AS SELECT organization_id, count(*) FROM agents GROUP BY 1")
    result = check_once(CHECK, make_target(demo_db, checks={"critical_tables": ["agent_summary"]}))
    assert result.outcome == "fail" and result.message.endswith("missing: agent_summary")
