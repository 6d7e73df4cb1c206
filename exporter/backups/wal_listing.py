"""From a list of the segments a backup tool holds to a WalArchive: what the
pgBackRest and Barman sources share once they have the names (and, where the tool
says, when each was archived).

The segment size is not in either tool's listing: it is inferred from the names
(see infer_segment_size), because a wrong size turns every log boundary into a gap.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from exporter.backups.wal import (
    DEFAULT_SEGMENT_SIZE, SEGMENT, Branch, WalArchive, WalNameError, first_gap, lsn_text, on_chain, parse_segment,
    segment_of_name,
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


def continuity(
    where: str,
    held: Mapping[str, datetime | None],
    start: str | None,
    history: list[Branch],
    *,
    window_start: datetime | None = None,
    notes: list[str] | None = None,
) -> WalArchive:
    """The WalArchive of an archive holding the segments ``held`` (24-hex-digit names,
    each with the time it was archived when the tool says): the newest segment, and
    the first one missing from ``start`` (the newest backup's start WAL) to it, on the
    newest segment's timeline following ``history`` (that timeline's history file)."""
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
