"""wal_archiving on private clusters that really archive: a working archive_command
passes, a failing one fails on the run after it started failing, an old last archive
fails, archive_mode off fails, and an unprivileged role can read it all."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import psycopg
import pytest

from exporter.checks.wal_archiving import CHECK
from tests.checks.helpers import check_once
from tests.conftest import make_target
from tests.pgcluster import Cluster

PG15_BIN = Path("/usr/lib/postgresql/15/bin")


@pytest.fixture(scope="module", params=["newest", "15"])
def archiving(request):
    """A cluster with archive_mode=on, of the newest PostgreSQL found and of Debian's 15."""
    bin_dir = None
    if request.param == "15":
        if not PG15_BIN.is_dir():
            pytest.skip("Debian's PostgreSQL 15 server is not installed")
        bin_dir = PG15_BIN
    cluster = Cluster(bin_dir=bin_dir, settings={"archive_mode": "on", "archive_command": "true"})
    cluster.start()
    yield cluster
    cluster.destroy()


def sql(cluster: Cluster, *statements: str) -> tuple | None:
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        row = None
        for statement in statements:
            cur = conn.execute(statement)
            row = cur.fetchone() if cur.description else None
        return row


def archiver(cluster: Cluster) -> tuple:
    return sql(cluster, "SELECT archived_count, failed_count, last_archived_time, last_failed_wal FROM pg_stat_archiver")


def set_command(cluster: Cluster, command: str) -> None:
    sql(cluster, f"ALTER SYSTEM SET archive_command = '{command}'", "SELECT pg_reload_conf()")
    time.sleep(0.3)  # the archiver reads the new setting at its next wakeup


def switch_wal(cluster: Cluster) -> None:
    # A record first: pg_switch_wal() on an empty segment switches nothing.
    sql(cluster, "SELECT pg_logical_emit_message(false, 'pgbv', 'x')", "SELECT pg_switch_wal()")


def wait_until(cluster: Cluster, condition, timeout: float = 30) -> tuple:
    deadline = time.monotonic() + timeout
    while True:
        state = archiver(cluster)
        if condition(state):
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"pg_stat_archiver never got there: {state}")
        time.sleep(0.1)


def archive_one(cluster: Cluster) -> None:
    set_command(cluster, "true")
    before = archiver(cluster)[0]
    switch_wal(cluster)
    wait_until(cluster, lambda s: s[0] > before)


def target(cluster: Cluster, minutes: float = 60):
    return make_target(cluster.dsn(), checks={"wal_archiving_max_age_minutes": minutes})


def test_applies_only_with_a_limit(pg_server):
    assert CHECK.applies(make_target(pg_server.admin_dsn, checks={"wal_archiving_max_age_minutes": 5}))
    assert not CHECK.applies(make_target(pg_server.admin_dsn, checks={}))


def test_archive_mode_off_fails(pg_server):
    # The session server runs with the default archive_mode.
    assert pg_server.execute("SHOW archive_mode") == [("off",)]
    result = check_once(CHECK, make_target(pg_server.admin_dsn, checks={"wal_archiving_max_age_minutes": 60}))
    assert result.outcome == "fail"
    assert result.message.startswith("archive_mode is off")
    assert result.observed == "archive_mode off" and result.data["wal_archiving"]["archive_mode"] == "off"


def test_working_archiving_passes(archiving):
    archive_one(archiving)
    result = check_once(CHECK, target(archiving))
    assert result.outcome == "pass", result.message
    figures = result.data["wal_archiving"]
    assert figures["archive_mode"] == "on" and figures["archived_count"] >= 1
    assert result.message.startswith("last WAL segment archived ")
    assert figures["last_archived_wal"] in result.message
    assert result.expected == "< 60 min" and result.observed.endswith(" min")


def test_an_old_last_archive_fails(archiving):
    archive_one(archiving)
    time.sleep(0.2)
    result = check_once(CHECK, target(archiving, minutes=0.001))
    assert result.outcome == "fail"
    assert "older than wal_archiving_max_age_minutes 0.001" in result.message
    assert "archive_timeout" in result.message


def test_never_archived_since_a_reset_fails(archiving):
    sql(archiving, "SELECT pg_stat_reset_shared('archiver')")
    result = check_once(CHECK, target(archiving))
    assert result.outcome == "fail"
    assert result.message.startswith("no WAL segment has been archived since the statistics were reset at ")
    assert result.observed == "never archived"
    archive_one(archiving)  # leave it archiving for the next test


def test_failing_archive_command_fails_on_the_next_run(archiving):
    archive_one(archiving)
    set_command(archiving, "false")
    failed = archiver(archiving)[1]
    switch_wal(archiving)
    first_state = wait_until(archiving, lambda s: s[1] > failed)

    # The first run has nothing to compare with: it judges the age only, and says so.
    first = check_once(CHECK, target(archiving))
    assert first.outcome == "pass", first.message
    assert f"the last attempt failed: WAL {first_state[3]}" in first.message

    # More attempts fail (the archiver retries when a new segment is ready).
    seen = first.data["wal_archiving"]["failed_count"]
    switch_wal(archiving)
    wait_until(archiving, lambda s: s[1] > seen)
    second = check_once(CHECK, target(archiving), previous={"wal_archiving": first.data["wal_archiving"]})
    assert second.outcome == "fail"
    figures = second.data["wal_archiving"]
    assert second.message.startswith(f"archiving is failing: {figures['failed_count'] - seen} failed attempt(s) since the last run")
    assert f"the last for WAL {figures['last_failed_wal']} at " in second.message
    assert "nothing archived since" in second.message

    # Fixed: the backlog is archived, and the next run passes though failures grew.
    archive_one(archiving)
    third = check_once(CHECK, target(archiving), previous={"wal_archiving": first.data["wal_archiving"]})
    assert third.outcome == "pass", third.message
    assert "failed attempt(s) since the last run, archived again since" in third.message


def test_a_statistics_reset_between_runs_is_no_failure(archiving):
    archive_one(archiving)
    first = check_once(CHECK, target(archiving))
    earlier = dict(first.data["wal_archiving"], failed_count=0, stats_reset="2020-01-01T00:00:00+00:00")
    set_command(archiving, "false")
    switch_wal(archiving)
    wait_until(archiving, lambda s: s[1] > 0)
    result = check_once(CHECK, target(archiving), previous={"wal_archiving": earlier})
    assert result.outcome == "pass", result.message
    archive_one(archiving)


def test_an_unprivileged_role_reads_the_archiver(archiving):
    archive_one(archiving)
    role = f"pgbv_{uuid.uuid4().hex[:8]}"
    sql(archiving, f"CREATE ROLE {role} LOGIN")
    try:
        result = check_once(CHECK, make_target(
            f"{archiving.dsn()} user={role}", checks={"wal_archiving_max_age_minutes": 60}
        ))
        assert result.outcome == "pass", result.message
        assert result.data["wal_archiving"]["archived_count"] >= 1
        assert result.data["wal_archiving"]["last_archived_wal"]
    finally:
        sql(archiving, f"DROP ROLE {role}")


def test_an_unprivileged_role_reads_the_session_server(pg_server, make_db):
    # The session server is PostgreSQL 15 under CI's second pass.
    dsn = make_db()
    role = f"pgbv_{uuid.uuid4().hex[:8]}"
    pg_server.execute(f"CREATE ROLE {role} LOGIN")
    try:
        result = check_once(CHECK, make_target(f"{dsn} user={role}", checks={"wal_archiving_max_age_minutes": 60}))
        assert result.outcome == "fail" and result.message.startswith("archive_mode is off"), result.message
        assert "failed_count" in result.data["wal_archiving"]
    finally:
        pg_server.execute(f"DROP ROLE {role}")
