"""Seed test 8: critical tables hold rows, and none lost many of them.

How a table is counted (docs/checks.md, "Row counts"):
- Its statistics are read for its LEAVES (the table itself, or every leaf partition
  of a partitioned table), in one statement: the catalog's reltuples (VACUUM and
  ANALYZE) and the counters the server moves at each commit (n_live_tup,
  n_mod_since_analyze). The estimate is n_live_tup, which a DELETE moves at once;
  it is trusted while it differs from reltuples by no more than the rows changed
  since ANALYZE explain, and no more rows than its pages now hold at the density
  ANALYZE saw. Otherwise the estimate is *stale*: the table was never
  vacuumed or analyzed since it was created or truncated (reltuples -1), the
  counters were reset (pg_stat_reset, a crash) or counted rows twice.
- Exactly (count(*), one statement, within the statement timeout): every table that
  is stale, estimated empty, or estimated below checks.exact_count_max_rows, at most
  MAX_EXACT_COUNTS per run; stale and empty ones first, then those whose estimate
  shows a drop, then the smallest. A table this role may not read is counted only
  when nothing else can answer (see count_rows).
- Not at all when every leaf has no page (pg_relation_size 0, asked only of leaves
  whose reltuples is 0 or -1): 0 rows for certain, no privilege needed.
- A stale table that is not counted keeps the catalog's figure, which pgbv could not
  confirm: a warning naming it, and the figure does not move its baseline.

A drop is measured from the highest count of the last checks.row_drop_window_days
days, carried from run to run in verification_details.row_baseline (per table, the
days whose maximum is not exceeded by a later day: one entry for a table that only
grows), keyed by the table (schema.name from the catalog; runs recorded before were
keyed by the configured spelling, still read). While a table fails, its highest count
is kept as the baseline, so the failure stays until `pgbv accept-rows` takes the
current count as the new baseline. Tables not counted in a run (another
critical_tables list for one run) keep their baselines unchanged, until they age out
of the window (a failing one does not).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, Callable

from exporter.catalog import MAX_EXACT_COUNTS, LeafStatistics, Table, counted, exact_row_counts, leaf_statistics, listing
from exporter.checks.base import CheckContext, Check
from exporter.config import TargetConfig
from exporter.result import CheckResult

DEFAULT_EXACT_COUNT_MAX_ROWS = 1_000_000


@dataclass(frozen=True)
class Acceptance:
    """`pgbv accept-rows`: the current counts of these tables (None: every critical table) are intended."""

    by: str
    reason: str | None = None
    tables: tuple[str, ...] | None = None

    def covers(self, table: Table) -> bool:
        return self.tables is None or bool({table.requested, table.qualified} & set(self.tables))


@dataclass
class RowCounts:
    counts: dict[str, int | None] = field(default_factory=dict)  # by the name asked for; None: unknown
    methods: dict[str, str] = field(default_factory=dict)  # exact | estimate | unknown
    stale: list[str] = field(default_factory=list)  # names whose statistics could not be trusted
    # Stale and not counted: the figure is the catalog's, which pgbv could not confirm.
    unconfirmed: list[str] = field(default_factory=list)  # the role may count them, but the limit was reached
    uncountable: list[str] = field(default_factory=list)  # the role may not count them


def _leaf_estimate(leaf: LeafStatistics) -> tuple[float, bool]:
    """(estimated rows, whether the estimate can be trusted)."""
    if leaf.reltuples >= 0:
        # VACUUM and ANALYZE set reltuples and n_live_tup to the same figure; since then
        # each committed change moved n_live_tup by one and n_mod_since_analyze by one.
        # Slack for rows committed while VACUUM or ANALYZE ran.
        slack = 50 + 0.01 * leaf.reltuples
        explained = abs(leaf.live - leaf.reltuples) <= leaf.changed + slack
        # Counters at zero with fewer changes than rows: reset (pg_stat_reset, a crash, a
        # database made from a template), not an emptied table.
        reset = leaf.live == 0 and leaf.reltuples > 0 and leaf.changed < leaf.reltuples
        # Nor can there be more rows than the pages now hold at the density ANALYZE saw.
        # This catches counters that counted rows twice: a session's changes still
        # pending when ANALYZE set the counters are added on top (PostgreSQL 15+).
        # (The pages are read only for leaves that grew past autoanalyze's threshold.)
        fits = True
        if leaf.pages is not None and leaf.relpages > 0:
            capacity = leaf.reltuples / leaf.relpages * max(leaf.pages, leaf.relpages)
            fits = leaf.live <= capacity * 1.1 + slack
        if explained and fits and not reset:
            return float(leaf.live), True
        return leaf.reltuples, False
    # Never vacuumed or analyzed since it was created or truncated: nothing to check
    # the counters against, and right after a TRUNCATE they may not be published yet.
    return float(max(leaf.live, 0)), False


@dataclass
class _Estimate:
    rows: float = 0.0  # from the commit-time counters
    trusted: bool = True  # every leaf's counters agree with the catalog
    catalog: float | None = 0.0  # the leaves' reltuples; None when one has none (-1)
    countable: bool = True  # this role may count the table exactly
    empty: bool = True  # no leaf has a page: no row for certain, nothing to count

    @property
    def needs_count(self) -> bool:
        """No figure to go by, or one that says empty: only a count may say so."""
        if self.trusted:
            return self.rows < 1
        return self.catalog is None or self.catalog < 1


def _estimates(conn, tables: list[Table]) -> dict[int, _Estimate]:
    by_table = {table.oid: _Estimate() for table in tables}
    for leaf in leaf_statistics(conn, tables):
        estimate = by_table[leaf.table_oid]
        estimate.countable = leaf.countable
        estimate.empty = estimate.empty and leaf.empty
        if leaf.empty:
            continue  # no page, no row: certain, whatever its statistics say (a new partition has none)
        rows, trusted = _leaf_estimate(leaf)
        estimate.rows += rows
        estimate.trusted = estimate.trusted and trusted
        estimate.catalog = None if estimate.catalog is None or leaf.reltuples < 0 else estimate.catalog + leaf.reltuples
    return by_table


def count_rows(
    conn,
    tables: list[Table],
    exact_count_max_rows: int = DEFAULT_EXACT_COUNT_MAX_ROWS,
    suspicious: Callable[[Table, float], bool] | None = None,
) -> RowCounts:
    """Rows per table (by the name asked for), as the module docstring says: estimates
    from the leaves' statistics, exact counts where they are stale, empty or small
    (at most MAX_EXACT_COUNTS, in one statement). suspicious(table, estimate) marks
    tables to count exactly before the other small ones. Also used on the live
    database by restore drills, to compare a restored copy with it.

    A table this role may not count (no SELECT, or row-level security applies: the
    least-privilege role of docs/deploy.md) is counted only when nothing else can
    answer (no estimate at all, or one that says empty), and then is an error
    naming the permission, as before; a small or stale one uses its estimate (the
    catalog's when the counters are stale: listed in uncountable). A table with no
    page is 0 rows, without a count."""
    estimates = _estimates(conn, tables)
    unique = list({table.oid: table for table in tables}.values())

    def wanted(table: Table) -> bool:
        estimate = estimates[table.oid]
        if estimate.empty:
            return False
        if estimate.needs_count:
            return True
        return estimate.countable and (not estimate.trusted or estimate.rows < exact_count_max_rows)

    def priority(table: Table) -> tuple[int, float]:
        estimate = estimates[table.oid]
        if estimate.needs_count or not estimate.trusted:
            return 0, estimate.rows
        return (1 if suspicious is not None and suspicious(table, estimate.rows) else 2), estimate.rows

    chosen = sorted((t for t in unique if wanted(t)), key=priority)[:MAX_EXACT_COUNTS]
    exact = exact_row_counts(conn, chosen)
    out = RowCounts()
    for table in tables:
        name = table.requested
        estimate = estimates[table.oid]
        if estimate.empty:  # no page: as certain as a count, and no privilege needed
            out.counts[name], out.methods[name] = 0, "exact"
            continue
        if not estimate.trusted:
            out.stale.append(name)
        if table.oid in exact:
            out.counts[name], out.methods[name] = exact[table.oid], "exact"
        elif estimate.trusted:
            out.counts[name], out.methods[name] = round(estimate.rows), "estimate"
        elif not estimate.needs_count:
            out.counts[name], out.methods[name] = round(estimate.catalog), "estimate"
            (out.unconfirmed if estimate.countable else out.uncountable).append(name)
        else:
            out.counts[name], out.methods[name] = None, "unknown"
    return out


def _number(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return None
    return int(value)


# Days are ISO dates ('2026-12-02'), kept as strings: they sort as dates, and 10,000
# tables' baselines are read and written every run without parsing a date each.
Day = str
Baseline = dict[str, list[tuple[Day, int]]]


def _is_day(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 10 and value[4] == value[7] == "-"


def previous_baseline(previous: dict[str, Any] | None, today: date, window_days: int) -> Baseline:
    """Per table, the (day, highest count that day) entries still inside the window,
    else the newest one. A run recorded before baselines existed only has row_counts:
    they stand as today's."""
    previous = previous or {}
    last, first = today.isoformat(), (today - timedelta(days=window_days - 1)).isoformat()
    stored = previous.get("row_baseline")
    baseline: Baseline = {}
    if isinstance(stored, dict) and isinstance(stored.get("tables"), dict):
        for name, entries in stored["tables"].items():
            seen = [
                (entry[0], count) for entry in (entries if isinstance(entries, list) else [])
                if isinstance(entry, list) and len(entry) == 2 and _is_day(entry[0])
                and (count := _number(entry[1])) is not None
            ]
            kept = [entry for entry in seen if first <= entry[0] <= last]
            if seen and not kept:
                # No run inside the window (pgbv stopped for longer): the last count seen
                # stands, as the previous run's did, rather than no comparison at all.
                kept = [max(seen)]
            if kept:
                baseline[name] = kept
        return baseline
    counts = previous.get("row_counts")
    for name, value in (counts if isinstance(counts, dict) else {}).items():
        if (count := _number(value)) is not None:
            baseline[name] = [(last, count)]
    return baseline


def baseline_key_of(table: Table) -> str:
    """The key of a table's baseline: the table itself (schema.name as the catalog spells
    it), so a respelled critical_tables entry finds it. Runs recorded before were keyed by
    the configured spelling (table.requested): look that up second."""
    return table.qualified


def entries_for(baseline: dict[str, Any], table: Table) -> Any:
    """A table's stored baseline entries (row_baseline.tables), by either key; None when absent.
    Also for other checks that read row_baseline (backup_content)."""
    return baseline.get(baseline_key_of(table)) or baseline.get(table.requested)


def with_count(entries: list[tuple[Day, int]], today: Day, count: int) -> list[tuple[Day, int]]:
    """The entries after seeing count today: a day is dropped once a later day has as
    many rows or more (it can no longer be the window's highest)."""
    kept = [entry for entry in entries if entry[1] > count]
    if kept and kept[-1][0] == today:
        return kept  # today already saw more
    return kept + [(today, count)]


def highest(entries: list[tuple[Day, int]]) -> tuple[Day, int] | None:
    return max(entries, key=lambda entry: (entry[1], entry[0])) if entries else None


# Tables not counted this run (no longer configured, or configured under another
# spelling for one run) whose baselines are carried forward: a bound on the stored size.
MAX_CARRIED_TABLES = 10_000


def _stored(baseline: Baseline, window_days: int, failing: set[str]) -> dict[str, Any]:
    return {
        "window_days": window_days,
        "tables": {name: [[day, count] for day, count in entries] for name, entries in baseline.items()},
        "failing": sorted(failing & baseline.keys()),
    }


def _carried(previous: dict[str, Any] | None, before: Baseline, used: set[str], first: Day) -> tuple[Baseline, set[str]]:
    """Baselines of the tables this run did not count, unchanged: one run with another
    critical_tables list must not wipe them. Kept while a day of theirs is inside the
    window, or while they were failing; at most MAX_CARRIED_TABLES, the newest first."""
    stored = (previous or {}).get("row_baseline")
    listed = stored.get("failing") if isinstance(stored, dict) else None
    failing = {name for name in listed if isinstance(name, str)} if isinstance(listed, list) else set()
    kept = [
        (name, entries) for name, entries in before.items()
        if name not in used and (name in failing or max(entries)[0] >= first)
    ]
    kept.sort(key=lambda item: max(item[1])[0], reverse=True)
    carried = dict(kept[:MAX_CARRIED_TABLES])
    return carried, failing & carried.keys()


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
        # One table named twice (pgbench_accounts, public.pgbench_accounts) is counted
        # once, under the first spelling.
        by_oid: dict[int, Table] = {}
        for name in names:
            if name in found:
                by_oid.setdefault(found[name].oid, found[name])
        tables = list(by_oid.values())
        missing = [name for name in names if name not in found]
        limit, window = checks.max_row_drop_percent, checks.row_drop_window_days
        before = previous_baseline(ctx.previous, ctx.now.date(), window)
        today = ctx.now.date().isoformat()
        first_day = (ctx.now.date() - timedelta(days=window - 1)).isoformat()
        accept: Acceptance | None = ctx.accept

        def dropped(rows: float, high: int) -> bool:
            return high > 0 and (high - rows) * 100 > limit * high

        def entries_of(table: Table) -> list[tuple[Day, int]]:
            return entries_for(before, table) or []

        def suspicious(table: Table, rows: float) -> bool:
            top = highest(entries_of(table))
            return top is not None and dropped(rows, top[1])

        seen = count_rows(ctx.conn, tables, checks.exact_count_max_rows, suspicious)
        counts = seen.counts
        allowed_empty = set(checks.allow_empty_tables)

        # Tables missing this run, no longer configured, or configured under another
        # spelling keep their baselines (aged out of the window unless failing).
        used = {key for table in tables for key in (baseline_key_of(table), table.requested)}
        after, failing = _carried(ctx.previous, before, used, first_day)
        problems, unknown, compared, uncompared, accepted = [], [], 0, [], {}
        unconfirmed = set(seen.unconfirmed) | set(seen.uncountable)
        for table in tables:
            name, key, count = table.requested, baseline_key_of(table), counts[table.requested]
            entries = entries_of(table)
            top = highest(entries)
            if count is None:
                unknown.append(name)
                if entries:
                    after[key] = entries
                continue
            if accept is not None and accept.covers(table):
                accepted[name] = {"from": top[1] if top else None, "to": count}
                after[key] = [(today, count)]
                continue
            if count == 0 and not {name, table.qualified} & allowed_empty:
                problems.append(f"{name} is empty")
            if top is None:
                uncompared.append(name)
                if name not in unconfirmed:
                    after[key] = [(today, count)]
                continue
            compared += 1
            if dropped(count, top[1]):
                drop = (top[1] - count) * 100 / top[1]
                problems.append(
                    f"{name} has {count} rows, {drop:.1f}% below its highest count of the last "
                    f"{counted(window, 'day')} ({top[1]} on {top[0]}; more than {limit:g}%)"
                )
                # Kept until a person accepts the new count: the drop must not become the norm.
                after[key] = [(today, top[1])]
                failing.add(key)
            elif name in unconfirmed:
                after[key] = entries  # a figure pgbv could not confirm does not move the baseline
            else:
                after[key] = with_count(entries, today, count)

        exact = [name for name, method in seen.methods.items() if method == "exact"]
        total = sum(count for count in counts.values() if count is not None)
        first = f"{counted(total, 'row')} in {counted(len(tables), 'critical table')}"
        if exact:
            first += f" ({len(exact)} counted exactly)" if len(exact) < len(tables) else " (all counted exactly)"
        parts = [first]
        if accepted:
            moved = ", ".join(f"{name} {change['from'] if change['from'] is not None else '-'} -> {change['to']}"
                              for name, change in accepted.items())
            reason = f" ({accept.reason})" if accept.reason else ""
            parts.append(f"new counts accepted by {accept.by}{reason}: {moved}")
        if problems:
            parts.append("; ".join(problems))
            parts.append(f"if intended: pgbv accept-rows --target {ctx.target.name}")
        elif compared:
            note = f" (no earlier count for {listing(uncompared)})" if uncompared else ""
            parts.append(f"no drop beyond {limit:g}% from the highest count of the last {counted(window, 'day')}{note}")
        elif not accepted:
            parts.append("no previous run to compare with")
        if unknown:
            parts.append(
                f"row count unknown for {listing(unknown)}: statistics never gathered or reset, and more than "
                f"{MAX_EXACT_COUNTS} tables needed an exact count this run (run ANALYZE)"
            )
        if seen.uncountable:
            parts.append(
                f"row count not confirmed for {listing(seen.uncountable)}: statistics stale (counters reset or not yet "
                f"analyzed) and the role may not count them: grant SELECT or run ANALYZE"
            )
        if seen.unconfirmed:
            parts.append(
                f"row count not confirmed for {listing(seen.unconfirmed)}: statistics stale (counters reset or not yet "
                f"analyzed) and more than {MAX_EXACT_COUNTS} tables needed an exact count this run (run ANALYZE)"
            )
        if missing:
            parts.append(f"not found (see critical_tables): {listing(missing)}")

        outcome = "fail" if problems else "warn" if unknown or unconfirmed else "pass"
        expected = {
            "min_rows": 1, "allow_empty_tables": sorted(allowed_empty), "max_row_drop_percent": limit,
            "row_drop_window_days": window, "exact_count_max_rows": checks.exact_count_max_rows,
        }
        data: dict[str, Any] = {
            "row_counts": counts, "row_count_methods": seen.methods, "row_baseline": _stored(after, window, failing),
        }
        if seen.stale:
            data["stale_statistics"] = seen.stale
        if accept is not None:
            data["accepted_rows"] = {"by": accept.by, "reason": accept.reason, "tables": accepted}
        return self.result(outcome, "; ".join(parts), counts, expected, **data)


CHECK = RowCountsCheck()
