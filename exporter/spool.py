"""The spool: runs that could not be written (log database down) wait here and go
into backup_verification_log, with their original verified_at, once it is back.

Layout: one file per target, ``<spool_dir>/<target>.jsonl``, one JSON object a
line holding the columns of the row, ``id`` included. Lines that cannot be
inserted go to ``<target>.jsonl.corrupt`` for an operator to read;
``.<target>.lock`` is the lock file of the target.

Exactly once: the id is generated before the row is spooled, and ``flush``
inserts with ``ON CONFLICT (id) DO NOTHING`` in one transaction, commits, and
only then removes the file. A crash between the commit and the removal leaves
the file behind; the next flush finds every id already in the table and adds
nothing.

Durability: ``add`` writes the line and its newline in one write, fsyncs the
file (and the directory when it created the file), and only then returns. The
newline is the commit marker of a line: a last line without one was cut short
by a crash and is set aside, never inserted. The next ``add`` starts on a new
line, so a cut-short line never swallows a good one.

Locks: a thread lock per target (the daemon verifies targets concurrently) and
an ``flock`` on the target's lock file, so that a ``pgbv`` process appending
while another flushes cannot lose a line to the flush's removal of the file.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import pq, sql
from psycopg.types.json import Jsonb

from exporter.config import _TARGET_NAME
from exporter.record import row_values
from exporter.result import RunResult

log = logging.getLogger("pgbv.spool")

SUFFIX = ".jsonl"
CORRUPT_SUFFIX = ".jsonl.corrupt"

COLUMNS = (
    "id", "verified_at", "backup_id", "backup_age_hours", "backup_size_mb", "status",
    "checks_passed", "checks_failed", "error_details", "verification_details",
)
_STATUSES = ("success", "warning", "failure")
_INT4 = range(-(2**31), 2**31)

_INSERT = sql.SQL(
    "INSERT INTO backup_verification_log ({columns}) VALUES ({values}) ON CONFLICT (id) DO NOTHING"
).format(
    columns=sql.SQL(", ").join(map(sql.Identifier, COLUMNS)),
    values=sql.SQL(", ").join(map(sql.Placeholder, COLUMNS)),
)

# Errors that belong to one row's values (a NUL in a message, a timestamp out of
# range, a violated check): that row is set aside so that it cannot block the
# others forever. Any other error (connection lost, no table) keeps the spool.
_ROW_ERRORS = (psycopg.errors.DataError, psycopg.errors.IntegrityError)


class SpoolError(Exception):
    """The spool could not be written or read; the message names the path."""


def row_for_spool(result: RunResult, row_id: uuid.UUID | None = None) -> dict[str, Any]:
    """The row record.insert would write for this run, as JSON-able data, with its id.

    The id is the run's own when it has one (so a run both inserted and spooled
    still makes one row), else row_id, else a new one.
    """
    row = {key: _jsonable(value) for key, value in row_values(result).items()}
    row["id"] = str(result.id or row_id or uuid.uuid4())
    return row


def _jsonable(value: Any) -> Any:
    if isinstance(value, Jsonb):
        return value.obj
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        # A naive time would be read back in the log server's zone: another moment.
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"verified_at {value.isoformat()} has no time zone")
        return value.isoformat()
    return value


def _int(row: Mapping[str, Any], key: str, *, required: bool) -> int | None:
    value = row.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value not in _INT4:
        raise ValueError(f"{key} is not an integer: {value!r}")
    return value


def _decode(line: bytes) -> dict[str, Any]:
    """A spool line as insert parameters; ValueError says why a line is unusable."""
    row = json.loads(line)  # JSONDecodeError and UnicodeDecodeError are ValueErrors
    if not isinstance(row, dict):
        raise ValueError("not a JSON object")
    for key in ("id", "verified_at", "status"):
        if not isinstance(row.get(key), str):
            raise ValueError(f"{key} is missing or not a string")
    verified_at = datetime.fromisoformat(row["verified_at"])
    if verified_at.tzinfo is None:
        raise ValueError("verified_at has no time zone")
    if row["status"] not in _STATUSES:
        raise ValueError(f"status {row['status']!r} is not one of {', '.join(_STATUSES)}")
    backup_id = row.get("backup_id")
    if backup_id is not None and not isinstance(backup_id, str):
        raise ValueError("backup_id is not a string")
    return {
        "id": uuid.UUID(row["id"]),
        "verified_at": verified_at,
        "backup_id": backup_id,
        "backup_age_hours": _int(row, "backup_age_hours", required=False),
        "backup_size_mb": _int(row, "backup_size_mb", required=False),
        "status": row["status"],
        "checks_passed": _int(row, "checks_passed", required=True),
        "checks_failed": _int(row, "checks_failed", required=True),
        # None stays SQL NULL, as record.row_values writes it, not a JSON null.
        "error_details": None if row.get("error_details") is None else Jsonb(row["error_details"]),
        "verification_details": None if row.get("verification_details") is None else Jsonb(row["verification_details"]),
    }


def _encode(row: Mapping[str, Any]) -> bytes:
    # allow_nan=False: NaN is not JSON and jsonb would refuse it at flush time.
    return json.dumps({key: _jsonable(value) for key, value in row.items()},
                      sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _append(path: Path, data: bytes) -> None:
    """Append data on a line of its own, durably."""
    created = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data  # close a line a crash cut short; it stays corrupt, alone
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        _fsync_dir(path.parent)


# How much of a spool file newest() reads at a time, from the end.
_TAIL_CHUNK = 64 * 1024


def _lines_from_end(handle: Any, size: int, chunk: int = _TAIL_CHUNK) -> Iterator[bytes]:
    """The complete lines of the open file, the last first, reading chunk bytes at a
    time from the end: the cost is the size of the lines consumed, not of the file.
    Bytes after the last newline (a line cut short, or an append in progress) are
    not a line."""
    position, buffer, ended = size, b"", False
    while position > 0:
        step = min(chunk, position)
        position -= step
        handle.seek(position)
        buffer = handle.read(step) + buffer
        if not ended:
            last = buffer.rfind(b"\n")
            if last < 0:
                continue
            buffer, ended = buffer[: last + 1], True
        # buffer ends with a newline; every newline before it starts a complete line.
        while (cut := buffer.rfind(b"\n", 0, len(buffer) - 1)) >= 0:
            line, buffer = buffer[cut + 1 : -1], buffer[: cut + 1]
            if line.strip():
                yield line
    if ended and buffer[:-1].strip():
        yield buffer[:-1]  # the file's first line


def _split(data: bytes) -> tuple[list[tuple[int, bytes]], bytes | None]:
    """(numbered complete lines, the cut-short last line or None)."""
    lines = data.split(b"\n")
    tail = lines.pop()
    numbered = [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
    return numbered, (tail if tail.strip() else None)


class Spool:
    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def path(self, target_name: str) -> Path:
        # The name becomes a file name: the config's rule keeps it inside the directory.
        if not _TARGET_NAME.fullmatch(target_name):
            raise ValueError(f"not a valid target name for the spool: {target_name!r}")
        return self.directory / f"{target_name}{SUFFIX}"

    @contextmanager
    def _locked(self, target_name: str) -> Iterator[None]:
        with self._locks_guard:
            lock = self._locks.setdefault(target_name, threading.Lock())
        with lock:
            fd = os.open(self.directory / f".{target_name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the flock

    def _ensure_directory(self) -> None:
        if self.directory.is_dir():
            return
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        _fsync_dir(self.directory.parent)

    def add(self, target_name: str, row: Mapping[str, Any] | RunResult) -> uuid.UUID:
        """Spool one row (or a RunResult, converted with row_for_spool); returns its id.

        Returns only once the line is on disk. Raises SpoolError naming the path
        when it cannot be written, or when the row could never be inserted.
        """
        path = self.path(target_name)
        row = row_for_spool(row) if isinstance(row, RunResult) else dict(row)
        if row.get("id") is None:
            row["id"] = str(uuid.uuid4())
        try:
            line = _encode(row)
            params = _decode(line)  # what flush will read: refuse now what it would set aside
        except (TypeError, ValueError) as exc:
            raise SpoolError(f"cannot spool a row of target {target_name} to {path}: {exc}") from None
        try:
            self._ensure_directory()
            with self._locked(target_name):
                _append(path, line + b"\n")
        except OSError as exc:
            raise SpoolError(f"cannot write spooled results to {path}: {exc.strerror or exc}") from None
        return params["id"]

    def pending(self, target_name: str | None = None) -> int:
        """Lines waiting in the spool (one target's, or all); a corrupt complete line
        counts until a flush sets it aside, a cut-short last line does not."""
        paths = [self.path(target_name)] if target_name is not None else sorted(self.directory.glob(f"*{SUFFIX}"))
        total = 0
        for path in paths:
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise SpoolError(f"cannot read the spool file {path}: {exc.strerror or exc}") from None
            total += len(_split(data)[0])
        return total

    def newest(self, target_name: str) -> dict[str, Any] | None:
        """The target's newest pending row (the last usable line, as spooled: JSON data
        with ISO times), or None; for the snapshot while the log database cannot take
        the rows. Neither flushes nor locks: the file is read backwards from its end,
        so a spool grown long in an outage costs only its last lines, and an append in
        progress is not a line yet. Raises SpoolError naming the path when unreadable."""
        path = self.path(target_name)
        try:
            with open(path, "rb") as handle:
                for line in _lines_from_end(handle, os.fstat(handle.fileno()).st_size):
                    try:
                        _decode(line)  # the rule flush applies: a line it would set aside is not shown
                    except ValueError:
                        continue
                    return json.loads(line)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SpoolError(f"cannot read the spool file {path}: {exc.strerror or exc}") from None
        return None

    def flush(self, target_name: str, conn: psycopg.Connection) -> int:
        """Insert every spooled row of the target in one transaction; returns how many
        were new (a row already in the table is skipped by its id).

        conn must have no transaction open: the rows must be committed, not merely
        inside a savepoint of the caller's transaction, before the file goes. When
        the insert fails (psycopg.Error), the spool is left exactly as it was.
        """
        path = self.path(target_name)
        if not path.exists():
            return 0
        if conn.info.transaction_status != pq.TransactionStatus.IDLE:
            raise ValueError("Spool.flush needs a connection with no transaction open")
        try:
            with self._locked(target_name):
                try:
                    data = path.read_bytes()
                except FileNotFoundError:  # another process flushed it meanwhile
                    return 0
                lines, tail = _split(data)
                rows, rejected = [], []
                for number, line in lines:
                    try:
                        rows.append((number, line, _decode(line)))
                    except ValueError as exc:
                        rejected.append((number, line, str(exc)))
                if tail is not None:
                    rejected.append((len(lines) + 1, tail, "last line cut short (no newline): a crash interrupted its write"))
                inserted = self._insert(conn, rows, rejected)
                self._settle(target_name, path, rejected, inserted)
        except OSError as exc:
            raise SpoolError(f"cannot use the spool file {path}: {exc.strerror or exc}") from None
        return inserted

    @staticmethod
    def _insert(conn: psycopg.Connection, rows: list[tuple[int, bytes, dict]], rejected: list) -> int:
        inserted = 0
        if not rows:
            return 0
        with conn.transaction(), conn.cursor() as cur:
            for number, line, params in rows:
                try:
                    with conn.transaction():  # a savepoint: one bad row must not undo the others
                        cur.execute(_INSERT, params)
                except _ROW_ERRORS as exc:
                    rejected.append((number, line, f"refused by the database: {str(exc).strip().splitlines()[0]}"))
                    continue
                inserted += cur.rowcount
        return inserted

    def _settle(self, target_name: str, path: Path, rejected: list[tuple[int, bytes, str]], inserted: int) -> None:
        """After the commit: keep the unusable lines aside, then remove the file."""
        try:
            if rejected:
                aside = self.directory / f"{target_name}{CORRUPT_SUFFIX}"
                _append(aside, b"".join(line + b"\n" for _, line, _ in sorted(rejected)))
                for number, _, reason in sorted(rejected):
                    log.warning("target %s: spool line %d set aside in %s: %s", target_name, number, aside, reason,
                                extra={"target": target_name})
            # Nothing remains: every line is in the table or set aside. Unlinking is atomic;
            # a crash before it only replays ids the table already has.
            path.unlink()
            _fsync_dir(self.directory)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return
            log.warning("target %s: %d spooled row(s) written, but %s could not be removed (%s); "
                        "the next flush will skip them by their ids", target_name, inserted, path,
                        exc.strerror or exc, extra={"target": target_name})
