"""Seed test 14: every critical and required table has at least one index,
except those exempted by design (checks.index_coverage_exempt)."""

from __future__ import annotations

from exporter.catalog import ROW_KINDS, TABLE_KINDS, Table, counted, listing
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

    def _found(self, ctx: CheckContext) -> dict[str, Table]:
        # Each name as its own check finds it: critical tables are tables, and a
        # required one may also be a materialized view (required_tables).
        checks = ctx.target.checks
        critical = set(checks.critical_tables)
        return {
            **ctx.tables([n for n in checks.required_tables if n not in critical], ROW_KINDS),
            **ctx.tables(checks.critical_tables, TABLE_KINDS),
        }

    def run(self, ctx: CheckContext) -> CheckResult:
        names = _tables(ctx.target)
        found = self._found(ctx)
        # An exemption names a table however it is spelled: it is matched by the object.
        exempt_oids = {t.oid for t in ctx.tables(ctx.target.checks.index_coverage_exempt, ROW_KINDS).values()}
        exempt = [name for name in names if name in found and found[name].oid in exempt_oids]
        # Only valid indexes count: an invalid one serves no query.
        counts = {name: found[name].valid_indexes for name in names if name in found and name not in exempt}
        bare = [name for name, count in counts.items() if count == 0]
        missing = [name for name in names if name not in found]

        if bare:
            parts = [f"no valid index on {listing(bare)}"]
        else:
            total = counted(sum(counts.values()), "index", "indexes")
            parts = [f"{counted(len(counts), 'table')} checked, each with an index ({total} in all)"]
        if exempt:
            parts.append(f"exempt (index_coverage_exempt): {listing(exempt)}")
        if missing:
            parts.append(f"not found, not checked here: {listing(missing)}")
        outcome = "fail" if bare else "pass"
        extra = {"exempt": exempt} if exempt else {}
        return self.result(outcome, "; ".join(parts), counts, "at least 1 index per table", index_counts=counts, **extra)


CHECK = IndexCoverageCheck()
