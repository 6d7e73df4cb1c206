"""A private PostgreSQL cluster a test can stop and start under a running daemon.

Uses the newest initdb/pg_ctl found (the embedded wheel's 18, or Debian's 15),
listens only on a Unix socket in its own folder, and runs as an unprivileged
user when the tests run as root (PostgreSQL refuses root).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from exporter.pgtools import find_tool


def _unprivileged_user() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "embedded_postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and no unprivileged user to run PostgreSQL as")


class Cluster:
    def __init__(self) -> None:
        self.initdb = find_tool("initdb")
        self.pg_ctl = find_tool("pg_ctl")
        self.user = _unprivileged_user()
        self.base = Path(tempfile.mkdtemp(prefix="pgbv-cluster-"))
        os.chmod(self.base, 0o755)
        self.data = self.base / "data"
        if self.user:
            shutil.chown(self.base, self.user)
        self._run(self.initdb.path, "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync")

    def _run(self, *argv) -> None:
        command = [str(a) for a in argv]
        if self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._run(self.pg_ctl.path, "-D", self.data, "-l", self.base / "server.log", "-w", "-t", "60",
                  "-o", f"-c listen_addresses='' -k {self.base} -c fsync=off", "start")

    def stop(self) -> None:
        self._run(self.pg_ctl.path, "-D", self.data, "-m", "immediate", "-w", "stop")

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.base} dbname={dbname} user=postgres"

    def destroy(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.base, ignore_errors=True)
