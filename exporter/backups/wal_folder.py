"""A WAL folder next to pg_basebackup backups (the directory source's ``wal_path``):
what archive_command copied there, judged from the newest base backup's start WAL on.

Where each fact comes from, and why there:
- A backup's start WAL (timeline and LSN): its own ``backup_manifest`` ("WAL-Ranges",
  PostgreSQL 13+, present in plain and tar format alike), else its ``backup_label``
  (plain format, older servers or --no-manifest). Not the ``.backup`` file in the WAL
  folder: it exists only when archive_command copied it, and it names no backup folder
  (every pg_basebackup has the same label), so it can only be found from the start LSN.
- A backup's end (the recovery window's start): the matching ``.backup`` file's STOP
  TIME when its zone is UTC/GMT or a numeric offset, else that file's modification time
  (it is archived as the backup stops), else the backup_manifest's modification time
  (pg_basebackup writes it last), else the folder's newest modification time.
- The segment size: the most common size of the uncompressed segments that is a valid
  segment size; with only compressed segments, the newest one's page header says
  (xlp_seg_size), else 16 MiB (initdb's default), said in notes. An uncompressed
  segment of another size is a torn copy: not counted as held.
- Whose WAL it is: the first page headers of the newest segment and of the newest base
  backup's start segment (exporter/backups/wal_header.py), against the backup's system
  identifier and the files' names. Names alone are the same in every cluster. An
  unreadable newest header is a torn copy, not held; two headers, not the archive.
- The timeline: from the newest backup's, the next timelines whose ``.history`` exists,
  as PostgreSQL's recovery_target_timeline=latest probes them (it stops at the first
  missing history file, and so does this).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import stat
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from fnmatch import fnmatchcase
from pathlib import Path

from exporter.backups.base import BackupSourceError
# directory.py imports this module only inside DirectoryBackupSource.wal_archive: no cycle.
from exporter.backups.directory import _folder_totals, folder_kind
from exporter.backups.wal_header import LongHeader, NoDecompressor, WalHeaderError, backup_system_identifier, read_header
from exporter.backups.wal import (
    DEFAULT_SEGMENT_SIZE,
    HISTORY,
    SEGMENT,
    Branch,
    Segment,
    WalArchive,
    WalNameError,
    check_segment_size,
    first_gap,
    lsn_text,
    on_chain,
    parse_history,
    parse_lsn,
    segment_at,
    segment_of_name,
    timeline_of,
)

_BACKUP_FILE = re.compile(r"^([0-9A-F]{24})\.([0-9A-F]{8})\.backup(?:\.gz)?$")
_PARTIAL = re.compile(r"^[0-9A-F]{24}\.partial(?:\.\w+)?$")
_LABEL_START = re.compile(r"^START WAL LOCATION: ([0-9A-Fa-f]+/[0-9A-Fa-f]+)", re.M)
_LABEL_TIMELINE = re.compile(r"^START TIMELINE: (\d+)", re.M)
_STOP_TIME = re.compile(r"^STOP TIME: (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (\S+)\s*$", re.M)
_OFFSET = re.compile(r"^([+-])(\d\d)(\d\d)?$")
_SMALLEST = 1024 * 1024  # parses every valid name: a log part below 4096 is valid for 1 MiB and up
_SIZE_TRIES = 8  # compressed segments whose header is read to learn the segment size
_TORN_LIMIT = 64  # unreadable newest segments in a row: past it the folder is not WAL


@dataclass
class BaseBackup:
    name: str
    path: Path
    timeline: int | None = None
    start_lsn: int | None = None
    end: datetime | None = None
    end_from: str = ""


@dataclass
class _File:
    name: str
    path: str
    size: int
    mtime: float


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc)


def _read_text(path: str) -> str:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
        return handle.read()


def list_wal_folder(wal_path: Path) -> dict[str, list[_File]]:
    """The folder's regular files by kind: segment, history, backup, partial, other."""
    kinds: dict[str, list[_File]] = {"segment": [], "history": [], "backup": [], "partial": [], "other": []}
    try:
        with os.scandir(wal_path) as it:
            entries = list(it)
    except OSError as exc:
        raise BackupSourceError(f"cannot read WAL folder {wal_path} (backup.wal_path): {exc.strerror or exc}") from None
    for entry in entries:
        try:
            info = entry.stat(follow_symlinks=True)
        except FileNotFoundError:
            continue  # removed since listed (an archive cleanup runs next to us)
        if not stat.S_ISREG(info.st_mode):
            continue
        file = _File(entry.name, entry.path, info.st_size, info.st_mtime)
        if segment_of_name(entry.name, _SMALLEST) is not None:
            kinds["segment"].append(file)
        elif HISTORY.match(entry.name):
            kinds["history"].append(file)
        elif _BACKUP_FILE.match(entry.name):
            kinds["backup"].append(file)
        elif _PARTIAL.match(entry.name):
            kinds["partial"].append(file)
        else:
            kinds["other"].append(file)
    return kinds


def segment_size(segments: list[_File]) -> tuple[int, str]:
    """The archive's segment size and how it was found."""
    sizes = Counter(f.size for f in segments if SEGMENT.match(f.name))
    for size, _ in sizes.most_common():
        try:
            return check_segment_size(size), f"{size // (1024 * 1024)} MiB, the size of its uncompressed segments"
        except WalNameError:
            continue
    # Only compressed segments: their first page header says (xlp_seg_size). Newest
    # name first, a few tries past torn ones; names order by timeline then position.
    why = []
    for file in sorted(segments, key=lambda f: f.name, reverse=True)[:_SIZE_TRIES]:
        try:
            header = read_header(file.path)
            return check_segment_size(header.seg_size), (
                f"{header.seg_size // (1024 * 1024)} MiB, from the first page header of {file.name}")
        except (WalHeaderError, WalNameError, NoDecompressor) as exc:
            why.append(f"{file.name}: {exc}")
    tried = f" ({'; '.join(why[:3])})" if why else ""
    return DEFAULT_SEGMENT_SIZE, f"16 MiB assumed (no segment to measure or whose header to read{tried})"


def base_backups(folder: Path, pattern: str) -> list[BaseBackup]:
    """The pg_basebackup folders of the backup folder matching pattern (folder_kind)."""
    found = []
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except FileNotFoundError:
        return []  # no backup folder: backup_age says so
    except OSError as exc:
        raise BackupSourceError(f"cannot read folder {folder}: {exc.strerror or exc}") from None
    for entry in entries:
        if entry.name.startswith(".") or not fnmatchcase(entry.name, pattern):
            continue
        try:
            if entry.is_dir(follow_symlinks=True) and folder_kind(Path(entry.path)) == "pg_basebackup":
                found.append(BaseBackup(entry.name, Path(entry.path)))
        except FileNotFoundError:
            continue  # rotated away since listed
    return found


def read_start(backup: BaseBackup) -> str | None:
    """Fill in the backup's start timeline and LSN; None, or why they are unknown."""
    manifest = backup.path / "backup_manifest"
    label = backup.path / "backup_label"
    problems = []
    if manifest.exists():
        try:
            with open(manifest, encoding="utf-8") as handle:
                ranges = json.load(handle)["WAL-Ranges"]
            backup.timeline = int(ranges[0]["Timeline"])
            backup.start_lsn = parse_lsn(ranges[0]["Start-LSN"])
            return None
        except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            problems.append(f"its backup_manifest has no readable WAL-Ranges ({exc})")
    if label.exists():
        try:
            text = label.read_text(encoding="utf-8", errors="replace")
            start, timeline = _LABEL_START.search(text), _LABEL_TIMELINE.search(text)
            if start is None:
                raise ValueError("no START WAL LOCATION line")
            backup.start_lsn = parse_lsn(start.group(1))
            backup.timeline = int(timeline.group(1)) if timeline else 1
            return None
        except (OSError, ValueError) as exc:
            problems.append(f"its backup_label has no readable start ({exc})")
    return "; ".join(problems) or "it has neither backup_manifest nor backup_label"


def _stop_time(text: str) -> datetime | None:
    match = _STOP_TIME.search(text)
    if match is None:
        return None
    local = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")
    zone = match.group(2)
    if zone in ("UTC", "GMT", "Z", "UCT"):
        return local.replace(tzinfo=timezone.utc)
    offset = _OFFSET.match(zone)
    if offset is None:
        return None  # an abbreviation such as CET or IST: ambiguous, not guessed
    sign = 1 if offset.group(1) == "+" else -1
    delta = timedelta(hours=int(offset.group(2)), minutes=int(offset.group(3) or 0))
    return local.replace(tzinfo=timezone(sign * delta))


def read_end(backup: BaseBackup, size: int, backup_files: dict[str, _File]) -> None:
    """The backup's end time (the module's docstring says from where)."""
    if backup.start_lsn is not None:
        start = segment_at(backup.start_lsn, backup.timeline, size)
        name = f"{start.name}.{backup.start_lsn % size:08X}.backup"
        file = backup_files.get(name) or backup_files.get(name + ".gz")
        if file is not None:
            try:
                stopped = _stop_time(_read_text(file.path))
            except (OSError, EOFError, gzip.BadGzipFile):
                stopped = None
            if stopped is not None:
                backup.end, backup.end_from = stopped, f"STOP TIME of {file.name}"
            else:
                backup.end, backup.end_from = _utc(file.mtime), f"the modification time of {file.name}"
            return
    try:
        manifest = backup.path / "backup_manifest"
        if manifest.exists():
            backup.end, backup.end_from = _utc(manifest.stat().st_mtime), "the modification time of its backup_manifest"
            return
        backup.end, backup.end_from = _utc(_folder_totals(backup.path)[0]), "the folder's newest modification time"
    except FileNotFoundError:
        pass


def follow_timelines(start: int, histories: dict[int, _File], where: Path) -> tuple[int, list[Branch]]:
    """The timeline recovery to latest ends on from ``start``, and its history."""
    timeline = start
    while timeline + 1 in histories:
        timeline += 1
    file = histories.get(timeline)
    if file is None:
        # Timeline 1 has no history; a backup's own later timeline without one is
        # replayed from the backup's start, before which its ancestry is never needed.
        return timeline, []
    if not file.name.endswith((".history", ".gz")):
        raise BackupSourceError(f"cannot read {where / file.name}: pgbv reads history files plain or gzip-compressed")
    try:
        return timeline, parse_history(_read_text(file.path))
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise BackupSourceError(f"cannot read {where / file.name}: {getattr(exc, 'strerror', None) or exc}") from None
    except WalNameError as exc:
        raise BackupSourceError(f"{where / file.name} is not a history file: {exc}") from None


def read_archive(wal_path: Path, backups_path: Path, pattern: str, newest_location: str | None,
                 newest_kind: str | None) -> WalArchive:
    kinds = list_wal_folder(wal_path)
    where = f"WAL folder {wal_path}"
    notes: list[str] = []
    size, size_from = segment_size(kinds["segment"])
    notes.append(f"segment size {size_from}")

    segments: dict[str, tuple[Segment, _File]] = {}
    torn = []
    for file in kinds["segment"]:
        segment = segment_of_name(file.name, size)
        if segment is None:
            continue  # a log part beyond this size's range: not a segment of this archive
        if SEGMENT.match(file.name) and file.size != size:
            torn.append(f"{file.name} ({file.size} bytes)")
            continue
        segments.setdefault(segment.name, (segment, file))
    if torn:
        notes.append(f"not counted, the size of an uncompressed segment is {size} bytes: {', '.join(sorted(torn)[:5])}")
    if kinds["partial"]:
        notes.append(f"{len(kinds['partial'])} .partial file(s): the unfinished last segments of old timelines, not replayed")

    backups = base_backups(backups_path, pattern)
    if not backups and newest_kind is not None:
        raise BackupSourceError(
            f"backup.wal_path is set, but {backups_path} holds no pg_basebackup folder matching {pattern!r} (the "
            f"newest backup is a {newest_kind}): WAL is replayed onto a base backup, and pg_dump archives have "
            "none; unset wal_path for dump backups"
        )
    for backup in backups:
        problem = read_start(backup)
        if problem is not None:
            notes.append(f"base backup {backup.name}: no start WAL, {problem}")
    started = [b for b in backups if b.start_lsn is not None]
    newest = None
    if newest_location is not None:
        newest = next((b for b in started if os.path.realpath(b.path) == os.path.realpath(newest_location)), None)
    if newest is None and started:
        newest = max(started, key=lambda b: (b.start_lsn, b.timeline))
        if newest_kind is not None and newest_kind != "pg_basebackup":
            notes.append(f"the newest backup is a {newest_kind}; checked from the newest base backup, {newest.name}")
    elif backups and not started:
        raise BackupSourceError(
            f"no start WAL in any base backup of {backups_path}: " + "; ".join(n for n in notes if n.startswith("base backup"))
        )

    histories = {}
    for file in kinds["history"]:
        histories.setdefault(int(HISTORY.match(file.name).group(1), 16), file)
    lowest = min((s.timeline for s, _ in segments.values()), default=1)
    start_timeline = newest.timeline if newest is not None else lowest
    timeline, history = follow_timelines(start_timeline, histories, wal_path)
    highest = max((s.timeline for s, _ in segments.values()), default=timeline)
    if highest > timeline:
        notes.append(
            f"segments of timeline {highest} are archived but no {timeline + 1:08X}.history: recovery to the latest "
            f"timeline stops on timeline {timeline}"
        )
    chain = [(s, f) for s, f in segments.values() if timeline_of(s, timeline, history) == s.timeline]
    chain, newest_header, not_wal = _newest_readable(chain, segments, notes)
    archive = WalArchive(where, timeline=timeline, names=frozenset(segments), notes=notes, history=list(history),
                         segment_size=size, identity_problem=not_wal)
    if newest is not None and not on_chain(newest.timeline, newest.start_lsn, timeline, history):
        archive.start_off_history = (
            f"base backup {newest.name} started on timeline {newest.timeline} at {lsn_text(newest.start_lsn)}, which "
            f"timeline {timeline}'s history does not pass through at that position"
        )
    if chain:
        last_segment = max(chain, key=lambda pair: pair[0].number)[0]
        archive.last = last_segment.name
        archive.first = min(chain, key=lambda pair: pair[0].number)[0].name
        archive.last_archived_at = _utc(max(f.mtime for _, f in chain))
    else:
        last_segment = None
        notes.append("no segment of this timeline's history is archived")

    if newest is not None:
        start = segment_at(newest.start_lsn, newest.timeline, size)
        archive.checked_from = start.on(timeline_of(start, timeline, history)).name
    elif last_segment is not None:
        start = Segment(timeline, min(s.number for s, _ in chain), size)
        archive.checked_from = start.on(timeline_of(start, timeline, history)).name
        notes.append(f"no base backup in {backups_path}: checked from the oldest archived segment")
    else:
        return archive
    headers = []
    if last_segment is not None:
        headers.append(("newest", last_segment, segments[last_segment.name][1], newest_header))
        start_header = _start_header(archive, segments, notes)
        if start_header is not None and start_header[0] != last_segment:
            headers.append(("start", *start_header))
    _compare_identity(archive, newest, headers, size, history)
    if last_segment is None:
        archive.gap = archive.checked_from
        return archive
    gap, checked = first_gap(archive.names, start, last_segment, timeline, history)
    archive.gap = gap.name if gap is not None else None
    archive.segments_checked = checked

    if archive.identity_problem is None:
        _window_start(archive, started, timeline, history, size, last_segment, kinds["backup"])
    else:
        notes.append("no recovery window: the WAL folder's content is not this cluster's WAL")
    return archive


def _lsn(position: int) -> str:
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


def _newest_readable(chain: list[tuple[Segment, _File]], segments: dict[str, tuple[Segment, _File]],
                     notes: list[str]) -> tuple[list[tuple[Segment, _File]], LongHeader | None, str | None]:
    """The chain without its newest segments whose first page header cannot be read
    (empty, truncated, corrupt compression, not WAL): a torn copy, not held. Walks down
    from the newest only: the archive's middle is judged by name (reading every header
    would cost the whole archive)."""
    ordered = sorted(chain, key=lambda pair: pair[0].number, reverse=True)
    torn = []
    header = problem = None
    kept: list[tuple[Segment, _File]] = []
    for index, (segment, file) in enumerate(ordered):
        if len(torn) == _TORN_LIMIT:
            # Not one torn copy but a folder of files that are not WAL (the trial's
            # empty .gz files): said so, instead of opening every one of them.
            kept = ordered[index:]
            problem = (f"the newest {_TORN_LIMIT} segments hold no readable WAL page header ({ordered[0][1].name} "
                       f"down to {ordered[index - 1][1].name}): files named as segments that are not WAL")
            break
        try:
            header = read_header(file.path)
        except WalHeaderError as exc:
            torn.append(f"{file.name} ({exc})")
            del segments[segment.name]
            continue
        except NoDecompressor as exc:
            notes.append(f"first page header of the newest segment {file.name} not read ({exc}): its content is unchecked")
        kept = ordered[index:]
        break
    if torn:
        more = f" and {len(torn) - 5} more" if len(torn) > 5 else ""
        notes.append(f"not counted, the newest segment(s) hold no readable WAL page header (a torn copy): "
                     f"{', '.join(torn[:5])}{more}")
    return kept, header, problem


def _start_header(archive: WalArchive, segments: dict[str, tuple[Segment, _File]],
                  notes: list[str]) -> tuple[Segment, _File, LongHeader | None] | None:
    """The header of the segment the check starts from; a torn one is dropped (the gap)."""
    held = segments.get(archive.checked_from)
    if held is None:
        return None
    segment, file = held
    try:
        return segment, file, read_header(file.path)
    except WalHeaderError as exc:
        notes.append(f"not counted, the start segment {file.name} holds no readable WAL page header ({exc})")
        del segments[segment.name]
        archive.names = frozenset(segments)
    except NoDecompressor as exc:
        notes.append(f"first page header of the start segment {file.name} not read ({exc}): its content is unchecked")
    return None


def _compare_identity(archive: WalArchive, backup: BaseBackup | None,
                      headers: list[tuple[str, Segment, _File, LongHeader | None]], size: int,
                      history: list[Branch]) -> None:
    """The headers of the newest and the start segment against the base backup's system
    identifier and their own names: another cluster's WAL, or a misnamed file, is
    archive.identity_problem."""
    read = [(role, segment, file, header) for role, segment, file, header in headers if header is not None]
    if not read:
        return
    expected, expected_from = (None, "no base backup")
    if backup is not None:
        expected, expected_from = backup_system_identifier(backup.path)
    problems = []
    foreign = [(role, file, header) for role, _, file, header in read if expected is not None and header.sysid != expected]
    if foreign:
        written = " and ".join(f"{file.name} (the {role} segment) by system identifier {header.sysid}"
                               for role, file, header in foreign)
        problems.append(
            f"{archive.where} holds another cluster's WAL: {written}, but base backup {backup.name} is of system "
            f"identifier {expected} ({expected_from})"
        )
    for role, segment, file, header in read:
        if expected is not None and header.sysid != expected:
            continue
        if header.seg_size != size:
            problems.append(f"{file.name}'s header gives a segment size of {header.seg_size} bytes, the archive's is {size}")
            continue
        if header.pageaddr != segment.number * size:
            problems.append(
                f"{file.name}'s header places it at {_lsn(header.pageaddr)}, its name at {_lsn(segment.number * size)}: "
                "a misnamed segment"
            )
            continue
        # A timeline switched inside a segment starts its file with a copy of the
        # parent's (up to the switch point), header included: an older timeline there
        # is right. Switched at a segment's start, the new file is fresh.
        switched_from = {b.parent for b in history if b.switch // size == segment.number and b.switch % size}
        if header.timeline != segment.timeline and not (header.timeline < segment.timeline
                                                        and header.timeline in switched_from):
            problems.append(
                f"{file.name}'s header is of timeline {header.timeline}, its name of timeline {segment.timeline}: "
                "a misnamed segment"
            )
    if expected is None and len(read) == 2 and read[0][3].sysid != read[1][3].sysid:
        problems.append(
            f"the newest segment {read[0][2].name} (system identifier {read[0][3].sysid}) and the start segment "
            f"{read[1][2].name} (system identifier {read[1][3].sysid}) are of two clusters"
        )
    if problems:
        archive.identity_problem = "; ".join(filter(None, [archive.identity_problem, *problems]))
        return
    names = " and ".join(f"{file.name} ({role})" for role, _, file, _ in read)
    if expected is not None:
        archive.notes.append(f"system identifier {expected} ({expected_from} of {backup.name}) in the headers of {names}")
    else:
        archive.notes.append(f"system identifier {read[0][3].sysid} in the headers of {names}, not compared with a base "
                             f"backup: {expected_from}")


def _window_start(archive: WalArchive, started: list[BaseBackup], timeline: int, history: list[Branch],
                  size: int, last: Segment, backup_files: list[_File]) -> None:
    """The oldest base backup recovery can start from and replay to the archive's end:
    its start held, and no segment missing from it to the end."""
    usable = [b for b in started if on_chain(b.timeline, b.start_lsn, timeline, history)]
    if not usable:
        return
    oldest = min(b.start_lsn // size for b in usable)
    newest_missing = -1
    for number in range(oldest, last.number + 1):
        position = Segment(timeline, number, size)
        if position.on(timeline_of(position, timeline, history)).name not in archive.names:
            newest_missing = number
    usable = [b for b in usable if newest_missing < b.start_lsn // size <= last.number]
    if not usable:
        archive.notes.append("no base backup can be replayed to the archive's end: no recovery window")
        return
    files = {f.name: f for f in backup_files}
    for backup in usable:
        read_end(backup, size, files)
    ended = [b for b in usable if b.end is not None]
    if ended:
        first = min(ended, key=lambda b: b.end)
        archive.window_start = first.end
        archive.notes.append(f"recovery window starts at the end of base backup {first.name} ({first.end_from})")
