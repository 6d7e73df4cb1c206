"""Logical restore drills, all real: a pg_dump of the seed-like database restored
into a scratch database, checked, compared with live, and dropped on every path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
import yaml

from exporter.pgtools import find_tool, run_tool
from exporter.restore.scratch import NotScratch, drop_database, is_scratch, scratch_name
from exporter.verify import verify_target
from tests.conftest import SEED_CHECKS, execute, make_target


def dump(pg_server, dsn: str, folder: Path, name: str = "app.dump", fmt: str = "custom") -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / name
    pg_dump = find_tool("pg_dump", pg_server.version_num)
    run_tool(pg_dump, [f"--format={fmt}", f"--file={path}", f"--dbname={dsn}"], timeout=120)
    return path


def drill_target(dsn: str, folder: Path, **restore):
    return make_target(
        dsn,
        checks=dict(SEED_CHECKS, min_database_size_mb=None),
        backup={"source": "directory", "path": str(folder), "pattern": "*.dump", "min_size_mb": 0},
        restore={"enabled": True, **restore},
    )


def scratch_databases(pg_server) -> list[str]:
    return [r[0] for r in pg_server.execute("SELECT datname FROM pg_database WHERE datname LIKE 'pgbv\\_restore\\_%'")]


def restore_check(result):
    check = result.check("restore")
    assert check is not None, [c.name for c in result.checks]
    return check


def test_healthy_dump_restores_and_matches_live(pg_server, demo_db, tmp_path):
    dump(pg_server, demo_db, tmp_path / "b")
    result = verify_target(drill_target(demo_db, tmp_path / "b"), record_result=True, drill=True)
    check = restore_check(result)
    assert check.outcome == "pass", check.message
    drill = check.data["restore"]
    assert drill["rows"] == {"organizations": 1, "profiles": 17, "agents": 2, "appointments": 23,
                             "contacts": 10, "call_logs": 4, "knowledge_base_chunks": 8}
    assert drill["items"] > 50 and drill["duration_seconds"] > 0
    assert {c["name"] for c in drill["checks"]} == {"critical_tables", "required_tables", "rls_policies",
                                                    "required_indexes", "required_functions", "constraints_valid"}
    assert scratch_databases(pg_server) == []
    if find_tool("pg_restore").major > pg_server.version_num // 10000:
        # The dump was written by the newest pg_dump, which the server's own pg_restore cannot
        # read; the newest pg_restore then sends a setting this server rejects, and only that is ignored.
        assert any("transaction_timeout" in note for note in drill["notes"]), drill["notes"]
    # Recorded with its outcome, so the next run knows a drill is not due.
    assert result.facts["restore"]["outcome"] == "pass"
    again = verify_target(drill_target(demo_db, tmp_path / "b"), record_result=False)
    assert again.check("restore") is None


def test_drill_runs_when_due_and_not_when_verify_says_no(pg_server, demo_db, tmp_path):
    dump(pg_server, demo_db, tmp_path / "b")
    target = drill_target(demo_db, tmp_path / "b")
    assert verify_target(target, record_result=False, drill=False).check("restore") is None
    assert verify_target(target, record_result=False).check("restore") is not None  # due: never drilled


def test_truncated_dump_fails_and_leaves_nothing(pg_server, demo_db, tmp_path):
    path = dump(pg_server, demo_db, tmp_path / "b")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    check = restore_check(verify_target(drill_target(demo_db, tmp_path / "b"), record_result=False, drill=True))
    assert check.outcome == "fail", check.message
    assert "does not restore" in check.message and "pg_restore" in check.message
    assert scratch_databases(pg_server) == []


def test_dump_without_policies_fails_rls_on_the_copy(pg_server, demo_db, make_db, tmp_path):
    older = make_db(demo=True)
    execute(older, "DROP POLICY appointments_delete ON appointments")
    dump(pg_server, older, tmp_path / "b")
    check = restore_check(verify_target(drill_target(demo_db, tmp_path / "b"), record_result=False, drill=True))
    assert check.outcome == "fail"
    assert "the restored copy fails rls_policies" in check.message and "appointments" in check.message


def test_dump_with_far_fewer_rows_than_live_fails(pg_server, demo_db, make_db, tmp_path):
    older = make_db(demo=True)
    execute(older, "DELETE FROM appointments WHERE id > 10")
    dump(pg_server, older, tmp_path / "b")
    check = restore_check(verify_target(drill_target(demo_db, tmp_path / "b"), record_result=False, drill=True))
    assert check.outcome == "fail"
    assert "appointments has 10 rows in the restored copy and 23 live" in check.message


def test_timeout_is_an_error_and_cleans_up(pg_server, demo_db, tmp_path):
    dump(pg_server, demo_db, tmp_path / "b")
    check = restore_check(verify_target(drill_target(demo_db, tmp_path / "b", timeout_minutes=0.002),
                                        record_result=False, drill=True))
    assert check.outcome == "error", check.message
    assert "timed out" in check.message or "longer than timeout_minutes" in check.message
    assert scratch_databases(pg_server) == []


def test_slower_than_rto_warns(pg_server, demo_db, tmp_path):
    dump(pg_server, demo_db, tmp_path / "b")
    check = restore_check(verify_target(drill_target(demo_db, tmp_path / "b", rto_minutes=0.00001),
                                        record_result=False, drill=True))
    assert check.outcome == "warn" and "slower than the RTO" in check.message


def test_plain_sql_backup_is_an_error_not_a_pass(pg_server, demo_db, tmp_path):
    dump(pg_server, demo_db, tmp_path / "b", name="app.dump", fmt="plain")
    check = restore_check(verify_target(drill_target(demo_db, tmp_path / "b"), record_result=False, drill=True))
    assert check.outcome == "error"
    assert "cannot be drilled" in check.message or "no restore drill" in check.message


def test_scratch_name_guard(pg_server, demo_db):
    name = scratch_name("My-App.prod")
    assert is_scratch(name) and name.startswith("pgbv_restore_my_app_prod_") and len(name) <= 63
    with psycopg.connect(demo_db, autocommit=True) as conn:
        for other in ("postgres", pg_server.execute("SELECT current_database()", dbname=demo_db.split("dbname=")[-1].split()[0])[0][0],
                      "pgbv_restore_", "pgbv_restore_app", "xpgbv_restore_app_20260101T000000"):
            with pytest.raises(NotScratch):
                drop_database(conn, other)
    assert pg_server.execute("SELECT count(*) FROM pg_database WHERE datname = 'postgres'")[0][0] == 1


def test_leftovers_of_a_killed_drill_are_removed_at_the_next_drill(pg_server, demo_db, tmp_path):
    pg_server.execute('CREATE DATABASE "pgbv_restore_app_20200101T000000"')
    pg_server.execute('CREATE DATABASE "pgbv_restore_other_20200101T000000"')
    try:
        dump(pg_server, demo_db, tmp_path / "b")
        check = restore_check(verify_target(drill_target(demo_db, tmp_path / "b"), record_result=False, drill=True))
        assert check.outcome == "pass", check.message
        assert scratch_databases(pg_server) == ["pgbv_restore_other_20200101T000000"]  # another target's: not ours
    finally:
        pg_server.execute('DROP DATABASE IF EXISTS "pgbv_restore_other_20200101T000000"')
        pg_server.execute('DROP DATABASE IF EXISTS "pgbv_restore_app_20200101T000000"')


def _config(tmp_path: Path, dsn: str, **restore) -> Path:
    config = tmp_path / "pgbv.yml"
    config.write_text(yaml.safe_dump({"targets": [{
        "name": "app", "dsn": dsn, "checks": {"critical_tables": SEED_CHECKS["critical_tables"]},
        "backup": {"source": "directory", "path": str(tmp_path / "b"), "pattern": "*.dump", "min_size_mb": 0},
        "restore": {"enabled": True, **restore},
    }]}))
    return config


def _pgbv(*args: str, **kwargs):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGBV_")}
    return subprocess.Popen([sys.executable, "-m", "exporter", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kwargs)


def test_restore_drill_command_keep_and_json(pg_server, demo_db, tmp_path):
    dump(pg_server, demo_db, tmp_path / "b")
    proc = _pgbv("restore-drill", "--config", str(_config(tmp_path, demo_db)), "--format", "json", "--keep")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    report = json.loads(out)
    restore = next(c for c in report["checks"] if c["name"] == "restore")
    assert restore["outcome"] == "pass" and "kept for inspection: psql '" in restore["message"]
    kept = scratch_databases(pg_server)
    assert len(kept) == 1 and kept[0] in restore["message"]
    pg_server.execute(f'DROP DATABASE "{kept[0]}"')
    # Not enabled: a clear configuration error, exit 3.
    config = tmp_path / "off.yml"
    config.write_text(yaml.safe_dump({"targets": [{"name": "app", "dsn": demo_db}]}))
    off = _pgbv("restore-drill", "--config", str(config))
    _, err = off.communicate(timeout=60)
    assert off.returncode == 3 and "restore.enabled" in err


def test_sigterm_during_a_drill_cleans_up(pg_server, demo_db, tmp_path):
    dump(pg_server, demo_db, tmp_path / "b")
    holder = psycopg.connect(demo_db)
    holder.execute("LOCK TABLE appointments IN ACCESS EXCLUSIVE MODE")  # the live count waits on it
    try:
        proc = _pgbv("restore-drill", "--config", str(_config(tmp_path, demo_db)))
        deadline = time.monotonic() + 60
        while not scratch_databases(pg_server):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        holder.rollback()
        holder.close()
    assert proc.returncode == 3 and "interrupted" in err
    assert scratch_databases(pg_server) == []



def test_only_the_transaction_timeout_error_is_ever_ignored():
    from exporter.pgtools import ToolError
    from exporter.restore.logical import _harmless_errors

    # As pg_restore 18 printed them against a PostgreSQL 15 server (seen on this machine).
    harmless = ('pg_restore: error: could not execute query: ERROR:  unrecognized configuration parameter "transaction_timeout"\n'
                "Command was: SET transaction_timeout = 0;\n")
    real = 'pg_restore: error: could not execute query: ERROR:  type "mood" does not exist\n'
    assert _harmless_errors(ToolError("x", returncode=1, stderr=harmless * 3)) == 3
    assert _harmless_errors(ToolError("x", returncode=1, stderr=harmless + real)) == 0
    assert _harmless_errors(ToolError("x", returncode=1, stderr="pg_restore: error: out of disk\n")) == 0
    assert _harmless_errors(ToolError("x", returncode=1, stderr="")) == 0
    # pg_restore 18 also names, as an error line, the TOC entry it was at (seen in CI
    # against PostgreSQL 15, with --jobs 2): context, not another error.
    where = "pg_restore: error: from TOC entry 228; 1259 16501 SEQUENCE webhook_delivery_log_id_seq postgres\n"
    assert _harmless_errors(ToolError("x", returncode=1, stderr=harmless + where + harmless)) == 2
    assert _harmless_errors(ToolError("x", returncode=1, stderr=harmless + where + real)) == 0

