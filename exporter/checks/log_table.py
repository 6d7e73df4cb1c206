"""Seed tests 1 and 2: backup_verification_log exists with the migration's shape and
its status constraint is in force.

The constraint is judged from its catalog definition, not by inserting a row with a
bad status as the seed's report did: pgbv writes nothing but its own log rows, and
its check sessions are read-only anyway.
"""

from __future__ import annotations

from exporter import logschema
from exporter.checks.base import Check, CheckContext
from exporter.config import TargetConfig
from exporter.result import CheckResult

# Enough for the one-line message; the full list goes into observed.
_SHOWN = 3


class LogTableCheck(Check):
    name = "log_table"
    title = "Verification log table and status constraint"
    seed_tests = (1, 2)
    uses_log_db = True

    def applies(self, target: TargetConfig) -> bool:
        return True

    def run(self, ctx: CheckContext) -> CheckResult:
        observed = logschema.inspect(ctx.log_conn)
        expected = logschema.summary()
        if observed.relkind is None:
            return self.failed(
                f"{logschema.TABLE} does not exist; run pgbv migrate",
                [f"table {logschema.TABLE} does not exist"], expected,
            )
        # The functions have their own check; one fault should fail one check.
        problems = logschema.table_differences(observed)
        not_validated = logschema.constraint_not_validated(observed)
        if not_validated:
            problems.append(not_validated)
        if problems:
            shown = "; ".join(problems[:_SHOWN])
            more = f" (and {len(problems) - _SHOWN} more)" if len(problems) > _SHOWN else ""
            return self.failed(
                f"{observed.qualified} does not match the migration: {shown}{more}",
                problems, expected, differences=problems, schema=observed.schema,
            )
        return self.passed(
            f"{observed.qualified} matches the migration: {expected}, constraint validated",
            logschema.as_data(observed), expected, schema=observed.schema,
        )


CHECK = LogTableCheck()
