"""WAL segment names, timelines and archives: what every source that keeps WAL
shares (a WAL folder next to base backups, pgBackRest, Barman, WAL-G).

A segment's name is 24 hex digits: timeline, then the "log" and "seg" parts of
its position (PostgreSQL's XLogFileName). With segments of S bytes, a log holds
2^32 / S segments, so the segment after ``..0001000000FF`` (16 MiB) is
``..000200000000``. A timeline's history file (``00000002.history``) names, for
each ancestor, the position where the new timeline branched off it: recovery on
timeline 2 reads timeline 1's segments up to the switch, then timeline 2's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable

DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024
SEGMENT = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")
# What an archive may add to a segment's name: compression (gzip, lz4, zstd, bzip2, xz),
# pgBackRest's "-<sha1>" checksum, Barman's and WAL-G's suffixes.
_SEGMENT_PREFIX = re.compile(r"^([0-9A-F]{24})(?:-[0-9a-f]{40})?(?:\.(?:gz|lz4|zst|bz2|xz|br|zstd|lzma))?$")
_LSN = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")
HISTORY = re.compile(r"^([0-9A-F]{8})\.history(?:\.(?:gz|lz4|zst|bz2|xz|br|zstd|lzma))?$")


class WalNameError(ValueError):
    """Not a WAL segment name (or an LSN) of the shape PostgreSQL writes."""


@dataclass(frozen=True, order=True)
class Segment:
    timeline: int
    number: int  # position / segment size: the segment's index on its timeline
    size: int = field(default=DEFAULT_SEGMENT_SIZE, compare=False)

    @property
    def per_log(self) -> int:
        return 0x100000000 // self.size

    @property
    def name(self) -> str:
        return f"{self.timeline:08X}{self.number // self.per_log:08X}{self.number % self.per_log:08X}"

    def next(self) -> Segment:
        return Segment(self.timeline, self.number + 1, self.size)

    def on(self, timeline: int) -> Segment:
        return Segment(timeline, self.number, self.size)

    def __str__(self) -> str:
        return self.name


def check_segment_size(size: int) -> int:
    # initdb --wal-segsize: a power of two from 1 MiB to 1 GiB.
    if size < 1024 * 1024 or size > 1024 ** 3 or size & (size - 1):
        raise WalNameError(f"{size} is not a WAL segment size (a power of two from 1 MiB to 1 GiB)")
    return size


def parse_segment(name: str, size: int = DEFAULT_SEGMENT_SIZE) -> Segment:
    """A segment from its 24-hex-digit name (an archive's suffixes allowed)."""
    match = _SEGMENT_PREFIX.match(name.strip())
    if match is None:
        raise WalNameError(f"{name!r} is not a WAL segment name (24 hex digits)")
    timeline, log, seg = (int(part, 16) for part in SEGMENT.match(match.group(1)).groups())
    per_log = 0x100000000 // check_segment_size(size)
    if timeline == 0 or seg >= per_log:
        raise WalNameError(f"{name!r} is not a WAL segment name for {size // (1024 * 1024)} MiB segments")
    return Segment(timeline, log * per_log + seg, size)


def segment_of_name(name: str, size: int = DEFAULT_SEGMENT_SIZE) -> Segment | None:
    """parse_segment, or None for anything else in an archive folder (history,
    .backup and .partial files, temporary files)."""
    try:
        return parse_segment(name, size)
    except WalNameError:
        return None


def parse_lsn(text: str) -> int:
    """An LSN as PostgreSQL prints it ("0/2000028") to a byte position."""
    # Each half is at most 8 hex digits: int(x, 16) alone would take "0x1", "1_0", "-1"
    # and a low half past 32 bits that spills into the high one.
    match = _LSN.match(text.strip())
    if match is None:
        raise WalNameError(f"{text!r} is not an LSN (such as 0/2000028)")
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def segment_at(lsn: int, timeline: int, size: int = DEFAULT_SEGMENT_SIZE) -> Segment:
    return Segment(timeline, lsn // size, size)


@dataclass(frozen=True)
class Branch:
    """One line of a history file: timeline ``parent`` ended at ``switch`` (an LSN)."""

    parent: int
    switch: int


def parse_history(text: str) -> list[Branch]:
    """A timeline history file: "parentTLI<TAB>switchpoint<TAB>reason" lines, oldest
    first; comments and blank lines skipped."""
    branches = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 2)
        try:
            if len(parts) < 2:
                raise ValueError
            branches.append(Branch(int(parts[0]), parse_lsn(parts[1])))
        except (ValueError, WalNameError):
            raise WalNameError(f"line {number} of a history file is not 'timeline switchpoint reason': {line[:80]!r}") from None
    return branches


def lsn_text(lsn: int) -> str:
    """A byte position as PostgreSQL prints an LSN ("0/25000000")."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def fork_off(timeline: int, history: list[Branch]) -> Branch | None:
    """Where recovery along ``history`` leaves ``timeline``: the branch whose parent it
    is (a timeline is the parent of one branch at most on one history), or None when
    the history never passes through it."""
    return next((branch for branch in history if branch.parent == timeline), None)


def on_chain(timeline: int, lsn: int, target: int, history: list[Branch]) -> bool:
    """Whether a position of ``timeline`` is part of the history of ``target``: recovery
    onto target passes through it."""
    if timeline == target:
        return True
    return any(branch.parent == timeline and lsn < branch.switch for branch in history)


def timeline_of(segment: Segment, timeline: int, history: list[Branch]) -> int:
    """Which timeline's file holds ``segment`` when recovering onto ``timeline``: the
    ancestor whose range contains it. The segment holding a switch point is read from
    the new timeline (PostgreSQL copies the old one's start into it)."""
    start = 0
    for branch in history:
        switch_segment = branch.switch // segment.size
        if start <= segment.number < switch_segment:
            return branch.parent
        start = switch_segment
    return timeline


def expected_segments(first: Segment, last: Segment, timeline: int, history: list[Branch]) -> Iterable[Segment]:
    """Every segment recovery onto ``timeline`` reads from ``first`` to ``last``
    (positions, whatever the timelines in their names), on the timeline that holds each."""
    for number in range(first.number, last.number + 1):
        position = Segment(timeline, number, first.size)
        yield position.on(timeline_of(position, timeline, history))


def first_gap(present: set[str] | frozenset[str], first: Segment, last: Segment, timeline: int,
              history: list[Branch]) -> tuple[Segment | None, int]:
    """The first segment recovery would need and the archive does not hold, and how
    many segments were checked before it (all of them when there is no gap)."""
    checked = 0
    # An archive whose newest segment comes before the backup's start does not even hold
    # that start: the start is the gap (an empty range would have reported none).
    for segment in expected_segments(first, max(last, first, key=lambda s: s.number), timeline, history):
        if segment.name not in present:
            return segment, checked
        checked += 1
    return None, checked


@dataclass
class WalArchive:
    """What a source knows of its WAL archive, for wal_continuity and the recovery window.

    ``gap`` is the first segment missing between ``checked_from`` (the newest base
    backup's start segment) and ``last``; ``names`` the segments held, when the
    source lists them (for the live server's last_archived_wal), else None.
    """

    where: str  # what was read, for messages: "WAL folder /x", "pgBackRest archive 15-1"
    last: str | None = None  # the newest archived segment (24 hex digits)
    last_archived_at: datetime | None = None  # when it was archived: the recovery window's end
    first: str | None = None  # the oldest archived segment
    checked_from: str | None = None  # where the continuity check started (the newest backup's start WAL)
    segments_checked: int = 0
    gap: str | None = None  # the first missing segment
    # The timeline recovery to latest ends on (the newest its history files lead to), not
    # the backup's: wal_continuity fails when the live server archives on a later one.
    timeline: int | None = None
    window_start: datetime | None = None  # the oldest usable base backup's end: the recovery window's start
    names: frozenset[str] | None = field(default=None, repr=False)
    # The source lists only ``timeline`` (Barman's catalogue lists the backup's own):
    # a server archiving on a later one cannot be compared with it, which says nothing
    # against the archive.
    later_timelines_unlisted: bool = False
    # The history of ``timeline`` (its branches, oldest first; [] for a timeline without
    # ancestors), None when the source does not read it: wal_continuity locates where
    # recovery leaves a server's lower timeline with it.
    history: list[Branch] | None = field(default=None, repr=False)
    segment_size: int = DEFAULT_SEGMENT_SIZE
    # Why recovery to latest cannot start from the newest backup at all: it began on a
    # timeline that ``history`` leaves before the backup's start (a stray timeline forked
    # off below it; PostgreSQL refuses, "requested timeline is not a child of this
    # server's history"). The walk from its start is then no evidence either way.
    start_off_history: str | None = None
    # The archive's content is not this cluster's WAL where its names say so: another
    # cluster's system identifier in a segment's header, or a misnamed segment. Names
    # alone prove nothing then: wal_continuity fails with this.
    identity_problem: str | None = None
    notes: list[str] = field(default_factory=list)  # what the source could not tell

    def holds(self, name: str) -> bool | None:
        """Whether the archive holds this segment: None when the source does not list
        its segments (then only the order against ``last`` can be judged)."""
        if self.names is not None:
            return name in self.names
        return None

    def as_dict(self) -> dict[str, Any]:
        return {
            "where": self.where,
            "first": self.first,
            "last": self.last,
            "last_archived_at": self.last_archived_at.isoformat() if self.last_archived_at else None,
            "checked_from": self.checked_from,
            "segments_checked": self.segments_checked,
            "gap": self.gap,
            **({"start_off_history": self.start_off_history} if self.start_off_history else {}),
            "timeline": self.timeline,
            **({"history": [{"parent": b.parent, "switch": lsn_text(b.switch)} for b in self.history]}
               if self.history else {}),
            "recovery_window": {
                "start": self.window_start.isoformat() if self.window_start else None,
                "end": self.last_archived_at.isoformat() if self.last_archived_at else None,
            },
            **({"identity_problem": self.identity_problem} if self.identity_problem else {}),
            **({"notes": self.notes} if self.notes else {}),
        }
