"""What a restore drill produced."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from exporter.result import CheckResult


class DrillError(Exception):
    """The drill could not be carried out (tool missing, no space, timeout, scratch
    server unreachable): the restore check is an error. The message is safe to print."""


class RestoreFailed(DrillError):
    """The restore itself failed (pg_restore refused the archive): the backup does
    not restore, so the restore check fails."""


@dataclass
class DrillResult:
    kind: str  # "logical" or "physical"
    scratch: str  # the scratch database or folder
    backup_id: str
    duration_seconds: float = 0.0  # the whole drill: create, restore, check, compare
    restore_seconds: float = 0.0  # pg_restore (or pgbackrest restore, barman recover, and start-up) alone
    items: int = 0
    copy_checks: list[CheckResult] = field(default_factory=list)
    rows: dict[str, int | None] = field(default_factory=dict)  # exact counts in the copy
    live_rows: dict[str, int | None] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # copy against live
    notes: list[str] = field(default_factory=list)
    kept_dsn: str | None = None
    # A physical drill that replayed the WAL archive: where to ({"kind": "latest"|"random",
    # "time": ISO or None}), the time the copy recovered until, and the drill's start
    # minus that time. None when the drill did not replay (logical, or no archive).
    recovery_target: dict[str, Any] | None = None
    recovered_until: datetime | None = None
    rpo_seconds: float | None = None
    # Whether the backup has a WAL archive the drill was to replay: the rpo check is an
    # error, not "not measured", when it had one and no recovery point came out.
    replay_expected: bool = False
    # How the copy's end compares with the live server's WAL at the drill's start
    # (caught_up_with_live, wal_behind_live_bytes), for a latest drill.
    replay_facts: dict[str, Any] = field(default_factory=dict)
    started_at: datetime | None = None  # when the drill started (the RPO is measured from it)

    @property
    def failed_checks(self) -> list[CheckResult]:
        return [check for check in self.copy_checks if check.failed]

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "scratch": self.scratch,
            "backup_id": self.backup_id,
            "duration_seconds": round(self.duration_seconds, 3),
            "restore_seconds": round(self.restore_seconds, 3),
            "items": self.items,
            "rows": self.rows,
            "live_rows": self.live_rows,
            "problems": self.problems,
            "notes": self.notes,
            "checks": [check.as_dict() for check in self.copy_checks],
            "kept": self.kept_dsn is not None,
            "recovery_target": self.recovery_target,
            "recovered_until": self.recovered_until.isoformat() if self.recovered_until else None,
            "rpo_seconds": round(self.rpo_seconds, 3) if self.rpo_seconds is not None else None,
            **self.replay_facts,
        }
