"""WAL-G: the newest backup from ``wal-g backup-list --detail --json``, and, with
``wal_verify: true``, the WAL archive's integrity from ``wal-g wal-verify integrity --json``.

What WAL-G's output looks like (WAL-G's source, internal/databases/postgres), and
why the parser is shaped this way:

- ``backup-list`` prints a JSON array, or nothing at all when there is no backup
  ("No backups found" on stderr, exit 0). WAL-G prints the same when listing the
  storage failed: it checks the list's length before the listing error.
- Times are RFC 3339 in UTC with a variable number of fraction digits. A backup
  without metadata has Go's zero time ``0001-01-01T00:00:00Z`` and zero sizes: it
  cannot be judged, so it is never "the newest backup".
- LSNs are JSON numbers and ``system_identifier`` exceeds 2^53: Python's json keeps
  both exact; they are stored as text (``X/Y`` for LSNs) so that nothing downstream
  turns them into floats.
- A delta backup is only recognisable by its name: ``base_<own segment>_D_<parent segment>``.
- ``wal-verify`` exits 0 whatever it finds: the verdict is the JSON's ``status``.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from exporter.backups.base import BackupSource, BackupSourceError, BackupUnreadable, NoBackupFound
from exporter.backups.wal import Segment, WalArchive, WalNameError, parse_segment, segment_of_name
from exporter.backups.wal_listing import infer_segment_size
from exporter.backups.command import fail, json_type, parse_json, parse_timestamp, require_int, run_source_tool
from exporter.config import WalgBackup
from exporter.redact import scrub
from exporter.result import PREVIOUS_SIZES_KEPT, BackupInfo

BACKUP_LIST_ARGS = ["backup-list", "--detail", "--json"]
WAL_VERIFY_ARGS = ["wal-verify", "integrity", "--json"]
WAL_VERIFY_ARCHIVE_ARGS = ["wal-verify", "integrity", "timeline", "--json"]
NO_BACKUPS = "No backups found"
DELTA_MARK = "_D_"
# Go's zero time.Time: WAL-G writes it where a backup has no metadata.
_GO_ZERO_YEAR = 1

WAL_VERIFY_STATUSES = ("OK", "WARNING", "FAILURE")
SEGMENT_STATUSES = ("FOUND", "MISSING_DELAYED", "MISSING_UPLOADING", "MISSING_LOST")
WARNING_PREFIX = "warning: "


def lsn_text(value: int) -> str:
    """PostgreSQL's X/Y notation of a 64-bit LSN."""
    return "%X/%X" % (value >> 32, value & 0xFFFFFFFF)


def _segment_position(name: str) -> int | None:
    """Where a WAL segment name sits in the WAL stream (timeline left out), or None
    when it is not a 24-hex-digit segment name."""
    if len(name) != 24:
        return None
    try:
        return int(name[8:], 16)
    except ValueError:
        return None


def _entry_name(entry: Any, index: int) -> str:
    if isinstance(entry, dict) and isinstance(entry.get("backup_name"), str):
        return entry["backup_name"]
    return f"entry {index}"


def _previous_sizes(usable: list[tuple[datetime, str, dict]], newest: tuple[datetime, str], delta: bool) -> tuple[int, ...]:
    """compressed_size of the backups before the newest, of its kind (a delta stores
    only its changes: deltas compare with deltas, fulls with fulls), newest first. A
    size of an odd shape is left out: it concerns an older backup."""
    older = sorted(
        (item for item in usable if (item[0], item[1]) < newest and (DELTA_MARK in item[1]) == delta),
        key=lambda item: (item[0], item[1]), reverse=True,
    )
    sizes = []
    for _, _, entry in older[:PREVIOUS_SIZES_KEPT]:
        size = entry.get("compressed_size")
        if isinstance(size, int) and not isinstance(size, bool):
            sizes.append(size)
    return tuple(sizes)


class WalgBackupSource(BackupSource):
    name = "walg"

    def __init__(self, config: WalgBackup):
        self.config = config

    @property
    def secrets(self) -> list[str]:
        return [value for value in self.config.env.values() if value]

    def _run(self, args: list[str], what: str):
        return run_source_tool(
            self.config.binary, args, what=what, timeout=self.config.timeout_seconds,
            env=self.config.env, secrets=self.secrets,
        )

    # --- the newest backup ---------------------------------------------------------

    def latest(self) -> BackupInfo:
        what = "wal-g backup-list"
        done = self._run(BACKUP_LIST_ARGS, what)
        if not done.stdout.strip():
            if NO_BACKUPS.lower() in done.stderr.lower():
                raise NoBackupFound(
                    "wal-g backup-list found no backups (WAL-G says the same when it cannot list "
                    "the storage: check WALG_*_PREFIX and the credentials if backups should exist)"
                )
            said = " ".join(done.stderr.split())[-300:]
            fail(f"{what} printed nothing" + (f"; it said: {said}" if said else ""), self.secrets)
        data = parse_json(done.stdout, what=what, secrets=self.secrets)
        return self.newest(data)

    def newest(self, data: Any) -> BackupInfo:
        """The newest usable backup of a parsed backup-list; raises NoBackupFound or
        BackupSourceError."""
        what = "wal-g backup-list"
        if data is None or data == []:
            raise NoBackupFound("wal-g backup-list lists no backups")
        if not isinstance(data, list):
            fail(f"{what} printed {json_type(data)} where a list of backups was expected", self.secrets)

        usable: list[tuple[datetime, str, dict]] = []
        without_metadata: list[str] = []
        for index, entry in enumerate(data):
            name = _entry_name(entry, index)
            if not isinstance(entry, dict):
                fail(f"{what}: {name} is {json_type(entry)}, not a backup object", self.secrets)
            for key in ("backup_name", "finish_time"):
                if key not in entry:
                    fail(f"{what}: {name} has no {key} (is --detail supported by this wal-g?)", self.secrets)
            if not isinstance(entry["backup_name"], str) or not entry["backup_name"]:
                fail(f"{what}: {name} has a backup_name that is not a text", self.secrets)
            finished = parse_timestamp(entry["finish_time"], what=f"{what}: {name}", key="finish_time",
                                       secrets=self.secrets)
            if finished.year <= _GO_ZERO_YEAR:
                without_metadata.append(name)
                continue
            usable.append((finished, name, entry))

        if not usable:
            raise NoBackupFound(
                f"wal-g backup-list lists {len(data)} backup(s), none with metadata "
                f"(finish_time 0001-01-01, cannot be judged): {', '.join(without_metadata)}"
            )
        # Equal finish times: the greater name wins; names hold the start segment, so
        # that is the later backup.
        finished, name, entry = max(usable, key=lambda item: (item[0], item[1]))
        info = self._info(finished, name, entry, skipped=without_metadata)
        return dataclasses.replace(info, previous_sizes=_previous_sizes(usable, (finished, name), DELTA_MARK in name))

    def _info(self, finished: datetime, name: str, entry: dict, skipped: list[str]) -> BackupInfo:
        what = f"wal-g backup-list: {name}"
        secrets = self.secrets
        if "compressed_size" not in entry:
            fail(f"{what} has no compressed_size", secrets)
        # The bytes the backup occupies in storage: for a delta, only the delta.
        size = require_int(entry["compressed_size"], what=what, key="compressed_size", secrets=secrets)
        details: dict[str, Any] = {"backup_name": name}

        delta = DELTA_MARK in name
        if delta:
            details["delta_from_segment"] = name.split(DELTA_MARK, 1)[1]
        if isinstance(entry.get("wal_file_name"), str):
            details["wal_start_segment"] = entry["wal_file_name"]
        if "start_time" in entry:
            started = parse_timestamp(entry["start_time"], what=what, key="start_time", secrets=secrets)
            if started.year > _GO_ZERO_YEAR:
                details["started_at"] = started.isoformat()
        if "time" in entry:
            modified = parse_timestamp(entry["time"], what=what, key="time", secrets=secrets)
            details["storage_modified_at"] = modified.isoformat()
        for key in ("start_lsn", "finish_lsn"):
            if key in entry:
                details[key] = lsn_text(require_int(entry[key], what=what, key=key, secrets=secrets))
        system_id = entry.get("system_identifier")
        if system_id is not None:
            details["system_identifier"] = str(require_int(system_id, what=what, key="system_identifier",
                                                           secrets=secrets))
        if "uncompressed_size" in entry:
            details["uncompressed_size_bytes"] = require_int(
                entry["uncompressed_size"], what=what, key="uncompressed_size", secrets=secrets
            )
        details["compressed_size_bytes"] = size
        for key in ("pg_version", "hostname", "data_dir", "is_permanent", "storage_name", "user_data"):
            if key in entry:
                details[key] = entry[key]
        if skipped:
            details["skipped_without_metadata"] = skipped
        return BackupInfo(
            id=name,
            finished_at=finished,
            size_bytes=size,
            kind="walg delta" if delta else "walg full",
            # Not the storage prefix: it comes from env, whose values are all secrets.
            location=name,
            details=details,
        )

    # --- WAL archive integrity -----------------------------------------------------

    def checks_readable(self) -> bool:
        return self.config.wal_verify

    def verify_readable(self, info: BackupInfo, server_version_num: int | None, pg_bin_dir=None) -> str:
        """Run ``wal-g wal-verify integrity --json``. Returns what it proved; a message
        starting with "warning: " when WAL-G says WARNING (segments probably still on
        their way). Raises BackupUnreadable on FAILURE (segments lost)."""
        if not self.config.wal_verify:
            raise BackupSourceError("wal_verify is off for this walg source")
        what = "wal-g wal-verify integrity"
        done = self._run(WAL_VERIFY_ARGS, what)
        data = parse_json(done.stdout, what=what, secrets=self.secrets)
        return self.judge_integrity(data, info)

    def judge_integrity(self, data: Any, info: BackupInfo) -> str:
        what = "wal-g wal-verify integrity"
        secrets = self.secrets
        status, rows = integrity_rows(data, what, secrets)
        ranges = [
            (row["status"], str(row["start_segment"]), str(row["end_segment"]),
             require_int(row["segments_count"], what=what, key="segments_count", secrets=secrets), row.get("timeline_id"))
            for row in rows
        ]

        def describe(status_name: str) -> list[str]:
            return [
                f"{start}..{end} ({count} segment{'s' if count != 1 else ''})"
                for row_status, start, end, count, _ in ranges
                if row_status == status_name
            ]

        found = sum(count for row_status, _, _, count, _ in ranges if row_status == "FOUND")
        lost, uploading, delayed = describe("MISSING_LOST"), describe("MISSING_UPLOADING"), describe("MISSING_DELAYED")
        pending = []
        if uploading:
            pending.append(f"probably still uploading: {', '.join(uploading)}")
        if delayed:
            pending.append(f"probably delayed: {', '.join(delayed)}")

        if status == "FAILURE":
            if not lost:
                fail(f"{what} says FAILURE but lists no MISSING_LOST range", secrets)
            message = f"WAL archive has lost segments: {', '.join(lost)}; {self._where(ranges, info)}"
            if pending:
                message += f"; also missing, {'; '.join(pending)}"
            raise BackupUnreadable(scrub(message, secrets))
        if not ranges:
            scanned = "no WAL segment was scanned"
        else:
            first, last = ranges[0][1], ranges[-1][2]
            scanned = f"{found} WAL segments found from {first} to {last}"
        if status == "WARNING":
            return (f"{WARNING_PREFIX}wal-verify integrity WARNING: {scanned}; "
                    + ("; ".join(pending) if pending else "WAL-G gave no range"))
        return f"wal-verify integrity OK: {scanned}"

    @staticmethod
    def _where(ranges: list, info: BackupInfo) -> str:
        """Whether the lost segments hurt the newest backup itself or only recovery to
        an earlier point."""
        start = info.details.get("wal_start_segment") if info.details else None
        start_pos = _segment_position(start) if isinstance(start, str) else None
        lost_ends = [_segment_position(end) for status, _, end, _, _ in ranges if status == "MISSING_LOST"]
        if start_pos is None or any(pos is None for pos in lost_ends):
            return "point-in-time recovery across them is impossible"
        if all(pos < start_pos for pos in lost_ends):
            return (f"all before the newest backup {info.id} (starts at {start}): recovery to a point "
                    "before it cannot cross the gap")
        return (f"at or after the start of the newest backup {info.id} ({start}): recovery from it "
                "stops at the gap")

    # --- the WAL archive (wal_continuity, the recovery window) ---------------------

    def keeps_wal(self) -> bool:
        # WAL-G's backups are restorable only with its WAL archive (archive_command =
        # wal-g wal-push). wal-verify asks the server too (PGHOST... in env).
        return True

    def wal_archive(self, info: BackupInfo | None) -> WalArchive:
        """``wal-g wal-verify integrity timeline --json``: WAL-G asks the server for its
        current segment and walks the WAL folder back to the oldest backup's start. It
        exits 0 whatever it finds: the ranges and statuses in its JSON are the answer."""
        what = "wal-g wal-verify"
        done = self._run(WAL_VERIFY_ARCHIVE_ARGS, what)
        data = parse_json(done.stdout, what=what, secrets=self.secrets)
        details = (info.details or {}) if info is not None else {}
        start = details.get("wal_start_segment")
        archive, lost_until = archive_from_verify(data, start if isinstance(start, str) else None, self.secrets)
        # backup-list again (BackupInfo keeps only the newest): which backups start
        # inside what wal-verify walked and after any lost segment.
        listed = self._run(BACKUP_LIST_ARGS, "wal-g backup-list")
        entries = parse_json(listed.stdout, what="wal-g backup-list", secrets=self.secrets) if listed.stdout.strip() else []
        if not isinstance(entries, list):
            fail(f"wal-g backup-list printed {json_type(entries)} where a list of backups was expected", self.secrets)
        scanned_from = segment_of_name(archive.first) if archive.first else None
        archive.window_start = window_start(entries, lost_until, scanned_from, self.secrets)
        return archive


_VERIFY = "wal-g wal-verify integrity timeline"


def integrity_rows(data: Any, what: str, secrets=()) -> tuple[str, list[dict]]:
    """wal-verify's integrity status and its segment ranges, each checked for the keys
    and statuses WAL-G prints; BackupSourceError naming what is wrong otherwise. The
    status is WAL-G's word only: it exits 0 on FAILURE too."""
    if not isinstance(data, dict) or not isinstance(data.get("integrity"), dict):
        fail(f"{what} printed no integrity result (expected {{\"integrity\": {{\"status\": ...}}}})", secrets)
    integrity = data["integrity"]
    status = integrity.get("status")
    if status not in WAL_VERIFY_STATUSES:
        fail(f"{what}: unknown status {status!r} (expected one of {', '.join(WAL_VERIFY_STATUSES)})", secrets)
    rows = integrity.get("details")
    if rows is None:
        rows = []  # no segment was scanned
    if not isinstance(rows, list):
        fail(f"{what}: details is {json_type(rows)}, not a list of segment ranges", secrets)
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            fail(f"{what}: details entry {index} is {json_type(row)}", secrets)
        for key in ("start_segment", "end_segment", "segments_count", "status"):
            if key not in row:
                fail(f"{what}: details entry {index} has no {key}", secrets)
        if row["status"] not in SEGMENT_STATUSES:
            fail(f"{what}: details entry {index} has unknown status {row['status']!r}", secrets)
    return status, rows


def window_start(listed: list, lost_until: Segment | None, scanned_from: Segment | None, secrets=()) -> datetime | None:
    """The recovery window's start: the finish_time of the oldest backup with metadata
    (Go's zero time means none) whose start WAL wal-verify walked (it stops at the oldest
    backup that is not permanent: the WAL after a permanent one may be gone) and that
    starts after the last lost segment, if any."""
    candidates = []
    for index, entry in enumerate(listed):
        if not isinstance(entry, dict):
            continue
        name = _entry_name(entry, index)
        finished = parse_timestamp(entry.get("finish_time"), what=f"wal-g backup-list: {name}", key="finish_time",
                                   secrets=secrets)
        if finished.year <= _GO_ZERO_YEAR:
            continue
        begin = segment_of_name(str(entry.get("wal_file_name") or ""))
        if lost_until is not None and (begin is None or begin.number <= lost_until.number):
            continue
        if scanned_from is not None and (begin is None or begin.number < scanned_from.number):
            continue
        candidates.append(finished)
    return min(candidates, default=None)


def archive_from_verify(data: Any, start: str | None, secrets=()) -> tuple[WalArchive, Segment | None]:
    """WalArchive from wal-verify's JSON (shape: internal/databases/postgres in WAL-G:
    {"integrity": {"status", "details": [{timeline_id, start_segment, end_segment,
    segments_count, status}] or null}, "timeline": {"status", "details":
    {current_timeline_id, highest_storage_timeline_id}}}), and the last segment lost
    before ``start`` (the newest backup's start WAL), which bounds the window.

    FOUND ranges are held; MISSING_LOST is the gap (the first one at or after
    ``start``); MISSING_UPLOADING and MISSING_DELAYED are WAL-G's names for the newest
    segments missing below the server's current one (up to its upload concurrency, then
    WALG_INTEGRITY_MAX_DELAYED_WALS more): the tail still on its way, a note and not a
    gap. Its newest FOUND segment is not necessarily recent enough: WAL-G gives no
    times (last_archived_at stays None, said in the notes)."""
    status, raw = integrity_rows(data, _VERIFY, secrets)
    size = infer_segment_size([str(r["start_segment"]) for r in raw] + [str(r["end_segment"]) for r in raw])
    ranges = []
    for index, row in enumerate(raw):
        try:
            first, last = parse_segment(str(row["start_segment"]), size), parse_segment(str(row["end_segment"]), size)
        except WalNameError as exc:
            fail(f"{_VERIFY}: integrity details entry {index}: {exc}", secrets)
        if first.timeline != last.timeline or first.number > last.number:
            fail(f"{_VERIFY}: integrity details entry {index} is not a range ({first.name}..{last.name})", secrets)
        ranges.append((row["status"], first, last))
    ranges.sort(key=lambda r: (r[1].number, r[1].timeline))

    notes: list[str] = ["WAL-G gives no archive times: the newest segment's age is not known from wal-verify"]
    archive = WalArchive(where="WAL-G wal-verify", notes=notes)
    found = [(first, last) for kind, first, last in ranges if kind == "FOUND"]
    if found:
        archive.first = found[0][0].name
        archive.last = max(found, key=lambda r: r[1].number)[1].name
        archive.timeline = parse_segment(archive.last, size).timeline
        held = set()
        for first, last in found:
            segment = first
            while segment.number <= last.number:
                held.add(segment.name)
                segment = segment.next()
        archive.names = frozenset(held)
    else:
        archive.names = frozenset()
        notes.append("wal-verify found no WAL segment")

    begin = None
    if start is not None:
        try:
            begin = parse_segment(start, size)
        except WalNameError as exc:
            notes.append(f"the newest backup's start WAL is not a segment name ({exc})")
    lost_until = None
    for kind, first, last in ranges:
        if kind != "MISSING_LOST":
            continue
        if begin is not None and last.number < begin.number:
            lost_until = last
            notes.append(f"{_LOST_BEFORE} {first.name}..{last.name} ({last.number - first.number + 1} segments), before the "
                         f"newest backup's start {begin.name}: recovery from older backups stops there")
            continue
        if archive.gap is None:
            archive.gap = (first if begin is None or first.number >= begin.number else begin.on(first.timeline)).name
    if begin is not None:
        archive.checked_from = begin.name
        until = parse_segment(archive.gap, size).number if archive.gap else None
        archive.segments_checked = sum(
            max(0, min(last.number, until - 1 if until is not None else last.number) - max(first.number, begin.number) + 1)
            for first, last in found
        )
    for kind, label in (("MISSING_UPLOADING", "probably still uploading"), ("MISSING_DELAYED", "probably delayed")):
        spans = [f"{first.name}..{last.name}" for k, first, last in ranges if k == kind]
        if spans:
            notes.append(f"{label} (not counted as a gap): {', '.join(spans)}")
    if status == "FAILURE" and archive.gap is None and lost_until is None:
        fail(f"{_VERIFY} says FAILURE but lists no MISSING_LOST range", secrets)

    timeline = data.get("timeline")
    if isinstance(timeline, dict) and timeline.get("status") not in (None, "OK"):
        said = timeline.get("details") if isinstance(timeline.get("details"), dict) else {}
        notes.append(f"wal-verify timeline {timeline.get('status')}: the server is on timeline "
                     f"{said.get('current_timeline_id')}, the storage's highest is {said.get('highest_storage_timeline_id')}")
    return archive, lost_until


_LOST_BEFORE = "WAL lost"
