"""Seed 'Data integrity': foreign keys and check constraints on critical tables
are validated. One added NOT VALID was never checked against the rows that
were there before it, so those rows may break it."""

from __future__ import annotations

from exporter.catalog import counted, find_constraints, listing
from exporter.checks.base import Check, CheckContext
from exporter.config import TargetConfig
from exporter.result import CheckResult

_KINDS = {"f": "foreign key", "c": "check"}


class ConstraintsValidCheck(Check):
    name = "constraints_valid"
    title = "Constraints validated"

    def applies(self, target: TargetConfig) -> bool:
        return bool(target.checks.critical_tables)

    def run(self, ctx: CheckContext) -> CheckResult:
        names = list(dict.fromkeys(ctx.target.checks.critical_tables))
        found = ctx.tables(names)
        by_oid = {table.oid: table.requested for table in found.values()}
        # Only FK and CHECK: PostgreSQL 18 lists NOT NULL constraints here too ('n').
        constraints = find_constraints(ctx.conn, list(found.values()), kinds="".join(_KINDS))
        invalid = [f"{by_oid[c.table_oid]}.{c.name}" for c in constraints if not c.validated]
        kinds = {f"{by_oid[c.table_oid]}.{c.name}": _KINDS[c.kind] for c in constraints if not c.validated}
        missing = [name for name in names if name not in found]

        if invalid:
            parts = ["NOT VALID (never checked against existing rows): "
                     + listing([f"{name} ({kinds[name]})" for name in invalid])]
        else:
            parts = [
                f"{counted(len(constraints), 'foreign-key and check constraint')} on "
                f"{counted(len(found), 'critical table')}, all validated"
            ]
        if missing:
            parts.append(f"not found, not checked here: {listing(missing)}")
        result = self.failed if invalid else self.passed
        return result("; ".join(parts), invalid, [], not_valid=invalid)


CHECK = ConstraintsValidCheck()
