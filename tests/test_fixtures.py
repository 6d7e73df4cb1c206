"""The fixtures every other test stands on do what they say."""

import psycopg

from tests.conftest import make_target


def test_demo_db_is_the_seed_application(demo_db):
    with psycopg.connect(demo_db) as conn:
        rows = dict(conn.execute(
            "SELECT relname, n_live_tup FROM pg_stat_user_tables WHERE relname IN "
            "('organizations','profiles','agents','appointments','contacts','call_logs','knowledge_base_chunks')"
        ).fetchall())
        total = conn.execute(
            "SELECT (SELECT count(*) FROM organizations) + (SELECT count(*) FROM profiles) + (SELECT count(*) FROM agents)"
            " + (SELECT count(*) FROM appointments) + (SELECT count(*) FROM contacts) + (SELECT count(*) FROM call_logs)"
            " + (SELECT count(*) FROM knowledge_base_chunks)"
        ).fetchone()[0]
        policies = conn.execute("SELECT count(*) FROM pg_policies WHERE schemaname = 'public'").fetchone()[0]
        log_table = conn.execute("SELECT to_regclass('backup_verification_log') IS NOT NULL").fetchone()[0]
    assert len(rows) == 7
    assert total == 65
    assert policies == 23
    assert log_table


def test_make_target_moves_password_out_of_dsn():
    target = make_target("postgresql://u:hunter2@localhost/db")
    assert "hunter2" not in target.dsn
    assert target.resolved_password() == "hunter2"
