"""log_table (seed tests 1 and 2) against real databases: the migrated demo passes,
each planted difference in the table fails by name, and the check writes nothing."""

import psycopg

from exporter import logschema
from exporter.checks.log_table import CHECK
from tests.checks.catalog_support import run_prepared
from tests.checks.helpers import check_once
from tests.conftest import make_target


def alter(dsn: str, statement: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statement)


def test_always_applies(demo_db):
    assert CHECK.applies(make_target(demo_db, checks={}))
    assert CHECK.uses_log_db


def test_migrated_demo_passes_in_one_statement_and_writes_nothing(demo_db):
    result, statements = run_prepared(CHECK, make_target(demo_db))
    assert result.outcome == "pass", result.message
    assert result.message == (
        "public.backup_verification_log matches the migration: 11 columns, 5 indexes, "
        "backup_verification_log_status_check on ('success', 'warning', 'failure'), constraint validated"
    )
    # The seed's five indexes and the two target indexes of the 20261127 migration.
    assert result.observed["columns"] == 11 and len(result.observed["indexes"]) == 7
    assert {"backup_verification_log_pkey", "idx_backup_verification_log_failures"} <= set(result.observed["indexes"])
    assert statements == 1
    with psycopg.connect(demo_db) as conn:
        assert conn.execute("SELECT count(*) FROM backup_verification_log").fetchone()[0] == 0


def test_absent_table_fails(make_db):
    result = check_once(CHECK, make_target(make_db()))
    assert result.outcome == "fail"
    assert result.message == "backup_verification_log does not exist; run pgbv migrate"


def test_column_of_another_type_fails(demo_db):
    alter(demo_db, "ALTER TABLE backup_verification_log ALTER COLUMN backup_size_mb TYPE bigint")
    result = check_once(CHECK, make_target(demo_db))
    assert result.outcome == "fail"
    assert result.message == (
        "public.backup_verification_log does not match the migration: column backup_size_mb is bigint, expected integer"
    )
    assert result.observed == ["column backup_size_mb is bigint, expected integer"]


def test_dropped_index_fails(demo_db):
    alter(demo_db, "DROP INDEX idx_backup_verification_log_failures")
    result = check_once(CHECK, make_target(demo_db))
    assert result.outcome == "fail"
    assert "index idx_backup_verification_log_failures is missing" in result.message


def test_constraint_allowing_unknown_fails(demo_db):
    alter(demo_db, """
        ALTER TABLE backup_verification_log DROP CONSTRAINT backup_verification_log_status_check;
        ALTER TABLE backup_verification_log ADD CONSTRAINT backup_verification_log_status_check
            CHECK (status IN ('success', 'warning', 'failure', 'unknown'));
    """)
    result = check_once(CHECK, make_target(demo_db))
    assert result.outcome == "fail"
    assert "also allows ('unknown')" in result.message


def test_dropped_constraint_fails(demo_db):
    alter(demo_db, "ALTER TABLE backup_verification_log DROP CONSTRAINT backup_verification_log_status_check")
    result = check_once(CHECK, make_target(demo_db))
    assert result.outcome == "fail"
    assert "constraint backup_verification_log_status_check is missing" in result.message


def test_not_valid_constraint_fails(demo_db):
    # A constraint added NOT VALID let earlier rows with any status stay.
    alter(demo_db, """
        ALTER TABLE backup_verification_log DROP CONSTRAINT backup_verification_log_status_check;
        INSERT INTO backup_verification_log (status) VALUES ('invalid_status');
        ALTER TABLE backup_verification_log ADD CONSTRAINT backup_verification_log_status_check
            CHECK (status IN ('success', 'warning', 'failure')) NOT VALID;
    """)
    result = check_once(CHECK, make_target(demo_db))
    assert result.outcome == "fail"
    assert "is NOT VALID" in result.message
    assert "VALIDATE CONSTRAINT backup_verification_log_status_check" in result.message


def test_many_differences_are_shortened_in_the_message_and_complete_in_observed(demo_db):
    alter(demo_db, """
        ALTER TABLE backup_verification_log ALTER COLUMN backup_size_mb TYPE bigint;
        ALTER TABLE backup_verification_log ALTER COLUMN backup_age_hours TYPE bigint;
        ALTER TABLE backup_verification_log ALTER COLUMN checks_passed TYPE bigint;
        ALTER TABLE backup_verification_log ALTER COLUMN checks_failed TYPE bigint;
        DROP INDEX idx_backup_verification_log_status;
    """)
    result = check_once(CHECK, make_target(demo_db))
    assert result.outcome == "fail"
    assert result.message.endswith("(and 2 more)")
    assert len(result.observed) == 5
    assert result.observed[-1].startswith("index idx_backup_verification_log_status is missing")
    assert result.data["differences"] == result.observed


def test_function_faults_belong_to_log_functions(demo_db):
    # One fault, one failed check: a dropped function fails log_functions, not log_table.
    alter(demo_db, "DROP FUNCTION cleanup_old_backup_verification_logs(integer)")
    assert check_once(CHECK, make_target(demo_db)).outcome == "pass"
    with psycopg.connect(demo_db) as conn:
        assert logschema.differences(conn) != []


def test_separate_log_database(make_db):
    # The target holds no log table; the log database named by log_dsn does.
    log_dsn = make_db(demo=True)
    result = check_once(CHECK, make_target(make_db(), log_dsn=log_dsn))
    assert result.outcome == "pass", result.message
