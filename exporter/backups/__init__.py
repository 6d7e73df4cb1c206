"""The backup source registry: one module per source, chosen by ``backup.source``."""

from __future__ import annotations

from exporter.backups.base import BackupSource, BackupSourceError, NoBackupFound
from exporter.backups.barman import BarmanBackupSource
from exporter.backups.command import CommandBackupSource
from exporter.backups.directory import DirectoryBackupSource
from exporter.backups.pgbackrest import PgBackRestSource
from exporter.backups.walg import WalgBackupSource

SOURCES: dict[str, type[BackupSource]] = {
    "directory": DirectoryBackupSource,
    "pgbackrest": PgBackRestSource,
    "walg": WalgBackupSource,
    "barman": BarmanBackupSource,
    "command": CommandBackupSource,
}


def source_for(backup_config) -> BackupSource | None:
    """The source a target's ``backup`` section describes; None for ``source: none``
    (the backup checks do not run)."""
    name = backup_config.source
    if name == "none":
        return None
    try:
        cls = SOURCES[name]
    except KeyError:
        # The config models reject unknown sources first; this catches a model added
        # there but not registered here.
        raise ValueError(f"unknown backup source {name!r}; known: {', '.join(sorted(SOURCES))}, none") from None
    return cls(backup_config)


def keeps_wal(backup_config) -> bool:
    """Whether a target's backups keep a WAL archive as configured (pgBackRest, Barman,
    WAL-G, a base backup folder with wal_path): wal_continuity runs, the recovery
    window is known, and its physical drills replay the archive and measure the RPO."""
    try:
        source = source_for(backup_config)
    except ValueError:
        return False  # a source not registered: backup_age reports it
    return source is not None and source.keeps_wal()


__all__ = ["keeps_wal", "SOURCES", "BackupSource", "BackupSourceError", "NoBackupFound", "DirectoryBackupSource", "source_for"]
