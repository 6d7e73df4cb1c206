"""The immutable picture the metrics are served from.

It is rebuilt from the log table after every run and every refresh_seconds, so
every replica serves the same values and a restarted daemon serves the last
verdict at once. A run still waiting in the spool (the log database could not
take it) and newer than the table's newest row of its target is shown in its
place (with_spooled). A scrape only reads the current Snapshot object; it never
queries a database.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import psycopg

from exporter.backups import keeps_wal
from exporter.config import Settings, TargetConfig
from exporter.record import GOOD_DRILL, TARGET_OF, newest_query, success_ratios


@dataclass(frozen=True)
class TargetSnapshot:
    name: str
    up: bool = False  # the last attempt to reach the target succeeded
    last_run_timestamp: float | None = None
    last_run_started: float | None = None  # the newest row's verified_at: which period it belongs to
    # The newest run by the replica that owned the target then (trigger schedule or start, not
    # takeover): the shards' stall alert reads it (pgbv_shard_last_run_timestamp_seconds).
    last_own_run_started: float | None = None
    last_success_timestamp: float | None = None
    last_status: str | None = None
    last_duration_seconds: float | None = None
    checks_passed: int = 0
    checks_warned: int = 0
    checks_failed: int = 0
    check_success: dict[str, int] = field(default_factory=dict)  # check name -> 1 passed/warned, 0 failed/errored
    backup_completion_timestamp: float | None = None
    backup_age_seconds: float | None = None
    backup_size_bytes: int | None = None
    database_size_bytes: int | None = None
    table_rows: dict[str, int] = field(default_factory=dict)
    rls_policies: dict[str, int] = field(default_factory=dict)
    success_ratio: dict[str, float | None] = field(default_factory=dict)  # window ("7d", "30d") -> share
    # window -> runs that could not reach the database or the backups, left out of the ratio
    unreached_runs: dict[str, int] = field(default_factory=dict)
    warn_age_seconds: float | None = None  # None when the target has no backup source
    max_age_seconds: float | None = None
    success_ratio_min: float = 0.0
    # Restore drills; None/empty when the target has none enabled or none ran yet.
    rto_target_seconds: float | None = None
    restore_interval_seconds: float | None = None
    restore_duration_seconds: float | None = None
    restore_last_success_timestamp: float | None = None
    restore_rows: dict[str, int] = field(default_factory=dict)
    # The WAL archive: only targets whose source keeps one have a recovery window,
    # and only those that also drill have a measured RPO (None: the series are absent).
    keeps_wal: bool = False
    recovery_window_start: float | None = None  # the oldest point a recovery can reach
    recovery_window_end: float | None = None  # the newest archived WAL's time
    rpo_objective_seconds: float | None = None
    restore_recovered_until: float | None = None  # newest drill that replayed to the archive's end
    restore_rpo_seconds: float | None = None


@dataclass(frozen=True)
class Snapshot:
    targets: tuple[TargetSnapshot, ...]
    schedule_interval_seconds: float
    next_run_timestamp: float | None = None
    spool_rows: int = 0
    built_at: float = field(default_factory=time.time)
    # This replica (docs/daemon.md, "Replicas"): its shard, and the rows it produced since it started.
    shard: int = 0
    total_shards: int = 1
    runs_total: Mapping[str, int] = field(default_factory=lambda: {"own": 0, "takeover": 0})


def configured(target: TargetConfig) -> TargetSnapshot:
    """What is known of a target before anything was read: its limits, zeros elsewhere."""
    backup = target.backup
    has_backup = backup.source != "none"
    wal = keeps_wal(target.backup)
    return TargetSnapshot(
        name=target.name,
        warn_age_seconds=backup.warn_age_hours * 3600 if has_backup else None,
        max_age_seconds=backup.max_age_hours * 3600 if has_backup else None,
        success_ratio_min=target.checks.min_success_ratio,
        rto_target_seconds=target.restore.rto_minutes * 60 if target.restore.enabled else None,
        restore_interval_seconds=target.restore.interval_days * 86400 if target.restore.enabled else None,
        keeps_wal=wal,
        rpo_objective_seconds=target.restore.rpo_hours * 3600 if wal and target.restore.enabled else None,
    )


def schedule_interval_seconds(settings: Settings) -> float:
    if settings.schedule.interval_minutes:
        return settings.schedule.interval_minutes * 60.0
    return 86400.0


def empty(settings: Settings) -> Snapshot:
    return Snapshot(
        targets=tuple(configured(t) for t in settings.targets),
        schedule_interval_seconds=schedule_interval_seconds(settings),
    )


_LATEST_SQL = newest_query(["verified_at", "status", "verification_details"])
# The newest success and the newest own run (not a takeover) in one statement.
_OWN_RUN = "verification_details->>'trigger' IN ('schedule', 'start')"
_LAST_SUCCESS_SQL = (
    "SELECT (" + newest_query(["verified_at"], "status = 'success'") + "), (" + newest_query(["verified_at"], _OWN_RUN) + ")"
)

_LAST_DRILL_SQL = newest_query(["verification_details->'restore'", "id"], "verification_details ? 'restore'")
_LAST_GOOD_DRILL_SQL = newest_query(["verified_at", "verification_details->'restore'->'duration_seconds'"], GOOD_DRILL)


def _drills(conn: psycopg.Connection, target: TargetConfig) -> tuple[dict[str, Any], tuple | None]:
    """The drill fields of the picture, and the newest drill's (restore entry, row id)
    (None when the target has no drill yet)."""
    if not target.restore.enabled:
        return {}, None
    params = {"target": target.name}
    last = conn.execute(_LAST_DRILL_SQL, params).fetchone()
    good = conn.execute(_LAST_GOOD_DRILL_SQL, params).fetchone()
    drill = last[0] if last and isinstance(last[0], dict) else {}
    duration = drill.get("duration_seconds")
    good_end = None
    if good is not None:
        good_end = good[0].timestamp() + (float(good[1]) if isinstance(good[1], (int, float)) else 0.0)
    return {
        "restore_duration_seconds": float(duration) if isinstance(duration, (int, float)) else None,
        "restore_last_success_timestamp": good_end,
        "restore_rows": _int_map(drill.get("rows")),
    }, ((drill, last[1]) if last else None)


# The recovery window comes from the newest run with a 'wal' entry (wal_continuity's
# reading of the archive), the measured RPO from the newest drill that replayed the
# archive to its end. Both are nearly always in the rows read already (the newest run,
# the newest drill); one statement reads older rows only when they are not.
#
# Each older row looked at is a document to open, so neither search may walk the whole
# log at every refresh. The window is looked for among the target's newest
# WINDOW_LOOKBACK_RUNS runs only (a target whose runs have not read its archive for that
# long has no known window: 0). The replay search has no such bound (a drill is weekly,
# a run may be every few minutes) but its answer only changes with a new drill: it is
# kept per target and newest drill, so it runs once per drill and process.
WINDOW_LOOKBACK_RUNS = 100
# A drill to a random point recovers to a time chosen inside the window: its distance
# to the drill's start is not the recovery point, so only drills to the end count.
_REPLAYED = (
    "verification_details ? 'restore'"
    " AND verification_details->'restore'->>'recovered_until' IS NOT NULL"
    " AND coalesce(verification_details->'restore'->'recovery_target'->>'kind', 'latest') = 'latest'"
)
# Rows without a target predate pgbv (the seed's script) and never read an archive.
_NEWEST_WAL_SQL = (
    "SELECT wal FROM (SELECT verified_at, verification_details->'wal' AS wal FROM backup_verification_log"
    f" WHERE {TARGET_OF} = %(target)s ORDER BY verified_at DESC LIMIT {WINDOW_LOOKBACK_RUNS}) AS recent"
    " WHERE jsonb_typeof(wal) = 'object' ORDER BY verified_at DESC LIMIT 1"
)
_NEWEST_REPLAY_SQL = newest_query(["verification_details->'restore'"], _REPLAYED)


def _older_sql(wal: bool, replay: bool) -> str:
    return (
        f"SELECT {f'({_NEWEST_WAL_SQL})' if wal else 'NULL::jsonb'},"
        f" {f'({_NEWEST_REPLAY_SQL})' if replay else 'NULL::jsonb'}"
    )


def _replayed(restore: Any) -> bool:
    """Python's reading of _REPLAYED, for a restore entry already at hand."""
    if not isinstance(restore, dict) or restore.get("recovered_until") is None:
        return False
    kind = restore.get("recovery_target", {}).get("kind") if isinstance(restore.get("recovery_target"), dict) else None
    return kind in (None, "latest")


def _window(wal: Any) -> dict[str, Any]:
    """The recovery window fields from a 'wal' entry; {} when there is none."""
    if not isinstance(wal, dict):
        return {}
    window = wal.get("recovery_window") if isinstance(wal.get("recovery_window"), dict) else {}
    return {"recovery_window_start": _ts(window.get("start")), "recovery_window_end": _ts(window.get("end"))}


def _rpo(restore: Any) -> dict[str, Any]:
    if not _replayed(restore):
        return {}
    rpo = restore.get("rpo_seconds")
    return {
        "restore_recovered_until": _ts(restore.get("recovered_until")),
        "restore_rpo_seconds": float(rpo) if isinstance(rpo, (int, float)) and not isinstance(rpo, bool) else None,
    }


# target name -> (row id of its newest drill, the measure found behind it). Rows are
# never changed, so the measure stays right until a newer drill is recorded.
_REPLAY_FOUND: dict[str, tuple[Any, dict[str, Any]]] = {}


def _recovery(conn: psycopg.Connection, target: TargetConfig, base: TargetSnapshot, latest_details: dict | None,
              last_drill: tuple | None) -> dict[str, Any]:
    """The recovery window and the measured RPO: from the rows at hand, and at most one
    more statement for what they lack."""
    if not base.keeps_wal:
        return {}
    found = _window(latest_details.get("wal")) if latest_details is not None else {}
    measured: dict[str, Any] = {}
    want_replay = False
    if base.rpo_objective_seconds is not None and last_drill is not None:  # no drill yet: nothing to look for
        drill, drill_id = last_drill
        measured = _rpo(drill)
        if not measured:
            known = _REPLAY_FOUND.get(target.name)
            if known is not None and known[0] == drill_id:
                measured = known[1]
            else:
                want_replay = True
    want_wal = latest_details is not None and not found  # no row at all: nothing older either
    if want_wal or want_replay:
        wal, restore = conn.execute(_older_sql(want_wal, want_replay), {"target": target.name}).fetchone()
        if want_wal:
            found = _window(wal)
        if want_replay:
            measured = _rpo(restore)
            _REPLAY_FOUND[target.name] = (last_drill[1], measured)
    return {**found, **measured}


def _ts(moment: Any) -> float | None:
    if isinstance(moment, datetime):
        return moment.timestamp()
    if isinstance(moment, str):
        try:
            return datetime.fromisoformat(moment).timestamp()
        except ValueError:
            return None
    return None


def _int_map(value: Any) -> dict[str, int]:
    if not isinstance(value, dict):
        return {}
    return {str(k): int(v) for k, v in value.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def read_target(conn: psycopg.Connection, target: TargetConfig, up: bool, now: datetime | None = None) -> TargetSnapshot:
    """The target's picture from its log database (3 statements, 5 with restore drills, whatever the table's
    size; one more for a target with a WAL archive when its newest run or drill lacks the recovery window or
    the replay)."""
    now = now or datetime.now(timezone.utc)
    base = configured(target)
    params = {"target": target.name}
    latest = conn.execute(_LATEST_SQL, params).fetchone()
    success_at, own_at = conn.execute(_LAST_SUCCESS_SQL, params).fetchone()
    last_success = None if success_at is None else (success_at,)
    windows = success_ratios(conn, target.name, now)
    ratios = {
        "success_ratio": {window: runs.ratio for window, runs in windows.items()},
        "unreached_runs": {window: runs.unreached for window, runs in windows.items()},
    }
    drills, last_drill = _drills(conn, target)
    own = {"last_own_run_started": own_at.timestamp() if own_at is not None else None}
    if latest is None:
        return TargetSnapshot(**{**base.__dict__, "up": up, **ratios, **drills, **own})
    verified_at, status, details = latest
    details = details if isinstance(details, dict) else {}
    recovery = _recovery(conn, target, base, details, last_drill)
    return TargetSnapshot(
        **{
            **base.__dict__,
            "up": up,
            **_run_fields(verified_at, status, details),
            "last_success_timestamp": _success_end(last_success, details, verified_at),
            **ratios,
            **drills,
            **recovery,
            **own,
        }
    )


def _run_fields(verified_at: datetime, status: str, details: dict) -> dict[str, Any]:
    """The fields of a picture that come from the target's newest run, whether it was
    read from the log table or from the spool."""
    checks = [c for c in details.get("checks") or [] if isinstance(c, dict)]
    outcomes = [c.get("outcome") for c in checks]
    backup = details.get("backup") if isinstance(details.get("backup"), dict) else None
    completion = _ts(backup.get("finished_at")) if backup else None
    duration = details.get("duration_seconds")
    return {
        "last_run_timestamp": verified_at.timestamp() + (duration if isinstance(duration, (int, float)) else 0.0),
        "last_run_started": verified_at.timestamp(),
        "last_status": status,
        "last_duration_seconds": float(duration) if isinstance(duration, (int, float)) else None,
        "checks_passed": sum(1 for o in outcomes if o == "pass"),
        "checks_warned": sum(1 for o in outcomes if o == "warn"),
        "checks_failed": sum(1 for o in outcomes if o in ("fail", "error")),
        "check_success": {str(c.get("name")): 0 if c.get("outcome") in ("fail", "error") else 1 for c in checks},
        "backup_completion_timestamp": completion,
        "backup_age_seconds": (verified_at.timestamp() - completion) if completion is not None else None,
        "backup_size_bytes": backup.get("size_bytes") if backup else None,
        "database_size_bytes": details.get("database_size_bytes"),
        "table_rows": _int_map(details.get("row_counts")),
        "rls_policies": _int_map(details.get("rls_policies")),
    }


def with_spooled(picture: TargetSnapshot, row: Mapping[str, Any] | None) -> TargetSnapshot:
    """picture, with the spooled row (Spool.newest) as the newest run when that run is
    newer than the one the picture shows: while the log database cannot take the
    rows, the runs of an outage (the backup checks, the backup's age, the recovery
    window when the row read the WAL archive) still show.

    The rest stays as read from the log table: success ratios and restore drills
    count recorded rows only, and catch up when the spool is flushed; up is not
    the row's to say.
    """
    if row is None or not isinstance(row.get("verified_at"), str):
        return picture
    try:
        verified_at = datetime.fromisoformat(row["verified_at"])
    except ValueError:
        return picture
    if verified_at.tzinfo is None:
        return picture
    details = row.get("verification_details")
    fields = _run_fields(verified_at, row.get("status"), details if isinstance(details, dict) else {})
    if picture.last_run_timestamp is not None and fields["last_run_timestamp"] <= picture.last_run_timestamp:
        return picture  # the table already shows this run (or a later one)
    success = fields["last_run_timestamp"] if row.get("status") == "success" else picture.last_success_timestamp
    # The archive keeps being read while the log database is away: its window shows.
    window = _window(details.get("wal")) if picture.keeps_wal and isinstance(details, dict) else {}
    return replace(picture, **fields, **window, last_success_timestamp=success)


def _success_end(row: Any, latest_details: dict, latest_verified_at: datetime) -> float | None:
    if row is None:
        return None
    # verified_at is the run's start; the success happened at its end. The duration is
    # only at hand for the newest row, and a run lasts seconds, so the start is close enough otherwise.
    if row[0] == latest_verified_at and isinstance(latest_details.get("duration_seconds"), (int, float)):
        return row[0].timestamp() + latest_details["duration_seconds"]
    return row[0].timestamp()
