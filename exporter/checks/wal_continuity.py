"""The WAL archive holds every segment from the newest base backup's start WAL to its
newest segment, in order, on the timeline recovery would follow (``.history`` files);
and the live server's last archived segment is in it.

A base backup alone restores to the moment it was taken; every hour after that lives
in the archive, and one missing segment ends recovery there, silently, months later.
The source reads its archive (exporter/backups/*.wal_archive); this check judges it:
a gap fails naming the first missing segment; a segment pg_stat_archiver counts as
archived but the archive lacks fails too (an archive_command that exits 0 without
storing, or an asynchronous push that lost it: archiving looks healthy, the archive is
not); the newest segment older than checks.wal_archiving_max_age_minutes warns (the
window's end has stopped moving; wal_archiving fails on the live statistics).

It needs no database: with the target down, the archive is still judged and the result
says the comparison with the server was skipped.
"""

from __future__ import annotations

from typing import Any

from exporter.backups import keeps_wal, source_for
from exporter.backups.base import BackupSourceError
from exporter.backups.wal import SEGMENT, WalArchive, WalNameError, fork_off, lsn_text, parse_lsn, parse_segment
from exporter.checks.backup_age import BackupCheck
from exporter.checks.base import CheckContext
from exporter.config import TargetConfig
from exporter.redact import scrub
from exporter.result import CheckResult

EXPECTED = "no missing segment from the newest base backup's start WAL to the newest archived segment"
# The live statistics are read before the archive is listed: a segment archived in
# between is then in the listing, never a false "dropped".
# A primary's write position too: one on a timeline recovery leaves has written past the
# fork before it archives it (NULL in recovery, where pg_current_wal_lsn() raises).
LIVE_QUERY = (
    "SELECT last_archived_wal, last_archived_time, "
    "CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END, "
    "CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END FROM pg_stat_archiver"
)


def _live_segment(name: str) -> tuple[str | None, str | None]:
    """The segment a pg_stat_archiver.last_archived_wal proves archived, or why none.

    A ``.backup`` file's name starts with its start segment, which the archiver took
    first (it archives the lowest name first, history files aside); a history file or a
    ``.partial`` proves no whole segment."""
    if SEGMENT.match(name):
        return name, None
    if name.endswith(".backup") and SEGMENT.match(name[:24]):
        return name[:24], None
    return None, f"the last file archived, {name}, is not a whole segment: nothing to compare"


def compare_live(archive: WalArchive, last_wal: str | None, last_time,
                 current: str | None = None, current_file: str | None = None) -> tuple[dict[str, Any], str | None]:
    """(what the comparison found, the failure or None). ``current`` is a primary's
    write position (an LSN, pg_current_wal_lsn) and ``current_file`` the segment it is
    in (its timeline is the one the server writes on); None in recovery or not read."""
    live: dict[str, Any] = {
        "compared": False, "last_archived_wal": last_wal,
        "last_archived_time": last_time.isoformat() if last_time is not None else None,
    }
    if last_wal is None:
        live["reason"] = "the server has archived nothing since its statistics were reset"
        return live, None
    segment, why = _live_segment(last_wal)
    if segment is None:
        live["reason"] = why
        return live, None
    live["compared"] = True
    live["segment"] = segment
    held = archive.holds(segment)
    when = f" at {last_time.isoformat()}" if last_time is not None else ""
    server_timeline = int(segment[:8], 16)
    if archive.timeline is not None and server_timeline > archive.timeline and archive.later_timelines_unlisted:
        live["compared"] = False
        live["reason"] = (f"the server archives on timeline {server_timeline}, and {archive.where} lists timeline "
                          f"{archive.timeline} only: not compared")
        return live, None
    if archive.timeline is not None and server_timeline > archive.timeline:
        # Held or not, recovery to the latest timeline never reaches it: the history
        # file of the timeline after archive.timeline is missing (or the source follows
        # another branch).
        live["held"] = held
        return live, (
            f"the server archives on timeline {server_timeline} ({segment}{when}), but recovery from {archive.where} "
            f"follows timeline {archive.timeline} at most (no {archive.timeline + 1:08X}.history there): "
            "the server's newest WAL cannot be recovered"
        )
    if archive.timeline is not None and server_timeline < archive.timeline:
        # Held or not, and "older" by name or not: recovery to latest follows
        # archive.timeline and reads the server's timeline only up to where that
        # timeline's history leaves it. A write position on another timeline (the
        # server promoted since) says nothing of this one.
        on_it = current_file is not None and SEGMENT.match(current_file) and int(current_file[:8], 16) == server_timeline
        writing = current if on_it else None
        problem = _lower_timeline(archive, live, segment, server_timeline, when, writing)
        if problem is not None or not live["compared"] or held is not False:
            return live, problem
        # Before the fork and not held: dropped, as on the recovery timeline.
    if held is True:
        live["held"] = True
        return live, None
    if held is None:
        # The source does not list its segments: only "not newer than its newest" is provable.
        # Names of 24 hex digits order as (timeline, position).
        live["held"] = None
        if archive.last is not None and segment <= archive.last:
            return live, None
        newest = archive.last or "nothing"
        return live, (
            f"the server's pg_stat_archiver reports {segment} archived{when}, newer than the newest segment of "
            f"{archive.where} ({newest}): archiving reports segments the archive does not hold (silently dropped)"
        )
    live["held"] = False
    return live, _dropped(archive, segment, when)


def _dropped(archive: WalArchive, segment: str, when: str) -> str:
    return (
        f"the server's pg_stat_archiver reports {segment} archived{when}, but {archive.where} does not hold it: "
        "archive_command reported success for a segment the archive does not have (silently dropped)"
    )


def _lower_timeline(archive: WalArchive, live: dict[str, Any], segment: str, server_timeline: int, when: str,
                    current: str | None) -> str | None:
    """The server's last archived segment is on a timeline below the one recovery to
    latest ends on. That is a failover (the server is the old primary) or a stray
    timeline: a restored copy promoted with archiving on pushed its own timeline into
    the production archive, and recovery to latest now follows the copy.

    - the server's timeline is not on the recovery timeline's history: recovery never
      reads any of it (an unrelated branch): fail;
    - the server's segment is at or past the segment where recovery leaves its timeline
      (the switch point's segment: from there on recovery reads the new timeline's
      copy), or, for a primary still on that timeline, its write position is past the
      switch: the server kept writing after the fork, and that WAL is never replayed:
      fail;
    - else everything the server archived lies before the fork and is replayed: pass,
      said in the result (an old primary that stopped, a standby whose statistics still
      show what it archived as a primary). An old primary that still writes fails as
      soon as it writes past the fork, before it archives it when it is a primary.

    Where the source gives no history (WAL-G; Barman, which lists one timeline), the
    fork cannot be located: not compared (a segment not held still fails as dropped).
    """
    live["held"] = archive.holds(segment)
    history = archive.history
    if history is None or archive.later_timelines_unlisted:
        if live["held"] is False:
            return _dropped(archive, segment, when)
        live["compared"] = False
        live["reason"] = (f"the server archives on timeline {server_timeline}, lower than timeline {archive.timeline} "
                          f"that recovery from {archive.where} follows, whose history the source does not give: "
                          "where recovery leaves the server's timeline is unknown, not compared")
        return None
    size = archive.segment_size
    try:
        server_segment = parse_segment(segment, size)
    except WalNameError as exc:
        live["compared"] = False
        live["reason"] = f"{exc}: not compared"
        return None
    branch = fork_off(server_timeline, history)
    recovery = f"recovery from {archive.where} to latest follows timeline {archive.timeline}"
    if branch is None:
        passes = " → ".join(str(b.parent) for b in history) + f" → {archive.timeline}" if history else str(archive.timeline)
        live["observed"] = f"timeline {server_timeline} not on timeline {archive.timeline}'s history"
        return (
            f"the server archives on timeline {server_timeline} ({segment}{when}), which is not on the history of "
            f"timeline {archive.timeline} ({passes}): {recovery} and never replays any of the server's WAL (an "
            "unrelated timeline: a restored copy promoted with archiving on, or the target is not this archive's server?)"
        )
    switch = lsn_text(branch.switch)
    after = history.index(branch) + 1
    successor = history[after].parent if after < len(history) else archive.timeline  # the timeline it branches into
    live["fork"] = {"timeline": successor, "parent": server_timeline, "switch": switch}
    written = None
    if current is not None:
        try:
            written = parse_lsn(current)
        except WalNameError:
            written = None
    past = server_segment.number >= branch.switch // size
    if past or (written is not None and written > branch.switch):
        what = (f"server archived {segment}{when}" if past
                else f"server archived {segment}{when} and has written up to {current}")
        live["observed"] = f"timeline {successor} forks off timeline {server_timeline} at {switch}"
        return (
            f"the archive's timeline {successor} forks off the server's timeline {server_timeline} at {switch} (a "
            f"restored copy promoted with archiving on?); {recovery} and never replays the server's WAL after the "
            f"fork ({what})"
        )
    live["before_fork"] = True
    return None


class WalContinuityCheck(BackupCheck):
    name = "wal_continuity"
    title = "WAL archive is continuous from the newest base backup"
    needs_database = False

    def applies(self, target: TargetConfig) -> bool:
        return super().applies(target) and keeps_wal(target.backup)

    def run(self, ctx: CheckContext) -> CheckResult:
        problem = self.problem(ctx.backup)
        if problem is not None:
            return problem
        secrets = ctx.target.secrets()
        live_row = ctx.conn.execute(LIVE_QUERY).fetchone() if ctx.conn is not None else None
        source = source_for(ctx.target.backup)
        try:
            archive = source.wal_archive(ctx.backup.info)
        except BackupSourceError as exc:
            return self.errored(f"could not read the WAL archive: {scrub(str(exc), secrets)}", "not read", EXPECTED)

        if live_row is None:
            live: dict[str, Any] = {
                "compared": False, "reason": "target unreachable: the comparison with pg_stat_archiver was skipped",
            }
            dropped = None
        else:
            live, dropped = compare_live(archive, *live_row)
        data = {"wal": {**archive.as_dict(), "live": live}}

        problems = []
        if archive.start_off_history is not None:
            # The walk below it follows another timeline's segments: no evidence either way.
            problems.append(
                f"{archive.start_off_history}: recovery from it to latest (timeline {archive.timeline}, in "
                f"{archive.where}) is refused (\"requested timeline {archive.timeline} is not a child of this server's "
                "history\"); a timeline forked off below the backup (a restored copy promoted with archiving on?)"
            )
        if archive.gap is not None:
            after = f" (newest archived: {archive.last})" if archive.last else " (no segment archived)"
            problems.append(
                f"WAL segment {archive.gap} is missing from {archive.where}: recovery from the newest base backup's "
                f"start {archive.checked_from} stops after {archive.segments_checked} segment(s){after}"
            )
        if archive.identity_problem is not None:
            problems.append(archive.identity_problem)
        if dropped is not None:
            problems.append(dropped)
        range_text = f"{archive.checked_from} to {archive.last}" if archive.last else "nothing"
        if problems:
            observed = (f"missing {archive.gap}" if archive.gap
                        else live.get("observed") or (f"newest backup not on timeline {archive.timeline}'s history"
                                                      if archive.start_off_history else None)
                        or f"{live.get('segment')} not in the archive")
            if archive.identity_problem is not None and archive.gap is None:
                observed = "not this cluster's WAL"
            return self.failed(scrub("; ".join(problems), secrets), observed, EXPECTED, **data)

        tail = self._live_words(live)
        message = (
            f"{archive.segments_checked} WAL segment(s) present without a gap in {archive.where}, from {range_text} "
            f"(timeline {archive.timeline})"
        )
        limit = ctx.target.checks.wal_archiving_max_age_minutes
        if archive.last_archived_at is not None:
            minutes = (ctx.now - archive.last_archived_at).total_seconds() / 60
            message += f", newest archived {max(minutes, 0):.1f} min ago"
            if limit is not None and minutes > limit:
                return self.warned(
                    scrub(f"{message}, older than wal_archiving_max_age_minutes {limit:g}: the archive has stopped "
                          f"growing, the recovery window's end with it{tail}", secrets),
                    f"{minutes:.1f} min", f"< {limit:g} min", **data,
                )
        return self.passed(scrub(message + tail, secrets), f"{archive.segments_checked} segments, no gap", EXPECTED, **data)

    @staticmethod
    def _live_words(live: dict[str, Any]) -> str:
        if live.get("before_fork"):
            fork = live["fork"]
            return (f"; the server's last archived segment {live['segment']} is on timeline {fork['parent']} before "
                    f"timeline {fork['timeline']} forks off it at {fork['switch']}: all it archived is replayed (an old "
                    "primary after a failover; it fails this check once it writes past the fork)")
        if live.get("compared"):
            held = "held in the archive" if live.get("held") else "not newer than the archive's newest"
            return f"; the server's last archived segment {live['segment']} is {held}"
        return f"; not compared with the server: {live['reason']}"


CHECK = WalContinuityCheck()
