"""logschema against real catalogs: the migration matches itself, a table written by
hand in other but equivalent spellings is adopted, and every planted difference is
named in a sentence an operator can act on."""

from pathlib import Path

import psycopg
import pytest

from exporter import logschema

MIGRATION = Path(__file__).resolve().parent.parent / "sql" / "20260128_create_backup_verification_log.sql"

# The seed's table as someone may have typed it by hand: other spellings of the same
# types, defaults, constraint and partial index, and functions that return only the
# columns the report shows.
HAND_APPLIED = """
CREATE TABLE backup_verification_log (
    id uuid PRIMARY KEY DEFAULT pg_catalog.gen_random_uuid(),
    verified_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
    backup_id text,
    backup_age_hours int,
    backup_size_mb int4,
    status text NOT NULL CONSTRAINT backup_verification_log_status_check
        CHECK (status = 'success' OR status = 'warning' OR status = 'failure'),
    checks_passed integer NOT NULL DEFAULT '0',
    checks_failed integer NOT NULL DEFAULT 0::integer,
    error_details jsonb,
    verification_details jsonb,
    created_at timestamp with time zone NOT NULL DEFAULT transaction_timestamp()
);
CREATE INDEX idx_backup_verification_log_verified_at ON backup_verification_log (verified_at DESC);
CREATE INDEX idx_backup_verification_log_status ON backup_verification_log USING btree (status);
CREATE INDEX idx_backup_verification_log_created_at ON backup_verification_log (created_at DESC);
CREATE INDEX idx_backup_verification_log_failures ON backup_verification_log (verified_at DESC)
    WHERE status = 'failure' OR status = 'warning';
CREATE FUNCTION get_latest_backup_verification()
RETURNS TABLE (verified_at timestamptz, status text, backup_age_hours integer,
               checks_passed integer, checks_failed integer, error_details jsonb)
LANGUAGE sql STABLE AS $$
    SELECT l.verified_at, l.status, l.backup_age_hours, l.checks_passed, l.checks_failed, l.error_details
      FROM backup_verification_log l ORDER BY l.verified_at DESC LIMIT 1
$$;
CREATE FUNCTION get_backup_verification_history(days integer)
RETURNS SETOF backup_verification_log
LANGUAGE sql STABLE AS $$
    SELECT * FROM backup_verification_log l
     WHERE l.verified_at >= now() - make_interval(days => days) ORDER BY l.verified_at DESC
$$;
CREATE FUNCTION cleanup_old_backup_verification_logs(retention_days integer DEFAULT 90)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE n integer;
BEGIN
    DELETE FROM backup_verification_log WHERE verified_at < now() - make_interval(days => retention_days);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;
"""


def alter(dsn: str, statement: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statement)


def diff(dsn: str, schema: str | None = None) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return logschema.differences(conn, schema)


# --- pure helpers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("now()", "now()"),
        ("CURRENT_TIMESTAMP", "now()"),
        ("transaction_timestamp()", "now()"),
        ("pg_catalog.now()", "now()"),
        ("(now())", "now()"),
        ("'0'::integer", "0"),
        ("0", "0"),
        ("gen_random_uuid()", "gen_random_uuid()"),
        ("public.gen_random_uuid()", "gen_random_uuid()"),
        (None, None),
    ],
)
def test_normalize_default_equates_spellings(spelling, canonical):
    assert logschema.normalize_default(spelling) == canonical


@pytest.mark.parametrize(
    ("spelling", "other"),
    [
        ("clock_timestamp()", "now()"),
        ("uuid_generate_v4()", "gen_random_uuid()"),
        ("1", "0"),
        ("'0'::text", "0"),
    ],
)
def test_normalize_default_keeps_differences(spelling, other):
    assert logschema.normalize_default(spelling) != logschema.normalize_default(other)


@pytest.mark.parametrize(
    ("expression", "values"),
    [
        ("CHECK ((status = ANY (ARRAY['success'::text, 'warning'::text, 'failure'::text])))", {"success", "warning", "failure"}),
        ("((status = 'warning'::text) OR (status = 'failure'::text))", {"warning", "failure"}),
        ("((status)::text = ANY ((ARRAY['warning'::character varying, 'failure'::character varying])::text[]))", {"warning", "failure"}),
        ("(status <> 'success'::text)", None),
        ("(NOT (status = ANY (ARRAY['success'::text])))", None),
        ("((status = 'warning'::text) AND (checks_failed > 0))", None),
        ("(backup_id = ANY (ARRAY['warning'::text, 'failure'::text]))", None),
        ("(status IS NOT NULL)", None),
        (None, None),
    ],
)
def test_status_values_reads_only_plain_membership(expression, values):
    got = logschema.status_values(expression)
    assert (set(got) if got is not None else None) == values


def test_expected_shape_is_the_migration_text():
    # The data and the SQL file are two spellings of one contract: a name in one must be in the other.
    text = MIGRATION.read_text()
    for column in logschema.COLUMNS:
        assert f"\n    {column.name} " in text
    for index in logschema.INDEXES:
        assert index.name in text
    assert logschema.STATUS_CONSTRAINT.name in text
    for function in logschema.FUNCTIONS:
        assert f"CREATE FUNCTION {function.name}({function.arguments_declared})" in text
    assert len(logschema.COLUMNS) == 11 and len(logschema.INDEXES) == 5 and len(logschema.FUNCTIONS) == 3


# --- real catalogs -------------------------------------------------------------------------


def test_migration_matches_itself(demo_db):
    with psycopg.connect(demo_db) as conn:
        assert logschema.table_exists(conn)
        assert logschema.locate(conn) == "public"
        observed = logschema.inspect(conn)
        assert logschema.differences(conn) == []
    assert observed.schema == "public" and observed.exists
    assert [c.name for c in observed.columns] == [c.name for c in logschema.COLUMNS]
    assert logschema.constraint_not_validated(observed) is None


def test_absent_table(make_db):
    dsn = make_db()
    with psycopg.connect(dsn) as conn:
        assert not logschema.table_exists(conn)
        assert logschema.locate(conn) is None
        assert logschema.differences(conn) == ["table backup_verification_log does not exist"]


def test_hand_applied_equivalent_spellings_are_adopted(make_db):
    dsn = make_db()
    alter(dsn, HAND_APPLIED)
    assert diff(dsn) == []


def test_inspect_is_one_statement(demo_db):
    sent = []

    class Counting(psycopg.Cursor):
        def execute(self, query, params=None, **kwargs):
            sent.append(query)
            return super().execute(query, params, **kwargs)

    with psycopg.connect(demo_db, cursor_factory=Counting) as conn:
        logschema.differences(conn)
    assert len(sent) == 1


def test_column_type(demo_db):
    alter(demo_db, "ALTER TABLE backup_verification_log ALTER COLUMN backup_size_mb TYPE bigint")
    assert diff(demo_db) == ["column backup_size_mb is bigint, expected integer"]


def test_column_nullability_default_missing_and_extra(demo_db):
    alter(demo_db, """
        ALTER TABLE backup_verification_log ALTER COLUMN status DROP NOT NULL;
        ALTER TABLE backup_verification_log ALTER COLUMN backup_id SET NOT NULL;
        ALTER TABLE backup_verification_log ALTER COLUMN checks_passed SET DEFAULT 1;
        ALTER TABLE backup_verification_log ALTER COLUMN checks_failed DROP DEFAULT;
        ALTER TABLE backup_verification_log ALTER COLUMN error_details SET DEFAULT '{}';
        ALTER TABLE backup_verification_log ALTER COLUMN id SET DEFAULT md5(random()::text)::uuid;
        ALTER TABLE backup_verification_log DROP COLUMN created_at CASCADE;
        ALTER TABLE backup_verification_log ADD COLUMN notes text;
    """)
    assert diff(demo_db) == [
        "column id has DEFAULT (md5((random())::text))::uuid, expected DEFAULT gen_random_uuid()",
        "column backup_id is NOT NULL, expected nullable",
        "column status allows NULL, expected NOT NULL",
        "column checks_passed has DEFAULT 1, expected DEFAULT 0",
        "column checks_failed has no default, expected DEFAULT 0",
        "column error_details has DEFAULT '{}'::jsonb, expected no default",
        "column created_at is missing (expected timestamp with time zone)",
        "column notes (text) is not expected: the table should have exactly the 11 columns of the migration",
        # Dropping created_at took its index with it (CASCADE).
        "index idx_backup_verification_log_created_at is missing (expected USING btree (created_at DESC))",
    ]


def test_dropped_index(demo_db):
    alter(demo_db, "DROP INDEX idx_backup_verification_log_failures")
    assert diff(demo_db) == [
        "index idx_backup_verification_log_failures is missing "
        "(expected USING btree (verified_at DESC) WHERE status IN ('warning', 'failure'))"
    ]


def test_index_definitions(demo_db):
    alter(demo_db, """
        DROP INDEX idx_backup_verification_log_failures;
        CREATE INDEX idx_backup_verification_log_failures ON backup_verification_log (verified_at DESC);
        DROP INDEX idx_backup_verification_log_verified_at;
        CREATE INDEX idx_backup_verification_log_verified_at ON backup_verification_log (verified_at)
            WHERE status = 'failure';
        DROP INDEX idx_backup_verification_log_status;
        CREATE INDEX idx_backup_verification_log_status ON backup_verification_log USING hash (status);
        DROP INDEX idx_backup_verification_log_created_at;
        CREATE UNIQUE INDEX idx_backup_verification_log_created_at ON backup_verification_log (created_at DESC);
    """)
    assert diff(demo_db) == [
        "index idx_backup_verification_log_verified_at is USING btree (verified_at), "
        "expected USING btree (verified_at DESC)",
        "index idx_backup_verification_log_verified_at is partial (WHERE (status = 'failure'::text)), "
        "expected it to cover every row",
        "index idx_backup_verification_log_status is USING hash (status), expected USING btree (status)",
        "index idx_backup_verification_log_created_at is unique, expected non-unique",
        "index idx_backup_verification_log_failures covers every row, "
        "expected it to be partial WHERE status IN ('warning', 'failure')",
    ]


def test_partial_index_on_other_statuses(demo_db):
    alter(demo_db, """
        DROP INDEX idx_backup_verification_log_failures;
        CREATE INDEX idx_backup_verification_log_failures ON backup_verification_log (verified_at DESC)
            WHERE status = 'failure';
    """)
    assert diff(demo_db) == [
        "index idx_backup_verification_log_failures is partial WHERE (status = 'failure'::text), "
        "expected WHERE status IN ('warning', 'failure')"
    ]


def test_primary_key_replaced_by_plain_unique_index(demo_db):
    alter(demo_db, """
        ALTER TABLE backup_verification_log DROP CONSTRAINT backup_verification_log_pkey;
        CREATE UNIQUE INDEX backup_verification_log_pkey ON backup_verification_log (id);
    """)
    assert diff(demo_db) == [
        "index backup_verification_log_pkey is not the primary key, expected PRIMARY KEY (id)"
    ]


def test_dropped_constraint(demo_db):
    alter(demo_db, "ALTER TABLE backup_verification_log DROP CONSTRAINT backup_verification_log_status_check")
    assert diff(demo_db) == [
        "constraint backup_verification_log_status_check is missing "
        "(expected CHECK (status IN ('success', 'warning', 'failure')))"
    ]


def test_constraint_replaced_under_another_name(demo_db):
    alter(demo_db, """
        ALTER TABLE backup_verification_log DROP CONSTRAINT backup_verification_log_status_check;
        ALTER TABLE backup_verification_log ADD CONSTRAINT status_ok CHECK (status IN ('success', 'failure'));
    """)
    assert diff(demo_db) == [
        "constraint backup_verification_log_status_check is missing "
        "(expected CHECK (status IN ('success', 'warning', 'failure'))); found status_ok "
        "CHECK ((status = ANY (ARRAY['success'::text, 'failure'::text]))) instead"
    ]


def test_constraint_allowing_unknown(demo_db):
    alter(demo_db, """
        ALTER TABLE backup_verification_log DROP CONSTRAINT backup_verification_log_status_check;
        ALTER TABLE backup_verification_log ADD CONSTRAINT backup_verification_log_status_check
            CHECK (status IN ('success', 'warning', 'failure', 'unknown'));
    """)
    assert diff(demo_db) == [
        "constraint backup_verification_log_status_check allows ('success', 'warning', 'failure', 'unknown'), "
        "expected ('success', 'warning', 'failure') (also allows ('unknown'))"
    ]


def test_constraint_rejecting_warning_or_of_another_shape(demo_db):
    alter(demo_db, """
        ALTER TABLE backup_verification_log DROP CONSTRAINT backup_verification_log_status_check;
        ALTER TABLE backup_verification_log ADD CONSTRAINT backup_verification_log_status_check
            CHECK (status IN ('success', 'failure'));
    """)
    assert diff(demo_db) == [
        "constraint backup_verification_log_status_check allows ('success', 'failure'), "
        "expected ('success', 'warning', 'failure') (rejects ('warning'))"
    ]
    alter(demo_db, """
        ALTER TABLE backup_verification_log DROP CONSTRAINT backup_verification_log_status_check;
        ALTER TABLE backup_verification_log ADD CONSTRAINT backup_verification_log_status_check
            CHECK (length(status) > 0);
    """)
    assert diff(demo_db) == [
        "constraint backup_verification_log_status_check is CHECK ((length(status) > 0)), "
        "expected CHECK (status IN ('success', 'warning', 'failure'))"
    ]


def test_not_valid_constraint_has_the_shape_but_is_reported_apart(demo_db):
    alter(demo_db, """
        ALTER TABLE backup_verification_log DROP CONSTRAINT backup_verification_log_status_check;
        ALTER TABLE backup_verification_log ADD CONSTRAINT backup_verification_log_status_check
            CHECK (status IN ('success', 'warning', 'failure')) NOT VALID;
    """)
    assert diff(demo_db) == []
    with psycopg.connect(demo_db) as conn:
        sentence = logschema.constraint_not_validated(logschema.inspect(conn))
    assert sentence == (
        "constraint backup_verification_log_status_check is NOT VALID: rows written before it was added were "
        "never checked; run ALTER TABLE public.backup_verification_log VALIDATE CONSTRAINT "
        "backup_verification_log_status_check"
    )


def test_dropped_function(demo_db):
    alter(demo_db, "DROP FUNCTION cleanup_old_backup_verification_logs(integer)")
    assert diff(demo_db) == [
        "function cleanup_old_backup_verification_logs(retention_days integer) is missing in schema public"
    ]


def test_functions_with_other_signatures(demo_db):
    alter(demo_db, """
        DROP FUNCTION get_backup_verification_history(integer);
        CREATE FUNCTION get_backup_verification_history(p_days integer, p_limit integer DEFAULT 100)
        RETURNS SETOF backup_verification_log LANGUAGE sql STABLE
        AS $$ SELECT * FROM backup_verification_log LIMIT p_limit $$;
        DROP FUNCTION cleanup_old_backup_verification_logs(integer);
        CREATE FUNCTION cleanup_old_backup_verification_logs(retention_days integer DEFAULT 30)
        RETURNS bigint LANGUAGE sql AS $$ SELECT 0::bigint $$;
        DROP FUNCTION get_latest_backup_verification();
        CREATE FUNCTION get_latest_backup_verification()
        RETURNS TABLE (verified_at timestamptz, status text, backup_age_hours numeric)
        LANGUAGE sql STABLE AS $$ SELECT verified_at, status, backup_age_hours FROM backup_verification_log $$;
    """)
    assert diff(demo_db) == [
        "function get_latest_backup_verification() returns TABLE(verified_at timestamp with time zone, "
        "status text, backup_age_hours numeric), which lacks checks_passed, checks_failed, error_details; "
        "expected a table with at least verified_at, status, backup_age_hours, checks_passed, checks_failed, "
        "error_details",
        "function get_latest_backup_verification() returns backup_age_hours as numeric, expected integer",
        "function get_backup_verification_history(days integer) is missing in schema public; "
        "found get_backup_verification_history(p_days integer, p_limit integer) instead",
        "function cleanup_old_backup_verification_logs(retention_days integer) is declared "
        "(retention_days integer DEFAULT 30), expected (retention_days integer DEFAULT 90)",
        "function cleanup_old_backup_verification_logs(retention_days integer) returns bigint, expected integer",
    ]


def test_scalar_result_where_rows_are_expected(demo_db):
    alter(demo_db, """
        DROP FUNCTION get_latest_backup_verification();
        CREATE FUNCTION get_latest_backup_verification() RETURNS jsonb LANGUAGE sql STABLE
        AS $$ SELECT to_jsonb(l) FROM backup_verification_log l ORDER BY verified_at DESC LIMIT 1 $$;
    """)
    [sentence] = diff(demo_db)
    assert sentence.startswith("function get_latest_backup_verification() returns jsonb, which lacks verified_at, status")


def test_view_in_place_of_the_table(make_db):
    dsn = make_db()
    alter(dsn, "CREATE VIEW backup_verification_log AS SELECT now() AS verified_at")
    with psycopg.connect(dsn) as conn:
        assert not logschema.table_exists(conn)
        found = logschema.differences(conn)
    assert found[0] == "public.backup_verification_log is a view, expected a table"
    assert "function get_latest_backup_verification() is missing in schema public" in found


def test_table_in_another_schema_follows_search_path(make_db, pg_server):
    dsn = make_db()
    alter(dsn, "CREATE SCHEMA pgbv; SET search_path = pgbv; " + MIGRATION.read_text())
    # Off the search_path, the table is not where pgbv's unqualified SQL would look.
    assert diff(dsn) == ["table backup_verification_log does not exist"]
    assert diff(dsn, schema="pgbv") == []
    alter(dsn, "ALTER TABLE pgbv.backup_verification_log ALTER COLUMN backup_age_hours TYPE numeric")
    assert diff(dsn, schema="pgbv") == ["column backup_age_hours is numeric, expected integer"]
    with psycopg.connect(dsn, options="-c search_path=public,pgbv") as conn:
        assert logschema.locate(conn) == "pgbv"
        assert logschema.differences(conn) == ["column backup_age_hours is numeric, expected integer"]


def test_hostile_schema_name_is_only_a_value(make_db):
    dsn = make_db()
    hostile = 'x"; DROP TABLE t; --'
    alter(dsn, "CREATE TABLE t (id int)")
    assert diff(dsn, schema=hostile) == ["table backup_verification_log does not exist"]
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT to_regclass('public.t') IS NOT NULL").fetchone()[0]


def test_invalid_index(demo_db):
    # What a failed CREATE INDEX CONCURRENTLY leaves behind, without waiting for one to fail.
    alter(demo_db, "UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'idx_backup_verification_log_status'::regclass")
    assert diff(demo_db) == [
        "index idx_backup_verification_log_status is invalid (left by a failed CREATE INDEX CONCURRENTLY?); "
        "rebuild it with REINDEX INDEX idx_backup_verification_log_status"
    ]
