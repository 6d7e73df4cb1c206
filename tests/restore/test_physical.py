"""Physical restore drills of real pg_basebackup folders: copied into a scratch
folder, started as a private PostgreSQL on a Unix socket, checked, compared with
live, stopped and deleted."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import psycopg
import pytest

from exporter.pgtools import find_tool, run_tool
from exporter.verify import verify_target
from tests.conftest import DEMO_SCHEMA, SEED_CHECKS, execute, make_target
from tests.pgcluster import Cluster


@pytest.fixture(scope="module")
def live():
    cluster = Cluster()
    cluster.start()
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE app")
    with psycopg.connect(cluster.dsn("app"), autocommit=True) as conn:
        conn.execute(DEMO_SCHEMA.read_text())
    yield cluster
    cluster.destroy()


@pytest.fixture
def scratch_dir():
    # The private server runs as an unprivileged user: its scratch folder's parent must be enterable.
    path = Path(tempfile.mkdtemp(prefix="pgbv-scratch-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def basebackup(cluster: Cluster, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o755)
    with psycopg.connect(cluster.dsn()) as conn:
        version = conn.info.server_version
    tool = find_tool("pg_basebackup", version)
    target = folder / "base-1"
    run_tool(tool, ["-D", str(target), "-Fp", "-X", "stream", "-c", "fast", "-d", cluster.dsn()], timeout=120)
    return target


def drill_target(cluster, backups: Path, scratch: Path, **restore):
    return make_target(
        cluster.dsn("app"),
        checks=dict(SEED_CHECKS, min_database_size_mb=None),
        backup={"source": "directory", "path": str(backups), "pattern": "base-*", "min_size_mb": 0},
        restore={"enabled": True, "scratch_dir": str(scratch), **restore},
    )


def test_base_backup_starts_and_matches_live(live, tmp_path, scratch_dir):
    backups = tmp_path / "backups"
    basebackup(live, backups)
    result = verify_target(drill_target(live, backups, scratch_dir), record_result=False, drill=True)
    check = result.check("restore")
    assert check.outcome == "pass", check.message
    drill = check.data["restore"]
    assert drill["kind"] == "physical"
    assert drill["rows"]["appointments"] == 23 and drill["rows"]["profiles"] == 17
    assert {c["outcome"] for c in drill["checks"]} == {"pass"}
    assert list(scratch_dir.iterdir()) == []  # stopped and deleted


def test_damaged_base_backup_fails_and_is_cleaned_up(live, tmp_path, scratch_dir):
    backups = tmp_path / "backups"
    base = basebackup(live, backups)
    (base / "global" / "pg_control").unlink()
    check = verify_target(drill_target(live, backups, scratch_dir), record_result=False, drill=True).check("restore")
    assert check.outcome == "fail", check.message
    assert "did not start" in check.message
    assert list(scratch_dir.iterdir()) == []


def test_live_grown_far_past_the_backup_fails_the_comparison(live, tmp_path, scratch_dir):
    backups = tmp_path / "backups"
    basebackup(live, backups)
    # Live grew far past the backup: the copy has fewer rows than live by more than 10%.
    execute(live.dsn("app"), "INSERT INTO call_logs (organization_id, duration_seconds) SELECT 1, 5 FROM generate_series(1, 40)",
            "ANALYZE call_logs")
    try:
        check = verify_target(drill_target(live, backups, scratch_dir), record_result=False, drill=True).check("restore")
        assert check.outcome == "fail"
        assert "call_logs has 4 rows in the restored copy and 44 live" in check.message
    finally:
        execute(live.dsn("app"), "DELETE FROM call_logs WHERE id > 4", "ANALYZE call_logs")


def test_server_binaries_must_match_the_backups_major_version(live, tmp_path, scratch_dir):
    backups = tmp_path / "backups"
    basebackup(live, backups)
    other = "/usr/lib/postgresql/15/bin"
    with psycopg.connect(live.dsn()) as conn:
        if conn.info.server_version // 10000 == 15:
            other = str(Path(find_tool("pg_ctl").path).parent)  # the newest, when live is the 15
    check = verify_target(drill_target(live, backups, scratch_dir, pg_bin_dir=other),
                          record_result=False, drill=True).check("restore")
    assert check.outcome == "error" and "no pg_ctl" in check.message, check.message
    assert list(scratch_dir.iterdir()) == []


# --- pgBackRest: restore --type=immediate from a real repository -------------------------

from tests.backups.test_pgbackrest import STANZA, as_postgres_wrapper, real_repo  # noqa: E402,F401 (fixtures)


def test_pgbackrest_backup_restores_starts_and_matches_live(real_repo, as_postgres_wrapper, scratch_dir):
    os.chmod(scratch_dir, 0o755)
    target = make_target(
        f"host={real_repo.socket_dir} dbname=postgres user=postgres",
        checks={"critical_tables": ["t"], "min_policies": {"t": 0}, "max_row_drop_percent": 10},
        backup={"source": "pgbackrest", "stanza": STANZA, "config_file": str(real_repo.conf),
                "binary": str(as_postgres_wrapper), "timeout_seconds": 300},
        restore={"enabled": True, "scratch_dir": str(scratch_dir)},
    )
    result = verify_target(target, record_result=False, drill=True)
    check = result.check("restore")
    print(f"\npgBackRest drill: {check.outcome}: {check.message}")
    assert check.outcome == "pass", check.message
    drill = check.data["restore"]
    assert drill["kind"] == "physical" and drill["rows"] == {"t": 10000}
    assert list(scratch_dir.iterdir()) == []
