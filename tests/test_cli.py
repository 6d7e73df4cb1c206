"""The command line at its edges: day counts that fit the log functions, and a
reader that goes away (`pgbv history | head -c 600`) through real pipes."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import execute
from tests.test_verify import backup_dir, pgbv, target_entry, verify_json, write_config  # noqa: F401 - backup_dir is a fixture

PGBV = [sys.executable, "-m", "exporter"]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PGBV_")}


def _many_runs(dsn: str, count: int) -> None:
    # More history than a pipe holds (64 KiB), so pgbv is still writing when head leaves.
    execute(
        dsn,
        "INSERT INTO backup_verification_log (verified_at, status, backup_id, checks_passed, verification_details) "
        f"SELECT now() - n * interval '1 minute', 'success', 'app-' || n || '.dump', 15, "
        f"jsonb_build_object('target', 'app') FROM generate_series(1, {count}) AS n",
    )


def test_days_beyond_a_century_are_refused_before_any_query(tmp_path):
    for command in (["history", "--days"], ["cleanup", "--retention-days"]):
        proc = pgbv(*command, "99999999999")
        assert proc.returncode == 3
        assert proc.stderr.splitlines()[-1] == (
            f"pgbv {command[0]}: error: argument {command[1]}: must be at most 36500 (a century), got 99999999999"
        )
        assert pgbv(*command, "0").returncode == 3


def test_the_longest_day_count_reaches_the_log_functions(demo_db, tmp_path):
    config = write_config(tmp_path, [target_entry(demo_db, None)])
    _many_runs(demo_db, 3)
    history = pgbv("history", "--config", str(config), "--days", "36500")
    assert history.returncode == 0, history.stderr
    assert history.stdout.startswith("target app: 3 runs")
    cleanup = pgbv("cleanup", "--config", str(config), "--retention-days", "36500")
    assert cleanup.returncode == 0 and "deleted 0 rows older than 36500 days" in cleanup.stdout


def test_history_into_head_ends_quietly(demo_db, tmp_path):
    config = write_config(tmp_path, [target_entry(demo_db, None)])
    _many_runs(demo_db, 2000)
    pgbv_proc = subprocess.Popen([*PGBV, "history", "--config", str(config), "--days", "7"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    head = subprocess.Popen(["head", "-c", "600"], stdin=pgbv_proc.stdout, stdout=subprocess.PIPE)
    pgbv_proc.stdout.close()  # head holds the only reading end: when it leaves, the pipe is closed
    shown, _ = head.communicate(timeout=120)
    stderr = pgbv_proc.stderr.read().decode()
    pgbv_proc.stderr.close()
    assert pgbv_proc.wait(timeout=120) == 0, stderr
    assert len(shown) == 600 and shown.startswith(b"target app: 2000 runs")
    assert stderr == ""  # no traceback, no "internal error", no "Exception ignored"


def test_a_closed_pipe_keeps_the_verdict_of_the_run(demo_db, backup_dir, tmp_path):  # noqa: F811
    config = write_config(tmp_path, [target_entry(demo_db, backup_dir)])
    verdict, report = verify_json(config, "--no-record")
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before pgbv writes a byte
    try:
        proc = subprocess.run([*PGBV, "verify", "--config", str(config), "--no-record"],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, env=_env(), timeout=120)
    finally:
        os.close(write_end)
    assert proc.returncode == verdict, proc.stderr
    assert proc.stderr == ""
