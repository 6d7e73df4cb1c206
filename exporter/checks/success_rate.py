"""Seed test 12: the share of this target's recorded runs that succeeded.

A row belongs to this target when its verification_details names it, or names no
target at all: rows written by hand before pgbv (the seed's own test row) have none,
and they are this database's history.

The ratio judges the backups, never itself: a run counts as succeeded when its
other checks did not fail (record.SUCCESS_RATIOS_SQL), and runs that never reached
the database or the backups are left out (and said). Below the floor this check warns
and never fails: a failure recorded because the ratio was low would pull the ratio
lower, and the run after it would fail again, whatever the backups. The trend pages
through the PgBackupVerificationSuccessRatioLow alert instead.
"""

from __future__ import annotations

from psycopg.errors import UndefinedFunction

from exporter import logschema, record
from exporter.checks.base import Check, CheckContext
from exporter.config import TargetConfig
from exporter.record import LONG_WINDOW, RATIO_WINDOWS, SHORT_WINDOW, RunCounts
from exporter.result import CheckResult

# Below this many runs a ratio says more about chance than about the backups:
# one failed run out of two would read as 50%.
MIN_RUNS = 3
WINDOW_DAYS = RATIO_WINDOWS[SHORT_WINDOW]
LONG_WINDOW_DAYS = RATIO_WINDOWS[LONG_WINDOW]


def _share(runs: RunCounts) -> str:
    if not runs.counted:
        return "no runs"
    return f"{100 * runs.ratio:.1f}% ({runs.succeeded} of {runs.counted} runs)"


def _succeeded(runs: RunCounts) -> str:
    return (f"{runs.succeeded} of {runs.counted} runs in the last {WINDOW_DAYS} days succeeded "
            f"({100 * runs.ratio:.1f}%)")


def _left_out(runs: RunCounts) -> str:
    if not runs.unreached:
        return ""
    return (f"; {runs.unreached} run(s) that could not reach the database or the backups "
            f"in {WINDOW_DAYS} days are left out")


class SuccessRateCheck(Check):
    name = "success_rate"
    title = "Verification success rate"
    seed_tests = (12,)
    uses_log_db = True

    def applies(self, target: TargetConfig) -> bool:
        return True

    def run(self, ctx: CheckContext) -> CheckResult:
        floor = ctx.target.checks.min_success_ratio
        expected = f">= {100 * floor:g}% over {WINDOW_DAYS} days (at least {MIN_RUNS} runs)"
        # Looked up first rather than caught: an error inside the runner's
        # transaction would leave it unusable for the rest of this check.
        schema = logschema.locate(ctx.log_conn)
        if schema is None:
            return self.errored(f"{logschema.TABLE} does not exist; run pgbv migrate", None, expected)
        try:
            windows = record.success_ratios(ctx.log_conn, ctx.target.name, ctx.now)
        except UndefinedFunction:
            # A table made by hand, or migrated before the target function existed.
            return self.errored(
                f"{schema}.{logschema.TARGET_FUNCTION}(jsonb) does not exist; run pgbv migrate", None, expected,
            )
        short, long = windows[SHORT_WINDOW], windows[LONG_WINDOW]
        data = {
            "success_ratio_7d": short.ratio,
            "success_ratio_30d": long.ratio,
            "runs_7d": short.counted,
            "runs_30d": long.counted,
            "unreached_runs_7d": short.unreached,
            "unreached_runs_30d": long.unreached,
        }
        observed = f"{_share(short)} in {WINDOW_DAYS} days; {_share(long)} in {LONG_WINDOW_DAYS} days"
        if short.counted < MIN_RUNS:
            return self.passed(
                f"not enough history yet ({short.counted} runs in {WINDOW_DAYS} days; needs {MIN_RUNS})"
                + _left_out(short),
                observed, expected, **data,
            )
        if short.ratio < floor:
            return self.warned(
                f"{_succeeded(short)}, below the floor of {100 * floor:g}% (min_success_ratio); "
                f"{LONG_WINDOW_DAYS} days: {_share(long)}" + _left_out(short),
                observed, expected, **data,
            )
        return self.passed(
            f"{_succeeded(short)}; {LONG_WINDOW_DAYS} days: {_share(long)}" + _left_out(short),
            observed, expected, **data,
        )


CHECK = SuccessRateCheck()
