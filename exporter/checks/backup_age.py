"""The newest backup is recent enough (warn_age_hours, max_age_hours).

The backup checks take no SQL: they judge the answer of the target's backup source,
made once per run before the checks (ctx.backup). A source that could not answer
makes them ``error`` with the tool's words; one that answered "no backup" makes them
``fail``: the first proves nothing, the second proves there is nothing to restore.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from exporter.checks.base import Check, CheckContext
from exporter.config import TargetConfig
from exporter.result import BackupLookup, CheckResult

# A backup host's clock a little ahead of ours is normal; more than this is a clock
# problem worth a warning, and it would also hide a backup that is really old.
CLOCK_SKEW_TOLERANCE = timedelta(minutes=5)


class BackupCheck(Check):
    """Shared by the backup checks: they apply when the target has a backup source, and
    run while the target is unreachable (they ask the backup source, not the database)."""

    needs_database = False

    def applies(self, target: TargetConfig) -> bool:
        return target.backup.source != "none"

    def problem(self, lookup: BackupLookup | None) -> CheckResult | None:
        """The result when the source gave no backup to judge, else None."""
        if lookup is None:
            return self.errored("no backup lookup was made for this run")
        if lookup.error is not None:
            return self.errored(f"backup source {lookup.source} could not answer: {lookup.error}")
        if lookup.info is None:
            return self.failed(f"no backup found: {lookup.missing or 'the source lists none'}")
        return None


# A pg_dump archive records when it started in its host's local time, with no zone:
# UTC is at most 12 h behind and 14 h ahead of any local time, and a dump may take
# hours. Counted from the latest moment it can have finished, an age is never too old.
ARCHIVE_TIME_SLACK = timedelta(hours=26)


def _age_by_content(details: dict, now) -> timedelta | None:
    """The least age the archive's own start time allows, or None without one."""
    started = details.get("archive_started_local") if isinstance(details, dict) else None
    if not isinstance(started, str):
        return None
    try:
        local = datetime.fromisoformat(started)
    except ValueError:
        return None
    return now - (local.replace(tzinfo=timezone.utc) + ARCHIVE_TIME_SLACK)


class BackupAgeCheck(BackupCheck):
    name = "backup_age"
    title = "Newest backup is recent"

    def run(self, ctx: CheckContext) -> CheckResult:
        problem = self.problem(ctx.backup)
        if problem is not None:
            return problem
        info = ctx.backup.info
        limits = ctx.target.backup
        expected = f"< {limits.warn_age_hours:g} h"
        age = ctx.now - info.finished_at
        finished = info.finished_at.isoformat()
        dated_by_content = _age_by_content(info.details, ctx.now)
        if dated_by_content is not None and dated_by_content > age:
            age = dated_by_content
            finished = (
                f"by the archive's own start time {info.details['archive_started_local']} (local time of the host that "
                f"dumped it; the file is dated {finished}, a copy's date)"
            )
        data = {"backup_age_seconds": age.total_seconds()}
        if age < -CLOCK_SKEW_TOLERANCE:
            ahead = -age.total_seconds() / 60
            return self.warned(
                f"newest backup {info.id} finished at {finished}, {ahead:.0f} minutes in the future: "
                "the clock of this host or of the backup host is wrong",
                f"{age.total_seconds() / 3600:.1f} h", expected, **data,
            )
        hours = max(age.total_seconds(), 0) / 3600
        observed = f"{hours:.1f} h"
        if hours > limits.max_age_hours:
            return self.failed(
                f"newest backup {info.id} is {hours:.1f} h old (finished {finished}), "
                f"older than max_age_hours {limits.max_age_hours:g} h",
                observed, expected, **data,
            )
        if hours > limits.warn_age_hours:
            return self.warned(
                f"newest backup {info.id} is {hours:.1f} h old (finished {finished}), "
                f"older than warn_age_hours {limits.warn_age_hours:g} h",
                observed, expected, **data,
            )
        return self.passed(
            f"newest backup {info.id} is {hours:.1f} h old (finished {finished})", observed, expected, **data
        )


CHECK = BackupAgeCheck()
