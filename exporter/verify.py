"""One verification run for one target: ask the backup source, run every check
that has something configured, record the verdict in backup_verification_log.

Sessions: one per server. The check session on the target is read-only
(default_transaction_read_only); when the log table lives in the target (no
log_dsn) the same session reads the previous run and writes the row, in one
explicit READ WRITE transaction (db.writable). With log_dsn, one read-only
session on the log database does the log's part, the insert included.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import psycopg

from exporter import record
from exporter.backups import source_for
from exporter.checks import all_checks
from exporter.checks.base import CheckContext
from exporter.checks.row_counts import Acceptance
from exporter.checks.runner import run_check
from exporter.config import Settings, TargetConfig
from exporter.db import TargetUnreachable, close, connect, first_line, writable
from exporter.redact import scrub
from exporter.result import CheckResult, RunResult


def _read_previous(log_conn: psycopg.Connection, target: TargetConfig) -> dict | None:
    # No log table yet (not migrated) simply means no previous run; log_table reports it.
    try:
        with log_conn.transaction():
            previous = record.previous_details(log_conn, target.name)
            if previous is not None and "row_baseline" not in previous and target.checks.critical_tables:
                # The newest run had no row_counts result (unreachable, an error): the
                # baseline comes from the newest run that has one, so no drop is forgotten.
                baseline = record.newest_row_baseline(log_conn, target.name)
                if baseline is not None:
                    previous = {**previous, "row_baseline": baseline}
            return previous
    except psycopg.Error:
        return None


def _database_size(conn: psycopg.Connection) -> int | None:
    try:
        with conn.transaction():
            return conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    except psycopg.Error:
        return None


def _drill_due(log_conn: psycopg.Connection | None, target: TargetConfig, now: datetime) -> bool:
    if not target.restore.enabled or log_conn is None:
        return False
    try:
        with log_conn.transaction():
            last = record.last_good_drill(log_conn, target.name)
    except psycopg.Error:
        return True  # no log to tell: a drill is the safe answer
    return last is None or now - last >= timedelta(days=target.restore.interval_days)


def _lift_facts(result: RunResult) -> None:
    # The facts later runs and the metrics read, at a fixed place in verification_details.
    for check_name, key, fact in (
        ("row_counts", "row_counts", "row_counts"),
        ("row_counts", "row_baseline", "row_baseline"),
        ("row_counts", "accepted_rows", "accepted_rows"),
        ("rls_policies", "policies", "rls_policies"),
        ("index_coverage", "index_counts", "index_counts"),
        ("wal_archiving", "wal_archiving", "wal_archiving"),
        ("wal_continuity", "wal", "wal"),  # the recovery window's metrics read facts["wal"]["recovery_window"]
        ("backup_readable", "full_read", "full_read"),
    ):
        check = result.check(check_name)
        if check is not None and key in check.data:
            result.facts[fact] = check.data[key]
    counted = result.check("row_counts")
    if counted is not None:
        # Stored once, among the facts: at 10,000 tables it is about 300 KB.
        counted.data.pop("row_baseline", None)
    drill = result.check("restore")
    if drill is not None:
        # The drill's outcome goes with its figures: the next run finds the last good drill by it.
        result.facts["restore"] = {**drill.data.get("restore", {}), "outcome": drill.outcome, "message": drill.message}


def _run_checks(result: RunResult, ctx: CheckContext, log_problem: str | None) -> None:
    """Run every check that applies; without a session on the target (it is unreachable)
    only those that need no database, naming the others in the skipped_checks fact."""
    skipped = []
    for check in all_checks():
        if not check.applies_to_run(ctx) or (check.on_demand and not ctx.drill):
            continue
        if ctx.conn is None and check.needs_database:
            skipped.append(check.name)
            continue
        if check.uses_log_db and ctx.log_conn is None:
            result.checks.append(CheckResult(check.name, "error", log_problem or "no log database"))
            continue
        result.checks.append(run_check(check, ctx))
    if ctx.conn is not None:
        # database_size has just measured it when it ran: pg_database_size walks every
        # file of the database (0.1 s at 10,000 tables), so not twice.
        sized = result.check("database_size")
        if sized is not None and sized.data.get("database_size_bytes") is not None:
            result.facts["database_size_bytes"] = sized.data["database_size_bytes"]
        else:
            result.facts["database_size_bytes"] = _database_size(ctx.conn)
    if skipped:
        result.facts["skipped_checks"] = skipped


def _verify(
    target: TargetConfig,
    conn: psycopg.Connection | None,
    log_conn: psycopg.Connection | None,
    *,
    verified_at: datetime,
    started: float,
    drill: bool | None,
    keep: bool,
    full_read: bool = False,
    accept: Acceptance | None = None,
    unreachable: str | None = None,
    log_problem: str | None = None,
) -> RunResult:
    """The run on open sessions; conn None: the target could not be reached (unreachable
    says why), and the checks that need no database run all the same."""
    source = source_for(target.backup)
    result = RunResult(target.name, verified_at)
    result.unreachable = unreachable
    previous = _read_previous(log_conn, target) if log_conn is not None else None
    result.backup = source.lookup() if source is not None else None
    if drill is None:
        drill = _drill_due(log_conn, target, result.verified_at)
    ctx = CheckContext(
        target=target, conn=conn, log_conn=log_conn, backup=result.backup,
        previous=previous, now=result.verified_at, drill=bool(drill), keep=keep, full_read=full_read,
        accept=accept,
    )
    # Unreachable: the version the previous run saw, carried on so that the next run
    # of a long outage still chooses its tools by it.
    result.facts["server_version_num"] = ctx.server_version_num()
    result.facts["database_size_bytes"] = None  # filled after the checks, in this place among the facts
    _run_checks(result, ctx, log_problem)
    _lift_facts(result)
    result.duration_seconds = time.monotonic() - started
    return result


def unreachable_result(target: TargetConfig, reason: str, verified_at: datetime, started: float) -> RunResult:
    """The run of a target that could not be reached and holds its own log table (recorded
    as a failure): the backup source is still asked and the checks that need no
    database still run, without a previous run to compare with."""
    return _verify(target, None, None, verified_at=verified_at, started=started, drill=False, keep=False,
                   unreachable=reason, log_problem=f"target {target.name} unreachable: {reason}")


def verify_target(
    target: TargetConfig,
    *,
    record_result: bool = True,
    now: datetime | None = None,
    drill: bool | None = None,
    keep: bool = False,
    conn: psycopg.Connection | None = None,
    log_conn: psycopg.Connection | None = None,
    full_read: bool = False,
    accept: Acceptance | None = None,
) -> RunResult:
    """One run. drill=None drills when one is due, True forces one, False never drills.
    full_read: every source's full read (pgbackrest verify) runs now, whatever its cadence.

    conn: an open check session on the target (as `connect(target)` opens it:
    read-only, not autocommit) to run on instead of opening one; log_conn: the
    same for the log database when log_dsn is set. Sessions passed in are left
    open (the caller's to close; the daemon holds its run lock on one); sessions
    opened here are closed here. Without log_dsn, the check session is the log
    session too, and the row is written on it. accept: `pgbv accept-rows`, whose
    row_counts takes the current counts of those tables as the new baseline.

    A target that cannot be reached still gets a run: the backup source is asked
    and the checks that need no database run; the result is unreachable (a
    failure, exit 3) and names the checks it skipped.
    """
    started = time.monotonic()
    verified_at = now or datetime.now(timezone.utc)
    own_conn = conn is None
    unreachable = None
    if own_conn:
        try:
            conn = connect(target)
        except TargetUnreachable as exc:
            unreachable = exc.reason
    own_log = False
    log_problem = None
    if target.log_dsn is None:
        log_conn = conn
        if conn is None:
            log_problem = f"target {target.name} unreachable: {unreachable}"
    elif log_conn is None:
        try:
            log_conn = connect(target, log=True)
            own_log = True
        except TargetUnreachable as exc:
            log_problem = str(exc)
    try:
        result = _verify(target, conn, log_conn, verified_at=verified_at, started=started, drill=drill, keep=keep,
                         full_read=full_read, accept=accept, unreachable=unreachable, log_problem=log_problem)
        # The log table in an unreachable target: no second connect (and timeout) to the
        # server that just refused one; the run is not recorded (the daemon spools it).
        if record_result and not (log_conn is None and target.log_dsn is None):
            _record(target, result, log_conn)
    finally:
        if own_log:
            close(log_conn)
        if own_conn:
            close(conn)
    return result


def write(conn: psycopg.Connection, result: RunResult) -> uuid.UUID:
    """Insert the run's row on an open session of the log database, in one explicit
    READ WRITE transaction: the session may be read-only by default (the check
    session); it is read-only again afterwards. Returns the row's id."""
    with writable(conn), conn.transaction():
        return record.insert(conn, result)


def _record_problem(target: TargetConfig, exc: psycopg.Error) -> str:
    message = first_line(exc)
    if isinstance(exc, psycopg.errors.UndefinedTable):
        message += " (run `pgbv migrate` first)"
    return scrub(f"target {target.name}: could not record the result: {message}", target.secrets())


def _record(target: TargetConfig, result: RunResult, conn: psycopg.Connection | None = None) -> None:
    """Write the row on conn, the run's session on the log database, when it is
    still there; else (the session was lost, or the log database was unreachable
    when the run began) on a new session. The id makes a replay harmless."""
    if conn is not None and not conn.closed:
        try:
            result.id = write(conn, result)
            return
        except psycopg.Error as exc:
            if not conn.closed:  # the database refused the row: a new session would be refused too
                result.record_error = _record_problem(target, exc)
                return
    try:
        fresh = connect(target, log=True, read_only=False, autocommit=True)
    except TargetUnreachable as exc:
        result.record_error = str(exc)
        return
    try:
        result.id = record.insert(fresh, result)
    except psycopg.Error as exc:
        result.record_error = _record_problem(target, exc)
    finally:
        close(fresh)


def verify_all(
    settings: Settings, targets: list[TargetConfig], *, record_result: bool = True, drill: bool | None = None, keep: bool = False,
    full_read: bool = False,
) -> list[RunResult]:
    """Verify several targets, at most schedule.max_concurrent_targets at a time, in config order."""
    def one(target: TargetConfig) -> RunResult:
        return verify_target(target, record_result=record_result, drill=drill, keep=keep, full_read=full_read)

    if len(targets) == 1:
        return [one(targets[0])]
    with ThreadPoolExecutor(max_workers=settings.schedule.max_concurrent_targets, thread_name_prefix="pgbv-verify") as pool:
        return list(pool.map(one, targets))
