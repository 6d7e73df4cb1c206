"""Seed 'Integration': the functions the application calls exist (any argument list)."""

from __future__ import annotations

from exporter.catalog import find_functions, listing
from exporter.checks.base import Check, CheckContext
from exporter.config import TargetConfig
from exporter.result import CheckResult


class RequiredFunctionsCheck(Check):
    name = "required_functions"
    title = "Required functions"

    def applies(self, target: TargetConfig) -> bool:
        return bool(target.checks.required_functions)

    def run(self, ctx: CheckContext) -> CheckResult:
        names = list(dict.fromkeys(ctx.target.checks.required_functions))
        found = find_functions(ctx.conn, names)
        signatures = {
            name: [f"{f.schema}.{f.name}({f.arguments})" for f in found[name]] for name in names if name in found
        }
        missing = [name for name in names if name not in found]
        if missing:
            return self.failed(
                f"{len(missing)} of {len(names)} required functions missing: {listing(missing)}",
                signatures, names, missing=missing,
            )
        return self.passed(f"all {len(names)} required functions exist", signatures, names)


CHECK = RequiredFunctionsCheck()
