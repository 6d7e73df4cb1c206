"""Seed test 9: row-level security is on, with enough policies, where it must be."""

from __future__ import annotations

from exporter.catalog import counted
from exporter.checks.base import Check, CheckContext
from exporter.config import TargetConfig
from exporter.result import CheckResult


def _tables(target: TargetConfig) -> list[str]:
    checks = target.checks
    if checks.rls_tables:
        # Named explicitly: RLS must be on, even where 0 policies are enough.
        return list(dict.fromkeys(checks.rls_tables))
    # By default every critical table; min_policies {table: 0} exempts one that has no
    # row-level security by design.
    return [name for name in dict.fromkeys(checks.critical_tables) if checks.min_policies.get(name, 1) > 0]


class RlsPoliciesCheck(Check):
    name = "rls_policies"
    title = "RLS policies active"
    seed_tests = (9,)

    def applies(self, target: TargetConfig) -> bool:
        return bool(_tables(target))

    def run(self, ctx: CheckContext) -> CheckResult:
        names = _tables(ctx.target)
        minimum = {name: ctx.target.checks.min_policies.get(name, 1) for name in names}
        found = ctx.tables(names)

        problems = []
        for name in names:
            table = found.get(name)
            if table is None:
                problems.append(f"{name} not found")
                continue
            if not table.rls_enabled:
                problems.append(f"RLS disabled on {name}")
            if table.policies < minimum[name]:
                problems.append(f"{name} has {counted(table.policies, 'policy', 'policies')}, needs {minimum[name]}")

        policies = {name: found[name].policies for name in names if name in found}
        enabled = {name: found[name].rls_enabled for name in names if name in found}
        if problems:
            return self.failed("; ".join(problems), policies, minimum, policies=policies, rls_enabled=enabled)
        total = counted(sum(policies.values()), "policy", "policies")
        return self.passed(
            f"RLS enabled on {counted(len(names), 'table')} with {total}, each at its minimum",
            policies, minimum, policies=policies, rls_enabled=enabled,
        )


CHECK = RlsPoliciesCheck()
