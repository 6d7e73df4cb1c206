"""exporter.db: the sessions pgbv opens, with what they promise: read-only unless
asked, timeouts set, nothing prepared on the server, and written only inside
writable()."""

from __future__ import annotations

import psycopg
import pytest

from exporter import record
from exporter.db import connect, connect_dsn, writable
from tests.conftest import make_target


def test_a_check_session_is_read_only_with_its_timeouts(demo_db):
    target = make_target(demo_db, statement_timeout_seconds=7)
    with connect(target) as conn:
        settings = dict(conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN"
            " ('default_transaction_read_only', 'statement_timeout', 'lock_timeout', 'application_name',"
            "  'max_parallel_workers_per_gather')"
        ).fetchall())
        assert settings == {"default_transaction_read_only": "on", "statement_timeout": "7000",
                            "lock_timeout": "2000", "application_name": "pgbv",
                            "max_parallel_workers_per_gather": "0"}
        conn.rollback()
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("CREATE TEMP TABLE t (x int)")
        conn.rollback()
        with writable(conn), conn.transaction():
            conn.execute("CREATE TEMP TABLE t (x int)")
        assert conn.execute("SHOW transaction_read_only").fetchone()[0] == "on"


def test_statements_are_never_prepared_on_the_server(demo_db):
    # A statement repeated on one session (the refresh reads every target on one
    # when targets share a log database) stays planned for its own parameters.
    target = make_target(demo_db)
    with connect(target, log=True, autocommit=True) as conn:
        for _ in range(12):
            conn.execute(record.SUCCESS_RATIOS_SQL, {"target": "app", "now": "now", "since_short": "now", "since_long": "now"})
            conn.execute(record.newest_query(["verified_at"]), {"target": "app"})
        assert conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()[0] == 0


def test_only_a_restored_copy_may_use_parallel_workers(demo_db):
    # Everywhere else pgbv's small reads would draw workers from the application's pool.
    target = make_target(demo_db)
    query = "SELECT setting, source FROM pg_settings WHERE name = 'max_parallel_workers_per_gather'"
    with connect(target, log=True, read_only=False, autocommit=True) as conn:
        assert conn.execute(query).fetchone() == ("0", "client")
    with connect_dsn(demo_db, None, target=target, what="restored copy", parallel=True) as copy:
        assert copy.execute(query).fetchone()[1] != "client"  # the server's own setting
