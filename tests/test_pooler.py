"""pgbv behind a connection pooler that drops its session settings.

pgbv's checks are read-only and every statement has a timeout because of the
settings it sends in the startup packet's `options`. pgbouncer refuses that
parameter, or, with `options` in ignore_startup_parameters, drops it without a
word. pgbv must then refuse the connection, naming what is missing, rather than
run checks on a writable session with no timeout. A real pgbouncer (Debian's)
sits in front of the test server here."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from exporter.db import TargetUnreachable, connect
from tests.conftest import make_target
from tests.pgcluster import _unprivileged_user

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
needs_pgbouncer = pytest.mark.skipif(not os.access(PGBOUNCER, os.X_OK),
                                     reason="pgbouncer is not installed (apt-get install pgbouncer)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_pgbouncer(server_dsn: str, ignore: str) -> Iterator[str]:
    """A pgbouncer in session mode in front of the server; yields its host:port."""
    server = conninfo_to_dict(server_dsn)
    upstream = {key: server[key] for key in ("host", "port", "user", "password") if server.get(key)}
    upstream.setdefault("user", "postgres")
    folder = Path(tempfile.mkdtemp(prefix="pgbv-pgbouncer-"))
    # pgbouncer, like PostgreSQL, refuses to run as root. A server on a Unix socket is
    # reached as the user who owns the socket's folder (it may be private to them).
    user = _unprivileged_user()
    host = upstream.get("host", "")
    if user and host.startswith("/") and os.path.isdir(host):
        user = pwd.getpwuid(os.stat(host).st_uid).pw_name
    port = _free_port()
    (folder / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = {' '.join(f'{key}={value}' for key, value in upstream.items())}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        "auth_type = any\npool_mode = session\n"
        f"ignore_startup_parameters = {ignore}\n"
        f"logfile = {folder / 'pgbouncer.log'}\npidfile = {folder / 'pgbouncer.pid'}\n"
    )
    os.chmod(folder, 0o755)
    if user:
        for path in (folder, *folder.iterdir()):
            shutil.chown(path, user)
    command = [PGBOUNCER, str(folder / "pgbouncer.ini")]
    if user:
        command = ["runuser", "-u", user, "--", *command]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, f"pgbouncer exited: {proc.stderr.read()}"
                assert time.monotonic() < deadline, "pgbouncer did not start listening"
                time.sleep(0.05)
        yield f"host=127.0.0.1 port={port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def bouncer_dropping_options(pg_server) -> Iterator[str]:
    yield from _start_pgbouncer(pg_server.admin_dsn, ignore="options, extra_float_digits")


@pytest.fixture
def bouncer_refusing_options(pg_server) -> Iterator[str]:
    yield from _start_pgbouncer(pg_server.admin_dsn, ignore="extra_float_digits")


def _through(bouncer: str, dsn: str) -> str:
    return make_conninfo(bouncer, dbname=conninfo_to_dict(dsn)["dbname"], user=conninfo_to_dict(dsn).get("user") or "postgres")


@needs_pgbouncer
def test_dropped_settings_are_refused_by_name(bouncer_dropping_options, demo_db):
    target = make_target(_through(bouncer_dropping_options, demo_db))
    with pytest.raises(TargetUnreachable) as caught:
        connect(target)
    message = str(caught.value)
    assert "did not apply pgbv's session settings" in message
    assert "default_transaction_read_only is 'off', not 'on'" in message
    assert "statement_timeout is '0', not '30000'" in message
    assert "pooler" in message


@needs_pgbouncer
def test_pgbv_verify_behind_such_a_pooler_is_an_error_without_traceback(bouncer_dropping_options, demo_db, tmp_path):
    config = tmp_path / "pgbv.yml"
    config.write_text(yaml.safe_dump({"targets": [{"name": "app", "dsn": _through(bouncer_dropping_options, demo_db)}]}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGBV_")}
    proc = subprocess.run([sys.executable, "-m", "exporter", "verify", "--config", str(config), "--no-record"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode != 0
    assert "did not apply pgbv's session settings" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


@needs_pgbouncer
def test_a_pooler_refusing_the_settings_is_named_too(bouncer_refusing_options, demo_db):
    target = make_target(_through(bouncer_refusing_options, demo_db))
    with pytest.raises(TargetUnreachable, match="unsupported startup parameter"):
        connect(target)
