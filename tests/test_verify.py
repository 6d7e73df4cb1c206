"""`pgbv verify` end to end: a real database, a real pg_dump, a real log table,
and the planted faults of the issue's matrix, each seen through the command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
import yaml

from exporter.pgtools import find_tool, run_tool
from tests.conftest import SEED_CHECKS, execute

PASSWORD = "Sup3r-s3cret-pw"  # trust auth ignores it; it must still never be shown


@pytest.fixture
def backup_dir(demo_db, pg_server, tmp_path) -> Path:
    folder = tmp_path / "backups"
    folder.mkdir()
    pg_dump = find_tool("pg_dump", pg_server.version_num)
    run_tool(pg_dump, ["--format=custom", f"--file={folder / 'app-1.dump'}", f"--dbname={demo_db}"], timeout=120)
    return folder


def with_password(dsn: str) -> str:
    return f"{dsn} password={PASSWORD}"


def write_config(tmp_path: Path, targets: list[dict]) -> Path:
    path = tmp_path / "pgbv.yml"
    path.write_text(yaml.safe_dump({"targets": targets}))
    return path


def target_entry(dsn: str, backup_dir: Path | None, name: str = "app", **extra) -> dict:
    entry = {"name": name, "dsn": with_password(dsn), "checks": dict(SEED_CHECKS, min_database_size_mb=1)}
    if backup_dir is not None:
        entry["backup"] = {"source": "directory", "path": str(backup_dir), "pattern": "*.dump", "min_size_mb": 0.01}
    entry.update(extra)
    return entry


def pgbv(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGBV_")}
    proc = subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True, text=True, env=env, timeout=120)
    assert PASSWORD not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def verify_json(config: Path, *extra: str) -> tuple[int, dict]:
    proc = pgbv("verify", "--config", str(config), "--format", "json", *extra)
    return proc.returncode, json.loads(proc.stdout)


def outcomes(report: dict) -> dict[str, str]:
    return {check["name"]: check["outcome"] for check in report["checks"]}


def test_healthy_database_is_a_clean_success_and_is_recorded(demo_db, backup_dir, tmp_path):
    config = write_config(tmp_path, [target_entry(demo_db, backup_dir)])
    code, report = verify_json(config)
    assert code == 0, report
    assert report["status"] == "success"
    assert set(outcomes(report).values()) == {"pass"}
    assert len(report["checks"]) == 15
    assert report["backup"]["id"] == "app-1.dump" and report["backup"]["size_bytes"] > 0
    assert report["checks_passed"] == 15 and report["checks_failed"] == 0
    with psycopg.connect(demo_db) as conn:
        row = conn.execute(
            "SELECT id::text, status, checks_passed, checks_failed, backup_id, error_details, verification_details"
            " FROM backup_verification_log"
        ).fetchone()
        assert row[0] == report["id"]
        assert row[1:6] == ("success", 15, 0, "app-1.dump", None)
        assert row[6]["target"] == "app" and row[6]["row_counts"]["appointments"] == 23
        assert PASSWORD not in json.dumps(row[6])
    # The second run compares row counts with the first and still passes.
    code, second = verify_json(config)
    assert code == 0
    row_counts = next(c for c in second["checks"] if c["name"] == "row_counts")
    assert "no previous run" not in row_counts["message"]


@pytest.mark.parametrize(
    "label,statements,failing",
    [
        ("rls disabled", ["ALTER TABLE contacts DISABLE ROW LEVEL SECURITY"], "rls_policies"),
        ("policy dropped below minimum", ["DROP POLICY appointments_delete ON appointments"], "rls_policies"),
        ("required index dropped", ["DROP INDEX idx_appointments_time_range"], "required_indexes"),
        ("required function dropped", ["DROP FUNCTION cleanup_old_webhook_logs(integer)"], "required_functions"),
        ("critical table dropped", ["DROP TABLE knowledge_base_chunks"], "critical_tables"),
        ("required table dropped", ["DROP TABLE audit_logs"], "required_tables"),
        ("critical table emptied", ["TRUNCATE call_logs", "ANALYZE call_logs"], "row_counts"),
        ("constraint not valid", ["ALTER TABLE call_logs ADD CONSTRAINT call_logs_short CHECK (duration_seconds < 100000) NOT VALID"], "constraints_valid"),
        ("log table altered", ["ALTER TABLE backup_verification_log DROP COLUMN backup_size_mb"], "log_table"),
    ],
)
def test_planted_fault_fails_its_check(demo_db, backup_dir, tmp_path, label, statements, failing):
    execute(demo_db, *statements)
    config = write_config(tmp_path, [target_entry(demo_db, backup_dir)])
    code, report = verify_json(config, "--no-record")
    assert report["status"] == "failure", label
    assert code == 2
    assert outcomes(report)[failing] in ("fail", "error"), (label, report["checks"])


def test_rows_deleted_between_two_runs(demo_db, backup_dir, tmp_path):
    config = write_config(tmp_path, [target_entry(demo_db, backup_dir)])
    assert verify_json(config)[0] == 0
    execute(demo_db, "DELETE FROM appointments WHERE id > 5", "ANALYZE appointments")
    code, report = verify_json(config)
    assert code == 2
    check = next(c for c in report["checks"] if c["name"] == "row_counts")
    assert check["outcome"] == "fail"
    assert "appointments" in check["message"] and "23" in check["message"] and "5" in check["message"]


def test_stale_and_missing_backups(demo_db, backup_dir, tmp_path):
    dump = backup_dir / "app-1.dump"
    config = write_config(tmp_path, [target_entry(demo_db, backup_dir)])
    old = time.time() - 30 * 3600
    os.utime(dump, (old, old))
    code, report = verify_json(config, "--no-record")
    assert (code, outcomes(report)["backup_age"]) == (1, "warn")
    older = time.time() - 60 * 3600
    os.utime(dump, (older, older))
    code, report = verify_json(config, "--no-record")
    assert (code, outcomes(report)["backup_age"]) == (2, "fail")
    dump.unlink()
    code, report = verify_json(config, "--no-record")
    assert code == 2
    assert outcomes(report)["backup_age"] == "fail" and outcomes(report)["backup_size"] == "fail"
    assert report["backup"] is None


def test_unreachable_target_exits_3_with_one_line(tmp_path):
    config = write_config(tmp_path, [{
        "name": "gone", "dsn": f"postgresql://pgbv:{PASSWORD}@127.0.0.1:1/app", "connect_timeout_seconds": 2,
    }])
    proc = pgbv("verify", "--config", str(config))
    assert proc.returncode == 3
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pgbv: target gone: unreachable:"), proc.stderr


def test_several_targets_report_the_worst(demo_db, make_db, backup_dir, tmp_path):
    broken = make_db(demo=True)
    execute(broken, "DROP INDEX idx_appointments_time_range")
    config = write_config(tmp_path, [
        target_entry(demo_db, backup_dir, name="good"),
        target_entry(broken, backup_dir, name="bad"),
    ])
    code, report = verify_json(config, "--no-record")
    assert code == 2
    assert report["status"] == "failure"
    assert [t["target"] for t in report["targets"]] == ["good", "bad"]
    assert [t["status"] for t in report["targets"]] == ["success", "failure"]
    code, single = verify_json(config, "--no-record", "--target", "good")
    assert code == 0 and single["target"] == "good"
    unknown = pgbv("verify", "--config", str(config), "--target", "nope")
    assert unknown.returncode == 3 and "no target named 'nope'" in unknown.stderr


def test_no_record_writes_nothing(demo_db, backup_dir, tmp_path):
    config = write_config(tmp_path, [target_entry(demo_db, backup_dir)])
    code, report = verify_json(config, "--no-record")
    assert code == 0 and report["id"] is None
    with psycopg.connect(demo_db) as conn:
        assert conn.execute("SELECT count(*) FROM backup_verification_log").fetchone()[0] == 0


def test_unmigrated_database_fails_and_says_how_to_fix(make_db, tmp_path):
    dsn = make_db()
    config = write_config(tmp_path, [{"name": "bare", "dsn": dsn}])
    proc = pgbv("verify", "--config", str(config))
    assert proc.returncode == 3  # not recorded: the verdict was not kept
    assert "log_table" in proc.stdout and "pgbv migrate" in proc.stderr


def test_text_and_markdown_reports(demo_db, backup_dir, tmp_path):
    config = write_config(tmp_path, [target_entry(demo_db, backup_dir)])
    text = pgbv("verify", "--config", str(config), "--no-record")
    assert text.returncode == 0
    assert "target app: SUCCESS" in text.stdout and "\033[" not in text.stdout  # no colour into a pipe
    assert "rls_policies" in text.stdout
    markdown = pgbv("verify", "--config", str(config), "--format", "markdown")
    assert markdown.returncode == 0
    assert "# Backup Verification Report: app" in markdown.stdout
    assert "### Test 1: log_table (seed tests 1, 2)" in markdown.stdout
    assert "| 15 | Audit logs table | `required_tables` | ✅ PASS |" in markdown.stdout
    assert "| 3 | Insert record | row `" in markdown.stdout


def test_history_and_cleanup_commands(demo_db, backup_dir, tmp_path):
    config = write_config(tmp_path, [target_entry(demo_db, backup_dir)])
    verify_json(config)
    execute(demo_db, "INSERT INTO backup_verification_log (verified_at, status) VALUES (now() - interval '200 days', 'failure')")
    history = pgbv("history", "--config", str(config), "--days", "7", "--format", "json")
    assert history.returncode == 0
    rows = json.loads(history.stdout)
    assert len(rows) == 1 and rows[0]["status"] == "success"
    cleanup = pgbv("cleanup", "--config", str(config))
    assert cleanup.returncode == 0 and "deleted 1 rows older than 90 days" in cleanup.stdout
