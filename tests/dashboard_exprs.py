"""The PromQL of the Grafana dashboards, with Grafana's variables substituted.

Shared by tests/test_dashboards.py (promtool parses every expression, each names
only exported metrics) and the end-to-end test, which runs every expression
against a real Prometheus scraping a real pgbv:

    from tests.dashboard_exprs import dashboard_expressions
    for expr in dashboard_expressions(target="app"):
        ...  # GET /api/v1/query?query=<expr>

A panel about backups, restore drills or RLS policies is empty, by design, for a
target without them: expression_needs(expr) names what an expression needs.

Substitution follows what Grafana sends to Prometheus: a multi-value or "All"
variable becomes a regex (our variables' allValue is ".*"), `$__range` and
friends become durations.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_DIR = ROOT / "grafana" / "dashboards"
GOLDEN = ROOT / "tests" / "golden" / "full.prom"

# Grafana's built-in variables that can appear in a Prometheus query, with
# plausible values (a 1h dashboard range, a 1m step).
BUILTINS: dict[str, str] = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__interval_ms": "60000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}

# $name, ${name}, ${name:format} and the deprecated [[name]] / [[name:format]].
_VARIABLE = re.compile(r"\$\{(\w+)(?::[\w-]+)?\}|\[\[(\w+)(?::[\w-]+)?\]\]|\$(\w+)")

# PromQL words that are not metric names: aggregations, functions (they are
# followed by "(" anyway), operators, modifiers and literals.
_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "atan2", "inf", "nan", "start", "end",
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARD_DIR.glob("*.json"))


def load_dashboards() -> dict[str, dict]:
    """Every dashboard JSON by file name."""
    return {path.name: json.loads(path.read_text()) for path in dashboard_files()}


def iter_panels(panels: list[dict]) -> Iterator[dict]:
    """Every panel, with the panels nested in (collapsed) rows."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def raw_expressions(dashboard: dict) -> list[tuple[str, str, str]]:
    """(panel title, refId, expression) of every panel query, variables unsubstituted."""
    return [(panel.get("title", ""), target.get("refId", ""), target["expr"])
            for panel in iter_panels(dashboard.get("panels", []))
            for target in panel.get("targets", []) if target.get("expr")]


def variables_used(expr: str) -> set[str]:
    return {next(g for g in match.groups() if g) for match in _VARIABLE.finditer(expr)}


def substitute(expr: str, target: str = "app", job: str = ".*", instance: str = ".*") -> str:
    """The expression as Grafana would send it, for the given variable values.

    target/job/instance are placed inside `=~"..."` matchers, so they may be
    regexes (".*" is the "All" value). An unknown variable raises KeyError.
    """
    values = {"target": target, "job": job, "instance": instance, **BUILTINS}

    def replace(match: re.Match) -> str:
        name = next(g for g in match.groups() if g)
        if name not in values:
            raise KeyError(f"unknown Grafana variable ${name} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(replace, expr)


def dashboard_expressions(target: str = "app", job: str = ".*", instance: str = ".*") -> list[str]:
    """Every panel expression of every dashboard, variables substituted (the e2e test's entry point)."""
    return [substitute(expr, target, job, instance)
            for dashboard in load_dashboards().values()
            for _, _, expr in raw_expressions(dashboard)]


def panel_expression(file_name: str, title: str, ref_id: str = "A", **values: str) -> str:
    """One panel query by dashboard file, panel title and refId, variables substituted."""
    for panel_title, ref, expr in raw_expressions(load_dashboards()[file_name]):
        if panel_title == title and ref == ref_id:
            return substitute(expr, **values)
    raise KeyError((file_name, title, ref_id))


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers outside strings, label
    matchers, grouping lists and range brackets that are neither functions nor
    PromQL keywords."""
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'', '""', expr)  # string literals
    text = re.sub(r"\{[^{}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\[\]]*\]", " ", text)  # range and subquery durations
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", text)  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", text):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


# Series that exist only for a target with a backup source ("backup"; the
# completion time and size read 0 without one, and panels leave 0 out), with
# restore drills enabled ("restore"), with row-level security tables ("rls") or
# whose backup source keeps a WAL archive ("wal"; the measured RPO needs both
# "wal" and "restore").
_RPO_METRICS = frozenset({"pgbv_restore_recovered_until_timestamp_seconds", "pgbv_restore_rpo_seconds",
                          "pgbv_restore_rpo_objective_seconds"})
FEATURE_METRICS: dict[str, frozenset[str]] = {
    "backup": frozenset({"pgbv_backup_last_completion_timestamp_seconds", "pgbv_backup_age_seconds",
                         "pgbv_backup_size_bytes", "pgbv_backup_warn_age_seconds", "pgbv_backup_max_age_seconds"}),
    "restore": frozenset({"pgbv_restore_duration_seconds", "pgbv_restore_last_success_timestamp_seconds",
                          "pgbv_rto_target_seconds", "pgbv_restore_interval_seconds", "pgbv_restore_rows"}) | _RPO_METRICS,
    "rls": frozenset({"pgbv_rls_policies"}),
    "wal": frozenset({"pgbv_recovery_window_start_timestamp_seconds",
                      "pgbv_recovery_window_end_timestamp_seconds"}) | _RPO_METRICS,
}


def expression_needs(expr: str) -> frozenset[str]:
    """The features ("backup", "restore", "rls", "wal") a target must have for this
    expression to return data; empty when it always does. An expression that
    combines its parts with `or` (the fleet's severity, counts with a vector(0)
    fallback) returns data without them. tests/test_dashboards.py checks this
    against the golden target "reporting", which has none of them."""
    if re.search(r"\bor\b", expr):
        return frozenset()
    names = metric_names(expr)
    return frozenset(feature for feature, metrics in FEATURE_METRICS.items() if names & metrics)


def exported_metrics() -> set[str]:
    """Metric names of tests/golden/full.prom's HELP lines: every metric pgbv exports."""
    return {line.split()[2] for line in GOLDEN.read_text().splitlines() if line.startswith("# HELP ")}
