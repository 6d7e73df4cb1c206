"""`pgbv verify` end to end: a real database, a real pg_dump, a real log table,
and the planted faults of the issue's matrix, each seen through the command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
import yaml

from exporter.config import Settings
from exporter.pgtools import find_tool, run_tool
from exporter.verify import verify_all, verify_target
from tests.conftest import SEED_CHECKS, execute, make_target
from tests.test_daemon import SessionSampler, dbname, hold_lock_on_a_new_table, sessions_opened, wait_for_lock_waiter

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
    assert len(report["checks"]) == 16  # backup_content is the 16th
    assert report["backup"]["id"] == "app-1.dump" and report["backup"]["size_bytes"] > 0
    assert report["checks_passed"] == 16 and report["checks_failed"] == 0
    with psycopg.connect(demo_db) as conn:
        row = conn.execute(
            "SELECT id::text, status, checks_passed, checks_failed, backup_id, error_details, verification_details"
            " FROM backup_verification_log"
        ).fetchone()
        assert row[0] == report["id"]
        assert row[1:6] == ("success", 16, 0, "app-1.dump", None)
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
    # Said once, on stdout with the verdict (see test_an_unreachable_target_is_unknown_once).
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("target gone: UNKNOWN: unreachable:"), lines


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


# --- sessions: `pgbv verify` holds one per server ------------------------------------------


@pytest.mark.parametrize("separate_log", [False, True], ids=["log in the target", "log_dsn"])
def test_a_recorded_run_holds_one_session_per_server(make_db, pg_server, separate_log):
    target_db = make_db(demo=True)
    log_db = make_db(demo=True) if separate_log else target_db
    target = make_target(target_db, log_dsn=log_db if separate_log else None)
    before = {db: sessions_opened(pg_server, db) for db in (target_db, log_db)}
    result = verify_target(target)
    after = {db: sessions_opened(pg_server, db) for db in (target_db, log_db)}
    assert result.record_error is None and result.id is not None
    # The checks and the insert share the check session (log_dsn: the log session reads and writes the log).
    assert {db: after[db] - before[db] for db in before} == {db: 1 for db in before}
    with psycopg.connect(log_db) as conn:
        assert conn.execute("SELECT id FROM backup_verification_log").fetchall() == [(result.id,)]


def test_verify_all_peaks_at_max_concurrent_targets(make_db, pg_server):
    dsns = [make_db(demo=True) for _ in range(4)]
    before = {dsn: sessions_opened(pg_server, dsn) for dsn in dsns}
    holders = [hold_lock_on_a_new_table(dsn) for dsn in dsns]  # every run waits on it until released
    settings = Settings(targets=[{"name": f"t{i}", "dsn": dsn, "checks": {"critical_tables": ["slow_table"]}}
                                 for i, dsn in enumerate(dsns)],
                        schedule={"max_concurrent_targets": 2})
    results = []
    with SessionSampler(pg_server.admin_dsn, [dbname(d) for d in dsns]) as sampler:
        thread = threading.Thread(target=lambda: results.extend(verify_all(settings, list(settings.targets))))
        thread.start()
        try:
            deadline = time.monotonic() + 30
            while sampler.peak < 2:  # both slots taken: two runs waiting on their table
                assert time.monotonic() < deadline
                time.sleep(0.01)
        finally:
            for holder in holders:
                holder.rollback()
                holder.close()
            thread.join(120)
    assert len(results) == 4 and all(r.id is not None and r.record_error is None for r in results)
    # Was max_concurrent_targets + 1: the insert's own session opened as the check session closed.
    assert sampler.peak == 2, sampler.peak
    # One session per run (and the test's own holder), not two.
    assert {dsn: sessions_opened(pg_server, dsn) - before[dsn] for dsn in dsns} == {dsn: 2 for dsn in dsns}


def test_a_check_session_lost_mid_run_is_still_recorded(demo_db):
    target = make_target(demo_db, checks={"critical_tables": ["slow_table"]})
    holder = hold_lock_on_a_new_table(demo_db)
    results = []
    thread = threading.Thread(target=lambda: results.append(verify_target(target)))
    thread.start()
    try:
        execute(demo_db, f"SELECT pg_terminate_backend({wait_for_lock_waiter(demo_db)})")
    finally:
        holder.rollback()
        holder.close()
        thread.join(60)
    result = results[0]
    assert result.status == "failure"
    assert any("connection lost" in c.message for c in result.checks if c.outcome == "error"), result.checks
    # The session that was to write the row is gone: a new one writes it.
    assert result.record_error is None
    with psycopg.connect(demo_db) as conn:
        assert conn.execute("SELECT id, status FROM backup_verification_log").fetchall() == [(result.id, "failure")]


def test_a_refused_insert_is_reported(demo_db, pg_server):
    execute(demo_db,
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$",
            "CREATE TRIGGER refuse BEFORE INSERT ON backup_verification_log FOR EACH ROW EXECUTE FUNCTION refuse()")
    before = sessions_opened(pg_server, demo_db)
    result = verify_target(make_target(demo_db))
    assert result.record_error is not None and "refused by the test" in result.record_error
    assert sessions_opened(pg_server, demo_db) == before + 1  # the same refusal on a new session is not tried


class _RecordingCursor(psycopg.Cursor):
    def execute(self, query, params=None, **kwargs):
        self.connection.sent.append(query if isinstance(query, str) else str(query))
        return super().execute(query, params, **kwargs)


@pytest.mark.parametrize("minimum", [10, None], ids=["database_size checked", "not checked"])
def test_the_database_size_is_measured_once_per_run(demo_db, minimum):
    # pg_database_size() walks every file of the database: 0.1 s at 10,000 tables.
    from exporter.db import connect

    target = make_target(demo_db, checks={**SEED_CHECKS, "min_database_size_mb": minimum})
    with connect(target) as conn:
        conn.sent = []
        conn.cursor_factory = _RecordingCursor
        result = verify_target(target, record_result=False, conn=conn)
        measured = [query for query in conn.sent if "pg_database_size" in query]
    assert len(measured) == 1, measured
    size = result.facts["database_size_bytes"]
    assert isinstance(size, int) and size > 1024 * 1024
    checked = result.check("database_size")
    assert (checked is not None) == (minimum is not None)
    if checked is not None:
        assert checked.data["database_size_bytes"] == size
    assert list(result.facts)[:2] == ["server_version_num", "database_size_bytes"]


# --- words that match the exit codes ------------------------------------------------------


@pytest.mark.parametrize("fmt", ["text", "markdown", "json"])
def test_an_unreachable_target_is_unknown_once(tmp_path, fmt):
    # Exit 3 is "unknown": nothing was judged. The row pgbv records is still a failure
    # (the log table's status has no "unknown"); the verdict a person reads is UNKNOWN.
    config = write_config(tmp_path, [{
        "name": "gone", "dsn": f"postgresql://pgbv:{PASSWORD}@127.0.0.1:1/app", "connect_timeout_seconds": 2,
    }])
    proc = pgbv("verify", "--config", str(config), "--format", fmt)
    assert proc.returncode == 3
    said = proc.stdout + proc.stderr
    if fmt == "json":
        report = json.loads(proc.stdout)
        assert (report["verdict"], report["status"]) == ("unknown", "failure")
        assert "Connection refused" in report["error"], report
    else:
        assert "FAILURE" not in said and said.count("UNKNOWN") == 1, said
        assert said.count("unreachable") + said.count("could not be reached") == 1, said
    assert proc.stderr == "", proc.stderr


def test_several_targets_one_unreachable_is_unknown_overall(demo_db, backup_dir, tmp_path):
    config = write_config(tmp_path, [
        target_entry(demo_db, backup_dir),
        {"name": "gone", "dsn": "postgresql://pgbv@127.0.0.1:1/app", "connect_timeout_seconds": 2},
    ])
    code, report = verify_json(config)
    assert code == 3
    assert (report["status"], report["verdict"]) == ("failure", "unknown")
    assert [t["verdict"] for t in report["targets"]] == ["success", "unknown"]


MISSING_LIBRARY = "$libdir/pgbv_no_such_library"


def lose_the_library(conn: psycopg.Connection, function: str) -> None:
    """Point function at a C library that is not installed, as a server upgraded or
    rebuilt without an extension's files leaves it: calling it, the server answers
    'could not access file "$libdir/..."'. (CREATE FUNCTION ... LANGUAGE C refuses a
    missing library, so the catalog is edited, by the superuser the tests run as.)"""
    conn.execute(
        "UPDATE pg_proc SET prolang = (SELECT oid FROM pg_language WHERE lanname = 'c'), probin = %s, prosrc = 'f'"
        " WHERE oid = %s::regprocedure",
        [MISSING_LIBRARY, function],
    )


def test_a_server_error_in_a_check_is_the_servers_words(demo_db):
    from exporter.checks.success_rate import CHECK
    from tests.checks.helpers import check_once

    with psycopg.connect(demo_db, autocommit=True) as conn:
        lose_the_library(conn, "backup_verification_log_target(jsonb)")
    result = check_once(CHECK, make_target(demo_db))
    assert result.outcome == "error"
    assert result.message.startswith('the server reported: could not access file "'), result.message
    assert "pgbv_no_such_library" in result.message
    assert result.message.endswith("(SQLSTATE 58P01)") and "internal error" not in result.message


def test_a_server_error_escaping_a_command_is_the_servers_words(make_db, tmp_path):
    # A DDL event trigger whose library is gone (an audit extension removed from the
    # server): every CREATE in the database fails, migrate's included.
    dsn = make_db()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE FUNCTION audit_ddl() RETURNS event_trigger LANGUAGE plpgsql AS 'BEGIN END'")
        lose_the_library(conn, "audit_ddl()")
        conn.execute("CREATE EVENT TRIGGER audit_ddl ON ddl_command_start EXECUTE FUNCTION audit_ddl()")
    config = write_config(tmp_path, [{"name": "app", "dsn": dsn}])
    proc = pgbv("migrate", "--config", str(config))
    assert proc.returncode == 3
    assert proc.stderr.startswith('pgbv: the server reported: could not access file "'), proc.stderr
    assert "pgbv_no_such_library" in proc.stderr and proc.stderr.rstrip().endswith("(SQLSTATE 58P01)"), proc.stderr
    assert "internal error" not in proc.stderr and len(proc.stderr.splitlines()) == 1


def drill_of(dsn: str, folder: Path):
    from tests.restore.test_logical import dump, drill_target, restore_check

    return dump, lambda: restore_check(verify_target(drill_target(dsn, folder), record_result=False, drill=True))


def test_a_failed_drill_shows_pg_restores_error_not_the_sql(pg_server, make_db, tmp_path):
    # A dump restored into a server that lacks one of its roles (as a dump restored
    # elsewhere lacks an extension): pg_restore prints its error, then "Command was:"
    # and the statement. The message keeps the error and drops the SQL.
    role = f"pgbv_auditor_{os.getpid()}_{tmp_path.name[-8:]}".lower().replace("-", "_")
    dsn = make_db(demo=True)
    execute(dsn, f"CREATE ROLE {role}",
            f"CREATE POLICY audit_reads ON appointments FOR SELECT TO {role} USING (true)")
    dump, drill = drill_of(dsn, tmp_path / "b")
    dump(pg_server, dsn, tmp_path / "b")
    execute(dsn, "DROP POLICY audit_reads ON appointments", f"DROP ROLE {role}")
    check = drill()
    assert check.outcome == "fail", check.message
    assert f'pg_restore: error: could not execute query: ERROR:  role "{role}" does not exist' in check.message, check.message
    assert "Command was" not in check.message and "CREATE POLICY" not in check.message, check.message


def test_a_drill_of_a_dump_cut_mid_data_shows_the_read_error(pg_server, demo_db, tmp_path):
    dump, drill = drill_of(demo_db, tmp_path / "b")
    path = dump(pg_server, demo_db, tmp_path / "b")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 3 // 4])
    check = drill()
    assert check.outcome == "fail", check.message
    # Only pg_restore's error lines, not the context lines around them.
    said = check.message.split("exited with code 1: ", 1)[1]
    assert [part for part in said.split("; ") if not part.startswith("pg_restore: error: ")] == [], check.message
