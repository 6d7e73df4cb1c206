"""`pgbv accept-rows` end to end: a drop keeps failing through scheduled and manual
runs until a person accepts it; the acceptance is a recorded run that says who and
why, and `pgbv history` shows it."""

from __future__ import annotations

import getpass
import json

import psycopg

from tests.conftest import SEED_CHECKS, execute
from tests.test_verify import backup_dir, pgbv, target_entry, verify_json, write_config  # noqa: F401 - fixture

HALF_THE_CHUNKS = "DELETE FROM knowledge_base_chunks WHERE id IN (SELECT id FROM knowledge_base_chunks LIMIT 4)"


def row_counts_of(report: dict) -> dict:
    return next(check for check in report["checks"] if check["name"] == "row_counts")


def test_a_drop_fails_until_accepted_and_history_says_who_and_why(demo_db, backup_dir, tmp_path):  # noqa: F811
    # The failed runs below would pull success_rate under its floor: that check is not under test here.
    checks = dict(SEED_CHECKS, min_database_size_mb=1, min_success_ratio=0)
    config = write_config(tmp_path, [target_entry(demo_db, backup_dir, checks=checks)])
    assert verify_json(config)[0] == 0

    execute(demo_db, HALF_THE_CHUNKS)  # 8 -> 4, no ANALYZE
    for _ in range(2):  # the scheduled run, then a DBA's `pgbv verify` to look: both fail
        code, report = verify_json(config)
        assert code == 2
        check = row_counts_of(report)
        assert check["outcome"] == "fail"
        assert "knowledge_base_chunks has 4 rows, 50.0% below its highest count" in check["message"]
        assert "pgbv accept-rows --target app" in check["message"]

    unknown = pgbv("accept-rows", "--config", str(config), "--target", "app", "--table", "no_such_table")
    assert unknown.returncode == 3
    assert unknown.stderr.strip().splitlines()[-1].startswith("pgbv: --table no_such_table: not a critical table of target app")
    assert verify_json(config)[0] == 2  # nothing was accepted

    accepted = pgbv("accept-rows", "--config", str(config), "--target", "app", "--table", "knowledge_base_chunks",
                    "--reason", "duplicates purged, ticket 42")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert "accepted the row counts of knowledge_base_chunks as intended" in accepted.stderr

    code, report = verify_json(config)
    assert code == 0, row_counts_of(report)
    assert "no drop beyond 10%" in row_counts_of(report)["message"]

    with psycopg.connect(demo_db) as conn:
        details = conn.execute(
            "SELECT verification_details FROM backup_verification_log "
            "WHERE verification_details ? 'accepted_rows'"
        ).fetchall()
    assert len(details) == 1
    acceptance = details[0][0]["accepted_rows"]
    assert acceptance["by"].startswith(f"{getpass.getuser()}@")
    assert acceptance == {"by": acceptance["by"], "reason": "duplicates purged, ticket 42",
                          "tables": {"knowledge_base_chunks": {"from": 8, "to": 4}}}

    history = pgbv("history", "--config", str(config), "--target", "app")
    assert history.returncode == 0, history.stderr
    assert (f"row counts accepted by {acceptance['by']} (duplicates purged, ticket 42): "
            "knowledge_base_chunks 8 -> 4") in history.stdout
    markdown = pgbv("history", "--config", str(config), "--target", "app", "--format", "markdown")
    assert "row counts accepted by" in markdown.stdout
    rows = json.loads(pgbv("history", "--config", str(config), "--target", "app", "--format", "json").stdout)
    assert sum(1 for row in rows if "accepted_rows" in row["verification_details"]) == 1


def test_accept_rows_without_critical_tables_or_target_is_exit_3(demo_db, tmp_path):
    config = write_config(tmp_path, [target_entry(demo_db, None, checks={"required_tables": ["audit_logs"]})])
    proc = pgbv("accept-rows", "--config", str(config), "--target", "app")
    assert proc.returncode == 3
    assert "critical_tables: empty" in proc.stderr
    proc = pgbv("accept-rows", "--config", str(config), "--target", "nope")
    assert proc.returncode == 3 and "no target named 'nope'" in proc.stderr
    proc = pgbv("accept-rows", "--config", str(config))
    assert proc.returncode == 3 and "--target" in proc.stderr


def test_a_run_without_row_counts_in_between_does_not_forget_the_baseline(demo_db):
    # An unreachable run (or one whose row_counts errored) has no baseline: the next run
    # takes it from the newest run that has one.
    import time
    from datetime import datetime, timezone

    from exporter.verify import unreachable_result, verify_target, write
    from tests.conftest import make_target

    target = make_target(demo_db, checks=dict(SEED_CHECKS, min_success_ratio=0))
    assert verify_target(target).check("row_counts").outcome == "pass"
    execute(demo_db, HALF_THE_CHUNKS)
    with psycopg.connect(demo_db) as conn:
        write(conn, unreachable_result(target, "connection refused", datetime.now(timezone.utc), time.monotonic()))
    check = verify_target(target).check("row_counts")
    assert check.outcome == "fail", check.message
    assert "knowledge_base_chunks has 4 rows, 50.0% below" in check.message


def test_row_count_keys_are_bounded(tmp_path):
    import pytest
    import yaml

    from exporter.config import ConfigError, load_settings

    def load(**checks):
        path = tmp_path / "pgbv.yml"
        path.write_text(yaml.safe_dump({"targets": [{"name": "app", "dsn": "host=/nowhere", "checks": checks}]}))
        return load_settings(path, {})

    checks = load(critical_tables=["t"]).targets[0].checks
    assert (checks.row_drop_window_days, checks.exact_count_max_rows) == (7, 1_000_000)
    for key, bad in [("row_drop_window_days", 0), ("row_drop_window_days", 367), ("row_drop_window_days", ".inf"),
                     ("row_drop_window_days", 10**30), ("exact_count_max_rows", -1), ("exact_count_max_rows", 10**30),
                     ("exact_count_max_rows", ".nan")]:
        value = float(bad[1:]) if isinstance(bad, str) else bad
        with pytest.raises(ConfigError) as info:
            load(**{key: value})
        message = str(info.value)
        assert f"checks.{key}" in message and len(message) < 300 and "\n" not in message.strip(), message


def test_one_recorded_run_with_other_critical_tables_keeps_the_rest_of_the_baseline(demo_db, backup_dir, tmp_path):  # noqa: F811
    # A DBA's one-off run for a single table (as with PGBV_TARGETS__0__CHECKS__CRITICAL_TABLES),
    # recorded like any run, must not make the next run forget the other tables' counts.
    checks = dict(SEED_CHECKS, min_database_size_mb=1, min_success_ratio=0)
    config = write_config(tmp_path, [target_entry(demo_db, backup_dir, checks=checks)])
    assert verify_json(config)[0] == 0
    one = tmp_path / "one"
    one.mkdir()
    single = write_config(one, [target_entry(demo_db, backup_dir, checks=dict(checks, critical_tables=["contacts"]))])
    assert verify_json(single)[0] == 0

    execute(demo_db, HALF_THE_CHUNKS)
    code, report = verify_json(config)
    check = row_counts_of(report)
    assert code == 2 and check["outcome"] == "fail", check
    assert "knowledge_base_chunks has 4 rows, 50.0% below its highest count" in check["message"]
