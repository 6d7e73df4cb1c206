"""The newest backup is not suspiciously small (min_size_mb).

A dump that shrank to a few bytes (a failed pg_dump leaving its header, an empty
file from a full disk) looks fresh to backup_age; its size gives it away.
"""

from __future__ import annotations

from exporter.checks.backup_age import BackupCheck
from exporter.checks.base import CheckContext
from exporter.result import CheckResult

MIB = 1024 * 1024


def _human(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    for unit, scale in (("GB", 1024**3), ("MB", MIB), ("kB", 1024)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"  # pragma: no cover - the loop always returns


class BackupSizeCheck(BackupCheck):
    name = "backup_size"
    title = "Newest backup is not too small"

    def run(self, ctx: CheckContext) -> CheckResult:
        problem = self.problem(ctx.backup)
        if problem is not None:
            return problem
        info = ctx.backup.info
        min_mb = ctx.target.backup.min_size_mb
        expected = f">= {min_mb:g} MB"
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
        return self.passed(f"newest backup {info.id} is {observed}", observed, expected, **data)


CHECK = BackupSizeCheck()
