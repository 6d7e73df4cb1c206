"""Runs one check: in its own read-only transaction, timed, and never a pass by accident.

A check that raises becomes ``error`` with the reason: a statement timeout, a
missing permission, a lost connection or a bug all count as failed, because
a check that could not run proved nothing.
"""

from __future__ import annotations

import dataclasses
import time

import psycopg
from psycopg import errors

from exporter.checks.base import Check, CheckContext
from exporter.db import first_line
from exporter.redact import scrub
from exporter.result import CheckResult


def _reason(exc: BaseException, ctx: CheckContext) -> str:
    if isinstance(exc, errors.QueryCanceled):
        return f"timed out after {ctx.target.statement_timeout_seconds:g}s (statement_timeout): {first_line(exc)}"
    if isinstance(exc, errors.LockNotAvailable):
        return f"gave up waiting for a lock (lock_timeout): {first_line(exc)}"
    if isinstance(exc, errors.InsufficientPrivilege):
        return f"permission denied: {first_line(exc)}"
    if _connection_lost(exc):
        return f"connection lost: {first_line(exc)}"
    if isinstance(exc, psycopg.Error) and exc.sqlstate is not None:
        # The server's own words (a missing library, a corrupt page...): nothing pgbv got wrong.
        return f"the server reported: {first_line(exc)} (SQLSTATE {exc.sqlstate})"
    return f"internal error {type(exc).__name__}: {exc}"


# The server going away: admin_shutdown, crash_shutdown, cannot_connect_now.
_SHUTDOWN_STATES = ("57P01", "57P02", "57P03")


def _connection_lost(exc: BaseException) -> bool:
    """The session is gone: a client-side OperationalError (no SQLSTATE), a connection
    exception (class 08) or a shutdown. psycopg files other server errors under
    OperationalError too (a missing library, 58P01, is one): those are the server's words."""
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = exc.sqlstate
    return state is None or state.startswith("08") or state in _SHUTDOWN_STATES


def run_check(check: Check, ctx: CheckContext) -> CheckResult:
    conn = ctx.log_conn if check.uses_log_db else ctx.conn
    started = time.monotonic()
    try:
        # No session (a check that needs no database, the target unreachable): nothing to wrap.
        if check.own_transactions or conn is None:
            result = check.run(ctx)
        else:
            with conn.transaction():
                result = check.run(ctx)
    except Exception as exc:  # noqa: BLE001 - every failure must become an 'error' result
        result = CheckResult(check.name, "error", scrub(_reason(exc, ctx), ctx.target.secrets()))
    return dataclasses.replace(result, duration_seconds=time.monotonic() - started)
