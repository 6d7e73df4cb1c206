"""Reads and writes backup_verification_log: one row per run, the previous run's
details for comparison, history and cleanup through the migration's functions.

Rows carry the target's name in verification_details->>'target', so several
targets may share one log database (log_dsn). Rows written before pgbv (by hand,
from the seed's procedure) have no target and are read as belonging to any target.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from exporter.config import TargetConfig
from exporter.logschema import TARGET_FUNCTION
from exporter.redact import scrub
from exporter.result import RunResult

MIB = 1024 * 1024

# The row's target, spelled as the target indexes are built
# (sql/20261127_index_backup_verification_log_target_function.sql): through the
# function, the planner keeps to those indexes instead of reading every run's
# document in a time window.
TARGET_OF = f"{TARGET_FUNCTION}(verification_details)"
# Rows of this target, and rows without one (written before pgbv): the target
# index serves both halves.
BELONGS_TO_TARGET = f"({TARGET_OF} = %(target)s OR {TARGET_OF} IS NULL)"


def newest_query(columns: list[str], condition: str = "TRUE") -> str:
    """SQL for the target's newest row meeting condition: one short index scan per
    half (this target's rows, then the rows without a target) instead of a filter
    over every row. Returns the columns in order; parameters: %(target)s and
    whatever condition uses."""
    inner = ", ".join(f"{expression} AS c{index}" for index, expression in enumerate(columns))
    outer = ", ".join(f"c{index}" for index in range(len(columns)))
    half = (
        f"(SELECT verified_at AS newest_at, {inner} FROM backup_verification_log"
        f" WHERE {TARGET_OF} {{match}} AND ({{condition}})"
        " ORDER BY verified_at DESC LIMIT 1)"
    )
    return (
        f"SELECT {outer} FROM ("
        + half.format(match="= %(target)s", condition=condition)
        + " UNION ALL "
        + half.format(match="IS NULL", condition=condition)
        + ") AS newest ORDER BY newest_at DESC LIMIT 1"
    )


def row_values(result: RunResult) -> dict[str, Any]:
    info = result.backup.info if result.backup is not None else None
    return {
        "id": result.id,
        "verified_at": result.verified_at,
        "backup_id": info.id if info else None,
        "backup_age_hours": int(round(info.age_hours(result.verified_at))) if info else None,
        "backup_size_mb": int(round(info.size_bytes / MIB)) if info and info.size_bytes is not None else None,
        "status": result.status,
        "checks_passed": result.checks_passed,
        "checks_failed": result.checks_failed,
        "error_details": Jsonb(result.error_details()) if result.error_details() is not None else None,
        "verification_details": Jsonb(result.verification_details()),
    }


def insert(conn: psycopg.Connection, result: RunResult) -> uuid.UUID:
    """Write one run; returns its id.

    The id is made here, not by the database, and a second insert of the same
    id does nothing: when a connection drops after the server committed, the
    same result may be spooled and replayed without making a second row.
    """
    if result.id is None:
        result.id = uuid.uuid4()
    conn.execute(
        """
        INSERT INTO backup_verification_log
            (id, verified_at, backup_id, backup_age_hours, backup_size_mb, status,
             checks_passed, checks_failed, error_details, verification_details)
        VALUES (%(id)s, %(verified_at)s, %(backup_id)s, %(backup_age_hours)s, %(backup_size_mb)s, %(status)s,
                %(checks_passed)s, %(checks_failed)s, %(error_details)s, %(verification_details)s)
        ON CONFLICT (id) DO NOTHING
        """,
        row_values(result),
    )
    return result.id


def previous_details(conn: psycopg.Connection, target: str) -> dict[str, Any] | None:
    """verification_details of the target's newest recorded run, or None."""
    row = conn.execute(newest_query(["verification_details"]), {"target": target}).fetchone()
    return row[0] if row and isinstance(row[0], dict) else None


# Runs without a baseline (unreachable, row_counts in error, recorded before baselines
# existed) are skipped, but only among the newest 100 runs: each is a document of
# several KB to open, and a target without critical tables never has one.
BASELINE_LOOKBACK_RUNS = 100


def newest_row_baseline(conn: psycopg.Connection, target: str) -> dict[str, Any] | None:
    """row_baseline of the target's newest run that has one (checks/row_counts.py), among
    its newest BASELINE_LOOKBACK_RUNS runs; else None."""
    row = conn.execute(
        f"""
        SELECT baseline FROM (
            SELECT verification_details->'row_baseline' AS baseline, verified_at
              FROM backup_verification_log
             WHERE {TARGET_OF} = %(target)s
             ORDER BY verified_at DESC LIMIT {BASELINE_LOOKBACK_RUNS}
        ) AS newest
         WHERE baseline IS NOT NULL
         ORDER BY verified_at DESC LIMIT 1
        """,
        {"target": target},
    ).fetchone()
    return row[0] if row and isinstance(row[0], dict) else None


# "? 'restore'" lets the partial drills index serve the query.
GOOD_DRILL = "verification_details ? 'restore' AND verification_details->'restore'->>'outcome' IN ('pass', 'warn')"


def last_good_drill(conn: psycopg.Connection, target: str):
    """When the target's newest passing (or merely slow) restore drill was recorded, or None."""
    row = conn.execute(newest_query(["verified_at"], GOOD_DRILL), {"target": target}).fetchone()
    return row[0] if row else None


HISTORY_COLUMNS = (
    "id", "verified_at", "status", "backup_id", "backup_age_hours", "backup_size_mb",
    "checks_passed", "checks_failed", "error_details", "verification_details",
)


def history(conn: psycopg.Connection, days: int, target: str | None = None) -> list[dict[str, Any]]:
    """Rows of get_backup_verification_history(days), newest first, optionally one target's."""
    where = f"WHERE {BELONGS_TO_TARGET}" if target is not None else ""
    rows = conn.execute(
        f"SELECT {', '.join(HISTORY_COLUMNS)} FROM get_backup_verification_history(%(days)s) {where}",
        {"days": days, "target": target},
    ).fetchall()
    return [dict(zip(HISTORY_COLUMNS, row)) for row in rows]


def cleanup(conn: psycopg.Connection, retention_days: int) -> int:
    return conn.execute("SELECT cleanup_old_backup_verification_logs(%s)", [retention_days]).fetchone()[0]


def cleanup_targets(targets: list[TargetConfig], retention_days: int) -> Iterator[tuple[TargetConfig, int | None, str | None]]:
    """Clean every log database once (targets may share one): (target, rows deleted, or the reason it failed)."""
    from exporter.db import TargetUnreachable, close, connect, first_line

    done: set[str] = set()
    for target in targets:
        where = target.log_dsn or target.dsn
        if where in done:
            continue
        try:
            conn = connect(target, log=True, read_only=False, autocommit=True)
            try:
                deleted = cleanup(conn, retention_days)
            finally:
                close(conn)  # waits for the server process: the refresh opens the next session
        except TargetUnreachable as exc:
            yield target, None, str(exc)
            continue
        except psycopg.Error as exc:
            yield target, None, scrub(f"target {target.name}: cleanup failed: {first_line(exc)}", target.secrets())
            continue
        done.add(where)
        yield target, deleted, None
