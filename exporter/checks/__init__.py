"""The check registry: every check, in report order. One module per check,
each defining ``CHECK``; a check whose configuration is empty does not run."""

from __future__ import annotations

import importlib

from exporter.checks.base import Check, CheckContext

ORDER: tuple[str, ...] = (
    "log_table",
    "log_functions",
    "critical_tables",
    "row_counts",
    "rls_policies",
    "database_size",
    "required_indexes",
    "success_rate",
    "required_tables",
    "index_coverage",
    "required_functions",
    "constraints_valid",
    "backup_age",
    "backup_size",
    "backup_readable",
    "backup_content",
    "wal_archiving",
    "wal_continuity",
    "restore",
    "rpo",
)


def all_checks() -> list[Check]:
    return [importlib.import_module(f"exporter.checks.{name}").CHECK for name in ORDER]


__all__ = ["ORDER", "Check", "CheckContext", "all_checks"]
