"""Seed test 8: critical tables hold rows, and none lost many since the last run.

Counts come from the catalog (pg_class.reltuples, kept by ANALYZE and vacuum),
so a table of a billion rows costs what a table of ten does. A table the
catalog has no figure for, or says is empty, is counted exactly instead: an
alarm about an empty table must not rest on a stale estimate.
"""

from __future__ import annotations

from typing import Any

from exporter.catalog import MAX_EXACT_COUNTS, Table, counted, exact_row_counts, listing
from exporter.checks.base import Check, CheckContext
from exporter.config import TargetConfig
from exporter.result import CheckResult


def _needs_exact(table: Table) -> bool:
    # PostgreSQL 14+ stores -1 before the first vacuum or analyze; 13 stores 0, which
    # looks like an empty table: both are confirmed by counting.
    return table.reltuples <= 0


def _previous_counts(previous: dict[str, Any] | None) -> dict[str, Any]:
    counts = (previous or {}).get("row_counts")
    return counts if isinstance(counts, dict) else {}


def _number(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return int(value)


def count_rows(conn, tables: list[Table]) -> tuple[dict[str, int | None], dict[str, str]]:
    """Rows per table (by the name asked for): the catalog estimate, else an exact count
    (all in one statement), else None when too many tables would need one. Also used
    on the live database by restore drills, to compare a restored copy with it."""
    to_count = [table for table in tables if _needs_exact(table)]
    exact = exact_row_counts(conn, to_count) if len({t.oid for t in to_count}) <= MAX_EXACT_COUNTS else {}
    counts: dict[str, int | None] = {}
    methods: dict[str, str] = {}
    for table in tables:
        if not _needs_exact(table):
            counts[table.requested], methods[table.requested] = round(table.reltuples), "estimate"
        elif table.oid in exact:
            counts[table.requested], methods[table.requested] = exact[table.oid], "exact"
        else:
            counts[table.requested], methods[table.requested] = None, "unknown"
    return counts, methods


class RowCountsCheck(Check):
    name = "row_counts"
    title = "Row counts"
    seed_tests = (8,)

    def applies(self, target: TargetConfig) -> bool:
        return bool(target.checks.critical_tables)

    def run(self, ctx: CheckContext) -> CheckResult:
        checks = ctx.target.checks
        names = list(dict.fromkeys(checks.critical_tables))
        found = ctx.tables(names)
        tables = [found[name] for name in names if name in found]
        missing = [name for name in names if name not in found]

        counts, methods = count_rows(ctx.conn, tables)
        allowed_empty = set(checks.allow_empty_tables)
        limit = checks.max_row_drop_percent
        previous = _previous_counts(ctx.previous)

        problems, unknown, compared, uncompared = [], [], 0, []
        for table in tables:
            name, count = table.requested, counts[table.requested]
            if count is None:
                unknown.append(name)
                continue
            if count == 0 and not {name, table.qualified} & allowed_empty:
                problems.append(f"{name} is empty")
            before = _number(previous.get(name))
            if before is None:
                uncompared.append(name)
                continue
            compared += 1
            if before > 0 and (before - count) * 100 > limit * before:
                drop = (before - count) * 100 / before
                problems.append(f"{name} dropped from {before} to {count} rows ({drop:.1f}%, more than {limit:g}%)")

        total = sum(count for count in counts.values() if count is not None)
        parts = [f"{counted(total, 'row')} in {counted(len(tables), 'critical table')}"]
        if problems:
            parts.append("; ".join(problems))
        elif compared:
            note = f" (no previous count for {listing(uncompared)})" if uncompared else ""
            parts.append(f"no drop beyond {limit:g}% since the last run{note}")
        else:
            parts.append("no previous run to compare with")
        if unknown:
            parts.append(
                f"row count unknown for {listing(unknown)}: no catalog estimate, and more than "
                f"{MAX_EXACT_COUNTS} tables would need an exact count (run ANALYZE)"
            )
        if missing:
            parts.append(f"not found (see critical_tables): {listing(missing)}")

        outcome = "fail" if problems else "warn" if unknown else "pass"
        expected = {"min_rows": 1, "allow_empty_tables": sorted(allowed_empty), "max_row_drop_percent": limit}
        return self.result(
            outcome, "; ".join(parts), counts, expected, row_counts=counts, row_count_methods=methods,
        )

CHECK = RowCountsCheck()
