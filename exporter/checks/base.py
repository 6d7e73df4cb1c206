"""The shape every check has. One module per check in this package; the
registry in ``exporter.checks`` lists them in report order."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

import psycopg

from exporter.catalog import ROW_KINDS, TABLE_KINDS, Table, find_tables
from exporter.config import TargetConfig
from exporter.result import BackupLookup, CheckResult, Outcome


@dataclass
class CheckContext:
    target: TargetConfig
    # The target, read-only session, one transaction per check; None when the target
    # could not be reached (then only the checks with needs_database False run).
    conn: psycopg.Connection | None
    # Where backup_verification_log lives (the same object when no log_dsn); None when unreachable.
    log_conn: psycopg.Connection | None
    backup: BackupLookup | None  # None when the target has no backup source
    previous: dict[str, Any] | None  # verification_details of this target's previous recorded run
    now: datetime
    drill: bool = False  # run on-demand checks (the restore drill) this time
    keep: bool = False  # a drill leaves its scratch copy for inspection
    full_read: bool = False  # `pgbv verify --full-read`: every source's full read runs now, whatever its cadence
    accept: Any = None  # row_counts.Acceptance: `pgbv accept-rows` takes these counts as intended
    # The restore check's DrillResult of this run (None: no drill ran), for rpo.
    drill_result: Any = None
    # What find_tables said about each name this run (any of ROW_KINDS), None for no such relation.
    _tables: dict[str, Table | None] = field(default_factory=dict, repr=False)

    def tables(self, names: list[str], kinds: str = TABLE_KINDS) -> dict[str, Table]:
        """catalog.find_tables for this run: six checks ask about the same tables, and
        at 10,000 of them each look-up costs a query and 10,000 objects (bench/,
        section 2). Names not asked about before are looked up together, for every
        relkind any check counts (ROW_KINDS), and each caller gets those of its kinds:
        critical_tables and required_tables naming the same tables cost one look-up, not
        two. As in SQL, a bare name means the first relation of that name on the
        search_path, whatever its kind; the facts are those of the first check that
        asked, moments earlier in the same run."""
        unknown = [name for name in dict.fromkeys(names) if name not in self._tables]
        if unknown:
            found = find_tables(self.conn, unknown, ROW_KINDS)
            self._tables.update({name: found.get(name) for name in unknown})
        return {
            name: table for name in names
            if (table := self._tables[name]) is not None and table.kind in kinds
        }

    def server_version_num(self) -> int | None:
        """The target's server_version_num: the session's; without one (the target is
        unreachable), the one the previous recorded run saw; else None (a tool chooser
        then takes the newest tool it finds)."""
        if self.conn is not None:
            return self.conn.info.server_version
        known = (self.previous or {}).get("server_version_num")
        return known if isinstance(known, int) and not isinstance(known, bool) and known > 0 else None


class Check:
    """A check answers one question about a target and returns a CheckResult.

    Subclasses set ``name``, ``title`` and ``seed_tests`` (the numbers of the seed
    report's tests the check stands for), and implement ``applies`` and ``run``.
    ``run`` raises psycopg errors freely: the runner turns them into ``error``.
    """

    name: ClassVar[str]
    title: ClassVar[str]
    seed_tests: ClassVar[tuple[int, ...]] = ()
    # True when the check reads the log database rather than the target.
    uses_log_db: ClassVar[bool] = False
    # True for checks that run only when asked for or due (ctx.drill), not on every run.
    on_demand: ClassVar[bool] = False
    # True when the check opens its own short transactions instead of running in one
    # (a long check must not hold a transaction open on the live database).
    own_transactions: ClassVar[bool] = False
    # False for checks that judge only what the backup source says: they still run when
    # the target cannot be reached (ctx.conn is None), so an outage of the database
    # does not hide the state of its backups. A check that sets it False and uses
    # ctx.conn when there is one must say in its result what it skipped without it.
    needs_database: ClassVar[bool] = True

    def applies(self, target: TargetConfig) -> bool:
        raise NotImplementedError

    def applies_to_run(self, ctx: CheckContext) -> bool:
        """Whether the check runs this time; what the run asked for (--full-read) may add to applies()."""
        return self.applies(ctx.target)

    def run(self, ctx: CheckContext) -> CheckResult:
        raise NotImplementedError

    def result(self, outcome: Outcome, message: str, observed: Any = None, expected: Any = None, **data: Any) -> CheckResult:
        return CheckResult(self.name, outcome, message, observed, expected, data=data)

    def passed(self, message: str, observed: Any = None, expected: Any = None, **data: Any) -> CheckResult:
        return self.result("pass", message, observed, expected, **data)

    def warned(self, message: str, observed: Any = None, expected: Any = None, **data: Any) -> CheckResult:
        return self.result("warn", message, observed, expected, **data)

    def failed(self, message: str, observed: Any = None, expected: Any = None, **data: Any) -> CheckResult:
        return self.result("fail", message, observed, expected, **data)

    def errored(self, message: str, observed: Any = None, expected: Any = None, **data: Any) -> CheckResult:
        return self.result("error", message, observed, expected, **data)
