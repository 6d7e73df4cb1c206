"""Seed tests 13 and 15: tables the application needs exist (they may be empty).
A partitioned table or a materialized view holds the application's rows as well
as a table does, so it counts; a plain view does not (it holds none)."""

from __future__ import annotations

from exporter.catalog import ROW_KINDS
from exporter.checks.critical_tables import TablesExistCheck


class RequiredTablesCheck(TablesExistCheck):
    name = "required_tables"
    title = "Required tables exist"
    seed_tests = (13, 15)
    config_field = "required_tables"
    kind = "required tables"
    relkinds = ROW_KINDS


CHECK = RequiredTablesCheck()
