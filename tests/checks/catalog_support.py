"""What the catalog checks' tests share: running a check on a connection the test
has prepared, counting the statements a check sends, a role without privileges
and a lock held by another session."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from exporter.checks.base import Check, CheckContext
from exporter.checks.runner import run_check
from exporter.config import TargetConfig
from exporter.db import connect
from exporter.result import CheckResult


class _CountingCursor(psycopg.Cursor):
    def execute(self, query, params=None, **kwargs):
        self.connection.statements_sent += 1
        return super().execute(query, params, **kwargs)


def run_prepared(
    check: Check,
    target: TargetConfig,
    prepare: Callable[[psycopg.Connection], None] | None = None,
    previous: dict[str, Any] | None = None,
) -> tuple[CheckResult, int]:
    """Run a check as pgbv does, after ``prepare`` ran with the check's connection
    open; returns the result and the number of statements the check sent."""
    with connect(target) as conn:
        if prepare is not None:
            prepare(conn)
        conn.statements_sent = 0
        conn.cursor_factory = _CountingCursor
        ctx = CheckContext(
            target=target, conn=conn, log_conn=conn, backup=None, previous=previous, now=datetime.now(timezone.utc)
        )
        return run_check(check, ctx), conn.statements_sent


def as_user(dsn: str, user: str) -> str:
    params = conninfo_to_dict(dsn)
    params["user"] = user
    return make_conninfo(**params)


@contextlib.contextmanager
def role_without_privileges(pg_server, dbname: str) -> Iterator[str]:
    """A login role (cluster-wide, so uniquely named) holding no privilege it is not given."""
    role = f"pgbv_nopriv_{uuid.uuid4().hex[:10]}"
    pg_server.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        yield role
    finally:
        pg_server.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)), dbname=dbname)
        pg_server.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@contextlib.contextmanager
def locked(dsn: str, relation: str, schema: str = "public") -> Iterator[None]:
    """Another session holding ACCESS EXCLUSIVE on the relation until the block ends."""
    with psycopg.connect(dsn) as conn:
        conn.execute(
            sql.SQL("LOCK TABLE {}.{} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(schema), sql.Identifier(relation))
        )
        yield
        conn.rollback()


def dbname(dsn: str) -> str:
    return conninfo_to_dict(dsn)["dbname"]


def make_tables(dsn: str, count: int, rows: int = 3, analyze: bool = False) -> list[str]:
    """``count`` tables t000, t001... of ``rows`` rows each, with a primary key, RLS on
    and one policy; autovacuum off, so none is analyzed unless asked."""
    names = [f"t{i:03d}" for i in range(count)]
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.transaction():
            for name in names:
                table = sql.Identifier(name)
                conn.execute(sql.SQL(
                    "CREATE TABLE {t} (id int PRIMARY KEY) WITH (autovacuum_enabled = false);"
                    "INSERT INTO {t} SELECT generate_series(1, {n});"
                    "ALTER TABLE {t} ENABLE ROW LEVEL SECURITY;"
                    "CREATE POLICY {p} ON {t} USING (true)"
                ).format(t=table, n=sql.Literal(rows), p=sql.Identifier(f"{name}_all")))
        if analyze:
            conn.execute("ANALYZE")
    return names


def run_while_locked(check: Check, target: TargetConfig, relation: str, schema: str = "public") -> CheckResult:
    """Run a check while another session holds the relation locked. The lock is
    taken once the check is connected: a new session may need a catalog to start."""
    with contextlib.ExitStack() as stack:
        result, _ = run_prepared(
            check, target, prepare=lambda _conn: stack.enter_context(locked(target.dsn, relation, schema))
        )
    return result
