"""The interface every backup source implements (one module per source)."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod

from exporter.backups.wal import WalArchive
from exporter.result import BackupInfo, BackupLookup


class NoBackupFound(Exception):
    """The source answered, and there is no backup: the backup checks fail."""


class BackupSourceError(Exception):
    """The source could not answer (timeout, tool error, output of the wrong shape):
    the backup checks are errors. The message carries the tool's own words."""


class BackupUnreadable(Exception):
    """The backup was read and is damaged (truncated, corrupt, missing files):
    backup_readable fails. The message names the file and quotes the tool."""


class BackupSource(ABC):
    name: str

    @abstractmethod
    def latest(self) -> BackupInfo:
        """The newest backup; raises NoBackupFound or BackupSourceError."""

    def checks_readable(self) -> bool:
        """Whether backup_readable has something to run for this source as configured."""
        return False

    def full_read_every_days(self) -> float | None:
        """How often backup_readable runs verify_readable, in days, for a source whose
        read is costly (it reads the whole repository); None: every run."""
        return None

    def full_read_on_demand(self) -> bool:
        """Whether `pgbv verify --full-read` runs verify_readable even where
        checks_readable() says no (a full read configured never to run by cadence)."""
        return False

    def verify_readable(self, info: BackupInfo, server_version_num: int | None, pg_bin_dir=None) -> str:
        """Read the backup through (or have its tool verify it); return what was proved.

        Raises BackupUnreadable (the backup is damaged: fail) or BackupSourceError
        (the verification could not run: error).
        """
        raise BackupSourceError(f"the {self.name} source has no readability check")

    def keeps_wal(self) -> bool:
        """Whether the source, as configured, keeps a WAL archive: wal_continuity runs,
        the recovery window is known, and physical drills replay it."""
        return False

    def wal_archive(self, info: BackupInfo | None) -> WalArchive:
        """The WAL archive after ``info`` (the newest backup; None when there is none):
        its newest segment and time, the first gap from the backup's start WAL on, and
        the recovery window. Raises BackupSourceError when it cannot be read."""
        raise BackupSourceError(f"the {self.name} source keeps no WAL archive pgbv can read")

    def lookup(self) -> BackupLookup:
        started = time.monotonic()
        try:
            info = self.latest()
        except NoBackupFound as exc:
            return BackupLookup(self.name, missing=str(exc), duration_seconds=time.monotonic() - started)
        except BackupSourceError as exc:
            return BackupLookup(self.name, error=str(exc), duration_seconds=time.monotonic() - started)
        return BackupLookup(self.name, info=info, duration_seconds=time.monotonic() - started)
