"""Seed tests 13 and 15: tables the application needs exist (they may be empty)."""

from __future__ import annotations

from exporter.checks.critical_tables import TablesExistCheck


class RequiredTablesCheck(TablesExistCheck):
    name = "required_tables"
    title = "Required tables exist"
    seed_tests = (13, 15)
    config_field = "required_tables"
    kind = "required tables"


CHECK = RequiredTablesCheck()
