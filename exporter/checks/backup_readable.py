"""The newest backup can be read through to its end (or its own tool verifies it).

A backup that exists, is fresh and has a plausible size can still be cut short or
corrupt; only reading it proves otherwise. What "reading" means belongs to the
source (pg_restore for a dump, pg_verifybackup for a base backup, `pgbackrest
verify`...): the source says what it proved, or raises BackupUnreadable (the backup
is damaged: fail) or BackupSourceError (it could not tell: error).
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Any

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
# A read due every N days is due a little early, so that a daily run at the same time
# each day (a few seconds later or earlier) reads every N days, not every N+1.
CADENCE_SLACK = timedelta(hours=1)


def _last_full_read(previous: dict[str, Any] | None, source: str) -> dict[str, Any] | None:
    """The full-read fact the previous run carried (when, what it found), or None when
    it carried none of this source or one of an unknown shape (then a read is due)."""
    fact = (previous or {}).get("full_read")
    if not isinstance(fact, dict) or fact.get("source") != source:
        return None
    if not isinstance(fact.get("outcome"), str) or not isinstance(fact.get("message"), str):
        return None
    try:
        at = datetime.fromisoformat(fact["at"])
    except (KeyError, TypeError, ValueError):
        return None
    return fact if at.tzinfo is not None else None


def _full_read_due(last: dict[str, Any] | None, every_days: float, ctx: CheckContext) -> str | None:
    """Why a full read runs this time, or None when the last one still stands."""
    if ctx.full_read:
        return "asked for with --full-read"
    if last is None:
        return "no full read recorded before"
    at = datetime.fromisoformat(last["at"])
    if last["outcome"] not in ("pass", "warn"):
        # A damaged repository keeps failing until a read proves it repaired.
        return f"the last one, at {at.isoformat()}, did not pass"
    if every_days <= 0 or ctx.now - at < timedelta(days=every_days) - CADENCE_SLACK:
        return None
    return f"the last one, at {at.isoformat()}, is older than verify_every_days {every_days:g}"


def _age(seconds: float) -> str:
    return f"{seconds / 86400:.1f} days" if seconds >= 86400 else f"{seconds / 3600:.1f} hours"


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

    def applies_to_run(self, ctx: CheckContext) -> bool:
        if self.applies(ctx.target):
            return True
        if not ctx.full_read or not super().applies(ctx.target):
            return False
        try:
            source = source_for(ctx.target.backup)
        except ValueError:
            return False
        return source is not None and source.full_read_on_demand()

    def run(self, ctx: CheckContext) -> CheckResult:
        source = source_for(ctx.target.backup)
        every_days = source.full_read_every_days()
        if every_days is None:
            return self.read(ctx, source)
        # A source that reads on a cadence: the facts of its last full read go forward
        # in every run's details (lifted by verify._lift_facts), read or not.
        last = _last_full_read(ctx.previous, source.name)
        problem = self.problem(ctx.backup)
        if problem is not None:
            return dataclasses.replace(problem, data={**problem.data, "full_read": last}) if last else problem
        why = _full_read_due(last, every_days, ctx)
        info = ctx.backup.info
        if why is None:
            at = datetime.fromisoformat(last["at"])
            newer = (
                f"; newest backup {info.id} came after it and has not been read yet"
                if last.get("backup_id") != info.id else ""
            )
            due = at + timedelta(days=every_days)
            message = (
                f"last full read {at.isoformat()} ({_age((ctx.now - at).total_seconds())} ago, next due by "
                f"{due.isoformat()}; verify_every_days {every_days:g}): {last['message']}{newer}"
            )
            observed = "readable at the last full read" if last["outcome"] == "pass" else "not fully verified"
            return self.result(last["outcome"], message, observed, EXPECTED, full_read=last)
        result = self.read(ctx, source)
        fact = {
            "source": source.name, "at": ctx.now.isoformat(), "backup_id": info.id,
            "outcome": result.outcome, "message": result.message,
        }
        return dataclasses.replace(result, message=f"{result.message} (full read this run: {why})", data={**result.data, "full_read": fact})

    def read(self, ctx: CheckContext, source) -> CheckResult:
        problem = self.problem(ctx.backup)
        if problem is not None:
            return problem
        info = ctx.backup.info
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
