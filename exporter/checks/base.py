"""The shape every check has. One module per check in this package; the
registry in ``exporter.checks`` lists them in report order."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

import psycopg

from exporter.catalog import Table, find_tables
from exporter.config import TargetConfig
from exporter.result import BackupLookup, CheckResult, Outcome


@dataclass
class CheckContext:
    target: TargetConfig
    conn: psycopg.Connection  # the target, read-only session, one transaction per check
    log_conn: psycopg.Connection  # where backup_verification_log lives (the same object when no log_dsn)
    backup: BackupLookup | None  # None when the target has no backup source
    previous: dict[str, Any] | None  # verification_details of this target's previous recorded run
    now: datetime
    drill: bool = False  # run on-demand checks (the restore drill) this time
    keep: bool = False  # a drill leaves its scratch copy for inspection
    accept: Any = None  # row_counts.Acceptance: `pgbv accept-rows` takes these counts as intended
    # What find_tables said about each name this run, None for no such table.
    _tables: dict[str, Table | None] = field(default_factory=dict, repr=False)

    def tables(self, names: list[str]) -> dict[str, Table]:
        """catalog.find_tables for this run: six checks ask about the same tables, and
        at 10,000 of them each look-up costs a query and 10,000 objects (bench/,
        section 2). Names not asked about before are looked up together; the facts
        are those of the first check that asked, moments earlier in the same run."""
        unknown = [name for name in dict.fromkeys(names) if name not in self._tables]
        if unknown:
            found = find_tables(self.conn, unknown)
            self._tables.update({name: found.get(name) for name in unknown})
        return {name: table for name in names if (table := self._tables[name]) is not None}


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

    def applies(self, target: TargetConfig) -> bool:
        raise NotImplementedError

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
