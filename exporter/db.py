"""Connections to targets: always a connect timeout, a statement timeout, a lock
timeout and application_name=pgbv; check connections are read-only at the
session level, so no check can write even by mistake. A row is written on such
a session only inside `writable`, one explicit READ WRITE transaction; `close`
ends a session and waits until its server process is gone."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from exporter.config import TargetConfig
from exporter.redact import scrub

APPLICATION_NAME = "pgbv"
# Short on purpose: a lock we queue for blocks every application query queued after us.
LOCK_TIMEOUT_SECONDS = 2
# How long close() waits for the server process of a closed session to exit.
EXIT_WAIT_SECONDS = 1.0


class TargetUnreachable(Exception):
    """The target (or its log database) could not be reached; the message is safe to print."""

    def __init__(self, target: str, reason: str, what: str = "database"):
        self.target = target
        self.reason = reason
        super().__init__(f"target {target}: cannot connect to the {what}: {reason}")


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0].strip() if text else type(error).__name__


def session_settings(statement_timeout_seconds: float, lock_timeout_seconds: float, read_only: bool,
                     parallel: bool) -> dict[str, str]:
    """The settings pgbv's session must run with, as pg_settings.setting spells them."""
    settings = {
        "statement_timeout": str(int(statement_timeout_seconds * 1000)),
        "lock_timeout": str(int(lock_timeout_seconds * 1000)),
        # A pgbv transaction left open by a bug must not hold back vacuum for long.
        "idle_in_transaction_session_timeout": str(int(max(statement_timeout_seconds, 10) * 2000)),
    }
    if read_only:
        settings["default_transaction_read_only"] = "on"
    if not parallel:
        # pgbv's reads are small: starting parallel workers cost more than they saved
        # (the success ratio: 21 ms in parallel, 9 ms without, bench/), and the workers
        # come from the pool the application's own queries draw on.
        settings["max_parallel_workers_per_gather"] = "0"
    return settings


def _options(settings: dict[str, str]) -> str:
    return " ".join(f"-c {name}={value}" for name, value in settings.items())


_APPLIED_SQL = "SELECT name, setting FROM pg_catalog.pg_settings WHERE name = ANY(%s)"


def _not_applied(conn: psycopg.Connection, wanted: dict[str, str]) -> list[str]:
    """The settings the server did not take from the startup packet. A connection pooler
    (pgbouncer with options in ignore_startup_parameters, for one) may drop them without
    a word; pgbv's promises (read-only checks, a timeout on every statement) rest on them."""
    autocommit = conn.autocommit
    conn.autocommit = True  # one statement, no transaction left open
    try:
        found = dict(conn.execute(_APPLIED_SQL, [list(wanted)]).fetchall())
    finally:
        conn.autocommit = autocommit
    return [f"{name} is {found.get(name)!r}, not {value!r}" for name, value in wanted.items() if found.get(name) != value]


def connect_dsn(
    dsn: str,
    password: str | None,
    *,
    target: TargetConfig,
    what: str = "database",
    read_only: bool = True,
    statement_timeout_seconds: float | None = None,
    lock_timeout_seconds: float = LOCK_TIMEOUT_SECONDS,
    autocommit: bool = False,
    parallel: bool = False,
) -> psycopg.Connection:
    """Open a connection with pgbv's timeouts and name; errors name the target, never the password.
    parallel=True leaves parallel query to the server's settings (only for a restored copy)."""
    timeout = statement_timeout_seconds or target.statement_timeout_seconds
    wanted = session_settings(timeout, lock_timeout_seconds, read_only, parallel)
    params = {
        "connect_timeout": target.connect_timeout_seconds,
        "application_name": APPLICATION_NAME,
        # The user's own options come first; ours are appended so that they win.
        "options": " ".join(part for part in (conninfo_to_dict(dsn).get("options"), _options(wanted)) if part),
    }
    if password is not None:
        params["password"] = password
    try:
        # prepare_threshold=None: psycopg would prepare a statement run 5 times on one
        # session, and PostgreSQL then moves to a generic plan, blind to the target and
        # window (30x slower for the success ratio, bench/); prepared statements also
        # break behind a transaction-pooling pgbouncer. pgbv's statements are few.
        conn = psycopg.connect(make_conninfo(dsn, **params), autocommit=autocommit, prepare_threshold=None)
    except psycopg.Error as exc:
        reason = scrub(first_line(exc), target.secrets())
        raise TargetUnreachable(target.name, reason, what) from None
    try:
        missing = _not_applied(conn, wanted)
    except psycopg.Error as exc:
        conn.close()
        raise TargetUnreachable(target.name, scrub(first_line(exc), target.secrets()), what) from None
    if missing:
        conn.close()
        raise TargetUnreachable(
            target.name,
            "the server did not apply pgbv's session settings (" + "; ".join(missing) + "); a connection pooler "
            "in between (pgbouncer drops the options parameter when it is in ignore_startup_parameters)? "
            "Connect pgbv to PostgreSQL itself",
            what,
        )
    return conn


def connect(
    target: TargetConfig,
    *,
    log: bool = False,
    read_only: bool = True,
    statement_timeout_seconds: float | None = None,
    lock_timeout_seconds: float = LOCK_TIMEOUT_SECONDS,
    autocommit: bool = False,
) -> psycopg.Connection:
    """Open a connection to the target (or, with log=True, to where its log table lives)."""
    separate_log = log and target.log_dsn is not None
    return connect_dsn(
        target.log_dsn if separate_log else target.dsn,
        target.resolved_log_password() if log else target.resolved_password(),
        target=target,
        what="log database" if separate_log else "database",
        read_only=read_only,
        statement_timeout_seconds=statement_timeout_seconds,
        lock_timeout_seconds=lock_timeout_seconds,
        autocommit=autocommit,
    )


@contextmanager
def writable(conn: psycopg.Connection) -> Iterator[psycopg.Connection]:
    """Inside, every transaction psycopg starts on conn begins with BEGIN READ WRITE.

    For writing on a session that is read-only by default (connect's
    default_transaction_read_only=on): ``with writable(conn), conn.transaction():``
    writes in one explicit READ WRITE transaction, and the session is read-only
    again after it. The session's statement and lock timeouts still apply. A
    server that cannot take writes (a hot standby) refuses the BEGIN READ WRITE.
    conn must not be inside a conn.transaction() block; an implicit read-only
    transaction left open is rolled back first (it holds nothing to keep).
    """
    if not conn.autocommit and conn.info.transaction_status != pq.TransactionStatus.IDLE:
        conn.rollback()
    previous = conn.read_only
    conn.read_only = False
    try:
        yield conn
    finally:
        if not conn.closed:
            if not conn.autocommit and conn.info.transaction_status != pq.TransactionStatus.IDLE:
                conn.rollback()
            conn.read_only = previous


def close(conn: psycopg.Connection | None, wait_seconds: float = EXIT_WAIT_SECONDS) -> None:
    """Close a session and wait, at most wait_seconds, until its server process has exited.

    libpq's close sends Terminate and returns at once; the server process then
    keeps its slot (listed in pg_stat_activity, counted against max_connections)
    until it has exited, which takes milliseconds, more on a busy machine. A
    session opened right after would make one more than pgbv's bound. The server
    closes its end of the socket only when the process exits, so reading a
    duplicate of the socket to its end tells when it is gone. Never raises.
    """
    if conn is None or conn.closed:
        return
    try:
        fd = os.dup(conn.pgconn.socket)
    except (psycopg.Error, OSError):
        fd = None
    try:
        conn.close()
    except psycopg.Error:
        pass
    if fd is None:
        return
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        os.close(fd)
        return
    with sock:
        deadline = time.monotonic() + wait_seconds
        try:
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                if not sock.recv(4096):  # end of stream: the server process has exited
                    break
        except OSError:  # a timeout or a reset: nothing more to wait for
            pass
