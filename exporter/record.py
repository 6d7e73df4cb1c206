"""Reads and writes backup_verification_log: one row per run, the previous run's
details for comparison, history and cleanup through the migration's functions.

Rows carry the target's name in verification_details->>'target', so several
targets may share one log database (log_dsn). Rows written before pgbv (by hand,
from the seed's procedure) have no target and are read as belonging to any target.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from exporter.config import TargetConfig
from exporter.logschema import TARGET_FUNCTION
from exporter.redact import scrub
from exporter.result import BACKUP_SOURCE_ENTRY, CONNECTION_ENTRY, RATIO_CHECK, RunResult

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


# The success ratio's windows: the short one is judged (success_rate, the alert), the
# long one shows the trend.
SHORT_WINDOW, LONG_WINDOW = "7d", "30d"
RATIO_WINDOWS = {SHORT_WINDOW: 7, LONG_WINDOW: 30}

# How each run in a window counts in the success ratio, one row per kind:
# (kind, runs in the short window, runs in the long one), kind being
#   ok         its checks other than success_rate did not fail (success or warning;
#              a failure whose error_details names success_rate alone is ok too);
#   failure    one of its other checks failed or errored (or a failure row that does
#              not say which: counted by its status);
#   unreached  it could not reach the database (error_details names the connection; its
#              backup checks may have run) or a backup source that could answer: left out, counted apart;
#   NULL       not a run (an accept-rows entry: no checks, "kind": "accept_rows").
# Rows written before this rule count the same way: their columns say it all.
#
# Only the row's columns and its error_details (the failed checks: small, kept in the
# row) are read, never verification_details, the run's document: several KB, TOASTed,
# ~25 µs each to decompress: 200 ms for 30 days of 5-minute runs, against 3-5 ms. The
# one exception is a row without checks and without a connection entry, rare by nature.
# Failed runs are told apart with jsonpath, 2-3x cheaper than a subquery over
# jsonb_array_elements (30 days of failures: 17-24 ms against 26-57 ms). The CASE is
# computed once a row: GROUP BY takes it from the scan, where a FILTER per kind would
# evaluate it once each.
SUCCESS_RATIOS_SQL = f"""
SELECT kind, count(*) FILTER (WHERE verified_at >= %(since_short)s), count(*)
  FROM (SELECT verified_at,
               -- A run that never reached the database (its backup checks may have run
               -- meanwhile: docs/daemon.md, outages) is not a verdict on the database.
               CASE WHEN error_details @> '[{{"name": "{CONNECTION_ENTRY}"}}]' THEN 'unreached'
                    WHEN checks_passed + checks_failed = 0 THEN
                         CASE WHEN verification_details->>'kind' = 'accept_rows' THEN NULL
                              WHEN status = 'failure' THEN 'failure'
                              ELSE 'ok' END
                    WHEN status <> 'failure' THEN 'ok'
                    WHEN error_details @> '[{{"name": "{BACKUP_SOURCE_ENTRY}"}}]' THEN 'unreached'
                    WHEN jsonb_path_exists(error_details, '$[*] ? (!(@.name == "{RATIO_CHECK}"))') THEN 'failure'
                    WHEN jsonb_path_exists(error_details, '$[*] ? (@.name == "{RATIO_CHECK}")') THEN 'ok'
                    ELSE 'failure'
               END AS kind
          FROM backup_verification_log
         WHERE verified_at >= %(since_long)s AND verified_at <= %(now)s AND {BELONGS_TO_TARGET}) AS runs
 GROUP BY kind
"""


@dataclass(frozen=True)
class RunCounts:
    """A window's runs: those counted in the success ratio, the successful ones among
    them, and those left out because they never reached the database or the backups."""

    counted: int = 0
    succeeded: int = 0
    unreached: int = 0

    @property
    def ratio(self) -> float | None:
        return self.succeeded / self.counted if self.counted else None


def success_ratios(conn: psycopg.Connection, target: str, now: datetime) -> dict[str, RunCounts]:
    """The target's runs over each of RATIO_WINDOWS up to now, as the success_rate check
    and the metrics snapshot both read them. One statement."""
    rows = conn.execute(SUCCESS_RATIOS_SQL, {
        "target": target, "now": now,
        "since_short": now - timedelta(days=RATIO_WINDOWS[SHORT_WINDOW]),
        "since_long": now - timedelta(days=RATIO_WINDOWS[LONG_WINDOW]),
    }).fetchall()
    out = {}
    for window, column in ((SHORT_WINDOW, 1), (LONG_WINDOW, 2)):
        runs = {row[0]: row[column] for row in rows if row[0] is not None}
        ok, failed = runs.get("ok", 0), runs.get("failure", 0)
        out[window] = RunCounts(counted=ok + failed, succeeded=ok, unreached=runs.get("unreached", 0))
    return out


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


# How many of the target's newest rows recorded_backup_sizes walks: through the target
# index, reading only the backup_id column (runs every 10 minutes over daily backups:
# two weeks of them). Only the documents of the few rows it keeps are opened.
RECENT_ROWS_FOR_SIZES = 2000


def recorded_backup_sizes(conn: psycopg.Connection, target: str, kind: str, newest_id: str, limit: int) -> list[int]:
    """Sizes of the backups of this kind that earlier runs of the target recorded, one
    per backup id (its latest record), newest first, at most limit, newest_id left out.

    Cost, whatever the size of the log: one index scan of the target's newest
    RECENT_ROWS_FOR_SIZES rows, then the verification_details of at most 3 x limit rows
    (the latest of each backup id; the kind is known only there)."""
    rows = conn.execute(
        f"""
        WITH per_backup AS (
            SELECT DISTINCT ON (backup_id) backup_id, verified_at, id
            FROM (
                SELECT backup_id, verified_at, id FROM backup_verification_log
                WHERE {TARGET_OF} = %(target)s
                ORDER BY verified_at DESC LIMIT {RECENT_ROWS_FOR_SIZES}
            ) AS recent
            WHERE backup_id IS NOT NULL AND backup_id <> %(newest)s
            ORDER BY backup_id, verified_at DESC
        ), candidates AS (
            SELECT id, verified_at FROM per_backup ORDER BY verified_at DESC LIMIT %(candidates)s
        )
        SELECT (log.verification_details->'backup'->>'size_bytes')::numeric::bigint
        FROM candidates JOIN backup_verification_log AS log ON log.id = candidates.id
        WHERE jsonb_typeof(log.verification_details->'backup'->'size_bytes') = 'number'
          AND log.verification_details->'backup'->>'kind' = %(kind)s
        ORDER BY candidates.verified_at DESC LIMIT %(limit)s
        """,
        {"target": target, "kind": kind, "newest": newest_id, "limit": limit, "candidates": 3 * limit},
    ).fetchall()
    return [row[0] for row in rows]


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
