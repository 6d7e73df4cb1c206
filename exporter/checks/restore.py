"""Restore drill: the newest backup restores, within the RTO, into a copy that
passes the schema checks and holds what the live database holds.

It runs only when a drill is due (the last successful one is older than
restore.interval_days) or asked for (`pgbv restore-drill`), and it manages its
own short transactions on the live database: a drill may take an hour, and a
transaction held open that long would hold back vacuum.
"""

from __future__ import annotations

from exporter.checks.backup_age import BackupCheck
from exporter.checks.base import CheckContext
from exporter.config import TargetConfig
from exporter.result import CheckResult


class RestoreCheck(BackupCheck):
    name = "restore"
    title = "Restore drill"
    on_demand = True
    own_transactions = True

    def applies(self, target: TargetConfig) -> bool:
        return target.restore.enabled and target.backup.source != "none"

    def run(self, ctx: CheckContext) -> CheckResult:
        from exporter.restore import DrillError, RestoreFailed, drill

        problem = self.problem(ctx.backup)
        if problem is not None:
            return problem
        info = ctx.backup.info
        try:
            result = drill(ctx.target, info, keep=ctx.keep)
        except RestoreFailed as exc:
            return self.failed(f"backup {info.id} does not restore: {exc}", expected="restores without error")
        except DrillError as exc:
            return self.errored(f"the restore drill could not run: {exc}")
        ctx.drill_result = result
        data = {"restore": result.as_dict()}
        rto = ctx.target.restore.rto_minutes * 60
        observed = {"duration_seconds": round(result.duration_seconds, 3), "rows": result.rows}
        expected = {"rto_seconds": rto, "copy_checks": "pass", "rows": "within max_row_drop_percent of live"}
        failures = [f"the restored copy fails {c.name}: {c.message}" for c in result.failed_checks] + result.problems
        if failures:
            return self.failed("; ".join(failures), observed, expected, **data)
        # A physical drill restores files and starts a server: no items, no pg_restore.
        restored = (f"restored ({result.items} items)", "pg_restore") if result.kind == "logical" else \
            ("restored", "restore and start-up")
        summary = (
            f"backup {info.id} {restored[0]} and checked in {result.duration_seconds:.1f} s "
            f"({restored[1]} {result.restore_seconds:.1f} s); the copy passes {len(result.copy_checks)} checks and "
            f"holds {sum(v or 0 for v in result.rows.values())} rows in {len(result.rows)} critical tables"
        )
        if result.recovered_until is not None:
            summary += (f"; replayed the WAL archive ({result.recovery_target['kind']}) until "
                        f"{result.recovered_until.isoformat()}, RPO {result.rpo_seconds:.0f} s")
        if result.kept_dsn:
            summary += f"; kept for inspection: psql '{result.kept_dsn}'"
        if result.notes:
            summary += "; " + "; ".join(result.notes)
        if result.duration_seconds > rto:
            return self.warned(f"{summary}; slower than the RTO of {ctx.target.restore.rto_minutes:g} min", observed, expected, **data)
        return self.passed(summary, observed, expected, **data)


CHECK = RestoreCheck()
