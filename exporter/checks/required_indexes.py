"""Seed test 11: the indexes the application relies on exist and can be used."""

from __future__ import annotations

from exporter.catalog import find_indexes, listing
from exporter.checks.base import Check, CheckContext
from exporter.config import TargetConfig
from exporter.result import CheckResult


class RequiredIndexesCheck(Check):
    name = "required_indexes"
    title = "Required indexes"
    seed_tests = (11,)

    def applies(self, target: TargetConfig) -> bool:
        return bool(target.checks.required_indexes)

    def run(self, ctx: CheckContext) -> CheckResult:
        names = list(dict.fromkeys(ctx.target.checks.required_indexes))
        found = find_indexes(ctx.conn, names)
        missing = [name for name in names if name not in found]
        # A failed CREATE INDEX CONCURRENTLY leaves its index behind, invalid: present
        # in the catalog, maintained on every write, never used by a query.
        broken = [name for name in names if name in found and not (found[name].valid and found[name].ready)]
        usable = [f"{found[n].schema}.{found[n].name}" for n in names if n in found and n not in broken]

        problems = []
        if missing:
            problems.append(f"missing: {listing(missing)}")
        for name in broken:
            index = found[name]
            problems.append(
                f"{name} on {index.table} is INVALID (a CREATE INDEX CONCURRENTLY failed or is still "
                "running; drop it and create it again)"
            )
        if problems:
            return self.failed("; ".join(problems), usable, names, missing=missing, invalid=broken)
        return self.passed(f"all {len(names)} required indexes exist and are valid", usable, names)


CHECK = RequiredIndexesCheck()
