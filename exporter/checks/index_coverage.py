"""Seed test 14: every critical and required table has at least one index."""

from __future__ import annotations

from exporter.catalog import counted, listing
from exporter.checks.base import Check, CheckContext
from exporter.config import TargetConfig
from exporter.result import CheckResult


def _tables(target: TargetConfig) -> list[str]:
    return list(dict.fromkeys(target.checks.critical_tables + target.checks.required_tables))


class IndexCoverageCheck(Check):
    name = "index_coverage"
    title = "Index coverage"
    seed_tests = (14,)

    def applies(self, target: TargetConfig) -> bool:
        return bool(_tables(target))

    def run(self, ctx: CheckContext) -> CheckResult:
        names = _tables(ctx.target)
        found = ctx.tables(names)
        # Only valid indexes count: an invalid one serves no query.
        counts = {name: found[name].valid_indexes for name in names if name in found}
        bare = [name for name, count in counts.items() if count == 0]
        missing = [name for name in names if name not in found]

        if bare:
            parts = [f"no valid index on {listing(bare)}"]
        else:
            total = counted(sum(counts.values()), "index", "indexes")
            parts = [f"{counted(len(counts), 'table')} checked, each with an index ({total} in all)"]
        if missing:
            parts.append(f"not found, not checked here: {listing(missing)}")
        outcome = "fail" if bare else "pass"
        return self.result(outcome, "; ".join(parts), counts, "at least 1 index per table", index_counts=counts)


CHECK = IndexCoverageCheck()
