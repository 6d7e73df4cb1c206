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
from exporter.backups.wal import SEGMENT, WalArchive
from exporter.checks.backup_age import BackupCheck
from exporter.checks.base import CheckContext
from exporter.config import TargetConfig
from exporter.redact import scrub
from exporter.result import CheckResult

EXPECTED = "no missing segment from the newest base backup's start WAL to the newest archived segment"
# The live statistics are read before the archive is listed: a segment archived in
# between is then in the listing, never a false "dropped".
LIVE_QUERY = "SELECT last_archived_wal, last_archived_time FROM pg_stat_archiver"


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


def compare_live(archive: WalArchive, last_wal: str | None, last_time) -> tuple[dict[str, Any], str | None]:
    """(what the comparison found, the failure or None)."""
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
    return live, (
        f"the server's pg_stat_archiver reports {segment} archived{when}, but {archive.where} does not hold it: "
        "archive_command reported success for a segment the archive does not have (silently dropped)"
    )


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
            observed = f"missing {archive.gap}" if archive.gap else f"{live.get('segment')} not in the archive"
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
        if live.get("compared"):
            held = "held in the archive" if live.get("held") else "not newer than the archive's newest"
            return f"; the server's last archived segment {live['segment']} is {held}"
        return f"; not compared with the server: {live['reason']}"


CHECK = WalContinuityCheck()
