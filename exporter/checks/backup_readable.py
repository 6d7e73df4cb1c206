"""The newest backup can be read through to its end (or its own tool verifies it).

A backup that exists, is fresh and has a plausible size can still be cut short or
corrupt; only reading it proves otherwise. What "reading" means belongs to the
source (pg_restore for a dump, pg_verifybackup for a base backup, `pgbackrest
verify`...): the source says what it proved, or raises BackupUnreadable (the backup
is damaged: fail) or BackupSourceError (it could not tell: error).
"""

from __future__ import annotations

from exporter.backups import source_for
from exporter.backups.base import BackupSourceError, BackupUnreadable
from exporter.checks.backup_age import BackupCheck
from exporter.checks.base import CheckContext
from exporter.config import TargetConfig
from exporter.pgtools import ToolError, ToolNotFound
from exporter.redact import scrub
from exporter.result import CheckResult

# Sources signal "read, but with a reservation" by starting their message with this.
WARNING_PREFIX = "warning:"
EXPECTED = "readable to the end"


class BackupReadableCheck(BackupCheck):
    name = "backup_readable"
    title = "Newest backup reads through to its end"

    def applies(self, target: TargetConfig) -> bool:
        if not super().applies(target):
            return False
        try:
            source = source_for(target.backup)
        except ValueError:
            return False  # a source not registered: backup_age reports it
        return source is not None and source.checks_readable()

    def run(self, ctx: CheckContext) -> CheckResult:
        problem = self.problem(ctx.backup)
        if problem is not None:
            return problem
        info = ctx.backup.info
        source = source_for(ctx.target.backup)
        secrets = ctx.target.secrets()
        # The runner holds a read-only transaction open on the target meanwhile; the
        # tools below never touch the database, so nothing waits on it.
        try:
            message = source.verify_readable(info, ctx.server_version_num(), ctx.target.pg_bin_dir)
        except BackupUnreadable as exc:
            return self.failed(f"newest backup {info.id} is damaged: {scrub(str(exc), secrets)}", "damaged", EXPECTED)
        except (BackupSourceError, ToolError, ToolNotFound) as exc:
            return self.errored(
                f"could not verify that newest backup {info.id} is readable: {scrub(str(exc), secrets)}",
                "not verified", EXPECTED,
            )
        message = scrub(message, secrets)
        if message.lower().startswith(WARNING_PREFIX):
            return self.warned(message[len(WARNING_PREFIX):].strip(), "not fully verified", EXPECTED)
        return self.passed(message, "readable", EXPECTED)


CHECK = BackupReadableCheck()
