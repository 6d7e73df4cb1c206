"""database_size against a real database: MB are 2^20 bytes, as pg_size_pretty counts."""

import re

from psycopg import sql

from exporter.checks.database_size import CHECK
from tests.checks.catalog_support import as_user, dbname, role_without_privileges, run_prepared
from tests.checks.helpers import check_once
from tests.conftest import SEED_CHECKS, make_target


def test_demo_passes_above_its_floor(demo_db):
    result = check_once(CHECK, make_target(demo_db))
    assert result.outcome == "pass", result.message
    assert re.fullmatch(r"\d+ MB \(minimum 10 MB\)", result.message)
    size = result.data["database_size_bytes"]
    assert size >= 10 * 1024 * 1024 and result.observed == size and result.expected == 10 * 1024 * 1024


def test_not_applied_without_a_minimum(demo_db):
    assert not CHECK.applies(make_target(demo_db, checks={"critical_tables": ["agents"]}))
    assert CHECK.applies(make_target(demo_db, checks={"min_database_size_mb": 0}))


def test_an_empty_database_is_too_small(make_db):
    result = check_once(CHECK, make_target(make_db()))  # the seed's 10 MB floor
    assert result.outcome == "fail"
    assert re.fullmatch(r"database too small: \d+ (kB|MB) \(minimum 10 MB\)", result.message)
    assert result.data["database_size_bytes"] < 10 * 1024 * 1024


def test_minimum_is_in_binary_megabytes(demo_db):
    size = check_once(CHECK, make_target(demo_db)).data["database_size_bytes"]
    just_above = size / (1024 * 1024) + 0.01
    result = check_once(CHECK, make_target(demo_db, checks={**SEED_CHECKS, "min_database_size_mb": just_above}))
    assert result.outcome == "fail"
    # Decimal megabytes (10^6 bytes) would make the same number a far lower floor.
    decimal = size / 1_000_000
    assert check_once(CHECK, make_target(demo_db, checks={**SEED_CHECKS, "min_database_size_mb": decimal})).outcome == "fail"


def test_losing_connect_privilege_is_an_error(demo_db, pg_server):
    db = dbname(demo_db)

    def revoke(_conn):
        # pg_database_size needs CONNECT; taken away after the role connected.
        pg_server.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(sql.Identifier(db)))

    with role_without_privileges(pg_server, db) as role:
        result, _ = run_prepared(CHECK, make_target(as_user(demo_db, role)), prepare=revoke)
    assert result.outcome == "error"
    assert result.message.startswith("permission denied")
