"""From a list of the segments a backup tool holds to a WalArchive: what the
pgBackRest and Barman sources share once they have the names (and, where the tool
says, when each was archived).

The segment size is not in either tool's listing: it is inferred from the names
(see infer_segment_size), because a wrong size turns every log boundary into a gap.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from exporter.backups.wal import (
    DEFAULT_SEGMENT_SIZE, SEGMENT, Branch, Segment, WalArchive, WalNameError, first_gap, lsn_text, on_chain,
    parse_segment, segment_of_name, timeline_of,
)

_MIN_PER_LOG = 4  # 1 GiB segments
_MAX_PER_LOG = 4096  # 1 MiB segments


def _power_of_two_at_least(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def infer_segment_size(names: list[str]) -> int:
    """The WAL segment size the names were written with. A log ("seg" part) of a
    timeline that is followed by the next log is complete: its highest seg + 1 is the
    number of segments per log. The highest over all complete logs counts (a missing
    tail in one log must not shrink it); without a complete log, a seg of 256 or more
    still rules out 16 MiB; else 16 MiB, PostgreSQL's default."""
    tops: dict[tuple[int, int], int] = {}
    for name in names:
        match = SEGMENT.match(name[:24]) if len(name) >= 24 else None
        if match is None:
            continue
        timeline, log, seg = (int(part, 16) for part in match.groups())
        key = (timeline, log)
        tops[key] = max(tops.get(key, -1), seg)
    if not tops:
        return DEFAULT_SEGMENT_SIZE
    complete = [top + 1 for (timeline, log), top in tops.items() if (timeline, log + 1) in tops]
    per_log = max(complete) if complete else 0
    if per_log and per_log == _power_of_two_at_least(per_log) and _MIN_PER_LOG <= per_log <= _MAX_PER_LOG:
        return 0x100000000 // per_log
    highest = max(tops.values()) + 1
    if highest > 256:
        return 0x100000000 // min(_power_of_two_at_least(highest), _MAX_PER_LOG)
    return DEFAULT_SEGMENT_SIZE


@dataclass(frozen=True)
class BackupWal:
    """What the recovery window needs of one backup: the WAL it starts and stops in
    (segment names; recovery replays from ``start`` and is consistent once past
    ``stop``) and when it ended (the earliest point it can be recovered to)."""

    label: str
    start: str
    stop: str | None
    ended: datetime


def _runs(present: set[int], low: int, high: int) -> list[tuple[int, int]]:
    """The runs of consecutive numbers of ``present`` within low..high, oldest first.
    One pass over the sorted numbers: an archive of tens of thousands of segments is
    not walked position by position."""
    runs: list[tuple[int, int]] = []
    for number in sorted(n for n in present if low <= n <= high):
        if runs and runs[-1][1] == number - 1:
            runs[-1] = (runs[-1][0], number)
        else:
            runs.append((number, number))
    return runs


def recovery_window(archive: WalArchive, held: Mapping[str, datetime | None], segments: list[Segment],
                    backups: list[BackupWal], history: list[Branch]) -> None:
    """Set the archive's recovery window from the backups it can restore.

    Recovery from a backup replays its WAL from its start segment on and stops at the
    first one missing: it reaches the end of the run of held segments (on the
    timeline recovery follows) that holds its start, and is usable only if that run
    also holds its stop segment. The window's end is the newest segment any usable
    backup reaches (the one before the first gap after the newest usable backup);
    its start is the end of the oldest backup whose run reaches that segment. The
    end's time is that segment's archive time when the tool gives one."""
    notes = archive.notes
    if archive.timeline is None or not segments:
        if backups:
            notes.append("no recovery window: the archive holds no WAL segment")
        return
    timeline, size = archive.timeline, segments[0].size
    # The segments recovery onto ``timeline`` reads: each position from the timeline
    # that holds it (an ancestor's before its switch), by number.
    if history:
        present = {s.number for s in segments if timeline_of(s, timeline, history) == s.timeline}
    else:
        present = {s.number for s in segments if s.timeline == timeline}
    starts = []
    for backup in backups:
        try:
            first = parse_segment(backup.start, size)
            last = parse_segment(backup.stop, size) if backup.stop else first
        except WalNameError as exc:
            notes.append(f"backup {backup.label}: its WAL is not named by segments ({exc}): not in the recovery window")
            continue
        if timeline_of(first, timeline, history) != first.timeline:
            notes.append(f"backup {backup.label} started on timeline {first.timeline}, which recovery onto timeline "
                         f"{timeline} does not pass through at {first.name}: not in the recovery window")
            continue
        starts.append((first.number, max(last.number, first.number), backup))
    if not starts:
        if backups:
            notes.append("no recovery window: no backup starts on the archive's timeline")
        return
    runs = _runs(present, min(n for n, _, _ in starts), max(present))
    heads = [first for first, _ in runs]
    reach: list[tuple[int, BackupWal]] = []
    for first, stop, backup in starts:
        index = bisect_right(heads, first) - 1
        if index < 0 or runs[index][1] < first:
            continue  # its start segment is not held
        if runs[index][1] < stop:
            continue  # a segment it needs to be consistent is missing
        reach.append((runs[index][1], backup))
    if not reach:
        notes.append("no backup can be replayed to consistency (a segment between a backup's start and stop WAL is "
                     "missing): no recovery window")
        return
    end = max(number for number, _ in reach)
    oldest = min((b for number, b in reach if number == end), key=lambda b: (b.ended, b.label))
    archive.window_start = oldest.ended
    end_segment = Segment(timeline, end, size)
    end_name = end_segment.on(timeline_of(end_segment, timeline, history)).name
    archive.last_archived_at = held.get(end_name)
    notes.append(f"recovery window starts at the end of backup {oldest.label}")
    if end < max(present):
        notes.append(f"recovery window ends at {end_name}, the segment before the first gap after the newest usable "
                     f"backup; the archive's newest segment {archive.last} cannot be reached")
    if archive.last_archived_at is None:
        notes.append(f"the archive time of {end_name} is not known: the recovery window's end is unknown")


def continuity(
    where: str,
    held: Mapping[str, datetime | None],
    start: str | None,
    history: list[Branch],
    *,
    window_start: datetime | None = None,
    backups: list[BackupWal] | None = None,
    notes: list[str] | None = None,
) -> WalArchive:
    """The WalArchive of an archive holding the segments ``held`` (24-hex-digit names,
    each with the time it was archived when the tool says): the newest segment, and
    the first one missing from ``start`` (the newest backup's start WAL) to it, on the
    newest segment's timeline following ``history`` (that timeline's history file).

    With ``backups`` (every backup the archive serves), the recovery window is
    recovery_window's; without, ``window_start`` as the source says and the newest
    segment's time as its end."""
    notes = list(notes or [])
    size = infer_segment_size(list(held))
    if size != DEFAULT_SEGMENT_SIZE:
        notes.append(f"segments of {size // (1024 * 1024)} MiB (inferred from the segment names)")
    segments = [s for s in (segment_of_name(name, size) for name in held) if s is not None]
    names = frozenset(s.name for s in segments)
    archive = WalArchive(where=where, names=names, window_start=window_start, notes=notes, segment_size=size)
    begin = None
    if start is not None:
        try:
            begin = parse_segment(start, size)
        except WalNameError as exc:
            notes.append(f"the newest backup's start WAL is not a segment name ({exc}): continuity not checked")
    if not segments:
        notes.append("the archive holds no WAL segment")
        if begin is not None:
            archive.checked_from = archive.gap = begin.name
        return archive
    last, first = max(segments), min(segments)
    archive.last, archive.first, archive.timeline = last.name, first.name, last.timeline
    archive.last_archived_at = held.get(last.name)
    # ``history`` is the newest segment's timeline's: the one recovery to latest ends on.
    archive.history = list(history)
    if backups is not None:
        archive.window_start = archive.last_archived_at = None
        recovery_window(archive, held, segments, backups, history)
    if begin is None:
        return archive
    archive.checked_from = begin.name
    # The start segment's first byte stands for the backup's start (the listing names
    # segments, not LSNs): a start in the very segment of the switch, after it, passes
    # here and PostgreSQL still refuses it. An empty history is a missing or unreadable
    # history file, already a note, and the walk's gap then says why.
    if history and not on_chain(begin.timeline, begin.number * size, last.timeline, history):
        archive.start_off_history = (
            f"the newest backup's start {begin.name} ({lsn_text(begin.number * size)} on timeline {begin.timeline}) "
            f"is not on timeline {last.timeline}'s history"
        )
    if begin.number > last.number:
        # The newest segment is older than the backup's start: the backup's own WAL
        # never arrived (or was removed).
        archive.gap = begin.name
        return archive
    gap, checked = first_gap(names, begin, last, last.timeline, history)
    archive.gap = gap.name if gap is not None else None
    archive.segments_checked = checked
    return archive
