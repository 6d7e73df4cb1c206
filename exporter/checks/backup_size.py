"""The newest backup is not suspiciously small: not under min_size_mb, and not much
smaller than the backups before it (max_size_drop_percent).

A dump that shrank to a few bytes (a failed pg_dump leaving its header, an empty
file from a full disk) looks fresh to backup_age; its size gives it away. A dump
that shrank from 47 MB to 9 MB (a table excluded, the wrong database) passes any
fixed floor; only the trend shows it. The trend compares with the median of the
previous backups of the same kind, as the source lists them (directory, pgBackRest,
WAL-G) or, for a source that lists only the newest, as earlier runs recorded them.
The median, not the mean or the last one: one odd backup does not move it.
"""

from __future__ import annotations

import statistics

import psycopg

from exporter import record
from exporter.checks.backup_age import BackupCheck
from exporter.checks.base import CheckContext
from exporter.db import first_line
from exporter.result import PREVIOUS_SIZES_KEPT, BackupInfo, CheckResult

MIB = 1024 * 1024


def _human(size: float) -> str:
    if size < 1024:
        return f"{size:.0f} bytes"
    for unit, scale in (("GB", 1024**3), ("MB", MIB), ("kB", 1024)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size:.0f} bytes"  # pragma: no cover - the loop always returns


def _recorded_sizes(ctx: CheckContext, info: BackupInfo) -> tuple[list[int] | None, str | None]:
    """(sizes earlier runs recorded, None) or (None, why they could not be read)."""
    conn = ctx.log_conn
    if conn is None or conn.closed:
        return None, "the log database is not reachable this run"
    try:
        # Its own transaction: an error must not leave the session unusable for the run.
        with conn.transaction():
            return record.recorded_backup_sizes(conn, ctx.target.name, info.kind, info.id, PREVIOUS_SIZES_KEPT), None
    except psycopg.Error as exc:
        return None, first_line(exc)


class BackupSizeCheck(BackupCheck):
    name = "backup_size"
    title = "Newest backup is not too small"
    # Reads the log (the recorded sizes) only when the source lists no previous backups.
    own_transactions = True

    def run(self, ctx: CheckContext) -> CheckResult:
        problem = self.problem(ctx.backup)
        if problem is not None:
            return problem
        info = ctx.backup.info
        limits = ctx.target.backup
        min_mb, max_drop = limits.min_size_mb, limits.max_size_drop_percent
        expected = f">= {min_mb:g} MB, at most {max_drop:g}% below the median of the previous backups"
        if info.size_bytes is None:
            return self.errored(
                f"backup source {ctx.backup.source} did not report a size for backup {info.id}",
                None, expected, backup_size_bytes=None,
            )
        size = info.size_bytes
        data = {"backup_size_bytes": size}
        observed = _human(size)
        if size <= 0:
            return self.failed(f"newest backup {info.id} is empty ({size} bytes)", observed, expected, **data)
        if size < min_mb * MIB:
            return self.failed(
                f"newest backup {info.id} is {observed}, smaller than min_size_mb {min_mb:g} MB",
                observed, expected, **data,
            )

        sizes: list[int] | tuple[int, ...] | None = info.previous_sizes
        where = f"the {ctx.backup.source} source lists"
        if sizes is None:
            sizes, why = _recorded_sizes(ctx, info)
            where = "earlier pgbv runs recorded"
            if sizes is None:
                return self.warned(
                    f"newest backup {info.id} is {observed}; its size trend was not checked: the sizes {where} "
                    f"could not be read ({why})",
                    observed, expected, **data,
                )
        if not sizes:
            return self.passed(
                f"newest backup {info.id} is {observed}; no previous {info.kind} backup that {where} to compare "
                "its size with (the size trend starts with the next one)",
                observed, expected, **data, previous_count=0,
            )
        median = statistics.median(sizes)
        drop = 100 * (median - size) / median if median > 0 else 0.0
        data.update(previous_median_bytes=int(median), previous_count=len(sizes), size_change_percent=round(-drop, 1))
        compared = f"the median {_human(median)} of the {len(sizes)} previous {info.kind} backup(s) {where}"
        if drop > max_drop:
            return self.failed(
                f"newest backup {info.id} is {observed}, {drop:.0f}% smaller than {compared} "
                f"(max_size_drop_percent {max_drop:g}): was something left out of it?",
                observed, expected, **data,
            )
        if drop > max_drop / 2:
            return self.warned(
                f"newest backup {info.id} is {observed}, {drop:.0f}% smaller than {compared} "
                f"(fails above max_size_drop_percent {max_drop:g})",
                observed, expected, **data,
            )
        change = f"{drop:.0f}% smaller" if drop > 0 else f"{-drop:.0f}% larger" if drop < 0 else "the same size"
        return self.passed(f"newest backup {info.id} is {observed}, {change} than {compared}".replace(
            "the same size than", "the same size as"), observed, expected, **data)


CHECK = BackupSizeCheck()
