"""exporter.db: the sessions pgbv opens, with what they promise: read-only unless
asked, timeouts set, nothing prepared on the server, and written only inside
writable()."""

from __future__ import annotations

import psycopg
import pytest

from exporter import record, snapshot
from exporter.db import connect, writable
from tests.conftest import make_target


def test_a_check_session_is_read_only_with_its_timeouts(demo_db):
    target = make_target(demo_db, statement_timeout_seconds=7)
    with connect(target) as conn:
        settings = dict(conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN"
            " ('default_transaction_read_only', 'statement_timeout', 'lock_timeout', 'application_name')"
        ).fetchall())
        assert settings == {"default_transaction_read_only": "on", "statement_timeout": "7000",
                            "lock_timeout": "2000", "application_name": "pgbv"}
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
            conn.execute(snapshot._RATIOS_SQL, {"target": "app", "now": "now", "since_7d": "now", "since_30d": "now"})
            conn.execute(record.newest_query(["verified_at"]), {"target": "app"})
        assert conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()[0] == 0
