"""Backups that are files or folders in one directory: pg_dump archives of any
format, pg_basebackup folders, or anything else a backup job leaves there.

The newest entry whose name matches the pattern is the backup; its modification
time is its finish time (for a folder, the newest modification time inside it, as
a folder's own mtime only changes when its direct entries do).
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

from exporter.backups.base import BackupSource, BackupSourceError, BackupUnreadable, NoBackupFound
from exporter.backups.wal import WalArchive
from exporter.config import DirectoryBackup
from exporter.result import PREVIOUS_SIZES_KEPT, BackupInfo

T = TypeVar("T")

# Enough for every signature below (tar's magic sits at offset 257).
HEAD_BYTES = 512
_PLAIN_DUMP_HEADER = b"--\n-- PostgreSQL database dump"


def call_with_timeout(fn: Callable[[], T], timeout: float, what: str) -> T:
    """fn() in a worker thread; BackupSourceError(f"{what} took longer than ...") when it
    has not returned within timeout seconds.

    A call stuck in the kernel (a hung NFS mount) cannot be interrupted, so on timeout
    the worker is abandoned: it is a daemon thread, so it never keeps pgbv from exiting.
    """
    outcome: dict[str, object] = {}

    def work() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # handed to the caller, who decides
            outcome["error"] = exc

    worker = threading.Thread(target=work, name=f"pgbv {what}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise BackupSourceError(f"{what} took longer than {timeout:g}s")
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc)


def _folder_totals(folder: Path) -> tuple[float, int]:
    """(newest mtime of the folder and everything in it, bytes of its regular files)."""
    newest = os.stat(folder).st_mtime
    size = 0
    pending = [os.fspath(folder)]
    while pending:
        current = pending.pop()
        try:
            entries = list(os.scandir(current))
        except FileNotFoundError:
            continue  # removed while we walked: a rotation runs next to us
        for entry in entries:
            try:
                # Not following links: a link inside a backup points out of it.
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            newest = max(newest, info.st_mtime)
            if stat.S_ISDIR(info.st_mode):
                pending.append(entry.path)
            elif stat.S_ISREG(info.st_mode):
                size += info.st_size
    return newest, size


def file_kind(path: Path) -> str:
    """What a regular file holds, from its name and first bytes."""
    name = path.name.lower()
    with open(path, "rb") as handle:
        head = handle.read(HEAD_BYTES)
    if head.startswith(b"PGDMP"):
        return "pg_dump custom"
    if len(head) >= 262 and head[257:262] == b"ustar":
        # pg_dump's tar format writes toc.dat as its first member.
        member = head[:100].split(b"\0", 1)[0]
        return "pg_dump tar" if member == b"toc.dat" else "tar"
    if name.endswith(".sql.gz"):
        return "plain SQL gzip"
    if name.endswith(".sql") or head.startswith(_PLAIN_DUMP_HEADER):
        return "plain SQL"
    return "file"


# A directory archive's table data files: <dump id>.dat plus the compression's suffix.
_DUMP_DATA_FILE = re.compile(r"^\d+\.dat(\.gz|\.lz4|\.zst)?$")


def folder_kind(path: Path) -> str:
    if (path / "toc.dat").exists():
        return "pg_dump directory"
    # Its data files without toc.dat: still a directory archive, one that cannot be
    # restored (backup_readable fails it) rather than an unknown folder (a warning).
    with os.scandir(path) as it:
        if any(_DUMP_DATA_FILE.match(entry.name) for entry in it):
            return "pg_dump directory"
    # backup_manifest since PostgreSQL 13; backup_label for older ones or --no-manifest.
    if (path / "backup_manifest").exists() or (path / "backup_label").exists():
        return "pg_basebackup"
    return "folder"


def scan(folder: Path, pattern: str) -> BackupInfo:
    """The newest matching entry of folder; raises NoBackupFound or BackupSourceError."""
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except FileNotFoundError:
        raise NoBackupFound(f"folder {folder} does not exist") from None
    except OSError as exc:
        raise BackupSourceError(f"cannot read folder {folder}: {exc.strerror or exc}") from None

    candidates: list[tuple[float, str, Path, bool, int]] = []
    try:
        for entry in entries:
            if entry.name.startswith(".") or not fnmatch.fnmatchcase(entry.name, pattern):
                continue
            try:
                # Following a link at the top: "latest.dump -> ..." is a common layout.
                info = entry.stat(follow_symlinks=True)
            except FileNotFoundError:
                continue  # a dangling link, or removed by a rotation since listed
            if stat.S_ISDIR(info.st_mode):
                try:
                    mtime, size = _folder_totals(Path(entry.path))
                except FileNotFoundError:
                    continue
                candidates.append((mtime, entry.name, Path(entry.path), True, size))
            elif stat.S_ISREG(info.st_mode):
                candidates.append((info.st_mtime, entry.name, Path(entry.path), False, info.st_size))
            # FIFOs, sockets, devices: no backup, and reading one could block
        if not candidates:
            raise NoBackupFound(f"no file or folder matching {pattern!r} in {folder}")
        # Equal times: the greater name wins, which for dated names is the later one.
        candidates.sort(key=lambda candidate: candidate[:2], reverse=True)
        mtime, name, path, is_folder, size = candidates[0]
        kind = _kind(path, is_folder)
        header = _header(path, kind)
        trend_kind = _size_kind(path, kind, header)
        previous = []
        for _, _, other, other_is_folder, other_size in candidates[1:]:
            if len(previous) == PREVIOUS_SIZES_KEPT:
                break
            try:
                # Like with like: a weekly pg_basebackup next to daily dumps is no trend, and
                # neither is a dump compressed after uncompressed ones (-Z0 then -Z9: 93% smaller).
                if trend_kind in _UNKNOWN_KINDS or _size_kind(other, _kind(other, other_is_folder)) == trend_kind:
                    previous.append(other_size)
            except FileNotFoundError:
                continue  # rotated away since listed
    except OSError as exc:
        where = exc.filename or folder
        raise BackupSourceError(f"cannot read {where}: {exc.strerror or exc}") from None
    details = {}
    if header is not None and header.started is not None:
        details["archive_started_local"] = header.started.isoformat()
    return BackupInfo(
        id=name, finished_at=_utc(mtime), size_bytes=size, kind=kind, location=str(path), details=details,
        previous_sizes=tuple(previous),
    )


def _kind(path: Path, is_folder: bool) -> str:
    return folder_kind(path) if is_folder else file_kind(path)


_ARCHIVE_KINDS = ("pg_dump custom", "pg_dump directory", "pg_dump tar")
# Content no backup tool wrote (a failed pg_dump's error text under the dump's name):
# compared with every earlier entry, so that it is no first of its kind with nothing to fall short of.
_UNKNOWN_KINDS = ("file", "folder")


def _header(path: Path, kind: str):
    """A pg_dump archive's header (a few hundred bytes), None for other kinds or a damaged or
    vanished archive (backup_readable says so). It tells when pg_dump started, in its host's
    local time (a copy made without keeping file times dates an old dump today), and how
    the archive is compressed (sizes are compared like with like)."""
    if kind not in _ARCHIVE_KINDS:
        return None
    from exporter.backups.readable import archive_header

    try:
        return archive_header(path, kind)
    except (BackupUnreadable, BackupSourceError):
        return None


def _size_kind(path: Path, kind: str, header=None) -> str:
    """What backups are compared by in the size trend: the kind and, for a pg_dump
    archive, its compression."""
    header = header or _header(path, kind)
    return f"{kind}, {header.compression} compression" if header is not None else kind


class DirectoryBackupSource(BackupSource):
    name = "directory"

    def __init__(self, config: DirectoryBackup):
        self.config = config

    def latest(self) -> BackupInfo:
        folder = Path(self.config.path)
        return call_with_timeout(
            lambda: scan(folder, self.config.pattern), self.config.timeout_seconds, f"scanning {folder}"
        )

    def keeps_wal(self) -> bool:
        return self.config.wal_path is not None

    def wal_archive(self, info: BackupInfo | None) -> WalArchive:
        """The WAL folder (wal_path) from the newest base backup's start WAL on: see
        exporter/backups/wal_folder.py for where each fact comes from."""
        if self.config.wal_path is None:
            return super().wal_archive(info)
        from exporter.backups.wal_folder import read_archive

        wal_path = Path(self.config.wal_path)
        return call_with_timeout(
            lambda: read_archive(
                wal_path, Path(self.config.path), self.config.pattern,
                info.location if info is not None and info.location else None,
                info.kind if info is not None else None,
            ),
            self.config.timeout_seconds, f"reading WAL folder {wal_path}",
        )

    def checks_readable(self) -> bool:
        # Every kind of entry gets a reader, or a warning saying why it has none.
        return True

    def verify_readable(self, info: BackupInfo, server_version_num: int | None, pg_bin_dir=None) -> str:
        # Imported here: the readers import this module (call_with_timeout).
        from exporter.backups.readable import verify_entry

        path = Path(info.location) if info.location else Path(self.config.path) / info.id
        return verify_entry(path, info.kind, self.config.timeout_seconds, server_version_num, pg_bin_dir)
