"""The table of contents of a pg_dump archive (custom, directory or tar), read in Python.

The TOC is the list of objects a dump holds: one entry per table, TABLE DATA, index,
constraint, policy, function..., each with its catalog OID, schema, name and the
entries it depends on. It sits at the start of a custom archive, in a directory
archive's toc.dat and in a tar archive's first member (toc.dat), never compressed, so
reading it costs kilobytes whatever the size of the data behind it.

Read here rather than through `pg_restore --list`: no client tool of the right
version is needed (an archive of pg_dump 18 is read the same as one of pg_dump 13),
names with spaces or line breaks come back whole, and entries keep their
dependencies, which say which table a policy or a constraint belongs to. The layout
follows ReadHead() and ReadToc() of PostgreSQL's pg_backup_archiver.c for archive
versions 1.12 to 1.16 (pg_dump 9.6 to 18); an older or newer archive raises
BackupSourceError (pgbv cannot tell) rather than being guessed at.

A plain SQL dump has no TOC; read_plain_toc builds one from the comment pg_dump
writes above each object, at the cost of reading the whole script.
"""

from __future__ import annotations

import gzip
import os
import re
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

from exporter.backups.base import BackupSourceError
from exporter.backups.directory import call_with_timeout

# ReadHead/ReadToc changed at these archive versions (pg_backup_archiver.h).
OLDEST_VERSION = (1, 12, 0)  # pg_dump 9.6 onwards; older layouts differ in many small ways
NEWEST_VERSION = (1, 16, 0)  # pg_dump 17 and 18
_TAR_BLOCK = 512
# Kinds of backup (BackupInfo.kind) whose TOC this module reads.
ARCHIVE_KINDS = ("pg_dump custom", "pg_dump directory", "pg_dump tar")
# Plain SQL scripts carry the same entries as comments ("-- Name: x; Type: TABLE; ..."),
# without OIDs or dependencies, and name their database only when dumped with -C.
PLAIN_KINDS = ("plain SQL", "plain SQL gzip")
# Large objects carry OIDs a user may choose (lo_create(123456789)): they say nothing
# about when the archive was made, so they are left out of max_oid.
_USER_CHOSEN_OIDS = ("BLOB", "BLOBS", "BLOB METADATA", "LARGE OBJECT")
# A TOC longer than this is no TOC (pg_dump writes a few hundred bytes per object).
_MAX_ENTRIES = 50_000_000
_MAX_STRING = 1 << 30
_CHUNK = 1 << 20
_INT_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}


class TocError(Exception):
    """The archive's table of contents is damaged or cut short: what the archive holds
    cannot be known, and a restore of it would fail."""


class TocEntry(NamedTuple):  # a tuple: 30,000 of them are built per 10,000 tables
    dump_id: int
    catalog: int  # the OID of the system catalog the object lives in (0 for data entries)
    oid: int  # the object's OID in that catalog; a TABLE DATA entry carries its table's
    desc: str  # "TABLE", "TABLE DATA", "ROW SECURITY", "POLICY", "FK CONSTRAINT"...
    schema: str | None
    tag: str  # the object's name; "<table> <name>" for policies and constraints
    owner: str | None
    dependencies: tuple[int, ...]  # dump ids of the entries this one needs first


@dataclass(frozen=True)
class ArchiveToc:
    version: tuple[int, int, int]
    database: str | None  # the name of the database pg_dump read
    dumped_by: str | None  # pg_dump's version, e.g. "18.1"
    server: str | None  # the dumped server's version
    entries: tuple[TocEntry, ...]
    has_oids: bool = True  # False for a plain SQL script: every OID is 0

    def by_id(self) -> dict[int, TocEntry]:
        return {entry.dump_id: entry for entry in self.entries}

    def of(self, *descs: str) -> list[TocEntry]:
        return [entry for entry in self.entries if entry.desc in descs]

    @property
    def max_oid(self) -> int | None:
        """The greatest catalog OID among the archive's objects: every object created
        after the dump started has a greater one, as long as the OID counter has not
        wrapped around (see exporter/checks/backup_content.py). None without OIDs."""
        if not self.has_oids:
            return None
        return max((e.oid for e in self.entries if e.desc not in _USER_CHOSEN_OIDS), default=0)

    def member_name(self, entry: TocEntry, table: TocEntry) -> str:
        """The name of a policy or constraint: its tag is "<table> <name>"."""
        prefix = f"{table.tag} "
        return entry.tag[len(prefix):] if entry.tag.startswith(prefix) else entry.tag


class _Reader:
    """ReadByte/ReadInt/ReadStr of pg_backup_archiver.c over a binary stream, read in
    large chunks: a TOC of 10,000 tables has 30,000 entries of some 20 fields each,
    and a read() per field cost 0.5 to 1 s where this takes a fraction."""

    def __init__(self, stream: BinaryIO, limit: int | None = None):
        self.stream = stream
        self.left = limit  # bytes of the stream that belong to the TOC (a tar member's size), None: to EOF
        self.buf = b""
        self.pos = 0
        self.version = (0, 0, 0)
        self.offset_size = 8
        self.set_int_size(4)

    def _need(self, n: int) -> None:
        """At least n bytes in buf from pos on, or TocError."""
        have = len(self.buf) - self.pos
        if have >= n:
            return
        want = max(n - have, _CHUNK)
        if self.left is not None:
            want = min(want, self.left)
        more = self.stream.read(want) if want > 0 else b""
        if self.left is not None:
            self.left -= len(more)
        self.buf = self.buf[self.pos:] + more
        self.pos = 0
        if len(self.buf) < n:
            raise TocError("the table of contents ends early (archive cut short?)")

    def more(self) -> bool:
        """Read another chunk after what is buffered; False at the end of the TOC's bytes."""
        want = _CHUNK if self.left is None else min(_CHUNK, self.left)
        more = self.stream.read(want) if want > 0 else b""
        if not more:
            return False
        if self.left is not None:
            self.left -= len(more)
        self.buf = self.buf[self.pos:] + more
        self.pos = 0
        return True

    def bytes(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            self._need(n)
        self.pos += n
        return self.buf[self.pos - n:self.pos]

    def byte(self) -> int:
        if self.pos >= len(self.buf):
            self._need(1)
        self.pos += 1
        return self.buf[self.pos - 1]

    def set_int_size(self, size: int) -> None:
        self.int_size = size
        # A sign byte, then the value, least significant byte first (WriteInt).
        self._int = struct.Struct(f"<B{_INT_CODES[size]}") if size in _INT_CODES else None

    def int(self) -> int:
        step = 1 + self.int_size
        if self.pos + step > len(self.buf):
            self._need(step)
        pos = self.pos
        self.pos = pos + step
        if self._int is not None:
            sign, value = self._int.unpack_from(self.buf, pos)
        else:
            sign, value = self.buf[pos], int.from_bytes(self.buf[pos + 1:pos + step], "little")
        return -value if sign else value

    def str(self) -> str | None:
        length = self.int()
        if length < 0:
            return None
        if length > _MAX_STRING:
            raise TocError(f"a string of {length} bytes in the table of contents: the archive is damaged")
        return self.bytes(length).decode("utf-8", "replace")

    def skip_str(self) -> None:
        """A string the caller does not need (a definition: the largest fields)."""
        length = self.int()
        if length > _MAX_STRING:
            raise TocError(f"a string of {length} bytes in the table of contents: the archive is damaged")
        if length > 0:
            if self.pos + length > len(self.buf):
                self._need(length)
            self.pos += length


def _read_header(r: _Reader) -> tuple[str | None, str | None, str | None, int]:
    if r.bytes(5) != b"PGDMP":
        raise TocError("not a pg_dump archive (it does not start with PGDMP)")
    r.version = (r.byte(), r.byte(), r.byte())
    if not OLDEST_VERSION <= r.version <= NEWEST_VERSION:
        shown = ".".join(map(str, r.version))
        # Not damage: a newer pg_dump than this reader. pgbv cannot tell, so the caller errs.
        raise BackupSourceError(
            f"archive version {shown} is not one this reader knows (1.12 to 1.16, pg_dump 9.6 to 18)"
        )
    r.set_int_size(r.byte())
    r.offset_size = r.byte()
    if not (1 <= r.int_size <= 8 and 1 <= r.offset_size <= 8):
        raise TocError(f"implausible integer sizes {r.int_size}/{r.offset_size} in the archive header")
    fmt = r.byte()
    if r.version >= (1, 15, 0):
        r.byte()  # compression algorithm
    else:
        r.int()  # compression level
    for _ in range(7):  # the dump's start time: sec, min, hour, mday, mon, year, isdst
        r.int()
    database = r.str()
    server = r.str()
    dumped_by = r.str()
    return database, server, dumped_by, fmt


def read_toc(stream: BinaryIO, custom: bool, limit: int | None = None) -> ArchiveToc:
    """The TOC of the archive stream is positioned at (its first byte).

    custom: the custom format, whose entries end with a data offset; the directory and
    tar formats end each with a file name instead. limit: how many bytes the TOC
    occupies at most (a tar member), None to read up to what it needs.
    """
    r = _Reader(stream, limit)
    database, server, dumped_by, _ = _read_header(r)
    count = r.int()
    if not 0 <= count <= _MAX_ENTRIES:
        raise TocError(f"the table of contents claims {count} entries: the archive is damaged")
    if r._int is None:
        raise TocError(f"integers of {r.int_size} bytes in the archive header: the archive is damaged")
    entries = []
    tail = 1 + r.offset_size if custom else None
    while len(entries) < count:
        try:
            entry, pos = _entry(r.buf, r.pos, r._int.unpack_from, 1 + r.int_size, r.version, tail)
        except _Short:
            if not r.more():
                raise TocError("the table of contents ends early (archive cut short?)") from None
            continue
        r.pos = pos
        entries.append(entry)
    return ArchiveToc(r.version, database, dumped_by, server, tuple(entries))


class _Short(Exception):
    """The entry runs past the bytes read so far: read more and parse it again."""


def _entry(buf: bytes, pos: int, unpack, step: int, version: tuple[int, int, int], tail: int | None):
    """One TOC entry from buf at pos, and the position after it (ReadToc of
    pg_backup_archiver.c). Its fields are walked in one loop, without a call per field:
    at 70,000 entries of some 20 fields each (10,000 tables), calls were most of the
    read. Raises _Short when buf ends inside the entry."""
    end = len(buf)
    fields = _FIELDS_1_16 if version >= (1, 16, 0) else _FIELDS_1_14 if version >= (1, 14, 0) else _FIELDS_OLDER
    kept: list = []
    for field in fields:
        if pos + step > end:
            raise _Short
        sign, value = unpack(buf, pos)
        pos += step
        if field == "i":  # an integer
            kept.append(-value if sign else value)
        elif field == "x":  # an integer skipped
            continue
        elif not sign:  # a string, not NULL
            if value > _MAX_STRING:
                raise TocError(f"a string of {value} bytes in the table of contents: the archive is damaged")
            if field == "s":
                kept.append(buf[pos:pos + value])
            pos += value
        elif field == "s":
            kept.append(None)
    dependencies = []
    while True:  # dump ids as strings, until a NULL one
        if pos + step > end:
            raise _Short
        sign, value = unpack(buf, pos)
        pos += step
        if sign:
            break
        dependencies.append(_oid(buf[pos:pos + value]))
        pos += value
    if tail is not None:
        pos += tail  # custom: the data state byte and the data offset
    else:  # directory, tar: the data file's name
        if pos + step > end:
            raise _Short
        sign, value = unpack(buf, pos)
        pos += step + (0 if sign else value)
    if pos > end:
        raise _Short
    dump_id, catalog, oid, tag, desc, schema, owner = kept
    if dump_id <= 0:
        raise TocError(f"entry with invalid dump id {dump_id}: the archive is damaged")
    return TocEntry(
        dump_id, _oid(catalog), _oid(oid), _text(desc) or "", _text(schema) or None, _text(tag) or "",
        _text(owner), tuple(dependencies),
    ), pos


# The fields of a TOC entry before its dependencies, by archive version (WriteToc):
# "i" an integer kept, "x" an integer skipped, "s" a string kept, "n" a string skipped.
_FIELDS_OLDER = (
    "i", "x",  # dump id, had dumper
    "s", "s", "s", "s",  # catalog OID, OID, tag, desc
    "x", "n", "n", "n",  # section, definition, drop statement, COPY statement
    "s", "n",  # namespace, tablespace
)
_FIELDS_1_14 = _FIELDS_OLDER + ("n",)  # table access method
_FIELDS_1_16 = _FIELDS_1_14 + ("x",)  # relkind
_OWNER = ("s", "n")  # owner, "with oids" (always "false" since PostgreSQL 12)
_FIELDS_OLDER += _OWNER
_FIELDS_1_14 += _OWNER
_FIELDS_1_16 += _OWNER


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8", "replace")


def _oid(text: str | bytes | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        raise TocError(f"{text!r} where the table of contents holds a number: the archive is damaged") from None


def _read_path(path: Path, kind: str) -> ArchiveToc:
    if kind == "pg_dump directory":
        where = path / "toc.dat"
        if not where.is_file():
            raise TocError(f"{path}: toc.dat is missing")
        with open(where, "rb") as handle:
            return read_toc(handle, custom=False)
    with open(path, "rb") as handle:
        if kind == "pg_dump custom":
            return read_toc(handle, custom=True)
        # A pg_dump tar archive's first member is toc.dat; its size bounds the TOC.
        header = handle.read(_TAR_BLOCK)
        name = header[:100].split(b"\0", 1)[0]
        if len(header) < _TAR_BLOCK or name != b"toc.dat":
            raise TocError(f"{path}: a pg_dump tar archive starts with toc.dat, this one does not")
        try:
            size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        except ValueError:
            raise TocError(f"{path}: damaged tar header of toc.dat") from None
        return read_toc(handle, custom=False, limit=size)


def read_archive_toc(path: Path, kind: str, timeout: float) -> ArchiveToc:
    """The TOC of the pg_dump archive at path (kind: one of ARCHIVE_KINDS), read within
    timeout seconds (a hung network mount must not hang the run).

    Raises TocError when it is damaged, BackupSourceError when the file cannot be
    read, the read timed out or the archive's version is unknown.
    """
    if kind not in ARCHIVE_KINDS:
        raise ValueError(f"{kind} is not a pg_dump archive with a table of contents")

    def read() -> ArchiveToc:
        try:
            return _read_path(path, kind)
        except FileNotFoundError:
            raise BackupSourceError(f"{path} is gone since it was listed (rotated away?)") from None
        except OSError as exc:
            raise BackupSourceError(f"cannot read {os.fspath(exc.filename or path)}: {exc.strerror or exc}") from None

    return call_with_timeout(read, timeout, f"reading the table of contents of {path}")


# --- plain SQL ------------------------------------------------------------------------

# _printTocEntry() of pg_backup_archiver.c: "-- [Data for ]Name: <tag>; Type: <desc>;
# Schema: <schema or ->; Owner: <owner or ->[; Tablespace: <t>]", names with line breaks
# flattened. The kinds are upper-case words, which keeps a "; " inside a name harmless.
_PLAIN_ENTRY = re.compile(
    r"^-- (?:Data for )?Name: (?P<tag>.*); Type: (?P<desc>[A-Z][A-Z ]*[A-Z]); Schema: (?P<schema>.*?); "
    r"Owner: (?P<owner>.*?)(?:; Tablespace: .*)?$"
)
_PLAIN_COPY = re.compile(r"^COPY .* FROM stdin;$")
# pg_dump -C: `\connect -reuse-previous=on "dbname='app'"` (older: `\connect app`).
_PLAIN_CONNECT = re.compile(r"""^\\connect (?:-reuse-previous=on "dbname='(?P<quoted>(?:[^']|'')*)'"|(?P<bare>\S+))""")
_PLAIN_VERSIONS = re.compile(r"^-- Dumped (?P<what>from database|by pg_dump) version (?P<version>\S+)")


def _plain_entries(lines, deadline: float) -> ArchiveToc:
    entries: list[TocEntry] = []
    database = server = dumped_by = None
    in_copy = False
    for number, raw in enumerate(lines):
        if number % 10_000 == 0 and time.monotonic() > deadline:
            # Stops a read that is making progress; call_with_timeout gives up on a stuck one.
            raise BackupSourceError("timed out")
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if in_copy:
            # COPY data is the table's rows: a row may read like a comment.
            in_copy = line != "\\."
            continue
        if _PLAIN_COPY.match(line):
            in_copy = True
        elif line.startswith("-- "):
            if match := _PLAIN_ENTRY.match(line):
                schema = None if match["schema"] == "-" else match["schema"]
                owner = None if match["owner"] == "-" else match["owner"]
                entries.append(TocEntry(len(entries) + 1, 0, 0, match["desc"], schema, match["tag"], owner, ()))
            elif match := _PLAIN_VERSIONS.match(line):
                if match["what"] == "by pg_dump":
                    dumped_by = match["version"]
                else:
                    server = match["version"]
        elif line.startswith("\\connect ") and (match := _PLAIN_CONNECT.match(line)):
            database = match["quoted"].replace("''", "'") if match["quoted"] is not None else match["bare"]
    return ArchiveToc((0, 0, 0), database, dumped_by, server, tuple(_with_tables(entries)), has_oids=False)


def _with_tables(entries: list[TocEntry]) -> list[TocEntry]:
    """Plain entries get the dependency the check needs: a policy's or constraint's
    table, whose name begins its tag ("<table> <name>"; the longest such table wins)."""
    tables = {(e.schema, e.tag): e.dump_id for e in entries if e.desc == "TABLE"}
    out = []
    for entry in entries:
        if entry.desc in ("POLICY", "CONSTRAINT", "FK CONSTRAINT") and " " in entry.tag:
            owners = [(len(tag), dump_id) for (schema, tag), dump_id in tables.items()
                      if schema == entry.schema and entry.tag.startswith(tag + " ")]
            if owners:
                entry = TocEntry(entry.dump_id, 0, 0, entry.desc, entry.schema, entry.tag, entry.owner,
                                 (max(owners)[1],))
        out.append(entry)
    return out


def read_plain_toc(path: Path, compressed: bool, timeout: float) -> ArchiveToc:
    """The entries of a plain SQL dump (gzip-compressed when compressed), from the comment
    pg_dump writes above each object. This reads the whole script: a full read, where
    an archive's TOC costs kilobytes. Raises TocError for a corrupt gzip stream and
    BackupSourceError when the file cannot be read or the read timed out."""

    deadline = time.monotonic() + timeout

    def read() -> ArchiveToc:
        try:
            with open(path, "rb") as raw:
                stream = gzip.GzipFile(fileobj=raw) if compressed else raw
                with stream:
                    return _plain_entries(stream, deadline)
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise TocError(f"{path}: the gzip stream is damaged ({exc})") from None
        except FileNotFoundError:
            raise BackupSourceError(f"{path} is gone since it was listed (rotated away?)") from None
        except OSError as exc:
            raise BackupSourceError(f"cannot read {os.fspath(exc.filename or path)}: {exc.strerror or exc}") from None

    return call_with_timeout(read, timeout, f"reading the SQL of {path}")
