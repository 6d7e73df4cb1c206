"""Physical drills that replay the WAL archive: where the copy recovers to (the
archive's end, or a random time inside the recovery window), how recovery is
configured for a base backup next to a WAL folder, and what the copy proves once
recovery has ended: the time it recovered until (so the RPO) and, for a random
target, that it holds exactly the runs of pgbv's log up to that time.

The recovered-until time is the newer of two facts read in the copy:
- the newest ``verified_at`` of this target in the copy's backup_verification_log:
  pgbv writes a row every run, so its own log is a heartbeat that every archive
  carries (only when the log table lives in the target database: with log_dsn the
  copy holds no heartbeat);
- ``pg_last_xact_replay_timestamp()``: the commit time of the last transaction
  replayed, which PostgreSQL keeps after promotion ("remains static at the time of
  the last transaction applied during that recovery").
Both are commits the copy really holds, so the measured RPO is never optimistic:
an idle database looks older than its archive, never newer. The backup's end is the
floor: a consistent copy holds everything committed before it. The time of the
latest checkpoint is not used: after promotion it is the end-of-recovery checkpoint's,
written moments ago, which would claim a recovery point the archive never held.
"""

from __future__ import annotations

import random
import shlex
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg

from exporter.backups import keeps_wal, source_for
from exporter.backups.base import BackupSourceError
from exporter.backups.wal import Branch, Segment, WalArchive, WalNameError, parse_history, parse_lsn, parse_segment
from exporter.config import TargetConfig
from exporter.record import BELONGS_TO_TARGET
from exporter.restore.result import DrillError, RestoreFailed
from exporter.result import BackupInfo

# The random target stays this far after the backup's end: tools record the end in
# whole seconds, and a target before the copy is consistent is refused by PostgreSQL.
_AFTER_BACKUP = timedelta(seconds=1)
# A run's row is committed after its verified_at (the run's start), at the run's end:
# a row whose run was still going at the target time may be on either side of it.
_ROW_WRITE_SLACK_SECONDS = 5.0
# How long before the archive's end a run must have finished for its row to be taken as
# archived (archive_command's latency, asynchronous archiving's queue).
_ARCHIVED_AFTER = timedelta(seconds=30)
# How far past now a recovered commit may be dated before it is taken for a clock ahead.
_CLOCK_SLACK = timedelta(seconds=5)


@dataclass
class Replay:
    """How a physical drill replays the archive: to its end (latest) or to ``time``."""

    kind: str  # "latest" | "random"
    time: datetime | None = None
    window: tuple[datetime, datetime] | None = None  # what a random target was drawn from
    end_known: bool = True  # whether the window's end came from the archive (else: the drill's start)
    # The archive as its source described it before the restore (None: it could not
    # say; archive_error says why): where a latest recovery must get to.
    archive: WalArchive | None = None
    archive_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "time": self.time.isoformat() if self.time else None}


def replays(target: TargetConfig, info: BackupInfo) -> bool:
    """Whether this backup has a WAL archive the drill can replay: a physical backup
    (pgBackRest, Barman, a base backup folder) of a source that keeps one."""
    physical = info.kind == "pg_basebackup" or info.kind.startswith(("pgbackrest", "barman"))
    return physical and keeps_wal(target.backup)


def read_archive(target: TargetConfig, info: BackupInfo) -> tuple[WalArchive | None, str | None]:
    """The WAL archive after this backup, as its source describes it (wal_archive), or
    (None, why not)."""
    source = source_for(target.backup)
    if source is None:
        return None, "no backup source"
    try:
        return source.wal_archive(info), None
    except BackupSourceError as exc:
        return None, str(exc)


def newest_live_run(target: TargetConfig, finished_before: datetime | None = None) -> datetime | None:
    """The newest verified_at of this target in the live log (of a run that had finished
    before ``finished_before``, when given: its row was committed by then), or None."""
    from exporter.db import TargetUnreachable, connect

    finished = ""
    if finished_before is not None:
        finished = (" AND verified_at + make_interval(secs => coalesce((verification_details->>'duration_seconds')::float8, 0))"
                    " <= %(before)s")
    try:
        with connect(target, log=True) as live, live.transaction():
            if not _has_log_table(live):
                return None
            return live.execute(
                f"SELECT max(verified_at) FROM backup_verification_log WHERE {BELONGS_TO_TARGET}{finished}",
                {"target": target.name, "before": finished_before},
            ).fetchone()[0]
    except (TargetUnreachable, psycopg.Error):
        return None


def plan(target: TargetConfig, info: BackupInfo, now: datetime) -> Replay | None:
    """The replay for this drill, or None when the backup has no archive to replay.

    A random target is drawn from [the backup's end, the archive's end]. PostgreSQL
    stops at a time target only on reaching a commit after it (else "recovery ended
    before configured recovery target was reached"), so the archive's end must be a
    time the archive holds commits past: the newest archived segment's time when the
    source tells it (wal_archive), else the newest run in the live log (a commit,
    archived once a segment switch followed it), else the drill's start. Without a
    point after the backup's end, the drill recovers to the archive's end (latest)
    and says so."""
    if not replays(target, info):
        return None
    archive, why = read_archive(target, info)
    if target.restore.target == "latest":
        return Replay("latest", archive=archive, archive_error=why)
    start = info.finished_at + _AFTER_BACKUP
    end = archive.last_archived_at if archive is not None else None
    known = end is not None
    if end is not None:
        # The newest archived segment may have been closed well after the last commit
        # (archive_timeout, a checkpoint): a target in that quiet tail has no commit
        # after it, and PostgreSQL refuses to stop there. A run of pgbv that had finished
        # a while before the archive's end is a commit the archive holds, with its row
        # written after its verified_at: targets before it always stop.
        committed = newest_live_run(target, finished_before=end - _ARCHIVED_AFTER)
        if committed is not None and committed > start:
            end = committed
    end = min(end or newest_live_run(target) or now, now)
    if end <= start:
        return Replay("latest", window=(start, end), end_known=known, archive=archive, archive_error=why)
    offset = random.SystemRandom().random() * (end - start).total_seconds()
    point = (start + timedelta(seconds=offset)).astimezone(timezone.utc)
    return Replay("random", point, (start, end), known, archive=archive, archive_error=why)


def conf_quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def write_recovery(data: Path, settings: dict[str, str]) -> None:
    """recovery.signal and the settings, appended to postgresql.auto.conf (read last,
    so they override what a tool wrote before them)."""
    (data / "recovery.signal").write_text("")
    with open(data / "postgresql.auto.conf", "a") as conf:
        conf.write("# written by pgbv for a replaying restore drill\n")
        for name, value in settings.items():
            conf.write(f"{name} = {conf_quote(value)}\n")


def wal_folder_restore_command(folder: Path, wal_path: Path) -> str:
    """A restore_command reading segments (and .history files) from a WAL folder,
    plain or compressed, through a small script in the drill's scratch folder: a
    script rather than one line, so that PostgreSQL's %f/%p substitution meets no
    shell quoting of the folder's name."""
    script = folder / "restore_wal.sh"
    w = shlex.quote(str(wal_path))
    script.write_text(
        "#!/bin/sh\n"
        "# pgbv restore drill: copy WAL file $1 from the archive folder to $2.\n"
        f"w={w}\n"
        'if [ -f "$w/$1" ]; then exec cp "$w/$1" "$2"\n'
        'elif [ -f "$w/$1.gz" ]; then exec gzip -dc "$w/$1.gz" > "$2"\n'
        'elif [ -f "$w/$1.zst" ]; then exec zstd -qdc "$w/$1.zst" > "$2"\n'
        'elif [ -f "$w/$1.lz4" ]; then exec lz4 -qdc "$w/$1.lz4" > "$2"\n'
        "fi\n"
        "exit 1\n"
    )
    script.chmod(0o755)
    return f"{shlex.quote(str(script))} %f %p"


def recovery_settings(replay: Replay) -> dict[str, str]:
    if replay.time is None:
        return {}
    return {
        "recovery_target_time": replay.time.isoformat(sep=" "),
        "recovery_target_inclusive": "on",
        "recovery_target_action": "promote",
    }


def wait_for_promotion(copy: psycopg.Connection, deadline: float, timeout_minutes: float) -> None:
    """Until recovery has ended: the copy answers queries only then (hot_standby off),
    but a promotion still under way is waited for, within the drill's time."""
    while True:
        with copy.transaction():
            in_recovery = copy.execute("SELECT pg_is_in_recovery()").fetchone()[0]
        if not in_recovery:
            return
        if time.monotonic() > deadline:
            raise DrillError(f"the copy was still recovering when timeout_minutes ({timeout_minutes:g}) ran out")
        time.sleep(0.2)


def _has_log_table(copy: psycopg.Connection) -> bool:
    return copy.execute("SELECT to_regclass('backup_verification_log') IS NOT NULL").fetchone()[0]


@dataclass
class RecoveredUntil:
    at: datetime | None
    last_replayed_commit: datetime | None
    heartbeat: datetime | None
    notes: list[str]


def recovered_until(target: TargetConfig, copy: psycopg.Connection, backup_end: datetime | None = None) -> RecoveredUntil:
    """The newest of what the copy proves it holds: the heartbeat, the last replayed
    commit, and (a floor) the backup's end, which a consistent copy always reaches."""
    notes: list[str] = []
    with copy.transaction():
        replayed = copy.execute("SELECT pg_last_xact_replay_timestamp()").fetchone()[0]
        heartbeat = None
        if target.log_dsn is not None:
            notes.append("the log table lives in log_dsn, not in the target: the copy holds no pgbv heartbeat, "
                         "so the recovered-until time is the last replayed commit's alone")
        elif not _has_log_table(copy):
            notes.append("the copy has no backup_verification_log (no pgbv heartbeat to read)")
        else:
            heartbeat = copy.execute(
                f"SELECT max(verified_at) FROM backup_verification_log WHERE {BELONGS_TO_TARGET}", {"target": target.name}
            ).fetchone()[0]
    if replayed is None:
        notes.append("pg_last_xact_replay_timestamp() is NULL: no transaction was replayed from the archive")
    # The copy cannot hold a commit from the future: such a time says a clock was ahead
    # (pgbv's host when it wrote the heartbeat, or the server), and would hide an RPO.
    latest_possible = datetime.now(timezone.utc) + _CLOCK_SLACK
    for label, value in (("the newest heartbeat", heartbeat), ("the last replayed commit", replayed)):
        if value is not None and value > latest_possible:
            notes.append(f"{label} in the copy is dated {value.isoformat()}, later than now: a clock was ahead "
                         "when it was written; not used")
    heartbeat = heartbeat if heartbeat is None or heartbeat <= latest_possible else None
    replayed = replayed if replayed is None or replayed <= latest_possible else None
    known = [t for t in (replayed, heartbeat) if t is not None]
    newest = max(known) if known else None
    if backup_end is not None and (newest is None or newest < backup_end):
        notes.append("nothing committed after the backup's end was replayed: recovered until the backup's end")
        newest = backup_end
    return RecoveredUntil(newest, replayed, heartbeat, notes)


# Where the live server's WAL stood when the drill started. pg_current_wal_lsn() needs
# no privilege; a standby target reports what it replayed.
LIVE_WAL_SQL = """
SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text,
       CASE WHEN pg_is_in_recovery() THEN (SELECT timeline_id FROM pg_control_checkpoint())
            ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END,
       (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'),
       (SELECT setting::float8 FROM pg_settings WHERE name = 'archive_timeout'),
       (SELECT last_archived_time FROM pg_stat_archiver)
"""


@dataclass
class LiveWal:
    """The live server's WAL position when the drill started, and what bounds the age of
    the WAL it had not yet archived."""

    lsn: int
    timeline: int
    segment_size: int
    archive_timeout_seconds: float  # 0: off
    last_archived_time: datetime | None

    @property
    def current_segment_start(self) -> int:
        return self.lsn - self.lsn % self.segment_size


def live_wal(target: TargetConfig) -> tuple[LiveWal | None, str | None]:
    """(the live server's WAL position, None) or (None, why it could not be read)."""
    from exporter.db import TargetUnreachable, connect

    try:
        with connect(target) as live, live.transaction():
            lsn, timeline, size, timeout, archived = live.execute(LIVE_WAL_SQL).fetchone()
    except TargetUnreachable as exc:
        return None, f"the live server could not be reached ({exc.reason})"
    except psycopg.Error as exc:
        return None, f"the live server's WAL position could not be read ({type(exc).__name__}: {str(exc).strip()})"
    if lsn is None or not size:
        return None, "the live server reported no WAL position"
    try:
        return LiveWal(parse_lsn(lsn), int(timeline), int(size), float(timeout or 0), archived), None
    except WalNameError as exc:
        return None, f"the live server's WAL position is unreadable: {exc}"


def bounded_rpo(raw_seconds: float, replayed_lsn: int | None, live: LiveWal | None,
                drill_started: datetime) -> tuple[float, list[str], dict[str, Any]]:
    """The RPO from the copy's recovered-until time (``raw_seconds`` before the drill
    started), bounded when the copy caught up with the live server.

    The recovered-until time is the newest commit the copy holds; on a quiet database
    that is old only because nothing newer was committed (a daily run's heartbeat is a
    day old), and "drill start minus it" would call a complete archive a day behind.
    When the copy replayed every WAL segment the live server had finished when the
    drill started, all it can lack is the live server's current segment, written since
    its last segment switch: that data is at most archive_timeout old (PostgreSQL
    switches segments that often when anything was written), or, with archive_timeout
    off, at most as old as the last archived segment (it was written after it). The
    RPO is then the smaller of the two. A copy that stopped before the live server's
    current segment (a gap, archiving behind or broken) keeps the raw figure."""
    facts: dict[str, Any] = {}
    if replayed_lsn is None or live is None:
        return raw_seconds, [], facts
    behind = max(live.lsn - replayed_lsn, 0)
    caught_up = replayed_lsn >= live.current_segment_start
    facts = {"caught_up_with_live": caught_up, "wal_behind_live_bytes": behind}
    if not caught_up:
        return raw_seconds, [
            f"the copy stopped {behind} bytes of WAL before where the live server was when the drill started "
            "(finished segments the archive did not hold or had not received yet)"
        ], facts
    if live.archive_timeout_seconds > 0:
        bound, why = live.archive_timeout_seconds, f"archive_timeout ({live.archive_timeout_seconds:g} s)"
    elif live.last_archived_time is not None:
        bound = max((drill_started - live.last_archived_time).total_seconds(), 0.0)
        why = ("the live server's last archived segment's time (archive_timeout is off, so WAL written since "
               "can wait unarchived that long)")
    else:
        return raw_seconds, ["the copy caught up with the live server, which has archived nothing since its statistics "
                             "were reset: the RPO is the recovered-until time's age"], facts
    if bound >= raw_seconds - 0.5:  # no tighter than what was measured: nothing to explain
        return min(bound, raw_seconds), [], facts
    return bound, [
        f"the copy replayed every WAL segment the live server had finished when the drill started: only its current "
        f"segment was not archived yet, so the RPO is bounded by {why}; the newest commit replayed is "
        f"{raw_seconds:.0f} s older than the drill (nothing newer had been archived)"
    ], facts


_RUNS = (
    "SELECT id::text, verified_at, (verification_details->>'duration_seconds')::float8"
    f" FROM backup_verification_log WHERE {BELONGS_TO_TARGET} ORDER BY verified_at"
)


def compare_runs(point: datetime, live_rows: list[tuple[str, datetime, float | None]],
                 copy_rows: list[tuple[str, datetime, float | None]]) -> list[str]:
    """A point-in-time copy holds every run of the live log up to ``point`` and none
    after it. Runs still going at ``point`` (their row is written at their end) are
    not judged: their row may be on either side."""

    def in_flight(at: datetime, duration: float | None) -> bool:
        return at <= point < at + timedelta(seconds=(duration or 0.0) + _ROW_WRITE_SLACK_SECONDS)

    copy_ids = {row[0] for row in copy_rows}
    problems = []
    missing = [(at, rid) for rid, at, duration in live_rows
               if at <= point and rid not in copy_ids and not in_flight(at, duration)]
    extra = [(at, rid) for rid, at, _ in copy_rows if at > point]
    if missing:
        at, rid = min(missing)
        problems.append(
            f"recovered to {point.isoformat()}, the copy lacks {len(missing)} run(s) of the live log from before it; "
            f"the first: {rid} verified at {at.isoformat()}"
        )
    if extra:
        at, rid = min(extra)
        problems.append(
            f"recovered to {point.isoformat()}, the copy holds {len(extra)} run(s) from after it; "
            f"the first: {rid} verified at {at.isoformat()}"
        )
    return problems


def log_runs(conn: psycopg.Connection, target: TargetConfig) -> list[tuple[str, datetime, float | None]]:
    with conn.transaction():
        return conn.execute(_RUNS, {"target": target.name}).fetchall()


def point_in_time_problems(target: TargetConfig, point: datetime, copy: psycopg.Connection) -> tuple[list[str], list[str]]:
    """(problems, notes) of a random-target drill: the copy's log against the live log."""
    from exporter.db import TargetUnreachable, connect

    if target.log_dsn is not None:
        return [], ["the log table lives in log_dsn: the copy holds no runs to compare with the live log"]
    with copy.transaction():
        present = _has_log_table(copy)
    if not present:
        return [], ["the copy has no backup_verification_log: no runs to compare with the live log"]
    copy_rows = log_runs(copy, target)
    try:
        with connect(target, log=True) as live:
            live_rows = log_runs(live, target)
    except TargetUnreachable as exc:
        raise DrillError(f"the live log could not be read to judge the point-in-time copy: {exc.reason}") from None
    problems = compare_runs(point, live_rows, copy_rows)
    judged = sum(1 for _, at, _ in live_rows if at <= point)
    return problems, [f"point in time {point.isoformat()}: the copy holds {sum(1 for _, at, _ in copy_rows if at <= point)} "
                      f"run(s) up to it, the live log {judged}"]


def recovery_ended_early(server_log: str) -> bool:
    return "recovery ended before configured recovery target was reached" in server_log


def raise_target_unreached(replay: Replay, tail: str) -> None:
    end = ("the archive's newest segment" if replay.end_known
           else "the newest run in the live log (the archive's end is unknown)")
    raise RestoreFailed(
        f"recovery to {replay.time.isoformat() if replay.time else 'the target'} ended before reaching it: the archive has a "
        f"gap before that time, or no commit after it was archived yet (the target was drawn up to {end}); {tail}"
    )


@dataclass
class CopyEnd:
    """Where the promoted copy's recovery ended: the last replayed position and the
    timelines it recovered along (its new timeline's history)."""

    lsn: int
    recovered_timeline: int  # the timeline recovery was on when it ended
    history: list[Branch]  # how recovery got there (parents and switch points)
    segment_size: int


def copy_end(copy: psycopg.Connection, data: Path) -> tuple[CopyEnd | None, str | None]:
    """Read after promotion: pg_last_wal_replay_lsn() and the history file of the
    timeline the copy was promoted onto (in its pg_wal)."""
    with copy.transaction():
        replayed, timeline, size = copy.execute(
            "SELECT pg_last_wal_replay_lsn()::text, ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int,"
            " (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size')"
        ).fetchone()
    if replayed is None:
        return None, "the copy reports no replayed WAL position"
    try:
        history = parse_history((data / "pg_wal" / f"{timeline:08X}.history").read_text())
    except (OSError, WalNameError) as exc:
        return None, f"the copy's timeline history could not be read ({exc})"
    if not history:
        return None, f"the copy's timeline {timeline} has an empty history"
    return CopyEnd(parse_lsn(replayed), history[-1].parent, history[:-1], int(size)), None


def stopped_short(end: CopyEnd, archive: WalArchive | None) -> str | None:
    """Why recovery stopped before the archive's newest segment, or None. Recovery to
    latest reads segments until restore_command cannot give the next one: stopping
    inside a segment before the archive's newest one, or at the start of one the
    archive holds, means that segment was missing, unreadable or corrupt (a torn or
    truncated compressed file passes any listing)."""
    if archive is None or archive.last is None:
        return None
    segment_size = end.segment_size
    try:
        last = parse_segment(archive.last, segment_size)
    except WalNameError:
        return None
    position, offset = divmod(end.lsn, segment_size)
    # At a boundary, every segment before ``position`` was replayed whole and
    # ``position`` is the one recovery asked for next.
    if (offset == 0 and position <= last.number) or (offset and position < last.number):
        needed = Segment(end.recovered_timeline, position, segment_size)
        return (f"recovery stopped at {lsn_text(end.lsn)} (segment {needed.name}) although {archive.where} holds "
                f"segments up to {archive.last}: segment {needed.name} or the next could not be restored or "
                "replayed (missing, unreadable or corrupt), so a recovery to latest stops there today")
    return None


def forked_from_live(end: CopyEnd, live: LiveWal | None) -> str | None:
    """Why the copy's timeline does not hold the live server's WAL, or None. Recovery to
    latest follows the archive's highest timeline; a restored copy promoted with
    archiving on pushes one that forks off production, and recovery then follows it."""
    if live is None or end.recovered_timeline == live.timeline:
        return None
    for branch in end.history:
        if branch.parent == live.timeline:
            if live.lsn > branch.switch:
                return (f"the copy recovered along timeline {end.recovered_timeline}, which forks off the live server's "
                        f"timeline {live.timeline} at {lsn_text(branch.switch)}; the live server has written up to "
                        f"{lsn_text(live.lsn)} since: a recovery to latest from this archive loses that WAL "
                        "(a restored copy promoted with archiving on?)")
            return None
    return (f"the copy recovered along timeline {end.recovered_timeline}, and the live server is on timeline "
            f"{live.timeline}, which that timeline's history does not pass through: the archive does not lead to "
            "the live server's WAL")


def lsn_text(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"
