"""Seed test 10: the database is not smaller than it should be (a near-empty
database where a full one belongs is what a bad restore or a wrong DSN looks like)."""

from __future__ import annotations

from exporter.checks.base import Check, CheckContext
from exporter.config import TargetConfig
from exporter.result import CheckResult

MB = 1024 * 1024  # as pg_size_pretty counts

# pg_size_pretty phrases both sizes the way PostgreSQL users read them.
_SIZE_SQL = """
SELECT size, pg_catalog.pg_size_pretty(size), pg_catalog.pg_size_pretty(%(minimum)s::numeric)
  FROM (SELECT pg_catalog.pg_database_size(pg_catalog.current_database()) AS size) AS db
"""


class DatabaseSizeCheck(Check):
    name = "database_size"
    title = "Database size"
    seed_tests = (10,)

    def applies(self, target: TargetConfig) -> bool:
        return target.checks.min_database_size_mb is not None

    def run(self, ctx: CheckContext) -> CheckResult:
        minimum = round(ctx.target.checks.min_database_size_mb * MB)
        size, shown, shown_minimum = ctx.conn.execute(_SIZE_SQL, {"minimum": minimum}).fetchone()
        message = f"{shown} (minimum {shown_minimum})"
        if size < minimum:
            return self.failed(f"database too small: {message}", size, minimum, database_size_bytes=size)
        return self.passed(message, size, minimum, database_size_bytes=size)


CHECK = DatabaseSizeCheck()
