"""Run a single check against a real database, the way `pgbv verify` runs it."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from exporter.checks.base import Check, CheckContext
from exporter.checks.runner import run_check
from exporter.config import TargetConfig
from exporter.db import connect
from exporter.result import BackupLookup, CheckResult


def check_once(
    check: Check,
    target: TargetConfig,
    previous: dict[str, Any] | None = None,
    backup: BackupLookup | None = None,
    now: datetime | None = None,
) -> CheckResult:
    with connect(target) as conn:
        log_conn = connect(target, log=True) if target.log_dsn else conn
        try:
            ctx = CheckContext(
                target=target, conn=conn, log_conn=log_conn, backup=backup, previous=previous,
                now=now or datetime.now(timezone.utc),
            )
            return run_check(check, ctx)
        finally:
            if log_conn is not conn:
                log_conn.close()
