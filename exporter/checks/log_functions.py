"""Seed tests 4, 5 and 6: the log table's three functions exist with the migration's
signatures, and the two read-only ones answer as the contract says.

cleanup_old_backup_verification_logs is never called: it deletes rows, and the
check session is read-only. Its signature (``retention_days integer DEFAULT 90``,
returning integer) is what pgbv cleanup and the daemon rely on.
"""

from __future__ import annotations

from datetime import datetime, timezone

from psycopg import sql

from exporter import logschema
from exporter.checks.base import Check, CheckContext
from exporter.config import TargetConfig
from exporter.result import CheckResult

HISTORY_DAYS = 7  # the seed's test 5 asked for the last 7 days
_SHOWN = 3

# One statement, so the functions and the table are read from the same snapshot and
# a run recorded meanwhile cannot make them disagree. The comparison with the table
# proves the functions go by verified_at (the newest run), not by created_at.
_CALL_SQL = """
WITH latest AS (
    SELECT count(*) AS n, max(l.verified_at) AS newest FROM {schema}.{latest}() AS l
), history AS (
    SELECT h.verified_at, h.ordinality AS ord FROM {schema}.{history}(%(days)s) WITH ORDINALITY AS h
), ordered AS (
    SELECT bool_and(lag_at IS NULL OR lag_at >= verified_at) AS newest_first
      FROM (SELECT verified_at, lag(verified_at) OVER (ORDER BY ord) AS lag_at FROM history) AS x
)
SELECT latest.n, latest.newest,
       (SELECT count(*) FROM history), (SELECT max(verified_at) FROM history),
       coalesce(ordered.newest_first, true),
       (SELECT max(t.verified_at) FROM {schema}.{table} AS t),
       (SELECT count(*) FROM {schema}.{table} AS t
         WHERE t.verified_at >= now() - make_interval(days => %(days)s))
  FROM latest, ordered
"""


def _iso(value: datetime | None) -> str | None:
    # In UTC whatever the session's TimeZone, so reports from different servers compare.
    return value.astimezone(timezone.utc).isoformat() if value is not None else None


class LogFunctionsCheck(Check):
    name = "log_functions"
    title = "Verification log functions"
    seed_tests = (4, 5, 6)
    uses_log_db = True

    def applies(self, target: TargetConfig) -> bool:
        return True

    def run(self, ctx: CheckContext) -> CheckResult:
        observed = logschema.inspect(ctx.log_conn)
        expected = [f"{f.name}({f.arguments_declared})" for f in logschema.FUNCTIONS]
        problems = logschema.function_differences(observed)
        if not problems and not observed.exists:
            problems = [f"the functions exist but {logschema.TABLE} does not; run pgbv migrate"]
        if problems:
            shown = "; ".join(problems[:_SHOWN])
            more = f" (and {len(problems) - _SHOWN} more)" if len(problems) > _SHOWN else ""
            return self.failed(shown + more, problems, expected, differences=problems)

        query = sql.SQL(_CALL_SQL).format(
            schema=sql.Identifier(observed.function_schema),
            latest=sql.Identifier(logschema.LATEST.name),
            history=sql.Identifier(logschema.HISTORY.name),
            table=sql.Identifier(logschema.TABLE),
        )
        row = ctx.log_conn.execute(query, {"days": HISTORY_DAYS}).fetchone()
        latest_rows, latest_at, history_rows, history_newest, newest_first, table_newest, table_rows = row
        latest_call = f"{logschema.LATEST.name}()"
        history_call = f"{logschema.HISTORY.name}({HISTORY_DAYS})"
        result = {
            latest_call: {"rows": latest_rows, "verified_at": _iso(latest_at)},
            history_call: {"rows": history_rows, "newest_verified_at": _iso(history_newest)},
        }
        data = {
            "latest_verified_at": _iso(latest_at),
            "history_rows_7d": history_rows,
        }

        wrong = []
        if latest_rows > 1:
            wrong.append(f"{latest_call} returned {latest_rows} rows, expected at most 1")
        if latest_at != table_newest:
            wrong.append(
                f"{latest_call} returned the run of {_iso(latest_at) or 'nothing'}, but the newest run "
                f"in {logschema.TABLE} is of {_iso(table_newest) or 'nothing'} (it must go by verified_at)"
            )
        if history_rows != table_rows:
            wrong.append(
                f"{history_call} returned {history_rows} rows, but {logschema.TABLE} holds {table_rows} "
                f"of the last {HISTORY_DAYS} days"
            )
        if not newest_first:
            wrong.append(f"{history_call} does not return the newest run first")
        if wrong:
            return self.failed("; ".join(wrong), result, expected, differences=wrong, **data)

        if latest_rows == 0:
            answer = f"{latest_call} returned no row (the log is empty)"
        else:
            answer = f"{latest_call} returned the run of {_iso(latest_at)}"
        return self.passed(
            f"all 3 functions present with the expected signatures; {answer}; "
            f"{history_call} returned {history_rows} row{'s' if history_rows != 1 else ''}",
            result, expected, **data,
        )


CHECK = LogFunctionsCheck()
