"""Restore drills: prove that the newest backup restores, and that the restored
copy holds what the live database holds."""

from __future__ import annotations

from exporter.backups import source_for
from exporter.config import TargetConfig
from exporter.restore.result import DrillError, DrillResult, RestoreFailed
from exporter.result import BackupInfo


def drill(target: TargetConfig, info: BackupInfo, keep: bool = False) -> DrillResult:
    """Run the drill that fits the backup: logical for pg_dump archives, physical for
    base backups and the pgBackRest and Barman ones."""
    from exporter.restore.logical import RESTORABLE_KINDS, drill_logical

    if info.kind in RESTORABLE_KINDS:
        return drill_logical(target, info, keep=keep)
    if info.kind == "pg_basebackup" or info.kind.startswith(("pgbackrest", "barman")):
        from exporter.restore.physical import drill_physical

        return drill_physical(target, info, keep=keep)
    source = source_for(target.backup)
    raise DrillError(
        f"no restore drill for {info.kind} backups from the {source.name if source else 'none'} source yet; "
        "logical drills take pg_dump custom, directory or tar archives"
    )


__all__ = ["DrillError", "DrillResult", "RestoreFailed", "drill"]
