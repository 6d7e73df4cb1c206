"""What one verification run produced: check results, the backup seen, the verdict."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

Outcome = Literal["pass", "warn", "fail", "error"]
Status = Literal["success", "warning", "failure"]

OUTCOMES: tuple[str, ...] = ("pass", "warn", "fail", "error")

# Monitoring-plugin convention: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
EXIT_OK, EXIT_WARNING, EXIT_FAILURE, EXIT_UNKNOWN = 0, 1, 2, 3
EXIT_BY_STATUS = {"success": EXIT_OK, "warning": EXIT_WARNING, "failure": EXIT_FAILURE}
# The verdict a person reads, matching the exit code: "unknown" is a run that could not
# judge the backups (target unreachable), though its row is recorded as a failure.
VERDICT_BY_EXIT = {EXIT_OK: "success", EXIT_WARNING: "warning", EXIT_FAILURE: "failure", EXIT_UNKNOWN: "unknown"}

# The check that reads the history of runs: a run counts in the success ratio by the
# verdict of its other checks, so the ratio can never feed on its own outcome.
RATIO_CHECK = "success_rate"
# error_details entries that are not checks: what a run could not reach. Such a run is
# left out of the success ratio and counted apart (record.SUCCESS_RATIOS_SQL reads them).
CONNECTION_ENTRY = "connection"  # the target itself (no check ran)
BACKUP_SOURCE_ENTRY = "backup_source"  # a backup source that could not answer


@dataclass(frozen=True)
class CheckResult:
    name: str
    outcome: Outcome
    message: str
    observed: Any = None
    expected: Any = None
    duration_seconds: float = 0.0
    # Facts a check learned that other parts use (row counts for the next run, per-table
    # policy counts for metrics); stored in verification_details next to the check.
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.outcome in ("fail", "error")

    def as_dict(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "outcome": self.outcome,
            "message": self.message,
            "observed": self.observed,
            "expected": self.expected,
            "duration_seconds": round(self.duration_seconds, 6),
        }
        if self.data:
            out["data"] = self.data
        return out


# How many previous backups backup_size takes its median over: the recent ones, so that
# a database that grew over the year is compared with what it is now.
PREVIOUS_SIZES_KEPT = 10


@dataclass(frozen=True)
class BackupInfo:
    """The newest backup a source knows of."""

    id: str
    finished_at: datetime  # timezone-aware
    size_bytes: int | None
    kind: str  # e.g. "pg_dump custom", "pg_dump directory", "file", "pgbackrest full"
    location: str = ""
    # What else the source said about it (pgBackRest's stanza status, WAL range,
    # repository size...): JSON-able, stored in verification_details.
    details: dict[str, Any] = field(default_factory=dict, compare=False)
    # Sizes of the backups before this one of the same kind, newest first, when the
    # source lists them cheaply (backup_size compares with their median); None when
    # the source does not list them (backup_size falls back to the sizes pgbv recorded).
    previous_sizes: tuple[int, ...] | None = field(default=None, compare=False)

    def age_hours(self, now: datetime) -> float:
        return (now - self.finished_at).total_seconds() / 3600

    def as_dict(self, now: datetime) -> dict[str, Any]:
        return {
            "id": self.id,
            "finished_at": self.finished_at.isoformat(),
            "age_hours": round(self.age_hours(now), 3),
            "size_bytes": self.size_bytes,
            "kind": self.kind,
            "location": self.location,
            **({"details": self.details} if self.details else {}),
        }


@dataclass(frozen=True)
class BackupLookup:
    """The answer of a backup source: a backup, 'there is none' (missing), or 'cannot tell' (error)."""

    source: str
    info: BackupInfo | None = None
    missing: str | None = None  # the source answered that there is no backup: checks fail
    error: str | None = None  # the source could not answer: checks error
    duration_seconds: float = 0.0


def run_status(checks: list[CheckResult]) -> Status:
    if any(check.failed for check in checks):
        return "failure"
    if any(check.outcome == "warn" for check in checks):
        return "warning"
    return "success"


@dataclass
class RunResult:
    target: str
    verified_at: datetime
    checks: list[CheckResult] = field(default_factory=list)
    backup: BackupLookup | None = None
    duration_seconds: float = 0.0
    facts: dict[str, Any] = field(default_factory=dict)
    # Set when the target could not be reached at all: no check ran.
    unreachable: str | None = None
    id: uuid.UUID | None = None
    record_error: str | None = None

    @property
    def status(self) -> Status:
        if self.unreachable is not None:
            return "failure"
        return run_status(self.checks)

    @property
    def exit_code(self) -> int:
        if self.unreachable is not None:
            return EXIT_UNKNOWN
        return EXIT_BY_STATUS[self.status]

    @property
    def verdict(self) -> str:
        return VERDICT_BY_EXIT[self.exit_code]

    @property
    def checks_passed(self) -> int:
        return sum(1 for check in self.checks if not check.failed)

    @property
    def checks_failed(self) -> int:
        return sum(1 for check in self.checks if check.failed)

    @property
    def checks_warned(self) -> int:
        return sum(1 for check in self.checks if check.outcome == "warn")

    def check(self, name: str) -> CheckResult | None:
        return next((check for check in self.checks if check.name == name), None)

    def backup_dict(self) -> dict[str, Any] | None:
        if self.backup is None or self.backup.info is None:
            return None
        return self.backup.info.as_dict(self.verified_at)

    def error_details(self) -> list[dict[str, Any]] | None:
        """What goes into the log table's error_details: the failed checks, or None."""
        failed = [
            {"name": check.name, "outcome": check.outcome, "message": check.message}
            for check in self.checks
            if check.failed
        ]
        if self.unreachable is not None:
            failed.insert(0, {"name": CONNECTION_ENTRY, "outcome": "error", "message": self.unreachable})
        elif self.backup is not None and self.backup.error is not None:
            # The backup checks say it too, each in its words; this entry says that the
            # run never reached the backups (the success ratio leaves such runs out).
            failed.insert(0, {"name": BACKUP_SOURCE_ENTRY, "outcome": "error", "message": self.backup.error})
        return failed or None

    def verification_details(self) -> dict[str, Any]:
        """What goes into verification_details: every check, the backup, the facts seen."""
        details: dict[str, Any] = {
            "target": self.target,
            "status": self.status,
            "duration_seconds": round(self.duration_seconds, 6),
            "checks_warned": self.checks_warned,
            "checks": [check.as_dict() for check in self.checks],
            "backup": self.backup_dict(),
        }
        if self.backup is not None and self.backup.info is None:
            details["backup_problem"] = {"missing": self.backup.missing, "error": self.backup.error}
        if self.unreachable is not None:
            details["unreachable"] = self.unreachable
        details.update(self.facts)
        return details
