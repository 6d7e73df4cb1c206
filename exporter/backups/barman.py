"""Barman: the newest DONE backup of a server.

Two commands, each under ``timeout_seconds``:

1. ``barman [-c FILE] -f json list-backups SERVER`` answers "is there a backup, and
   which is newest": every backup with its status, so an empty list is a clean "no
   backup" and newer FAILED or WAITING_FOR_WALS attempts can be named.
2. ``barman [-c FILE] -f json show-backup SERVER ID`` for that backup: its end time
   with a zone, LSNs, WAL range and sizes.

Why only DONE counts (Barman's own ``latest`` also takes WAITING_FOR_WALS): a
WAITING_FOR_WALS backup has been copied but the WAL it needs to become consistent is
not archived yet, so it cannot be restored. It turns DONE (or FAILED) at the next
``barman cron`` once that WAL arrives; if archiving is broken it never does, and
taking it as "the newest backup" would keep backup_age green while nothing newer is
restorable. FAILED, STARTED, EMPTY and SYNCING backups are not restorable either.

Times: show-backup's ``end_time`` is ISO with an offset and is used as it is.
``end_time_timestamp`` is Barman's ``strftime("%s")``, which glibc computes from the
fields as if they were in the Barman host's zone, ignoring the offset; it is right only
when PostgreSQL's and the Barman host's zones agree, so it only orders list-backups
entries (where every entry is off by the same amount) and is the fallback when an
``end_time`` has no offset. list-backups' ``end_time`` (``ctime()`` text, no zone) is
never used.

``barman -f json`` exits 1 when it reports an error and still prints JSON, with the
error in a top-level ``_ERROR`` list; both are read.

backup_readable: ``barman [-c FILE] -f json verify-backup SERVER ID``. Barman runs
``pg_verifybackup -n`` on the backup's data folder: every file of the backup_manifest
is on disk with its size and checksum, and no file is on disk that the manifest does
not list. ``-n``: the WAL is not parsed (Barman keeps it outside the backup). Its traps
(Barman 3.4, and the same code today):

- an inactive server (``active = false``) is "skipped" with exit 0 and an ``_INFO``
  line, nothing verified: only pg_verifybackup's own "backup successfully verified"
  line is taken as a pass, never exit 0 alone;
- a damaged backup is exit 1 with two ``_ERROR`` entries: "verify backup failure on
  directory ..." and pg_verifybackup's stderr, one "pg_verifybackup: error: ..." line
  per problem (``"base/5/1255" is present in the manifest but not on disk``,
  ``checksum mismatch for file "base/1/1255"``);
- pg_verifybackup could not look (no backup_manifest, which rsync backups and
  PostgreSQL before 13 do not have; a folder it may not read) is reported the same way:
  those lines are told apart from damage by their words;
- "pg_verifybackup not found" (no pg_verifybackup on Barman's path_prefix or PATH),
  unknown server or backup: exit 1 with that ``_ERROR``, and nothing was verified.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from exporter.backups.base import BackupSource, BackupUnreadable, NoBackupFound
from exporter.backups.wal import HISTORY, Segment, WalArchive, parse_segment, segment_of_name
from exporter.backups.wal_listing import BackupWal, continuity, infer_segment_size
from exporter.backups.command import excerpt, fail, json_type, parse_json, parse_timestamp, require_int, run_source_tool
from exporter.config import BarmanBackup
from exporter.result import BackupInfo

USABLE = "DONE"
# Why a listed backup is not the newest one, in words for the check's message.
_NOT_USABLE = {
    "WAITING_FOR_WALS": "waiting for the WAL it needs",
    "FAILED": "failed",
    "STARTED": "still running",
    "EMPTY": "empty",
    "SYNCING": "still being copied from the primary Barman",
}
# Keys of show-backup's base_backup_information worth keeping with the backup.
_BASE_DETAILS = (
    "begin_wal", "end_wal", "begin_lsn", "end_lsn", "timeline", "begin_time", "end_time",
    "disk_usage_bytes", "disk_usage_with_wals_bytes", "incremental_size_bytes",
    "copy_time_seconds", "number_of_workers", "wal_compression_ratio",
)
_WAL_DETAILS = ("no_of_files", "disk_usage_bytes", "last_available", "compression_ratio")


# A WAL segment's file in Barman's wals folder: its bare name (Barman keeps the
# compression in xlog.db, not in the name).
_SEGMENT_NAME = re.compile(r"^[0-9A-F]{24}$")

# What pg_verifybackup prints when it verified everything it was asked to.
_VERIFIED = "backup successfully verified"
# Barman's line before pg_verifybackup's own words when pg_verifybackup exited non-zero.
_VERIFY_FAILURE = "verify backup failure on directory"
_TOOL_PREFIX = re.compile(r"^pg_verifybackup: (?:error|fatal): ")
# pg_verifybackup lines that say it could not look, not that the backup is damaged:
# a folder or file it may not open, or no manifest at all (rsync backups have none
# until `barman generate-manifest`; PostgreSQL before 13 writes none).
_COULD_NOT_LOOK = re.compile(r'Permission denied|could not open file "[^"]*backup_manifest": No such file')
# The backup file a damage line names: the first quoted path in it.
_QUOTED = re.compile(r'"([^"]+)"')


def _messages(data: dict, key: str) -> list[str]:
    value = data.get(key)
    if isinstance(value, list):
        return [str(item) for item in value]
    if isinstance(value, str):
        return [value]
    return []


def _epoch(value: Any) -> datetime | None:
    """Barman's ``*_timestamp`` values: epoch seconds as a text (or a number)."""
    if isinstance(value, bool):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return None
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


class BarmanBackupSource(BackupSource):
    name = "barman"

    def __init__(self, config: BarmanBackup):
        self.config = config

    def _args(self, *command: str) -> list[str]:
        args = []
        if self.config.config_file is not None:
            args += ["-c", str(self.config.config_file)]
        return [*args, "-f", "json", *command]

    def _run_barman(self, *command: str, timeout: float | None = None,
                    on_start: Callable[[subprocess.Popen], None] | None = None) -> tuple[subprocess.CompletedProcess, dict]:
        """How Barman ran and its ``-f json`` answer (an object); BackupSourceError
        when it did not run or did not answer in JSON. The source's timeout_seconds
        unless given one (a restore drill's own)."""
        what = f"barman {command[0]}"
        done = run_source_tool(
            self.config.binary, self._args(*command), what=what,
            timeout=timeout or self.config.timeout_seconds, env=None, secrets=(), ok_codes=(0, 1), on_start=on_start,
        )
        if done.returncode != 0 and not done.stdout.strip():
            # Not Barman's JSON writer speaking: it refused to start ("please run barman
            # as 'barman' user") or a wrapper failed; stderr has the reason.
            said = " ".join(done.stderr.split())[-500:] or "no output"
            fail(f"{what}: {self.config.binary} exited with code {done.returncode}: {said}", ())
        data = parse_json(done.stdout, what=what, secrets=())
        if not isinstance(data, dict):
            fail(f"{what} printed {json_type(data)} where a JSON object was expected", ())
        return done, data

    def _run_json(self, *command: str) -> dict:
        """The server's part of a ``barman -f json`` answer; BackupSourceError with
        Barman's own words when it reports an error."""
        what = f"barman {command[0]}"
        done, data = self._run_barman(*command)
        errors = _messages(data, "_ERROR") + _messages(data, "_EXCEPTION")
        if errors:
            fail(f"{what}: {'; '.join(errors)}", ())
        server = self.config.server
        if server not in data:
            said = "; ".join(_messages(data, "_WARNING") + _messages(data, "_INFO"))
            how = f" (exit code {done.returncode})" if done.returncode else ""
            fail(f"{what} printed nothing for server {server!r}{how}"
                 + (f"; it said: {said}" if said else f": {excerpt(done.stdout)!r}"), ())
        if done.returncode != 0:
            fail(f"{what} exited with code {done.returncode}: {excerpt(done.stdout)!r}", ())
        return data

    def latest(self) -> BackupInfo:
        server = self.config.server
        listed = self._run_json("list-backups", server)[server]
        backup_id, skipped = self.newest_id(listed)
        shown = self._run_json("show-backup", server, backup_id)[server]
        info = self.info_from_show(shown, backup_id, skipped)
        oldest = oldest_done_id(listed)
        if oldest is not None:
            # The recovery window's start (wal_archive): only the id, its end time with
            # a zone needs its own show-backup.
            info.details["oldest_done"] = oldest
        return info

    def checks_readable(self) -> bool:
        return True

    def verify_readable(self, info: BackupInfo, server_version_num: int | None, pg_bin_dir=None) -> str:
        done, data = self._run_barman("verify-backup", self.config.server, info.id)
        return judge_verify(done.returncode, data, self.config.server, info.id)

    def recover(self, backup_id: str, destination: Path, timeout: float,
                on_start: Callable[[subprocess.Popen], None] | None = None) -> list[str]:
        """``barman recover`` of the backup into destination, on this host, to the end of
        the backup and promoted (``--target-immediate``: the copy is consistent and
        nothing newer is needed). Barman copies the WAL it needs into the folder and
        writes the restore_command that reads it. Returns the warnings Barman gave.
        BackupUnreadable when Barman says the recovery failed; BackupSourceError when
        it did not run or recovered nothing (an inactive server is skipped with exit 0)."""
        what = f"barman recover {self.config.server} {backup_id}"
        done, data = self._run_barman(
            "recover", "--target-immediate", "--target-action", "promote", self.config.server, backup_id, str(destination),
            timeout=timeout, on_start=on_start,
        )
        errors = _messages(data, "_ERROR") + _messages(data, "_EXCEPTION")
        if errors:
            raise BackupUnreadable(f"{what}: {'; '.join(errors)}")
        if done.returncode != 0:
            fail(f"{what} exited with code {done.returncode}: {excerpt(done.stdout)!r}", ())
        if "recovery_start_time" not in data:
            said = "; ".join(_messages(data, "_WARNING") + _messages(data, "_INFO"))
            fail(f"{what} recovered nothing (exit 0 without a recovery report)" + (f"; it said: {said}" if said else ""), ())
        return [str(w) for w in data.get("warnings") or [] if w]

    def keeps_wal(self) -> bool:
        # Every Barman server archives WAL (archiver or streaming_archiver): its backups
        # cannot be recovered without it.
        return True

    def wal_archive(self, info: BackupInfo | None) -> WalArchive:
        """``barman list-files --target wal SERVER ID`` for the newest backup: the WAL
        Barman's catalogue (xlog.db) lists from the backup's begin_wal on, on the
        backup's timeline, plus the history files. Reads no WAL file. Where pgbv sees
        Barman's wals folder (same host, a user who may stat it), each listed file must
        exist too and the newest one's modification time is the archive's end; else the
        catalogue alone is read and the time is unknown (said in the notes)."""
        server = self.config.server
        where = f"Barman server {server}"
        if info is None:
            return WalArchive(where=where, notes=["no DONE backup: Barman lists WAL per backup, none was read"])
        details = info.details or {}
        what = f"barman list-files --target wal {server} {info.id}"
        done, data = self._run_barman("list-files", "--target", "wal", server, info.id)
        errors = _messages(data, "_ERROR") + _messages(data, "_EXCEPTION")
        if errors:
            fail(f"{what}: {'; '.join(errors)}", ())
        if done.returncode != 0:
            fail(f"{what} exited with code {done.returncode}: {excerpt(done.stdout)!r}", ())
        # -f json: every path is one "_INFO" message; none at all when nothing is listed.
        paths = [p for p in _messages(data, "_INFO") if p.strip()]
        begin = details.get("begin_wal") if isinstance(details.get("begin_wal"), str) else None
        segments, histories = wal_files(paths)
        notes = ["from Barman's WAL catalogue (xlog.db), on the backup's timeline only"]
        timeline = int(begin[:8], 16) if begin and _SEGMENT_NAME.match(begin) else None
        later = sorted(h for h in histories if timeline is not None and int(h[:8], 16) > timeline)
        if later:
            notes.append(f"later timelines exist ({', '.join(later)}): Barman lists WAL of the backup's timeline only")
        held = self._on_disk(segments, notes)
        end_wal = details.get("end_wal") if isinstance(details.get("end_wal"), str) else None
        newest = [BackupWal(info.id, begin, end_wal, info.finished_at)] if begin else None
        archive = continuity(where, held, begin, [], backups=newest, notes=notes)
        archive.later_timelines_unlisted = True
        if archive.window_start is not None:
            self._older_window_start(archive, info, segments)
        return archive

    def _older_window_start(self, archive: WalArchive, info: BackupInfo, segments: dict[str, str]) -> None:
        """The window's start moved back to the oldest DONE backup's end, once the
        newest backup replays. The listing starts at the newest backup's begin_wal
        (list-files lists per backup, up to the next backup's begin), so the WAL from
        the oldest backup's begin_wal to it is read from Barman's wals folder when
        pgbv can see it (no Barman call): a segment missing there leaves the start at
        the newest backup (which older one follows the hole would cost a show-backup
        per backup). Without the folder it is not read; Barman's retention removes WAL
        only before its oldest backup, so that span is whole unless a file was lost
        outside Barman: said in the notes."""
        oldest = (info.details or {}).get("oldest_done")
        if not isinstance(oldest, str) or oldest == info.id:
            return
        base = self._shown_base(oldest)
        ended = self._end_time(base, f"barman show-backup {oldest}")
        if ended is None or ended >= archive.window_start:
            return
        first, last = base.get("begin_wal"), (info.details or {}).get("begin_wal")
        hole, words = _span_on_disk(segments, first, last)
        if hole is not None:
            archive.notes.append(f"WAL segment {hole} is missing from Barman's wals folder between the oldest DONE backup "
                                 f"{oldest} and the newest {info.id}: the recovery window starts at the newest")
            return
        archive.window_start = ended
        archive.notes = [n for n in archive.notes if not n.startswith("recovery window starts at")]
        archive.notes.append(f"recovery window starts at the end of the oldest DONE backup {oldest}: {words}")

    @staticmethod
    def _on_disk(segments: dict[str, str], notes: list[str]) -> dict:
        """name -> archive time of the listed segments that exist, when pgbv can see
        the wals folder; else every listed one, without a time."""
        if not segments:
            return {}
        sample = next(iter(segments.values()))
        wals = os.path.dirname(os.path.dirname(sample))
        try:
            os.stat(wals)
            os.listdir(os.path.dirname(sample))
        except OSError as exc:
            notes.append(f"Barman's wals folder is not readable here ({exc.strerror}: {wals}): files not checked, no archive time")
            return dict.fromkeys(segments)
        held: dict = {}
        missing = []
        for name, path in segments.items():
            try:
                held[name] = datetime.fromtimestamp(os.stat(path).st_mtime, tz=timezone.utc)
            except FileNotFoundError:
                missing.append(name)
            except OSError:
                held[name] = None
        if missing:
            notes.append(f"{len(missing)} segment(s) in Barman's catalogue are missing from {wals}: {', '.join(sorted(missing)[:5])}"
                         + (" ..." if len(missing) > 5 else ""))
        notes.append("the newest segment's time is its file's modification time in Barman's wals folder")
        return held

    def _shown_base(self, backup_id: str) -> dict:
        shown = self._run_json("show-backup", self.config.server, backup_id)[self.config.server]
        if not isinstance(shown, dict) or shown.get("backup_id") != backup_id:
            fail(f"barman show-backup {backup_id} describes another backup", ())
        base = shown.get("base_backup_information")
        if not isinstance(base, dict):
            fail(f"barman show-backup {backup_id} has no base_backup_information", ())
        return base

    def newest_id(self, listed: Any) -> tuple[str, list[dict]]:
        """The id of the newest DONE backup in list-backups' entries for the server,
        and the newer ones that were passed over; NoBackupFound when there is none."""
        what = "barman list-backups"
        server = self.config.server
        if not isinstance(listed, list):
            fail(f"{what}: the entry of server {server!r} is {json_type(listed)}, not a list of backups", ())
        if not listed:
            raise NoBackupFound(f"barman lists no backups for server {server!r}")
        candidates: list[tuple[datetime, str]] = []
        others: list[tuple[str, str]] = []
        for index, entry in enumerate(listed):
            if not isinstance(entry, dict):
                fail(f"{what}: backup entry {index} is {json_type(entry)}", ())
            for key in ("backup_id", "status"):
                if not isinstance(entry.get(key), str):
                    fail(f"{what}: backup entry {index} has no {key}", ())
            backup_id, status = entry["backup_id"], entry["status"]
            if status != USABLE:
                others.append((backup_id, status))
                continue
            ended = _epoch(entry.get("end_time_timestamp"))
            if ended is None:
                fail(f"{what}: backup {backup_id} has no usable end_time_timestamp "
                     f"(got {entry.get('end_time_timestamp')!r})", ())
            candidates.append((ended, backup_id))
        if not candidates:
            states = ", ".join(f"{bid} {status} ({_NOT_USABLE.get(status, 'not restorable')})"
                               for bid, status in others)
            raise NoBackupFound(f"barman lists {len(listed)} backup(s) for server {server!r}, none DONE: {states}")
        # Equal end times: the greater id wins; ids are fixed-width start times, so
        # that is the later backup.
        _, backup_id = max(candidates)
        newer = [{"backup_id": bid, "status": status} for bid, status in others if bid > backup_id]
        return backup_id, newer

    def info_from_show(self, shown: Any, backup_id: str, skipped: list[dict]) -> BackupInfo:
        what = f"barman show-backup {backup_id}"
        if not isinstance(shown, dict):
            fail(f"{what}: the entry of server {self.config.server!r} is {json_type(shown)}", ())
        if shown.get("backup_id") != backup_id:
            fail(f"{what} describes backup {shown.get('backup_id')!r} instead", ())
        status = shown.get("status")
        if status != USABLE:
            # It changed between the two commands (deleted, or a status Barman rewrote).
            fail(f"{what}: status is now {status!r}, not {USABLE}", ())
        base = shown.get("base_backup_information")
        if not isinstance(base, dict):
            fail(f"{what} has no base_backup_information", ())

        finished = self._end_time(base, what)
        size_key = "disk_usage_with_wals_bytes"
        if size_key not in base:
            fail(f"{what}: base_backup_information has no {size_key}", ())
        # The files and the WAL a restore of this backup needs, as Barman stores them.
        size = require_int(base[size_key], what=what, key=size_key)

        details: dict[str, Any] = {"server": self.config.server, "status": status}
        for key in _BASE_DETAILS:
            if key in base:
                details[key] = base[key]
        wal = shown.get("wal_information")
        if isinstance(wal, dict):
            details["wal_after_backup"] = {key: wal[key] for key in _WAL_DETAILS if key in wal}
        for key in ("postgresql_version", "pgdata_directory"):
            if key in shown:
                details[key] = shown[key]
        catalog = shown.get("catalog_information")
        if isinstance(catalog, dict) and "retention_policy" in catalog:
            details["retention_status"] = catalog["retention_policy"]
        if skipped:
            details["newer_not_done"] = skipped

        method = next(
            (shown[key] for key in ("backup_type", "backup_method", "mode") if isinstance(shown.get(key), str) and shown[key]),
            "full",  # Barman 3.4 names no method in its JSON; every backup it takes is full
        )
        return BackupInfo(
            id=backup_id,
            finished_at=finished,
            size_bytes=size,
            kind=f"barman {method}",
            location=f"{self.config.server}/{backup_id}",
            details=details,
        )

    @staticmethod
    def _end_time(base: dict, what: str) -> datetime:
        text = base.get("end_time")
        if isinstance(text, str):
            try:
                parsed = datetime.fromisoformat(text)
            except ValueError:
                parsed = None
            if parsed is not None and parsed.tzinfo is not None:
                return parsed.astimezone(timezone.utc)
        fallback = _epoch(base.get("end_time_timestamp"))
        if fallback is not None:
            return fallback
        if text is None:
            fail(f"{what}: base_backup_information has no end_time", ())
        return parse_timestamp(text, what=what, key="end_time")  # raises with the reason


def oldest_done_id(listed: list) -> str | None:
    """The oldest DONE backup of list-backups' entries (newest_id has checked their shape)."""
    done = [(_epoch(e.get("end_time_timestamp")), e["backup_id"]) for e in listed
            if isinstance(e, dict) and e.get("status") == USABLE and isinstance(e.get("backup_id"), str)]
    done = [(ended, bid) for ended, bid in done if ended is not None]
    return min(done)[1] if done else None


def _span_on_disk(segments: dict[str, str], first: Any, last: Any) -> tuple[str | None, str]:
    """The first segment missing from Barman's wals folder in first..last (exclusive),
    the folder being the one the listed paths are in; (None, how it was judged) when
    none is, or when the folder cannot be read (then said so)."""
    unread = ("the WAL from it to the newest backup is not read (Barman's wals folder is not readable here; "
              "its retention keeps that span)")
    if not segments or not isinstance(first, str) or not isinstance(last, str) or not (
            _SEGMENT_NAME.match(first) and _SEGMENT_NAME.match(last)) or first[:8] != last[:8]:
        return None, ("the WAL from it to the newest backup is not read (Barman lists WAL per backup; "
                      "its retention keeps that span)")
    wals = os.path.dirname(os.path.dirname(next(iter(segments.values()))))
    names = list(segments)
    try:
        with os.scandir(wals) as folders:
            logs = [f.path for f in folders if len(f.name) == 16 and first[:16] <= f.name <= last[:16]]
        for log in logs:
            with os.scandir(log) as files:
                names += [f.name[:24] for f in files if first <= f.name[:24] < last]
    except OSError:
        return None, unread
    size = infer_segment_size(names)
    begin, end = parse_segment(first, size), parse_segment(last, size)
    present = {s.number for s in (segment_of_name(n, size) for n in names) if s is not None and s.timeline == begin.timeline}
    for number in range(begin.number, end.number):
        if number not in present:
            return Segment(begin.timeline, number, size).name, ""
    return None, f"its WAL to the newest backup, {end.number - begin.number} segment(s), is in Barman's wals folder"


def wal_files(paths: list[str]) -> tuple[dict[str, str], list[str]]:
    """list-files --target wal's paths: {segment name: path} and the history files."""
    segments, histories = {}, []
    for path in paths:
        name = os.path.basename(path.strip())
        if HISTORY.match(name):
            histories.append(name)
        elif _SEGMENT_NAME.match(name):
            segments[name] = path.strip()
    return segments, histories


def judge_verify(returncode: int, data: dict, server: str, backup_id: str) -> str:
    """What ``barman -f json verify-backup`` proved about the backup. BackupUnreadable
    naming the damaged files when pg_verifybackup found damage; BackupSourceError when
    nothing was verified (see the module's notes for each trap)."""
    what = f"barman verify-backup {server} {backup_id}"
    infos = _messages(data, "_INFO")
    errors = _messages(data, "_ERROR") + _messages(data, "_EXCEPTION")
    if _VERIFY_FAILURE in " ".join(errors):
        lines = [line.strip() for item in errors if not item.startswith(_VERIFY_FAILURE)
                 for line in item.splitlines() if line.strip()]
        said = [_TOOL_PREFIX.sub("", line) for line in lines]
        damage = [line for line in said if not _COULD_NOT_LOOK.search(line)]
        if damage:
            files = list(dict.fromkeys(m.group(1) for line in damage for m in [_QUOTED.search(line)] if m))
            named = f" ({len(files)} file(s): {', '.join(files[:10])}{', ...' if len(files) > 10 else ''})" if files else ""
            raise BackupUnreadable(f"{what}: pg_verifybackup found the backup damaged{named}: {'; '.join(damage[:10])}"
                                   + (f"; and {len(damage) - 10} more" if len(damage) > 10 else ""))
        hint = (" (a backup without a backup_manifest: rsync backups need `barman generate-manifest`, "
                "PostgreSQL before 13 writes none)" if any("backup_manifest" in line for line in said) else "")
        fail(f"{what}: pg_verifybackup could not check the backup: {'; '.join(said) or 'no reason given'}{hint}", ())
    if errors:
        fail(f"{what}: {'; '.join(errors)}", ())
    if returncode != 0:
        fail(f"{what} exited with code {returncode} without saying why", ())
    if _VERIFIED not in infos:
        # Exit 0 without pg_verifybackup's verdict: an inactive server is skipped so.
        fail(f"{what} verified nothing (exit 0 without pg_verifybackup's '{_VERIFIED}')"
             + (f"; it said: {'; '.join(infos)}" if infos else ""), ())
    return (f"{what}: pg_verifybackup checked every file of the backup_manifest (present, size, checksum) "
            "and found no file the manifest does not list; the WAL was not parsed (-n)")
