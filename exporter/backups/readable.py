"""Reading a backup through to its end, one reader per kind of backup.

A backup that lists fine can still be unrestorable: ``pg_restore --list`` reads only
the table of contents at the start of an archive and passes on one cut in half (as
measured on a real dump of the demo database), so every reader here goes to the last
byte. Each raises BackupUnreadable when the backup is damaged (the file named, the
tool quoted) and BackupSourceError when it could not do its work (a tool too old, a
timeout, a permission): the first is a failed check, the second an unanswered one.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import stat
import tarfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from exporter.backups.base import BackupSourceError, BackupUnreadable
from exporter.backups.directory import call_with_timeout
from exporter.pgtools import Tool, ToolError, ToolNotFound, candidates, find_tool, probe, run_tool

T = TypeVar("T")

CHUNK = 1024 * 1024
TAR_BLOCK = 512
_ZERO_BLOCK = bytes(TAR_BLOCK)
_TAR_EXTENSIONS = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
# Enough for the header of any pg_dump archive (three short strings follow the numbers).
ARCHIVE_HEAD_BYTES = 4096
# How much of a plain dump's end is kept to find the completion marker: the marker is
# followed only by a comment line and `\unrestrict <key>`, well within this.
PLAIN_TAIL_BYTES = 8192

# pg_dump writes the first, pg_dumpall the second, as the last comment of a complete dump.
PLAIN_MARKERS = ("-- PostgreSQL database dump complete", "-- PostgreSQL database cluster dump complete")

# The format byte of the archive header (pg_backup.h); a directory archive's toc.dat
# carries 3 like a tar archive's (measured with pg_dump 15 and 18).
_ARCHIVE_FORMATS = {1: "custom", 3: "tar or directory", 5: "directory"}
_FORMAT_FLAG = {"pg_dump custom": "-Fc", "pg_dump tar": "-Ft", "pg_dump directory": "-Fd"}

# backup_manifest version 2 (PostgreSQL 17) added System-Identifier; older
# pg_verifybackup rejects it as "unexpected manifest version".
MANIFEST_V2_MIN_MAJOR = 17
# pg_verifybackup reads tar-format base backups from PostgreSQL 18 on.
TAR_BASEBACKUP_MIN_MAJOR = 18
_MANIFEST_VERSION = re.compile(rb'"PostgreSQL-Backup-Manifest-Version"\s*:\s*(\d+)')
_WAL_SEGMENT = re.compile(r"^[0-9A-F]{24}$")
_BASE_TAR = re.compile(r"^base\.tar(\.gz|\.lz4|\.zst)?$")
_WAL_TAR = re.compile(r"^pg_wal\.tar(\.gz|\.lz4|\.zst)?$")


class _TimedOut(Exception):
    pass


class Deadline:
    """The time limit of one file scan; readers check it between chunks."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def check(self) -> None:
        if time.monotonic() > self.end:
            raise _TimedOut()


def _scan(fn: Callable[[Deadline], T], timeout: float, what: str) -> T:
    """fn(deadline) in a worker thread under timeout; BackupSourceError naming what on timeout.

    The deadline stops a reader that is making progress; the thread guard also gives up
    on one stuck in the kernel (a hung network mount).
    """
    deadline = Deadline(timeout)
    try:
        return call_with_timeout(lambda: fn(deadline), timeout, what)
    except _TimedOut:
        pass
    except BackupSourceError:
        if time.monotonic() <= deadline.end:
            raise
    raise BackupSourceError(f"{what} timed out after {timeout:g} s (backup.timeout_seconds)")


def _open(path: Path):
    # Opened here first, so a permission problem is an error of pgbv's setup and not
    # taken for a damaged backup when the tool says it.
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise BackupSourceError(f"{path} is gone since it was listed (rotated away?)") from None
    except OSError as exc:
        raise BackupSourceError(f"cannot open {path}: {exc.strerror or exc}") from None


def _size(n: int) -> str:
    for unit, scale in (("GB", 1024**3), ("MB", 1024**2), ("kB", 1024)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


# --- pg_dump archive header ----------------------------------------------------------


@dataclass(frozen=True)
class ArchiveHeader:
    version: tuple[int, int, int]  # the archive format version, e.g. (1, 16, 0)
    format: str  # custom, "tar or directory"
    dumped_by: str | None  # pg_dump's version, e.g. "18.6" (archives from pg_dump 8.4 on)
    server: str | None  # the dumped server's version
    # none, gzip, lz4 or zstd: a dump's size depends on it more than on its data
    compression: str = "unknown"
    # When pg_dump started, in the dumping host's local time: the archive has no zone.
    started: datetime | None = None

    @property
    def dumped_by_major(self) -> int | None:
        match = re.match(r"(\d+)", self.dumped_by or "")
        return int(match.group(1)) if match else None


# pg_compress_algorithm in PostgreSQL's compress_io.h, stored by archive version 1.15 on.
_COMPRESSION_ALGORITHMS = {0: "none", 1: "gzip", 2: "lz4", 3: "zstd"}


def parse_archive_header(data: bytes) -> ArchiveHeader:
    """The header of a custom, tar (its toc.dat) or directory (toc.dat) archive.

    Follows ReadHead() of pg_backup_archiver.c; raises ValueError when data is not a
    whole header.
    """
    if not data.startswith(b"PGDMP"):
        raise ValueError("does not start with PGDMP")
    pos = 5

    def byte() -> int:
        nonlocal pos
        if pos >= len(data):
            raise ValueError("header ends early")
        pos += 1
        return data[pos - 1]

    vmaj, vmin = byte(), byte()
    vrev = byte() if vmaj > 1 or (vmaj == 1 and vmin > 0) else 0
    version = (vmaj, vmin, vrev)
    int_size = byte()
    if version >= (1, 7, 0):
        byte()  # offset size
    fmt = byte()

    def integer() -> int:
        nonlocal pos
        sign = byte() if version > (1, 0, 0) else 0
        if pos + int_size > len(data):
            raise ValueError("header ends early")
        value = int.from_bytes(data[pos:pos + int_size], "little")
        pos += int_size
        return -value if sign else value

    def string() -> str | None:
        nonlocal pos
        length = integer()
        if length < 0:
            return None
        if pos + length > len(data):
            raise ValueError("header ends early")
        pos += length
        return data[pos - length:pos].decode("utf-8", "replace")

    if version >= (1, 15, 0):
        compression = _COMPRESSION_ALGORITHMS.get(byte(), "unknown")
    elif version >= (1, 4, 0):
        compression = "gzip" if integer() != 0 else "none"  # a zlib level, 0 for none
    elif version >= (1, 2, 0):
        compression = "gzip" if byte() != 0 else "none"
    else:
        compression = "unknown"
    dumped_by = server = started = None
    if version >= (1, 4, 0):
        sec, minute, hour, mday, mon, year, _isdst = (integer() for _ in range(7))  # a struct tm
        try:
            started = datetime(year + 1900, mon + 1, mday, hour, minute, min(sec, 59))
        except ValueError:
            started = None  # not a date: the size and freshness checks do without it
        string()  # database name
    if version >= (1, 10, 0):
        server = string()
        dumped_by = string()
    return ArchiveHeader(version, _ARCHIVE_FORMATS.get(fmt, f"format {fmt}"), dumped_by, server, compression, started)


def archive_header(path: Path, kind: str) -> ArchiveHeader:
    if kind == "pg_dump directory":
        where, offset = path / "toc.dat", 0
    else:
        # A tar archive's first member is toc.dat: its data follows the first tar header.
        where, offset = path, TAR_BLOCK if kind == "pg_dump tar" else 0
    with _open(where) as handle:
        handle.seek(offset)
        head = handle.read(ARCHIVE_HEAD_BYTES)
    try:
        return parse_archive_header(head)
    except ValueError as exc:
        raise BackupUnreadable(f"{where}: the pg_dump archive header is damaged ({exc})") from None


def _pg_restore(header: ArchiveHeader, server_version_num: int | None, pg_bin_dir, name: str) -> Tool:
    # The archive says which pg_dump wrote it; that, not the server, is what pg_restore
    # must be at least as new as (it refuses "unsupported version (1.16) in file header").
    major = header.dumped_by_major
    need = major * 10000 if major else server_version_num
    try:
        return find_tool("pg_restore", need, pg_bin_dir)
    except ToolNotFound as exc:
        by = f"pg_dump {header.dumped_by}" if header.dumped_by else "an unknown pg_dump"
        raise ToolNotFound(f"{name} was written by {by} (archive version {'.'.join(map(str, header.version))}): {exc}") from None


# Words of a tool that could not do its job, as opposed to one that found damage: too
# old for the archive or manifest, or missing the pg_waldump it runs.
_TOOL_PROBLEMS = ("unsupported version", "unexpected manifest version", "is needed by", "could not open output file")


def _run_reader(tool: Tool, args: list[str], timeout: float, name: str) -> None:
    try:
        run_tool(tool, args, timeout=timeout)
    except ToolError as exc:
        cannot = any(words in exc.stderr for words in _TOOL_PROBLEMS)
        if cannot or exc.timed_out or exc.returncode is None or exc.returncode < 0:
            raise BackupSourceError(f"reading {name} with {tool.name} {tool.version}: {exc}") from None
        raise BackupUnreadable(f"{name} could not be read through ({tool.name} {tool.version}): {exc}") from None


# --- tar --------------------------------------------------------------------------------


def walk_tar(path: Path, deadline: Deadline, read_data: bool) -> list[str]:
    """The member names of the tar file at path, checking that every header is sound,
    every member's data is all there and the end-of-archive marker follows.

    pg_restore spins without end on a pg_dump tar archive cut short (measured with
    pg_restore 18), so a tar archive is walked here before pg_restore sees it.
    read_data reads every member's data too (for tars nothing else reads); otherwise
    the walk seeks from header to header.
    """
    members: list[str] = []
    with _open(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        offset = 0
        while True:
            deadline.check()
            handle.seek(offset)
            block = handle.read(TAR_BLOCK)
            if len(block) < TAR_BLOCK:
                after = f"after member {members[-1]}" if members else "before any member"
                raise BackupUnreadable(
                    f"{path} is truncated: it ends at byte {size} {after}, without the tar end-of-archive marker"
                )
            if block == _ZERO_BLOCK:
                return members
            try:
                info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
            except tarfile.HeaderError as exc:
                raise BackupUnreadable(f"{path}: damaged tar header at byte {offset}: {exc}") from None
            start = offset + TAR_BLOCK
            if start + info.size > size:
                raise BackupUnreadable(
                    f"{path} is truncated: member {info.name} needs {info.size} bytes from byte {start}, "
                    f"but the file ends at byte {size}"
                )
            if info.type in _TAR_EXTENSIONS:
                # Carries the next member's long name or attributes; walked over, not counted.
                offset = start + -(-info.size // TAR_BLOCK) * TAR_BLOCK
                continue
            if read_data:
                left = info.size
                while left > 0:
                    deadline.check()
                    chunk = handle.read(min(CHUNK, left))
                    if not chunk:
                        raise BackupUnreadable(f"{path}: member {info.name} could not be read to its end")
                    left -= len(chunk)
            members.append(info.name)
            offset = start + -(-info.size // TAR_BLOCK) * TAR_BLOCK


# --- pg_dump archives -------------------------------------------------------------------


def read_custom_or_tar(path: Path, kind: str, timeout: float, server_version_num: int | None, pg_bin_dir=None) -> str:
    """A custom or tar pg_dump archive, read through to the end by `pg_restore -f /dev/null`.

    `pg_restore --list` would not do: it stops after the table of contents.
    """
    header = archive_header(path, kind)
    if kind == "pg_dump tar":
        members = _scan(lambda d: walk_tar(path, d, read_data=False), timeout, f"reading {path}")
        if not members or members[0] != "toc.dat":
            raise BackupUnreadable(f"{path}: a pg_dump tar archive starts with toc.dat, this one with {members[:1]}")
    tool = _pg_restore(header, server_version_num, pg_bin_dir, path.name)
    _run_reader(tool, [_FORMAT_FLAG[kind], "-f", os.devnull, str(path)], timeout, str(path))
    return (
        f"{path.name} ({kind}, {_size(path.stat().st_size)}, {_origin(header)}) read through to the end "
        f"by pg_restore {tool.version}"
    )


def _origin(header: ArchiveHeader) -> str:
    by = f"pg_dump {header.dumped_by}" if header.dumped_by else "pg_dump"
    return f"{by} of PostgreSQL {header.server}" if header.server else by


_TABLE_DATA = re.compile(r"^(\d+); \d+ \d+ TABLE DATA ", re.MULTILINE)


def _damaged_members(folder: Path, tool: Tool, deadline: Deadline) -> list[str]:
    """Every data file of a directory archive that is missing, cut short or corrupt.

    pg_restore stops at the first and names it without its suffix (and says "could
    not close data file: Success" for a cut .gz); this lists them all. The TOC's
    TABLE DATA entries name the files (<dump id>.dat plus the compression's suffix);
    gzip ones are read here, pg_restore's words stand for the others.
    """
    listing = run_tool(tool, ["-Fd", "--list", str(folder)], timeout=max(deadline.end - time.monotonic(), 0.001))
    names = {entry.name for entry in folder.iterdir()}
    found = []
    for dump_id in _TABLE_DATA.findall(listing.stdout):
        present = [name for name in names if name == f"{dump_id}.dat" or name.startswith(f"{dump_id}.dat.")]
        if not present:
            found.append(f"{dump_id}.dat is missing")
    for member in sorted(folder.glob("*.gz")):
        problem = _gzip_problem(member, deadline)
        if problem:
            found.append(f"{member.name} {problem}")
    return found


def read_directory_dump(path: Path, timeout: float, server_version_num: int | None, pg_bin_dir=None) -> str:
    """A directory pg_dump archive: toc.dat, and every data file it names read through
    (`pg_restore -Fd -f /dev/null` opens each one and fails on one missing or cut)."""
    if not (path / "toc.dat").is_file():
        raise BackupUnreadable(f"{path}: toc.dat is missing, without it nothing in the folder can be restored")
    header = archive_header(path, "pg_dump directory")
    tool = _pg_restore(header, server_version_num, pg_bin_dir, path.name)
    try:
        _run_reader(tool, ["-Fd", "-f", os.devnull, str(path)], timeout, str(path))
    except BackupUnreadable as exc:
        try:
            damaged = _scan(lambda d: _damaged_members(path, tool, d), timeout, f"reading {path}")
        except (BackupSourceError, ToolError):
            damaged = []  # the diagnosis is a courtesy: pg_restore's words stand alone
        if damaged:
            raise BackupUnreadable(f"{exc}; damaged: {'; '.join(damaged)}") from None
        raise
    files = sum(1 for entry in path.iterdir() if entry.is_file())
    return (
        f"{path.name} (pg_dump directory, {files} files, {_origin(header)}) read through to the end "
        f"by pg_restore {tool.version}"
    )


# --- plain SQL and gzip -------------------------------------------------------------------


def _gzip_problem(path: Path, deadline: Deadline) -> str | None:
    try:
        with _open(path) as raw, gzip.GzipFile(fileobj=raw) as stream:
            while stream.read(CHUNK):
                deadline.check()
    except EOFError as exc:
        return f"is truncated ({exc})"
    except (gzip.BadGzipFile, zlib.error) as exc:
        return f"is corrupt ({exc})"
    except OSError as exc:
        return f"could not be read ({exc.strerror or exc})"
    return None


def plain_ending(tail: bytes) -> tuple[bool, str]:
    """(whether tail ends like a complete pg_dump or pg_dumpall script, its last line).

    After the marker pg_dump writes only `--`, blank lines and (from the 2025 minor
    releases on) `\\unrestrict <key>`.
    """
    lines = tail.decode("utf-8", "replace").splitlines()
    while lines:
        line = lines[-1].rstrip("\r").strip()
        if line in ("", "--") or line.startswith("\\unrestrict "):
            lines.pop()
            continue
        return line in PLAIN_MARKERS, line
    return False, ""


def _read_plain(path: Path, compressed: bool, deadline: Deadline) -> tuple[bytes, int]:
    """The last PLAIN_TAIL_BYTES of the (decompressed) script and its full length."""
    tail = b""
    total = 0
    with _open(path) as raw:
        stream = gzip.GzipFile(fileobj=raw) if compressed else raw
        try:
            while True:
                deadline.check()
                try:
                    chunk = stream.read(CHUNK)
                except EOFError as exc:
                    raise BackupUnreadable(
                        f"{path} is truncated: the gzip stream ends after {total} bytes of SQL ({exc})"
                    ) from None
                except (gzip.BadGzipFile, zlib.error) as exc:
                    raise BackupUnreadable(f"{path} is corrupt after {total} bytes of SQL: {exc}") from None
                except OSError as exc:
                    raise BackupUnreadable(f"{path}: read error after {total} bytes: {exc.strerror or exc}") from None
                if not chunk:
                    return tail, total
                total += len(chunk)
                tail = (tail + chunk)[-PLAIN_TAIL_BYTES:]
        finally:
            if compressed:
                stream.close()


def read_plain_sql(path: Path, compressed: bool, timeout: float) -> str:
    """A plain-format dump (optionally gzip): read to the end, the gzip CRC checked, and
    ending with pg_dump's completion marker, which a dump cut short lacks."""
    tail, total = _scan(lambda d: _read_plain(path, compressed, d), timeout, f"reading {path}")
    complete, last = plain_ending(tail)
    if not complete:
        shown = last if len(last) <= 120 else last[:117] + "..."
        raise BackupUnreadable(
            f"{path} does not end with pg_dump's completion marker '{PLAIN_MARKERS[0]}': the dump was cut short "
            f"or pg_dump failed while writing it; it ends with {shown!r}"
        )
    how = "gzip stream read to the end, CRC verified, " if compressed else ""
    return f"{path.name} (plain SQL, {_size(total)} of SQL): {how}ends with '{last}'"


def read_gzip(path: Path, timeout: float) -> str:
    problem = _scan(lambda d: _gzip_problem(path, d), timeout, f"reading {path}")
    if problem:
        raise BackupUnreadable(f"{path} {problem}")
    return f"{path.name}: gzip stream read to the end, CRC verified (what it holds is not checked)"


def read_plain_tar(path: Path, timeout: float) -> str:
    members = _scan(lambda d: walk_tar(path, d, read_data=True), timeout, f"reading {path}")
    return f"{path.name}: tar archive read to the end, {len(members)} members (what they hold is not checked)"


# --- pg_basebackup ------------------------------------------------------------------------


def manifest_version(path: Path) -> int | None:
    """PostgreSQL-Backup-Manifest-Version of a backup_manifest (its first key)."""
    with _open(path) as handle:
        head = handle.read(ARCHIVE_HEAD_BYTES)
    match = _MANIFEST_VERSION.search(head)
    return int(match.group(1)) if match else None


def _verifybackup(backup_major: int | None, pg_bin_dir) -> Tool:
    """pg_verifybackup of the backup's own major version when there is one (its
    pg_waldump reads only its own version's WAL: pg_waldump 18 finds "no valid record"
    in PostgreSQL 15 WAL), else the newest."""
    if pg_bin_dir is not None:
        return find_tool("pg_verifybackup", None, pg_bin_dir)
    tools = []
    for path in candidates("pg_verifybackup"):
        try:
            tools.append(probe(path, "pg_verifybackup"))
        except ToolNotFound:
            continue
    same = [tool for tool in tools if tool.major == backup_major]
    if same:
        return max(same, key=lambda tool: [int(n) for n in re.findall(r"\d+", tool.version)])
    return find_tool("pg_verifybackup")


def _wal_in_folder(path: Path) -> bool:
    try:
        return any(_WAL_SEGMENT.match(entry.name) for entry in os.scandir(path / "pg_wal"))
    except FileNotFoundError:
        return False


def verify_basebackup(path: Path, timeout: float, pg_bin_dir=None) -> str:
    """A pg_basebackup folder (plain or tar format) checked by pg_verifybackup against
    its backup_manifest: every file there, of the right size and checksum, and the WAL
    the backup needs present and parseable when it holds it."""
    manifest = path / "backup_manifest"
    if not manifest.is_file():
        return (
            f"warning: {path.name} has no backup_manifest (taken with --no-manifest or by PostgreSQL 12 or "
            "older), so pg_verifybackup cannot check it"
        )
    version = manifest_version(manifest)
    if version is None:
        raise BackupUnreadable(f"{manifest}: no PostgreSQL-Backup-Manifest-Version at its start: the manifest is damaged")
    entries = {entry.name for entry in path.iterdir()}
    tar_format = any(_BASE_TAR.match(name) for name in entries)
    backup_major = None
    if (path / "PG_VERSION").is_file():
        try:
            backup_major = int((path / "PG_VERSION").read_text().strip())
        except ValueError:
            raise BackupUnreadable(f"{path / 'PG_VERSION'} does not hold a version number") from None
    tool = _verifybackup(backup_major, pg_bin_dir)
    needs = []
    if version >= 2:
        needs.append((
            MANIFEST_V2_MIN_MAJOR,
            f"its backup_manifest is version {version}, written by PostgreSQL {MANIFEST_V2_MIN_MAJOR} and newer, "
            f"which pg_verifybackup {tool.major} rejects (\"unexpected manifest version\")",
        ))
    if tar_format:
        needs.append((TAR_BASEBACKUP_MIN_MAJOR, f"it is in tar format, which pg_verifybackup reads from {TAR_BASEBACKUP_MIN_MAJOR} on"))
    if backup_major:
        needs.append((backup_major, f"it is a backup of PostgreSQL {backup_major}"))
    unmet = [why for major, why in needs if tool.major < major]
    if unmet:
        newest = max(major for major, _ in needs)
        raise BackupSourceError(
            f"{tool} cannot verify {path.name}: {'; '.join(unmet)}; set pg_bin_dir to PostgreSQL {newest} "
            "or newer client tools"
        )

    args = [str(path)]
    note = ""
    warn = False
    if tar_format:
        args.insert(0, "--no-parse-wal")
        wal_tars = sorted(name for name in entries if _WAL_TAR.match(name))
        if wal_tars:
            note = f"; {wal_tars[0]} not parsed (pg_waldump cannot read WAL inside a tar file)"
        else:
            note = "; no pg_wal.tar: the WAL to restore it must come from the archive"
    elif not _wal_in_folder(path):
        args.insert(0, "--no-parse-wal")
        note = "; it holds no WAL (pg_basebackup -X none): the WAL to restore it must come from the archive"
    elif backup_major is not None and tool.major != backup_major:
        args.insert(0, "--no-parse-wal")
        warn = True
        note = (
            f"; its WAL was not checked: pg_waldump {tool.major} cannot read PostgreSQL {backup_major} WAL, "
            f"install PostgreSQL {backup_major} client tools or set pg_bin_dir to them"
        )
    else:
        note = "; its WAL parsed from start to end"
    _run_reader(tool, args, timeout, str(path))
    files = _manifest_files(manifest)
    counted = f", {files} files" if files is not None else ""
    message = (
        f"{path.name} (pg_basebackup, manifest version {version}{counted}) verified by pg_verifybackup "
        f"{tool.version}{note}"
    )
    return f"warning: {message}" if warn else message


def _manifest_files(manifest: Path) -> int | None:
    try:
        with open(manifest, "rb") as handle:
            return len(json.load(handle).get("Files", []))
    except (OSError, ValueError, AttributeError):
        return None


# --- dispatch -----------------------------------------------------------------------------


def verify_entry(path: Path, kind: str, timeout: float, server_version_num: int | None, pg_bin_dir=None) -> str:
    """Read the directory source's backup at path, of the kind the source gave it."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise BackupSourceError(f"{path} is gone since it was listed (rotated away?)") from None
    except OSError as exc:
        raise BackupSourceError(f"cannot read {path}: {exc.strerror or exc}") from None
    if kind in ("pg_dump custom", "pg_dump tar"):
        return read_custom_or_tar(path, kind, timeout, server_version_num, pg_bin_dir)
    if kind == "pg_dump directory":
        return read_directory_dump(path, timeout, server_version_num, pg_bin_dir)
    if kind == "pg_basebackup":
        return verify_basebackup(path, timeout, pg_bin_dir)
    if kind in ("plain SQL", "plain SQL gzip"):
        return read_plain_sql(path, kind == "plain SQL gzip", timeout)
    if kind == "tar":
        return read_plain_tar(path, timeout)
    if stat.S_ISREG(mode) and path.name.lower().endswith(".gz"):
        return read_gzip(path, timeout)
    what = "folder" if stat.S_ISDIR(mode) else "file"
    return (
        f"warning: {path.name} is a {what} of no format pgbv can read through (pg_dump custom, tar or "
        "directory archives, plain SQL dumps, pg_basebackup folders, tar or gzip files), so nothing proves it readable"
    )
