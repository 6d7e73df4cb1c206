"""sql/roles/pgbv_role.sql: a login role that runs every check and writes only the
log table. A full verification (CLI, then the daemon's locked run and cleanup) runs
as that role on the demo database; then the role is shown unable to read or change
one application row. Roles are cluster-wide: each test makes its own and drops it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
import yaml
from psycopg import errors, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from exporter.config import Settings
from exporter.daemon import Daemon
from exporter.pgtools import find_tool
from exporter.verify import verify_target
from tests.conftest import MIGRATIONS, SEED_CHECKS, execute, make_target

ROOT = Path(__file__).resolve().parent.parent
ROLE_SQL = ROOT / "sql" / "roles" / "pgbv_role.sql"
APP_TABLES = SEED_CHECKS["critical_tables"] + SEED_CHECKS["required_tables"]


def as_user(dsn: str, user: str) -> str:
    params = {k: v for k, v in conninfo_to_dict(dsn).items() if v is not None}
    params["user"] = user
    return make_conninfo(**params)


def psql(dsn: str, *variables: str, script: Path = ROLE_SQL) -> subprocess.CompletedProcess:
    tool = find_tool("psql")
    argv = [str(tool.path), "--no-psqlrc", "-X", "-q", "-d", dsn, "-f", str(script)]
    for variable in variables:
        argv += ["-v", variable]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


@pytest.fixture
def role(pg_server):
    name = f"pgbv_lp_{uuid.uuid4().hex[:10]}"
    granted_in: list[str] = []
    yield name, granted_in
    # DROP OWNED revokes what was granted in each database (and on shared objects); then the role can go.
    for dsn in granted_in:
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        except psycopg.Error:
            pass
    pg_server.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def grant(dsn: str, role: tuple[str, list[str]], *variables: str) -> subprocess.CompletedProcess:
    name, granted_in = role
    granted_in.append(dsn)
    proc = psql(dsn, f"role={name}", *variables)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture
def dump(demo_db, tmp_path, pg_server) -> Path:
    """A real pg_dump archive of the demo database (made as the superuser, as a backup job would)."""
    folder = tmp_path / "backups"
    folder.mkdir()
    tool = find_tool("pg_dump", pg_server.version_num)
    subprocess.run([str(tool.path), "-Fc", "-f", str(folder / "app.dump"), "-d", demo_db],
                   check=True, capture_output=True, timeout=120)
    return folder


def target_data(dsn: str, backups: Path, **checks) -> dict:
    return {
        "name": "app", "dsn": dsn, "connect_timeout_seconds": 5,
        "backup": {"source": "directory", "path": str(backups), "pattern": "*.dump", "min_size_mb": 0},
        "checks": {**SEED_CHECKS, **checks},
    }


def test_the_role_runs_every_check_and_records_its_run(demo_db, dump, role, pg_server, tmp_path):
    name, _ = role
    # A database made from a template starts with its counters reset; on a live server
    # autovacuum has set them. Without them this role could not confirm a count (a warning).
    execute(demo_db, "ANALYZE")
    proc = grant(demo_db, role, "password=Role-Pa55-only-here")
    assert "NOTICE" not in proc.stderr and "ERROR" not in proc.stderr
    # Safe to run again (roles are cluster-wide; a second database, a re-run by a DBA).
    grant(demo_db, role, "password=Role-Pa55-only-here")
    attributes = pg_server.execute(
        "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, rolcanlogin, rolpassword IS NOT NULL"
        " FROM pg_authid WHERE rolname = %s", [name])
    assert attributes == [(False, False, False, False, False, True, True)]

    config = tmp_path / "pgbv.yml"
    config.write_text(yaml.safe_dump({"targets": [target_data(as_user(demo_db, name), dump)],
                                      "spool_dir": str(tmp_path / "spool")}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGBV_")}
    proc = subprocess.run([sys.executable, "-m", "exporter", "verify", "--config", str(config), "--format", "json"],
                          capture_output=True, text=True, timeout=120, env=env)
    report = json.loads(proc.stdout)
    failed = [c for c in report["checks"] if c["outcome"] != "pass"]
    assert proc.returncode == 0 and report["status"] == "success", failed or proc.stderr
    names = {c["name"] for c in report["checks"]}
    assert {"log_table", "log_functions", "critical_tables", "row_counts", "rls_policies", "database_size",
            "required_indexes", "success_rate", "required_tables", "index_coverage", "required_functions",
            "constraints_valid", "backup_age", "backup_size"} <= names
    with psycopg.connect(demo_db) as conn:
        rows = conn.execute("SELECT id::text, status FROM backup_verification_log").fetchall()
    assert rows == [(report["id"], "success")]

    # The daemon's way: the replica lock, the insert, the snapshot, the daily cleanup.
    settings = Settings(**yaml.safe_load(config.read_text()))
    daemon = Daemon(settings)
    assert daemon.run_target(settings.targets[0], "schedule") is not None
    picture = daemon.refresh().targets[0]
    assert picture.up and picture.last_status == "success"
    daemon.cleanup()
    for command in (["history", "--days", "1"], ["cleanup", "--retention-days", "30"]):
        proc = subprocess.run([sys.executable, "-m", "exporter", *command, "--config", str(config)],
                              capture_output=True, text=True, timeout=60, env=env)
        assert proc.returncode == 0, (command, proc.stdout, proc.stderr)
    with psycopg.connect(demo_db) as conn:
        assert conn.execute("SELECT count(*) FROM backup_verification_log").fetchone()[0] == 2


def test_the_role_cannot_read_or_change_application_rows(demo_db, role, pg_server):
    name, _ = role
    grant(demo_db, role)
    with psycopg.connect(as_user(demo_db, name), autocommit=True) as conn:
        for table in APP_TABLES:
            for statement in (f"SELECT * FROM {table} LIMIT 1", f"SELECT count(*) FROM {table}",
                              f"UPDATE {table} SET id = DEFAULT", f"DELETE FROM {table}", f"TRUNCATE {table}",
                              f"INSERT INTO {table} DEFAULT VALUES", f"COPY {table} TO STDOUT"):
                with pytest.raises(errors.InsufficientPrivilege):
                    conn.execute(statement)
        # Its own log: rows are added, read and (past retention) deleted, never rewritten.
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("UPDATE backup_verification_log SET status = 'success'")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("TRUNCATE backup_verification_log")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("DROP TABLE backup_verification_log")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("CREATE DATABASE pgbv_lp_should_not_exist")
        # What the checks read stays readable.
        assert conn.execute("SELECT count(*) FROM pg_policies").fetchone()[0] > 0
        assert conn.execute("SELECT pg_database_size(current_database())").fetchone()[0] > 0
        conn.execute("SELECT * FROM pg_stat_archiver").fetchone()

    # Every table of the database but the log: no privilege of any kind, checked in the catalog.
    with psycopg.connect(demo_db, autocommit=True) as conn:
        leaks = conn.execute(
            """SELECT c.oid::regclass::text FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
                WHERE c.relkind IN ('r', 'p', 'v', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                  AND c.relname <> 'backup_verification_log'
                  AND has_table_privilege(%s, c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')""",
            [name]).fetchall()
        assert leaks == []
        if conn.info.server_version >= 150000:  # PUBLIC's CREATE on public went away in 15
            assert conn.execute("SELECT has_schema_privilege(%s, 'public', 'CREATE')", [name]).fetchone()[0] is False


def test_exact_counts_need_the_optional_grants_and_never_miscount(demo_db, dump, role):
    """A critical table the catalog has no estimate for is counted exactly. Without the
    optional grants that is an error naming the permission, never a wrong number; with
    SELECT (and BYPASSRLS for a table with row-level security) it passes."""
    name, _ = role
    with psycopg.connect(demo_db, autocommit=True) as conn:
        conn.execute("ANALYZE")  # the seed tables' counters, as autovacuum sets them on a live server
        conn.execute("CREATE TABLE fresh (id int PRIMARY KEY)")
        conn.execute("INSERT INTO fresh SELECT generate_series(1, 3)")
        conn.execute("ALTER TABLE fresh ENABLE ROW LEVEL SECURITY")
        conn.execute("CREATE POLICY nobody ON fresh USING (false)")
        assert conn.execute("SELECT reltuples FROM pg_class WHERE relname = 'fresh'").fetchone()[0] <= 0
    grant(demo_db, role)
    critical = SEED_CHECKS["critical_tables"] + ["fresh"]
    target = make_target(as_user(demo_db, name), checks={**SEED_CHECKS, "critical_tables": critical})

    def row_counts():
        return verify_target(target, record_result=False).check("row_counts")

    check = row_counts()
    assert check.outcome == "error" and "permission denied" in check.message, check
    with psycopg.connect(demo_db, autocommit=True) as conn:
        conn.execute(sql.SQL("GRANT SELECT ON fresh TO {}").format(sql.Identifier(name)))
    check = row_counts()
    # With SELECT alone, row-level security would hide rows: PostgreSQL refuses instead.
    assert check.outcome == "error" and "row-level security" in check.message, check
    with psycopg.connect(demo_db, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER ROLE {} BYPASSRLS").format(sql.Identifier(name)))
    check = row_counts()
    assert check.outcome == "pass", check
    assert check.data["row_counts"]["fresh"] == 3


def test_scratch_server_gets_createdb(demo_db, role, pg_server):
    name, _ = role
    grant(demo_db, role, "scratch=on")
    assert pg_server.execute("SELECT rolcreatedb FROM pg_roles WHERE rolname = %s", [name]) == [(True,)]


def test_without_the_log_table_the_script_stops_and_says_why(make_db, role):
    name, granted_in = role
    empty = make_db()
    granted_in.append(empty)
    proc = psql(empty, f"role={name}")
    assert proc.returncode != 0
    assert "pgbv migrate" in proc.stdout + proc.stderr


def test_migrations_never_pick_up_the_role_script():
    from exporter.migrate import migration_files

    files = migration_files()
    assert files and all(path.parent.name == "sql" and path.suffix == ".sql" for path in files)
    assert ROLE_SQL.name not in {path.name for path in files}


def test_an_empty_new_partition_needs_no_count(demo_db, role):
    """A new, empty partition is never analyzed (reltuples -1): the role may not count it,
    but a relation with no page holds no row, and that needs no privilege."""
    name, _ = role
    execute(demo_db, "ANALYZE",
            "CREATE TABLE events (id int, at date NOT NULL) PARTITION BY RANGE (at)",
            "CREATE TABLE events_2026_03 PARTITION OF events FOR VALUES FROM ('2026-03-01') TO ('2026-04-01')",
            "INSERT INTO events SELECT g, date '2026-03-01' + (g % 28) FROM generate_series(1, 3000) g",
            "SELECT pg_stat_force_next_flush()", "ANALYZE events_2026_03",
            "CREATE TABLE events_2026_04 PARTITION OF events FOR VALUES FROM ('2026-04-01') TO ('2026-05-01')")
    grant(demo_db, role)
    target = make_target(as_user(demo_db, name), checks={**SEED_CHECKS, "critical_tables": ["events", "call_logs"]})
    check = verify_target(target, record_result=False).check("row_counts")
    assert check.outcome == "pass", check
    assert check.data["row_counts"] == {"events": 3000, "call_logs": 4}

    execute(demo_db, "TRUNCATE call_logs")  # a critical table emptied: still a failure, not an error
    check = verify_target(target, record_result=False).check("row_counts")
    assert check.outcome == "fail" and "call_logs is empty" in check.message, check
    execute(demo_db, "TRUNCATE events")
    check = verify_target(target, record_result=False).check("row_counts")
    assert check.outcome == "fail" and "events is empty" in check.message, check


@pytest.fixture
def crashable():
    from tests.pgcluster import Cluster

    cluster = Cluster()
    cluster.start()
    yield cluster
    cluster.destroy()


def test_a_crash_after_a_mass_delete_is_a_warning_not_a_pass(crashable, tmp_path):
    """80 % of pgbench_accounts deleted, then a crash resets the counters: the catalog
    still says 200,000 and the role may not count(*). That is not a pass."""
    from exporter.pgtools import run_tool

    dsn = crashable.dsn()
    with psycopg.connect(dsn, autocommit=True) as conn:
        for migration in MIGRATIONS:
            conn.execute(migration.read_text())
    run_tool(find_tool("pgbench"), ["-i", "-s", "2", "--quiet", dsn], timeout=300)
    execute(dsn, "VACUUM ANALYZE pgbench_accounts", "DELETE FROM pgbench_accounts WHERE aid > 40000", "CHECKPOINT")
    name = f"pgbv_lp_{uuid.uuid4().hex[:10]}"
    proc = psql(dsn, f"role={name}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    crashable.stop()  # -m immediate: a crash
    crashable.start()
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT reltuples, pg_stat_get_live_tuples(oid) FROM pg_class"
                            " WHERE relname = 'pgbench_accounts'").fetchone() == (200000, 0)
    target = make_target(as_user(dsn, name), checks={"critical_tables": ["pgbench_accounts", "pgbench_branches"]})
    check = verify_target(target, record_result=False).check("row_counts")
    assert check.outcome == "warn", check
    # Every table's counters were reset: pgbench_branches (2 rows) cannot be confirmed either.
    assert ("row count not confirmed for pgbench_accounts, pgbench_branches: statistics stale "
            "(counters reset or not yet analyzed) and the role may not count them: grant SELECT or run ANALYZE") in check.message
