"""What a restored copy is checked for, and how it is compared with live; shared
by logical and physical drills."""

from __future__ import annotations

from datetime import datetime, timezone

import psycopg

from exporter.catalog import MAX_EXACT_COUNTS, exact_row_counts, find_tables
from exporter.checks.base import CheckContext
from exporter.checks.row_counts import count_rows
from exporter.checks.runner import run_check
from exporter.config import TargetConfig
from exporter.db import connect
from exporter.result import CheckResult

# The checks a restored copy must pass, as the live database does.
COPY_CHECKS = ("critical_tables", "required_tables", "rls_policies", "required_indexes", "required_functions", "constraints_valid")


def live_counts(target: TargetConfig, names: list[str]) -> dict[str, int | None]:
    with connect(target) as conn:
        with conn.transaction():
            found = find_tables(conn, names)
            counts = count_rows(conn, list(found.values()), target.checks.exact_count_max_rows).counts
    return {name: counts.get(name) for name in names}


def copy_counts(conn: psycopg.Connection, names: list[str]) -> dict[str, int | None]:
    # A restored copy has no statistics: every count is exact, in statements of at most 100 tables.
    with conn.transaction():
        found = find_tables(conn, names)
        tables = list(found.values())
        exact: dict[int, int] = {}
        for start in range(0, len(tables), MAX_EXACT_COUNTS):
            exact.update(exact_row_counts(conn, tables[start:start + MAX_EXACT_COUNTS]))
    return {name: (exact.get(found[name].oid) if name in found else None) for name in names}


def compare(target: TargetConfig, live: dict[str, int | None], copy: dict[str, int | None]) -> list[str]:
    limit = target.checks.max_row_drop_percent
    allowed_empty = set(target.checks.allow_empty_tables)
    problems = []
    for name, live_rows in live.items():
        copy_rows = copy.get(name)
        if live_rows is None:
            continue  # missing live too: the live checks report it
        if copy_rows is None:
            problems.append(f"{name} is missing in the restored copy ({live_rows} rows live)")
        elif copy_rows == 0 and live_rows > 0 and name not in allowed_empty:
            problems.append(f"{name} is empty in the restored copy ({live_rows} rows live)")
        elif live_rows > 0 and (live_rows - copy_rows) * 100 > limit * live_rows:
            drop = (live_rows - copy_rows) * 100 / live_rows
            problems.append(
                f"{name} has {copy_rows} rows in the restored copy and {live_rows} live "
                f"({drop:.1f}% fewer, more than {limit:g}%)"
            )
    return problems


def copy_checks(target: TargetConfig, conn: psycopg.Connection) -> list[CheckResult]:
    from exporter.checks import all_checks

    ctx = CheckContext(target=target, conn=conn, log_conn=conn, backup=None, previous=None, now=datetime.now(timezone.utc))
    return [run_check(check, ctx) for check in all_checks() if check.name in COPY_CHECKS and check.applies(target)]
