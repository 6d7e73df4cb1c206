"""Seed test 7: every critical table exists."""

from __future__ import annotations

from typing import ClassVar

from exporter.catalog import TABLE_KINDS, listing
from exporter.checks.base import Check, CheckContext
from exporter.config import TargetConfig
from exporter.result import CheckResult


class TablesExistCheck(Check):
    """Every table named in one list of the target's checks exists."""

    config_field: ClassVar[str]
    kind: ClassVar[str]  # how the message calls these tables
    relkinds: ClassVar[str] = TABLE_KINDS  # the pg_class.relkind letters that count

    def names(self, target: TargetConfig) -> list[str]:
        return list(dict.fromkeys(getattr(target.checks, self.config_field)))

    def applies(self, target: TargetConfig) -> bool:
        return bool(self.names(target))

    def run(self, ctx: CheckContext) -> CheckResult:
        names = self.names(ctx.target)
        found = ctx.tables(names, self.relkinds)
        missing = [name for name in names if name not in found]
        observed = [found[name].qualified for name in names if name in found]
        if missing:
            return self.failed(
                f"{len(missing)} of {len(names)} {self.kind} missing: {listing(missing)}",
                observed, names, missing=missing,
            )
        return self.passed(f"all {len(names)} {self.kind} exist", observed, names)


class CriticalTablesCheck(TablesExistCheck):
    name = "critical_tables"
    title = "Critical tables exist"
    seed_tests = (7,)
    config_field = "critical_tables"
    kind = "critical tables"


CHECK = CriticalTablesCheck()
