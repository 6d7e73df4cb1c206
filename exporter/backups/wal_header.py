"""The first page header of a WAL segment, and the system identifier of a base backup:
what tells one cluster's WAL from another's when their names are the same.

Every cluster names its segments alike (000000010000000000000002 is the second segment
of every timeline 1), so a folder of another cluster's WAL, or of empty files carrying
segment names, passes any check by name. PostgreSQL refuses such a file at replay by
its first page's long header (src/include/access/xlog_internal.h,
XLogLongPageHeaderData, native byte order, little-endian on every platform pgbv runs on):

    offset  0  uint16 xlp_magic       WAL format version (XLOG_PAGE_MAGIC)
    offset  2  uint16 xlp_info        flags; XLP_LONG_HEADER (0x0002) on a segment's first page
    offset  4  uint32 xlp_tli         timeline of the page's first record
    offset  8  uint64 xlp_pageaddr    the page's position: the segment's start
    offset 16  uint32 xlp_rem_len     (then 4 bytes of MAXALIGN padding)
    offset 24  uint64 xlp_sysid       the system identifier from pg_control
    offset 32  uint32 xlp_seg_size
    offset 36  uint32 xlp_xlog_blcksz

and so does pgbv, reading 40 bytes of the two segments that matter (the newest, and
the base backup's start), never the whole archive. The system identifier to compare
with is the first 8 bytes of the backup's global/pg_control (ControlFileData starts
with it), or its backup_manifest's System-Identifier (PostgreSQL 17+, tar format too), or
the global/pg_control member of an uncompressed base.tar.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import select
import shutil
import struct
import subprocess
import tarfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

HEADER_SIZE = 40
XLP_LONG_HEADER = 0x0002
_LONG_HEADER = struct.Struct("<HHIQI4xQII")
# XLOG_PAGE_MAGIC per major version: 15 and 18 read from their own headers and real WAL,
# the others from their release branches' xlog_internal.h. Only for naming the version in
# messages: an unknown magic of the same family is still WAL (a newer release).
MAGIC = {0xD106: 13, 0xD10D: 14, 0xD110: 15, 0xD113: 16, 0xD116: 17, 0xD118: 18}
_MAGIC_FAMILY = (0xD000, 0xD100)  # 9.x used 0xD0xx, 10 and later 0xD1xx
# A decompressor gets this long for 40 bytes: it reads only the frame's start.
DECOMPRESS_TIMEOUT = 10


class WalHeaderError(ValueError):
    """The file's first page is not a WAL segment's long header (empty, truncated,
    corrupt compression, or not WAL at all)."""


class NoDecompressor(Exception):
    """The compression of this file needs a binary that is not installed."""


@dataclass(frozen=True)
class LongHeader:
    magic: int
    info: int
    timeline: int
    pageaddr: int
    sysid: int
    seg_size: int
    blcksz: int

    @property
    def version(self) -> str:
        major = MAGIC.get(self.magic)
        return f"PostgreSQL {major}" if major else f"WAL magic 0x{self.magic:04X}"


def parse_long_header(data: bytes) -> LongHeader:
    if len(data) < HEADER_SIZE:
        raise WalHeaderError(f"{len(data)} byte(s) where a segment's first page header takes {HEADER_SIZE}")
    magic, info, tli, pageaddr, _, sysid, seg_size, blcksz = _LONG_HEADER.unpack_from(data)
    if magic & 0xFF00 not in _MAGIC_FAMILY:
        raise WalHeaderError(f"no WAL page magic at its start (0x{magic:04X})")
    if not info & XLP_LONG_HEADER:
        raise WalHeaderError("its first page has no long header (a segment's first page always has one)")
    return LongHeader(magic, info, tli, pageaddr, sysid, seg_size, blcksz)


def _run_decompressor(binary: str, path: str) -> bytes:
    tool = shutil.which(binary)
    if tool is None:
        raise NoDecompressor(f"{binary} is not installed")
    # -dc streams; reading HEADER_SIZE bytes then closing ends it early (SIGPIPE), so a
    # 1 GiB segment costs its first frame, not its whole decompression.
    deadline = time.monotonic() + DECOMPRESS_TIMEOUT
    with subprocess.Popen([tool, "-dc", "--", path], stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        data = b""
        try:
            # A decompressor that hangs before its first bytes must not hold the run.
            while len(data) < HEADER_SIZE:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not select.select([proc.stdout], [], [], remaining)[0]:
                    proc.kill()
                    proc.communicate()
                    raise WalHeaderError(f"{binary} did not answer within {DECOMPRESS_TIMEOUT} s")
                chunk = os.read(proc.stdout.fileno(), HEADER_SIZE - len(data))
                if not chunk:
                    break
                data += chunk
        finally:
            proc.stdout.close()
        try:
            _, err = proc.communicate(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise WalHeaderError(f"{binary} did not answer within {DECOMPRESS_TIMEOUT} s") from None
    if len(data) < HEADER_SIZE and proc.returncode not in (0, -13):  # -13: SIGPIPE, we closed early
        words = err.decode(errors="replace").strip().splitlines()
        raise WalHeaderError(f"{binary} cannot decompress it: {words[-1] if words else f'exit {proc.returncode}'}")
    return data


def read_first_bytes(path: str) -> bytes:
    """The first HEADER_SIZE bytes of a segment file, decompressed by its suffix.

    Raises WalHeaderError when they cannot be read, NoDecompressor when the binary for
    its compression is missing."""
    name = path.rsplit("/", 1)[-1]
    suffix = name.rsplit(".", 1)[-1] if "." in name else ""
    try:
        if suffix == "gz":
            with gzip.open(path, "rb") as handle:
                return handle.read(HEADER_SIZE)
        if suffix == "bz2":
            with bz2.open(path, "rb") as handle:
                return handle.read(HEADER_SIZE)
        if suffix in ("xz", "lzma"):
            with lzma.open(path, "rb") as handle:
                return handle.read(HEADER_SIZE)
        if suffix in ("zst", "zstd"):
            return _run_decompressor("zstd", path)
        if suffix == "lz4":
            return _run_decompressor("lz4", path)
        if suffix == "br":
            raise NoDecompressor("pgbv does not read brotli")
        with open(path, "rb") as handle:
            return handle.read(HEADER_SIZE)
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError, lzma.LZMAError) as exc:
        raise WalHeaderError(f"cannot read it: {getattr(exc, 'strerror', None) or exc}") from None


def read_header(path: str) -> LongHeader:
    return parse_long_header(read_first_bytes(path))


def backup_system_identifier(backup: Path) -> tuple[int | None, str]:
    """A base backup's system identifier and where it was read, or None and why not."""
    why = []
    control = backup / "global" / "pg_control"
    if control.exists():
        try:
            with open(control, "rb") as handle:
                data = handle.read(8)
            if len(data) == 8:
                return struct.unpack("<Q", data)[0], "its global/pg_control"
            why.append(f"its global/pg_control holds {len(data)} byte(s)")
        except OSError as exc:
            why.append(f"cannot read its global/pg_control: {exc.strerror or exc}")
    manifest = backup / "backup_manifest"
    if manifest.exists():
        try:
            with open(manifest, encoding="utf-8") as handle:
                value = json.load(handle).get("System-Identifier")
            if isinstance(value, int) and value > 0:
                return value, "its backup_manifest"
            why.append("its backup_manifest names no System-Identifier (PostgreSQL 17+ writes one)")
        except (OSError, ValueError, AttributeError) as exc:
            why.append(f"its backup_manifest is unreadable ({exc})")
    tar = backup / "base.tar"
    if not control.exists() and tar.exists():
        # Uncompressed tar format: tarfile seeks from member header to member header,
        # reading none of the data but pg_control's 8 bytes.
        try:
            with tarfile.open(tar, "r:") as archive:
                handle = archive.extractfile("global/pg_control")
                data = handle.read(8) if handle is not None else b""
            if len(data) == 8:
                return struct.unpack("<Q", data)[0], "global/pg_control in its base.tar"
            why.append(f"global/pg_control in its base.tar holds {len(data)} byte(s)")
        except (OSError, tarfile.TarError, KeyError) as exc:
            why.append(f"no readable global/pg_control in its base.tar ({exc})")
    elif not control.exists():
        # A compressed base.tar would be read whole to reach pg_control (sent last).
        why.insert(0, "no global/pg_control nor an uncompressed base.tar")
    return None, "; ".join(why)
