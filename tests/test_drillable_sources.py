"""restore.enabled for a backup source that has no restore drill is refused when the
configuration is loaded (exit 3 at check-config, naming the key and the target),
instead of every run erroring with "no restore drill"."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone

import pytest
import yaml

from exporter.config import BACKUP_SOURCES, DRILLABLE_SOURCES, ConfigError, load_settings
from exporter.restore import DrillError, drill
from exporter.result import BackupInfo
from tests.conftest import make_target

BACKUPS = {
    "directory": {"source": "directory", "path": "/backups"},
    "pgbackrest": {"source": "pgbackrest", "stanza": "app"},
    "walg": {"source": "walg"},
    "barman": {"source": "barman", "server": "pg"},
    "command": {"source": "command", "command": ["/usr/local/bin/latest-backup"]},
    "none": {"source": "none"},
}


def config_file(tmp_path, source: str, enabled: bool = True):
    path = tmp_path / "pgbv.yml"
    path.write_text(yaml.safe_dump({"targets": [
        {"name": "ok", "dsn": "postgresql://pgbv@db/app", "backup": BACKUPS["directory"]},
        {"name": "app", "dsn": "postgresql://pgbv@db/app", "backup": BACKUPS[source], "restore": {"enabled": enabled}},
    ]}))
    return path


def test_every_source_is_listed():
    assert set(BACKUPS) == set(BACKUP_SOURCES)
    assert set(DRILLABLE_SOURCES) < set(BACKUP_SOURCES)


@pytest.mark.parametrize("source", [s for s in BACKUP_SOURCES if s not in DRILLABLE_SOURCES])
def test_restore_enabled_without_a_drill_is_refused(tmp_path, source):
    path = config_file(tmp_path, source)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert str(caught.value) == (
        f"targets.1: restore.enabled is true for target 'app', but the {source} backup source has no restore drill "
        "(drills exist for: directory, pgbackrest, barman, command); set restore.enabled: false"
    )
    proc = subprocess.run([sys.executable, "-m", "exporter", "check-config", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert "targets.1: restore.enabled" in proc.stderr and "Traceback" not in proc.stderr
    # Disabled, the same source is fine.
    load_settings(config_file(tmp_path, source, enabled=False), environ={})


@pytest.mark.parametrize("source", DRILLABLE_SOURCES)
def test_restore_enabled_with_a_drill_is_accepted(tmp_path, source):
    settings = load_settings(config_file(tmp_path, source), environ={})
    assert settings.targets[1].restore.enabled


def test_walg_backups_really_have_no_drill(pg_server):
    # What the list says of WAL-G is what drill() does with its backups.
    target = make_target(pg_server.admin_dsn, checks={}, backup=BACKUPS["walg"])
    info = BackupInfo("base_000000010000000000000002", datetime.now(timezone.utc), 1, "walg full")
    with pytest.raises(DrillError, match="no restore drill for walg full backups"):
        drill(target, info)
