"""Applies the files of sql/ in order, each once, recorded in pgbv_schema_migrations.

Two processes may migrate at once (two replicas starting together): an advisory
lock serializes them and the second finds nothing left to do. A log table that
was created by hand from the seed's report is adopted when its shape matches and
explained, not altered, when it does not.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from exporter import logschema
from exporter.config import TargetConfig
from exporter.db import connect

SQL_DIR = Path(__file__).resolve().parent / "sql"
MIGRATIONS_TABLE = "pgbv_schema_migrations"
# The migration that creates backup_verification_log: the one a hand-made table can stand for.
LOG_TABLE_MIGRATION = "20260128_create_backup_verification_log.sql"
# Any constant works; this one spells "pgbv" so it is recognisable in pg_locks.
ADVISORY_LOCK_KEY = 0x70676276
# DDL on our own new objects never waits on the application; the lock we may wait
# for is the advisory lock held by another pgbv migrating the same database.
MIGRATION_LOCK_TIMEOUT_SECONDS = 60


class MigrationMismatch(Exception):
    def __init__(self, filename: str, differences: list[str]):
        self.filename = filename
        self.differences = differences
        super().__init__(
            f"backup_verification_log exists but does not match {filename}; nothing was changed: "
            + "; ".join(differences)
        )


@dataclass
class MigrateReport:
    target: str
    applied: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    edited: list[str] = field(default_factory=list)  # applied files whose text changed since


def migration_files() -> list[Path]:
    return sorted(SQL_DIR.glob("*.sql"))


def checksum(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def migrate(target: TargetConfig) -> MigrateReport:
    """Bring the target's log database up to date; raises MigrationMismatch or TargetUnreachable."""
    report = MigrateReport(target.name)
    with connect(target, log=True, read_only=False, lock_timeout_seconds=MIGRATION_LOCK_TIMEOUT_SECONDS) as conn:
        # One transaction: either every pending file is applied and recorded, or none is.
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [ADVISORY_LOCK_KEY])
            conn.execute(
                f"""
                CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (
                    filename   text PRIMARY KEY,
                    checksum   text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now(),
                    adopted    boolean NOT NULL DEFAULT false
                )
                """
            )
            applied = dict(conn.execute(f"SELECT filename, checksum FROM {MIGRATIONS_TABLE}").fetchall())
            for path in migration_files():
                digest = checksum(path)
                if path.name in applied:
                    report.already.append(path.name)
                    if applied[path.name] != digest:
                        report.edited.append(path.name)
                    continue
                adopted = False
                if path.name == LOG_TABLE_MIGRATION and logschema.table_exists(conn):
                    differences = logschema.differences(conn)
                    if differences:
                        raise MigrationMismatch(path.name, differences)
                    adopted = True
                else:
                    conn.execute(path.read_text())
                conn.execute(
                    f"INSERT INTO {MIGRATIONS_TABLE} (filename, checksum, adopted) VALUES (%s, %s, %s)",
                    [path.name, digest, adopted],
                )
                (report.adopted if adopted else report.applied).append(path.name)
    return report
