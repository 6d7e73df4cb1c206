"""A private PostgreSQL cluster a test can stop and start under a running daemon.

Uses the newest initdb/pg_ctl found (the embedded wheel's 18, or Debian's 15)
unless given a bin_dir, listens only on a Unix socket in its own folder, and runs
as an unprivileged user when the tests run as root (PostgreSQL refuses root).
Extra postgresql.conf settings (archiving, for a backup tool) can be passed in.
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
    def __init__(self, bin_dir: Path | None = None, settings: dict[str, str] | None = None) -> None:
        # A backup tool may support only older servers (pgBackRest 2.45: up to 15).
        self.initdb = find_tool("initdb", pg_bin_dir=bin_dir)
        self.pg_ctl = find_tool("pg_ctl", pg_bin_dir=bin_dir)
        self.user = _unprivileged_user()
        self.base = Path(tempfile.mkdtemp(prefix="pgbv-cluster-"))
        os.chmod(self.base, 0o755)
        self.data = self.base / "data"
        if self.user:
            shutil.chown(self.base, self.user)
        self._run(self.initdb.path, "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync")
        if settings:
            # In the file rather than on pg_ctl's -o: values such as an archive_command
            # hold spaces and quotes that -o would need escaped twice.
            with open(self.data / "postgresql.conf", "a") as conf:
                for name, value in settings.items():
                    quoted = value.replace("'", "''")
                    conf.write(f"{name} = '{quoted}'\n")

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
