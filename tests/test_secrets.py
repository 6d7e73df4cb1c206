"""A target's password, given each way pgbv takes one (password_file,
PGBV_TARGETS__0__PASSWORD, libpq's PGPASSFILE, inside the DSN), reaches the
server (which asks for it: scram-sha-256), and never shows in any output:
check-config, verify in its three formats, history, the daemon's log in both
formats, /metrics, / and /healthz, the spool, the recorded row. Failures too:
a wrong password and an unreachable server, whose error texts come from libpq."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
import yaml

from tests.conftest import DEMO_SCHEMA, MIGRATIONS, SEED_CHECKS
from tests.pgcluster import Cluster
from tests.test_daemon import RunningDaemon

ROLE = "app_owner"
PASSWORD = f"pgbv-Secret/{uuid.uuid4().hex[:8]}@S3cr3t"  # '/' and '@' must be escaped in a URI, so its encoded forms show too
WRONG = f"pgbv-Wrong-{uuid.uuid4().hex[:8]}-Pa55"


def leaks(text: str, *secrets: str) -> list[str]:
    found = []
    for secret in secrets:
        for form in {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret), json.dumps(secret)[1:-1]}:
            if form in text:
                found.append(form)
    return found


@pytest.fixture(scope="module")
def server():
    """A private PostgreSQL that asks ROLE for its password; everyone else is trusted (the test's admin)."""
    cluster = Cluster()
    hba = cluster.data / "pg_hba.conf"
    hba.write_text(f"local all {ROLE} scram-sha-256\n" + hba.read_text())
    cluster.start()
    admin = cluster.dsn()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(ROLE), sql.Literal(PASSWORD)))
        conn.execute(f"CREATE DATABASE app OWNER {ROLE}")
    with psycopg.connect(cluster.dsn("app"), autocommit=True) as conn:
        conn.execute(f"SET ROLE {ROLE}")
        conn.execute(DEMO_SCHEMA.read_text())
        for migration in MIGRATIONS:
            conn.execute(migration.read_text())
    yield cluster
    cluster.destroy()


def base_config(cluster: Cluster, tmp: Path, dsn: str | None = None, **target) -> dict:
    return {
        "targets": [{"name": "app", "dsn": dsn or f"host={cluster.base} dbname=app user={ROLE}",
                     "connect_timeout_seconds": 3, "checks": SEED_CHECKS, **target}],
        "schedule": {"interval_minutes": 60, "refresh_seconds": 1},
        "http": {"listen": "127.0.0.1:0"},
        "spool_dir": str(tmp / "spool"),
    }


def ways(cluster: Cluster, tmp: Path, password: str) -> dict[str, tuple[dict, dict[str, str]]]:
    """Each way of giving the password: (config, extra environment)."""
    password_file = tmp / "password"
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    pgpass = tmp / "pgpass"
    pgpass.write_text(f"*:*:*:{ROLE}:{password}\n")
    pgpass.chmod(0o600)  # libpq ignores a password file others can read
    uri = f"postgresql://{ROLE}:{urllib.parse.quote(password, safe='')}@/app?host={urllib.parse.quote(str(cluster.base), safe='')}"
    return {
        "password_file": (base_config(cluster, tmp, password_file=str(password_file)), {}),
        "environment": (base_config(cluster, tmp), {"PGBV_TARGETS__0__PASSWORD": password}),
        "pgpassfile": (base_config(cluster, tmp), {"PGPASSFILE": str(pgpass)}),
        "dsn": (base_config(cluster, tmp, dsn=uri), {}),
    }


def environment(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PGBV_", "PGPASS"))}
    env.update(extra)
    return env


def pgbv(config: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exporter", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=120, env=env)


class Daemon(RunningDaemon):
    """`pgbv run` with the test's own environment, read through its pages."""

    def get(self, path: str) -> str:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:
                return response.read().decode()
        except urllib.error.HTTPError as error:
            return error.read().decode()

    def wait_for_run(self, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = self.get("/metrics")
            if re.search(r'^pgbv_last_run_timestamp_seconds\{target="app"\} [1-9]', body, re.M):
                return body
            time.sleep(0.2)
        raise AssertionError("no run finished:\n" + "\n".join(self.lines))

    def stop(self) -> str:
        self.proc.terminate()
        self.proc.wait(timeout=15)
        time.sleep(0.1)
        return "\n".join(self.lines)


def outputs_of_commands(config: Path, env: dict[str, str]) -> dict[str, subprocess.CompletedProcess]:
    runs = {"check-config": pgbv(config, env, "check-config")}
    for fmt in ("text", "json", "markdown"):
        runs[f"verify {fmt}"] = pgbv(config, env, "verify", "--format", fmt)
    runs["history"] = pgbv(config, env, "history", "--format", "json")
    return runs


@pytest.mark.parametrize("way", ["password_file", "environment", "pgpassfile", "dsn"])
def test_the_password_works_and_never_shows(server, tmp_path, way):
    config_data, extra = ways(server, tmp_path, PASSWORD)[way]
    config = tmp_path / "pgbv.yml"
    config.write_text(yaml.safe_dump(config_data))
    env = environment(extra)

    runs = outputs_of_commands(config, env)
    for name, proc in runs.items():
        assert proc.returncode == 0, (way, name, proc.stdout, proc.stderr)
        assert leaks(proc.stdout + proc.stderr, PASSWORD) == [], (way, name)
    assert json.loads(runs["verify json"].stdout)["status"] == "success"
    if way == "dsn":
        # The DSN is shown by check-config, without its password.
        assert "password" not in runs["check-config"].stdout.split("dsn:")[1].splitlines()[0]

    for log_format in ("text", "json"):
        config.write_text(yaml.safe_dump({**config_data, "log_format": log_format}))
        daemon = Daemon(config, env)
        try:
            metrics = daemon.wait_for_run()
            pages = {"/metrics": metrics, "/": daemon.get("/"), "/healthz": daemon.get("/healthz")}
        finally:
            log = daemon.stop()
        assert 'pgbv_up{target="app"} 1.0' in pages["/metrics"]
        for path, body in pages.items():
            assert leaks(body, PASSWORD) == [], (way, log_format, path)
        assert leaks(log, PASSWORD) == [], (way, log_format, log)

    with psycopg.connect(server.dsn("app")) as conn:
        stored = conn.execute("SELECT row_to_json(l)::text FROM backup_verification_log AS l").fetchall()
    assert stored and all(leaks(row[0], PASSWORD) == [] for row in stored)


@pytest.mark.parametrize("way", ["password_file", "environment", "pgpassfile", "dsn"])
def test_a_wrong_password_fails_without_showing_it(server, tmp_path, way):
    config_data, extra = ways(server, tmp_path, WRONG)[way]
    config = tmp_path / "pgbv.yml"
    config.write_text(yaml.safe_dump(config_data))
    env = environment(extra)
    for fmt in ("text", "json", "markdown"):
        proc = pgbv(config, env, "verify", "--format", fmt)
        assert proc.returncode == 3, (way, fmt, proc.stdout, proc.stderr)
        assert "password authentication failed" in proc.stderr + proc.stdout
        assert leaks(proc.stdout + proc.stderr, WRONG, PASSWORD) == [], (way, fmt)

    daemon = Daemon(config, env)
    try:
        deadline = time.monotonic() + 30
        while not re.search(r"^pgbv_spool_rows [1-9]", daemon.get("/metrics"), re.M):
            assert time.monotonic() < deadline, "\n".join(daemon.lines)
            time.sleep(0.2)
        pages = [daemon.get(path) for path in ("/metrics", "/", "/healthz")]
    finally:
        log = daemon.stop()
    assert "password authentication failed" in log
    for text in (*pages, log):
        assert leaks(text, WRONG, PASSWORD) == [], (way, text)
    # The failure waits in the spool (the log database refused us too): no password there either.
    spooled = "".join(p.read_text() for p in (tmp_path / "spool").glob("*"))
    assert spooled and leaks(spooled, WRONG, PASSWORD) == []


def test_an_unreachable_server_does_not_show_the_password(tmp_path):
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD)
    for config_data, extra in (
        ({"targets": [{"name": "app", "dsn": f"host={tmp_path}/none dbname=app user=x", "password_file": str(password_file)}]}, {}),
        ({"targets": [{"name": "app", "dsn": f"host={tmp_path}/none dbname=app user=x"}]}, {"PGBV_TARGETS__0__PASSWORD": PASSWORD}),
        ({"targets": [{"name": "app", "dsn": f"postgresql://x:{urllib.parse.quote(PASSWORD, safe='')}@127.0.0.1:1/app"}]}, {}),
    ):
        config = tmp_path / "pgbv.yml"
        config.write_text(yaml.safe_dump({**config_data, "spool_dir": str(tmp_path / "spool")}))
        for fmt in ("text", "json", "markdown"):
            proc = pgbv(config, environment(extra), "verify", "--format", fmt)
            assert proc.returncode == 3
            assert leaks(proc.stdout + proc.stderr, PASSWORD) == [], (config_data, fmt, proc.stdout, proc.stderr)
        proc = pgbv(config, environment(extra), "check-config")
        assert proc.returncode == 0 and leaks(proc.stdout + proc.stderr, PASSWORD) == []


def test_a_config_error_never_echoes_the_password(tmp_path):
    # A DSN that does not parse: its text (and so the password in it) must not come back.
    config = tmp_path / "pgbv.yml"
    config.write_text(yaml.safe_dump({"targets": [{"name": "app", "dsn": f"host=x password={PASSWORD} port='"}]}))
    proc = pgbv(config, environment({}), "check-config")
    assert proc.returncode == 3
    assert leaks(proc.stdout + proc.stderr, PASSWORD) == [], proc.stderr
