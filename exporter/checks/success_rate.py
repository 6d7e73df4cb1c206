"""Seed test 12: the share of this target's recorded runs that succeeded.

A row belongs to this target when its verification_details names it, or names no
target at all: rows written by hand before pgbv (the seed's own test row) have none,
and they are this database's history.
"""

from __future__ import annotations

from psycopg import sql
from psycopg.errors import UndefinedFunction

from exporter import logschema
from exporter.checks.base import Check, CheckContext
from exporter.config import TargetConfig
from exporter.result import CheckResult

# Below this many runs a ratio says more about chance than about the backups:
# one failed run out of two would read as 50%.
MIN_RUNS = 3
WINDOW_DAYS = 7
LONG_WINDOW_DAYS = 30

_RATIO_SQL = """
SELECT count(*) FILTER (WHERE l.verified_at >= %(now)s - make_interval(days => %(short)s)),
       count(*) FILTER (WHERE l.verified_at >= %(now)s - make_interval(days => %(short)s) AND l.status = 'success'),
       count(*),
       count(*) FILTER (WHERE l.status = 'success')
  FROM {table} AS l
 WHERE l.verified_at >= %(now)s - make_interval(days => %(long)s)
   AND ({target_of}(l.verification_details) = %(target)s OR {target_of}(l.verification_details) IS NULL)
"""


def _ratio(ok: int, runs: int) -> float | None:
    return ok / runs if runs else None


def _share(ok: int, runs: int) -> str:
    if not runs:
        return "no runs"
    return f"{100 * ok / runs:.1f}% ({ok} of {runs} runs)"


def _succeeded(ok: int, runs: int) -> str:
    return f"{ok} of {runs} runs in the last {WINDOW_DAYS} days succeeded ({100 * ok / runs:.1f}%)"


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
        query = sql.SQL(_RATIO_SQL).format(
            table=sql.Identifier(schema, logschema.TABLE),
            target_of=sql.Identifier(schema, logschema.TARGET_FUNCTION),
        )
        try:
            runs_7d, ok_7d, runs_30d, ok_30d = ctx.log_conn.execute(
                query,
                {"now": ctx.now, "short": WINDOW_DAYS, "long": LONG_WINDOW_DAYS, "target": ctx.target.name},
            ).fetchone()
        except UndefinedFunction:
            # A table made by hand, or migrated before the target function existed.
            return self.errored(
                f"{schema}.{logschema.TARGET_FUNCTION}(jsonb) does not exist; run pgbv migrate", None, expected,
            )
        data = {
            "success_ratio_7d": _ratio(ok_7d, runs_7d),
            "success_ratio_30d": _ratio(ok_30d, runs_30d),
            "runs_7d": runs_7d,
            "runs_30d": runs_30d,
        }
        observed = f"{_share(ok_7d, runs_7d)} in {WINDOW_DAYS} days; {_share(ok_30d, runs_30d)} in {LONG_WINDOW_DAYS} days"
        if runs_7d < MIN_RUNS:
            return self.passed(
                f"not enough history yet ({runs_7d} runs in {WINDOW_DAYS} days; needs {MIN_RUNS})",
                observed, expected, **data,
            )
        ratio = ok_7d / runs_7d
        if ratio < floor:
            return self.failed(
                f"{_succeeded(ok_7d, runs_7d)}, below the floor of {100 * floor:g}% (min_success_ratio); "
                f"{LONG_WINDOW_DAYS} days: {_share(ok_30d, runs_30d)}",
                observed, expected, **data,
            )
        return self.passed(
            f"{_succeeded(ok_7d, runs_7d)}; {LONG_WINDOW_DAYS} days: {_share(ok_30d, runs_30d)}",
            observed, expected, **data,
        )


CHECK = SuccessRateCheck()
