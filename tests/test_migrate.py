"""The migration's exact shape, its functions' results, and `pgbv migrate`:
once, idempotent, safe from two processes, adopting a matching hand-made table
and refusing (without altering anything) one that does not match."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
import yaml

from exporter.migrate import MigrationMismatch, migrate, migration_files
from tests.conftest import make_target

# The seed report's table, column by column: name, type, nullable, default.
SEED_COLUMNS = [
    ("id", "uuid", "NO", "gen_random_uuid()"),
    ("verified_at", "timestamp with time zone", "NO", "now()"),
    ("backup_id", "text", "YES", None),
    ("backup_age_hours", "integer", "YES", None),
    ("backup_size_mb", "integer", "YES", None),
    ("status", "text", "NO", None),
    ("checks_passed", "integer", "NO", "0"),
    ("checks_failed", "integer", "NO", "0"),
    ("error_details", "jsonb", "YES", None),
    ("verification_details", "jsonb", "YES", None),
    ("created_at", "timestamp with time zone", "NO", "now()"),
]
SEED_INDEXES = {
    "backup_verification_log_pkey",
    "idx_backup_verification_log_verified_at",
    "idx_backup_verification_log_status",
    "idx_backup_verification_log_created_at",
    "idx_backup_verification_log_failures",
}


def columns(conn) -> list[tuple]:
    return conn.execute(
        "SELECT column_name, data_type, is_nullable, column_default FROM information_schema.columns"
        " WHERE table_name = 'backup_verification_log' ORDER BY ordinal_position"
    ).fetchall()


def test_fresh_database_gets_the_seed_table_exactly(make_db):
    dsn = make_db()
    report = migrate(make_target(dsn))
    assert report.applied == [p.name for p in migration_files()]
    with psycopg.connect(dsn) as conn:
        assert columns(conn) == SEED_COLUMNS
        indexes = dict(conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'backup_verification_log'"
        ).fetchall())
        # The seed's five, plus the target indexes of the later migration (20261127).
        assert set(indexes) - SEED_INDEXES == {"idx_backup_verification_log_target_verified_at",
                                               "idx_backup_verification_log_target_drills"}
        assert SEED_INDEXES <= set(indexes)
        assert "WHERE (status = ANY (ARRAY['warning'::text, 'failure'::text]))" in indexes["idx_backup_verification_log_failures"]
        assert "verified_at DESC" in indexes["idx_backup_verification_log_verified_at"]
        assert "created_at DESC" in indexes["idx_backup_verification_log_created_at"]
        constraint = conn.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'backup_verification_log_status_check'"
        ).fetchone()[0]
        assert all(f"'{s}'" in constraint for s in ("success", "warning", "failure"))
        with pytest.raises(psycopg.errors.CheckViolation, match="backup_verification_log_status_check"):
            conn.execute("INSERT INTO backup_verification_log (status) VALUES ('invalid_status')")


def test_functions_go_by_verified_at(make_db):
    dsn = make_db()
    migrate(make_target(dsn))
    now = datetime.now(timezone.utc)
    with psycopg.connect(dsn) as conn:
        # created_at order is the reverse of verified_at order: a spooled result written late.
        for days_ago, status in ((1, "success"), (3, "warning"), (10, "failure"), (100, "success"), (200, "failure")):
            conn.execute(
                "INSERT INTO backup_verification_log (verified_at, status, checks_passed, backup_age_hours)"
                " VALUES (%s, %s, 6, %s)",
                [now - timedelta(days=days_ago), status, days_ago],
            )
        conn.execute(
            "INSERT INTO backup_verification_log (verified_at, status, created_at) VALUES (%s, 'failure', %s)",
            [now - timedelta(days=2), now + timedelta(hours=1)],
        )
        latest = conn.execute("SELECT verified_at, status, backup_age_hours FROM get_latest_backup_verification()").fetchall()
        assert len(latest) == 1 and latest[0][1] == "success" and latest[0][2] == 1
        history = conn.execute("SELECT verified_at FROM get_backup_verification_history(7)").fetchall()
        assert len(history) == 3
        assert [h[0] for h in history] == sorted((h[0] for h in history), reverse=True)
        assert conn.execute("SELECT count(*) FROM get_backup_verification_history(365)").fetchone()[0] == 6
        assert conn.execute("SELECT cleanup_old_backup_verification_logs()").fetchone()[0] == 2  # default 90 days
        assert conn.execute("SELECT cleanup_old_backup_verification_logs(5)").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM backup_verification_log").fetchone()[0] == 3


def test_second_run_changes_nothing(make_db):
    target = make_target(make_db())
    first = migrate(target)
    second = migrate(target)
    assert first.applied and not second.applied and not second.adopted
    assert second.already == first.applied


def test_two_processes_at_once(make_db, tmp_path):
    dsn = make_db()
    config = tmp_path / "pgbv.yml"
    config.write_text(yaml.safe_dump({"targets": [{"name": "app", "dsn": dsn}]}))
    procs = [
        subprocess.Popen([sys.executable, "-m", "exporter", "migrate", "--config", str(config)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0, 0], outputs
    applied = sum(out.count("applied 2026") for out, _ in outputs)
    assert applied == len(migration_files())
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM pgbv_schema_migrations").fetchone()[0] == len(migration_files())


def test_hand_applied_seed_table_is_adopted_untouched(demo_db):
    # demo_db ran the SQL file by hand, as production users did, and holds a row.
    with psycopg.connect(demo_db, autocommit=True) as conn:
        conn.execute("INSERT INTO backup_verification_log (status, checks_passed) VALUES ('success', 6)")
        before = conn.execute("SELECT oid, relfilenode FROM pg_class WHERE relname = 'backup_verification_log'").fetchone()
    report = migrate(make_target(demo_db))
    assert report.adopted == ["20260128_create_backup_verification_log.sql"]
    with psycopg.connect(demo_db) as conn:
        after = conn.execute("SELECT oid, relfilenode FROM pg_class WHERE relname = 'backup_verification_log'").fetchone()
        assert after == before
        assert conn.execute("SELECT count(*) FROM backup_verification_log").fetchone()[0] == 1
        assert conn.execute("SELECT adopted FROM pgbv_schema_migrations").fetchone()[0] is True


def test_mismatching_table_is_explained_and_not_altered(demo_db, tmp_path):
    with psycopg.connect(demo_db, autocommit=True) as conn:
        conn.execute("ALTER TABLE backup_verification_log ALTER COLUMN backup_size_mb TYPE bigint")
        conn.execute("DROP INDEX idx_backup_verification_log_failures")
    with pytest.raises(MigrationMismatch) as info:
        migrate(make_target(demo_db))
    text = str(info.value)
    assert "backup_size_mb" in text and "idx_backup_verification_log_failures" in text
    with psycopg.connect(demo_db) as conn:
        assert conn.execute("SELECT to_regclass('pgbv_schema_migrations')").fetchone()[0] is None
        assert conn.execute(
            "SELECT data_type FROM information_schema.columns WHERE table_name = 'backup_verification_log'"
            " AND column_name = 'backup_size_mb'"
        ).fetchone()[0] == "bigint"
    # The command says so in one place and exits 2 (failure), not a traceback.
    config = tmp_path / "pgbv.yml"
    config.write_text(yaml.safe_dump({"targets": [{"name": "app", "dsn": demo_db}]}))
    proc = subprocess.run([sys.executable, "-m", "exporter", "migrate", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "nothing was changed" in proc.stderr and "Traceback" not in proc.stderr


def test_unreachable_target_exits_3(tmp_path):
    config = tmp_path / "pgbv.yml"
    config.write_text(yaml.safe_dump({"targets": [{
        "name": "gone", "dsn": "postgresql://pgbv:topsecret@127.0.0.1:1/app", "connect_timeout_seconds": 2,
    }]}))
    proc = subprocess.run([sys.executable, "-m", "exporter", "migrate", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3
    assert "target gone: cannot connect" in proc.stderr
    assert "topsecret" not in proc.stdout + proc.stderr


def test_pgbv_reads_can_use_the_target_indexes(make_db):
    # At a million rows these reads went from seconds to under a millisecond (bench/);
    # here: each is written so that the planner can serve it from the target indexes.
    from exporter import record, snapshot

    dsn = make_db()
    migrate(make_target(dsn))
    params = {"target": "app", "now": datetime.now(timezone.utc), "since_short": datetime.now(timezone.utc),
              "since_long": datetime.now(timezone.utc)}
    with psycopg.connect(dsn) as conn:
        conn.execute("SET enable_seqscan = off")
        for query in (snapshot._LATEST_SQL, snapshot._LAST_SUCCESS_SQL, snapshot._LAST_DRILL_SQL,
                      snapshot._LAST_GOOD_DRILL_SQL, record.newest_query(["verification_details"])):
            plan = "\n".join(row[0] for row in conn.execute("EXPLAIN " + query, params).fetchall())
            assert "idx_backup_verification_log_target" in plan, plan
            assert "Seq Scan" not in plan, plan
        # The ratios read a time window: either index may serve it, never a full scan.
        plan = "\n".join(row[0] for row in conn.execute("EXPLAIN " + record.SUCCESS_RATIOS_SQL, params).fetchall())
        assert "Seq Scan" not in plan, plan


def test_success_ratios_keep_to_the_target_index(make_db):
    # Ten targets' runs with documents of several KB, as real ones are. On the plain
    # verification_details->>'target' expression the planner walked the verified_at
    # index over the window and opened every document in it (at a million rows:
    # 1 s per target, bench/); a short window shows the same choice on 2,000 rows.
    # Behind the costly function it keeps to the target index. The success_rate check
    # and the snapshot send this one statement (record.success_ratios).
    from exporter import record

    dsn = make_db()
    migrate(make_target(dsn))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO backup_verification_log (verified_at, status, checks_passed, verification_details)
            SELECT now() - g * interval '30 seconds', 'success', 16,
                   jsonb_build_object('target', 'app' || g % 10, 'checks',
                       (SELECT jsonb_agg(jsonb_build_object('name', 'check_' || i, 'message', md5(g::text || i::text)))
                          FROM generate_series(1, 60) AS i))
              FROM generate_series(0, 1999) AS g
            """
        )
        conn.execute("VACUUM ANALYZE backup_verification_log")
        now = datetime.now(timezone.utc)
        window = {"target": "app3", "now": now, "since_short": now - timedelta(hours=1),
                  "since_long": now - timedelta(hours=2)}
        plan = "\n".join(row[0] for row in conn.execute("EXPLAIN " + record.SUCCESS_RATIOS_SQL, window).fetchall())
        assert "idx_backup_verification_log_target_verified_at" in plan, plan
        # A filter on the time is cheap; one on the target would open every document.
        assert not [line for line in plan.splitlines() if "Filter" in line and "target" in line], plan
        # One run in ten is app3's: 12 in the last hour, 24 in two.
        counted = conn.execute(record.SUCCESS_RATIOS_SQL, window).fetchall()
        assert counted == [("ok", 12, 24)], counted
        assert record.TARGET_OF in record.SUCCESS_RATIOS_SQL
