"""Reports of verification runs: text (a table, coloured on a terminal), JSON
(the design's structure) and Markdown (in the style of the seed's report, with
the figures this run measured)."""

from __future__ import annotations

import json
import os
from datetime import datetime
from typing import Any, TextIO

from exporter.result import VERDICT_BY_EXIT, RunResult

STATUS_ORDER = {"success": 0, "warning": 1, "failure": 2}

# The seed report's fifteen tests and the check (or step) that now stands for each.
SEED_TESTS: tuple[tuple[int, str, str], ...] = (
    (1, "Table creation", "log_table"),
    (2, "Constraint validation", "log_table"),
    (3, "Insert record", "record"),
    (4, "Function get_latest_backup_verification()", "log_functions"),
    (5, "Function get_backup_verification_history()", "log_functions"),
    (6, "Function cleanup_old_backup_verification_logs()", "log_functions"),
    (7, "Critical tables exist", "critical_tables"),
    (8, "Row counts", "row_counts"),
    (9, "RLS policies active", "rls_policies"),
    (10, "Database size", "database_size"),
    (11, "Priority 1 indexes", "required_indexes"),
    (12, "Verification log functional (success rate)", "success_rate"),
    (13, "Priority 1 tables", "required_tables"),
    (14, "Index coverage", "index_coverage"),
    (15, "Audit logs table", "required_tables"),
)


def worst_status(results: list[RunResult]) -> str:
    return max((r.status for r in results), key=STATUS_ORDER.__getitem__)


def worst_verdict(results: list[RunResult]) -> str:
    """The verdict of several runs, as the exit code ranks them (unknown is the worst)."""
    return VERDICT_BY_EXIT[max(r.exit_code for r in results)]


def human_bytes(size: float | None) -> str:
    if size is None:
        return "unknown"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


# --- JSON ------------------------------------------------------------------------------


def run_as_dict(result: RunResult) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": str(result.id) if result.id else None,
        "target": result.target,
        "verified_at": result.verified_at.isoformat(),
        "status": result.status,
        "verdict": result.verdict,
        "checks_passed": result.checks_passed,
        "checks_failed": result.checks_failed,
        "checks_warned": result.checks_warned,
        "duration_seconds": round(result.duration_seconds, 3),
        "backup": result.backup_dict(),
        "checks": [check.as_dict() for check in result.checks],
    }
    if result.backup is not None and result.backup.info is None:
        out["backup_problem"] = result.backup.error or result.backup.missing
    if result.unreachable is not None:
        out["error"] = result.unreachable
    if result.record_error is not None:
        out["record_error"] = result.record_error
    out["facts"] = result.facts
    return out


def render_json(results: list[RunResult]) -> str:
    if len(results) == 1:
        data: Any = run_as_dict(results[0])
    else:
        data = {"status": worst_status(results), "verdict": worst_verdict(results),
                "targets": [run_as_dict(r) for r in results]}
    return json.dumps(data, indent=2, default=str)


# --- text ------------------------------------------------------------------------------

_COLOURS = {"pass": "32", "warn": "33", "fail": "31", "error": "31", "success": "32", "warning": "33", "failure": "31",
            "unknown": "35"}


def use_colour(stream: TextIO) -> bool:
    return stream.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


def _paint(text: str, key: str, colour: bool) -> str:
    return f"\033[{_COLOURS[key]}m{text}\033[0m" if colour and key in _COLOURS else text


def _render_text_one(result: RunResult, colour: bool) -> str:
    lines = []
    status = _paint(result.verdict.upper(), result.verdict, colour)
    if result.unreachable is not None:
        # The exit code is 3: nothing was judged, so the verdict is UNKNOWN (the row is a failure).
        lines.append(f"target {result.target}: {status}: unreachable: {result.unreachable}")
    else:
        lines.append(
            f"target {result.target}: {status} - {result.checks_passed} passed, {result.checks_failed} failed, "
            f"{result.checks_warned} warned, in {result.duration_seconds:.2f} s at {_iso(result.verified_at)}"
        )
    if result.backup is not None:
        info = result.backup.info
        if info is not None:
            lines.append(
                f"backup: {info.id} ({info.kind}), finished {_iso(info.finished_at)}, "
                f"{info.age_hours(result.verified_at):.1f} h ago, {human_bytes(info.size_bytes)}"
            )
        else:
            lines.append(f"backup: none found ({result.backup.error or result.backup.missing})")
    if result.unreachable is not None and not result.checks:
        # Nothing ran (no backup source to ask): the first line said all there is.
        return "\n".join(lines)
    width = max([len(c.name) for c in result.checks] + [5])
    lines.append(f"  {'CHECK'.ljust(width)}  OUTCOME  RESULT")
    for check in result.checks:
        outcome = _paint(check.outcome.ljust(7), check.outcome, colour)
        lines.append(f"  {check.name.ljust(width)}  {outcome}  {check.message}")
    if result.facts.get("skipped_checks"):
        lines.append(f"skipped, they need the database: {', '.join(result.facts['skipped_checks'])}")
    if result.unreachable is None or result.id is not None or result.record_error is not None:
        lines.append(_recorded(result))
    return "\n".join(lines)


def _recorded(result: RunResult) -> str:
    if result.id is not None:
        return f"recorded in backup_verification_log as {result.id}"
    if result.record_error is not None:
        return f"NOT recorded: {result.record_error}"
    return "not recorded (--no-record)"


def render_text(results: list[RunResult], colour: bool = False) -> str:
    return "\n\n".join(_render_text_one(r, colour) for r in results)


# --- Markdown --------------------------------------------------------------------------

_MARK = {"pass": "✅", "warn": "⚠️", "fail": "❌", "error": "❌", "success": "✅", "warning": "⚠️", "failure": "❌",
         "unknown": "❓"}


def _md_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (dict, list)):
        return f"`{json.dumps(value, default=str)}`"
    return f"`{value}`"


def _md_table(title: tuple[str, str], rows: dict[str, Any]) -> list[str]:
    out = [f"| {title[0]} | {title[1]} |", "|---|---|"]
    out += [f"| {key} | {value if value is not None else 'unknown'} |" for key, value in rows.items()]
    return out


def _render_markdown_one(result: RunResult) -> str:
    status = result.verdict.upper()
    lines = [
        f"# Backup Verification Report: {result.target}",
        "",
        f"**Verified at:** {_iso(result.verified_at)}  ",
        f"**Duration:** {result.duration_seconds:.2f} s  ",
        f"**Status:** {_MARK[result.verdict]} {status}  ",
    ]
    if result.id is not None:
        lines.append(f"**Recorded as:** `{result.id}` in `backup_verification_log`")
    elif result.record_error is not None:
        lines.append(f"**Not recorded:** {result.record_error}")
    else:
        lines.append("**Not recorded** (`--no-record`)")
    lines.append("")
    if result.unreachable is not None:
        lines += ["## Result", "", f"The target could not be reached, so nothing was verified: {result.unreachable}", ""]
        return "\n".join(lines)
    total = len(result.checks)
    lines += [
        "## Summary",
        "",
        f"- **{result.checks_passed}/{total} checks passed**, {result.checks_failed} failed or could not run, "
        f"{result.checks_warned} with warnings",
    ]
    if result.backup is not None:
        info = result.backup.info
        if info is not None:
            lines.append(
                f"- Newest backup: `{info.id}` ({info.kind}), finished {_iso(info.finished_at)}, "
                f"{info.age_hours(result.verified_at):.1f} h old, {human_bytes(info.size_bytes)}"
            )
        else:
            lines.append(f"- Newest backup: none ({result.backup.error or result.backup.missing})")
    if result.facts.get("database_size_bytes") is not None:
        lines.append(f"- Database size: {human_bytes(result.facts['database_size_bytes'])}")
    lines += ["", "## Checks", ""]
    seed_numbers: dict[str, list[int]] = {}
    for number, _title, name in SEED_TESTS:
        seed_numbers.setdefault(name, []).append(number)
    for index, check in enumerate(result.checks, start=1):
        seeds = seed_numbers.get(check.name)
        suffix = f" (seed test{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})" if seeds else ""
        lines += [
            f"### Test {index}: {check.name}{suffix} {_MARK[check.outcome]}",
            f"**Status:** {check.outcome.upper()}  ",
            f"**Result:** {check.message}  ",
            f"**Observed:** {_md_value(check.observed)}  ",
            f"**Expected:** {_md_value(check.expected)}  ",
            f"**Took:** {check.duration_seconds * 1000:.1f} ms",
            "",
        ]
        for key, header in (("row_counts", ("Table", "Rows")), ("policies", ("Table", "Policies")), ("index_counts", ("Table", "Indexes"))):
            if isinstance(check.data.get(key), dict) and check.data[key]:
                lines += _md_table(header, check.data[key]) + [""]
    lines += ["## The seed report's fifteen tests", "", "| Test | What | Check | Status |", "|---|---|---|---|"]
    for number, title, name in SEED_TESTS:
        if name == "record":
            outcome = "pass" if result.id is not None else ("fail" if result.record_error else "not run")
            where = f"row `{result.id}`" if result.id else "recording"
        else:
            check = result.check(name)
            outcome = check.outcome if check is not None else "not run"
            where = f"`{name}`"
        mark = _MARK.get(outcome, "➖")
        lines.append(f"| {number} | {title} | {where} | {mark} {outcome.upper()} |")
    lines.append("")
    return "\n".join(lines)


def render_markdown(results: list[RunResult]) -> str:
    return "\n---\n\n".join(_render_markdown_one(r) for r in results)


def render(results: list[RunResult], fmt: str, stream: TextIO) -> str:
    if fmt == "json":
        return render_json(results)
    if fmt == "markdown":
        return render_markdown(results)
    return render_text(results, colour=use_colour(stream))
