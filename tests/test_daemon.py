"""`pgbv run` for real: a running daemon scraped over HTTP, a database stopped and
started under it, a spooled failure written once, two replicas racing, SIGTERM."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from psycopg.conninfo import conninfo_to_dict

from exporter.config import Settings
from exporter.daemon import Daemon, advisory_key
from exporter.migrate import migrate
from tests.conftest import execute, make_target
from tests.pgcluster import Cluster


def write_config(tmp_path: Path, dsn: str, **overrides) -> Path:
    data = {
        "targets": [{"name": "app", "dsn": dsn, "connect_timeout_seconds": 2,
                     "checks": {"critical_tables": ["organizations"]}}],
        "schedule": {"interval_minutes": 60, "refresh_seconds": 1},
        "http": {"listen": "127.0.0.1:0"},
        "spool_dir": str(tmp_path / "spool"),
    }
    for key, value in overrides.items():
        data[key] = value
    path = tmp_path / "pgbv.yml"
    path.write_text(yaml.safe_dump(data))
    return path


class RunningDaemon:
    """`pgbv run` in a subprocess; knows its URL from its own log line."""

    def __init__(self, config: Path, env: dict[str, str] | None = None):
        if env is None:
            env = {k: v for k, v in os.environ.items() if not k.startswith("PGBV_")}
        self.proc = subprocess.Popen([sys.executable, "-m", "exporter", "run", "--config", str(config)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: list[str] = []
        self.url = None
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + 30
        while self.url is None:
            assert time.monotonic() < deadline, "daemon did not start:\n" + "\n".join(self.lines)
            assert self.proc.poll() is None, "daemon exited:\n" + "\n".join(self.lines)
            time.sleep(0.05)

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            # http or https (a TLS endpoint); the JSON log format quotes the message.
            match = re.search(r"serving metrics on (https?://[^\s\"]+)/metrics", line)
            if match:
                self.url = match.group(1)

    def scrape(self) -> dict[tuple[str, tuple], float]:
        body = urllib.request.urlopen(self.url + "/metrics", timeout=5).read().decode()
        samples = {}
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples

    def value(self, name: str, **labels) -> float | None:
        return self.scrape().get((name, tuple(sorted(labels.items()))))

    def wait_for(self, name: str, expected: float, timeout: float = 30, **labels) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.value(name, **labels) == expected:
                return time.monotonic() - started
            time.sleep(0.1)
        raise AssertionError(f"{name}{labels} never became {expected}; log:\n" + "\n".join(self.lines[-30:]))

    def terminate(self, timeout: float = 10) -> tuple[int, float]:
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - started


@pytest.fixture
def cluster():
    c = Cluster()
    c.start()
    yield c
    c.destroy()


def rows(dsn: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT status, error_details, verification_details->>'trigger' FROM backup_verification_log ORDER BY verified_at"
        ).fetchall()


def test_runs_on_start_serves_the_verdict_and_stops_on_sigterm(demo_db, tmp_path):
    config = write_config(tmp_path, demo_db)
    daemon = RunningDaemon(config)
    try:
        daemon.wait_for("pgbv_last_run_status", 1, target="app", status="success")
        samples = daemon.scrape()
        assert samples[("pgbv_up", (("target", "app"),))] == 1
        assert samples[("pgbv_checks", (("outcome", "passed"), ("target", "app")))] >= 5
        assert samples[("pgbv_schedule_interval_seconds", ())] == 3600
        assert samples[("pgbv_next_run_timestamp_seconds", ())] > time.time()
        assert urllib.request.urlopen(daemon.url + "/healthz", timeout=5).status == 200
    finally:
        code, took = daemon.terminate()
    assert code == 0 and took < 5
    assert [r[0] for r in rows(demo_db)] == ["success"]
    assert any("target=app" in line and "status=success" in line for line in daemon.lines), daemon.lines

    # A restart within the period serves the last verdict at once and does not run again.
    again = RunningDaemon(config)
    try:
        assert again.value("pgbv_last_run_status", target="app", status="success") == 1
        time.sleep(1.5)
    finally:
        assert again.terminate()[0] == 0
    assert len(rows(demo_db)) == 1


def test_up_follows_the_database_down_and_back(cluster, tmp_path):
    dsn = cluster.dsn()
    migrate(make_target(dsn, checks={}))
    daemon = RunningDaemon(write_config(tmp_path, dsn))
    try:
        daemon.wait_for("pgbv_up", 1, target="app")
        cluster.stop()
        down_after = daemon.wait_for("pgbv_up", 0, target="app")
        # HTTP stays 200 while the database is down.
        assert daemon.value("pgbv_exporter_build_info", version=__import__("exporter").__version__) == 1
        cluster.start()
        up_after = daemon.wait_for("pgbv_up", 1, target="app")
    finally:
        code, _ = daemon.terminate()
    assert code == 0
    print(f"pgbv_up fell to 0 {down_after:.2f} s after the stop and came back {up_after:.2f} s after the start")
    assert down_after < 10


def test_failure_while_down_is_spooled_and_written_once(cluster, tmp_path):
    dsn = cluster.dsn()
    migrate(make_target(dsn, checks={}))
    cluster.stop()
    daemon = RunningDaemon(write_config(tmp_path, dsn))
    try:
        daemon.wait_for("pgbv_spool_rows", 1)
        assert daemon.value("pgbv_up", target="app") == 0
        cluster.start()
        daemon.wait_for("pgbv_spool_rows", 0)
        daemon.wait_for("pgbv_last_run_status", 1, target="app", status="failure")
        time.sleep(2.5)  # more refreshes: a second write would show up now
    finally:
        assert daemon.terminate()[0] == 0
    recorded = rows(dsn)
    assert len(recorded) == 1
    status, error_details, trigger = recorded[0]
    assert status == "failure" and trigger == "start"
    assert error_details[0]["name"] == "connection"
    assert not any(Path(tmp_path / "spool").glob("*.jsonl")) or all(
        p.stat().st_size == 0 for p in Path(tmp_path / "spool").glob("*.jsonl")
    )


def test_two_replicas_write_one_row_per_period(demo_db, tmp_path):
    config = write_config(tmp_path, demo_db, schedule={"interval_minutes": 1, "refresh_seconds": 1})
    settings = yaml.safe_load(config.read_text())
    replicas = [Daemon(Settings(**settings)) for _ in range(2)]
    target = replicas[0].settings.targets[0]
    for period in range(3):
        barrier = threading.Barrier(2)
        results = []

        def race(daemon):
            barrier.wait()
            results.append(daemon.run_target(target, "schedule"))

        threads = [threading.Thread(target=race, args=(d,)) for d in replicas]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sum(r is not None for r in results) == 1, f"period {period}: {results}"
        # Both again in the same period: nobody runs.
        assert all(d.run_target(target, "schedule") is None for d in replicas)
        # The next period: move the recorded runs one period back in time.
        with psycopg.connect(demo_db, autocommit=True) as conn:
            conn.execute("UPDATE backup_verification_log SET verified_at = verified_at - interval '61 seconds'")
    assert len(rows(demo_db)) == 3


def test_sigterm_during_a_run_exits_promptly_without_a_partial_row(demo_db, tmp_path):
    config = write_config(tmp_path, demo_db)
    # Hold a lock the run's exact row count waits on (it gives up after the 2 s lock timeout).
    holder = psycopg.connect(demo_db)
    holder.execute("CREATE TABLE slow_table (id int)")
    holder.commit()
    holder.execute("LOCK TABLE slow_table IN ACCESS EXCLUSIVE MODE")
    data = yaml.safe_load(config.read_text())
    data["targets"][0]["checks"] = {"critical_tables": ["slow_table"]}
    config.write_text(yaml.safe_dump(data))
    daemon = RunningDaemon(config)
    try:
        time.sleep(0.5)  # the run has started and waits on the lock
        code, took = daemon.terminate()
    finally:
        holder.rollback()
        holder.close()
    assert code == 0 and took < 5, daemon.lines
    assert rows(demo_db) == []


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian package prometheus)")
def test_promtool_accepts_a_real_scrape(demo_db, tmp_path):
    daemon = RunningDaemon(write_config(tmp_path, demo_db))
    try:
        daemon.wait_for("pgbv_last_run_status", 1, target="app", status="success")
        body = urllib.request.urlopen(daemon.url + "/metrics", timeout=5).read()
    finally:
        daemon.terminate()
    lint = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert lint.returncode == 0 and lint.stdout + lint.stderr == b"", lint.stdout + lint.stderr


# --- sessions: one per run per server, c + 1 for the fleet --------------------------------


class SessionSampler:
    """pgbv's sessions (application_name = pgbv, as db.connect sets it) on some databases,
    from pg_stat_activity every 2 ms: the peak in all and per database."""

    def __init__(self, admin_dsn: str, dbnames: list[str]):
        self.admin_dsn = admin_dsn
        self.dbnames = dbnames
        self.peak = 0
        self.peak_per_db: dict[str, int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        with psycopg.connect(self.admin_dsn, autocommit=True, application_name="pgbv-test-sampler") as conn:
            self._ready.set()
            while not self._stop.is_set():
                rows = conn.execute("SELECT datname, count(*) FROM pg_stat_activity"
                                    " WHERE application_name = 'pgbv' AND datname = ANY(%s) GROUP BY datname",
                                    [self.dbnames]).fetchall()
                self.samples += 1
                self.peak = max(self.peak, sum(n for _, n in rows))
                for name, n in rows:
                    self.peak_per_db[name] = max(self.peak_per_db.get(name, 0), n)
                self._stop.wait(0.002)

    def __enter__(self) -> SessionSampler:
        self._thread.start()
        assert self._ready.wait(30), "the sampler could not connect"
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


def dbname(dsn: str) -> str:
    return conninfo_to_dict(dsn)["dbname"]


def sessions_opened(pg_server, dsn: str) -> int:
    """pg_stat_database.sessions of the database once no client is connected to it: a
    backend's count is flushed before it leaves pg_stat_activity."""
    deadline = time.monotonic() + 10
    while True:
        (connected, sessions), = pg_server.execute(
            "SELECT (SELECT count(*) FROM pg_stat_activity WHERE datname = %(db)s AND backend_type = 'client backend'),"
            "       sessions FROM pg_stat_database WHERE datname = %(db)s", {"db": dbname(dsn)})
        if connected == 0:
            return sessions
        assert time.monotonic() < deadline, f"clients still connected to {dbname(dsn)}"
        time.sleep(0.01)


def daemon_for(tmp_path: Path, targets: list[dict], **schedule) -> Daemon:
    return Daemon(Settings(
        targets=targets,
        schedule={"interval_minutes": 60, "refresh_seconds": 1, **schedule},
        http={"listen": "127.0.0.1:0"},
        spool_dir=str(tmp_path / "spool"),
    ))


def target_data(name: str, dsn: str, **extra) -> dict:
    return {"name": name, "dsn": dsn, "connect_timeout_seconds": 2,
            "checks": {"critical_tables": ["organizations"]}, **extra}


def picture(daemon: Daemon, name: str):
    return next(t for t in daemon.current_snapshot().targets if t.name == name)


def count_rows(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM backup_verification_log").fetchone()[0]


@pytest.mark.parametrize("separate_log", [False, True], ids=["log in the target", "log_dsn"])
def test_a_run_holds_one_session_per_server(make_db, pg_server, tmp_path, separate_log):
    target_db = make_db(demo=True)
    log_db = make_db(demo=True) if separate_log else target_db
    extra = {"log_dsn": log_db} if separate_log else {}
    daemon = daemon_for(tmp_path, [target_data("app", target_db, **extra)])
    target = daemon.settings.targets[0]
    databases = sorted({dbname(target_db), dbname(log_db)})
    before = {db: sessions_opened(pg_server, db) for db in (target_db, log_db)}
    with SessionSampler(pg_server.admin_dsn, databases) as sampler:
        result = daemon.run_target(target, "schedule")
    after = {db: sessions_opened(pg_server, db) for db in (target_db, log_db)}
    assert result is not None and result.status == "success", result.checks
    # The lock, the period question, the checks, the insert and the picture: one session per database.
    assert {db: after[db] - before[db] for db in before} == {db: 1 for db in before}
    assert sampler.samples > 0 and all(n == 1 for n in sampler.peak_per_db.values()), sampler.peak_per_db
    assert count_rows(log_db) == 1
    if separate_log:
        assert count_rows(target_db) == 0
    # The row is in the snapshot at once, read on the run's own session.
    assert picture(daemon, "app").last_status == "success"
    assert not daemon.spool.pending()


def test_a_fleet_stays_within_max_concurrent_targets_plus_one(make_db, pg_server, tmp_path):
    concurrency, count = 2, 6
    dsns = [make_db(demo=True) for _ in range(count)]
    # refresh_seconds this short keeps the refresh thread reading while the runs go on.
    daemon = daemon_for(tmp_path, [target_data(f"t{i}", dsn) for i, dsn in enumerate(dsns)],
                        max_concurrent_targets=concurrency, refresh_seconds=0.05)
    with SessionSampler(pg_server.admin_dsn, [dbname(d) for d in dsns]) as sampler:
        daemon.start()  # run_on_start: every log is empty, so every target is due at once
        try:
            deadline = time.monotonic() + 120
            while not all(count_rows(d) == 1 for d in dsns) or daemon._running:
                assert time.monotonic() < deadline, "the runs did not finish"
                time.sleep(0.05)
            time.sleep(0.3)  # a few more refresh passes
        finally:
            daemon.stop()
    assert all(p.last_status == "success" for p in daemon.current_snapshot().targets)
    print(f"peak {sampler.peak} pgbv sessions at max_concurrent_targets={concurrency} ({sampler.samples} samples)")
    # max_concurrent_targets run sessions + the refresh thread's one (it was 2 x c + 1).
    assert concurrency <= sampler.peak <= concurrency + 1, sampler.peak


@pytest.mark.parametrize("separate_log", [False, True], ids=["log in the target", "log_dsn"])
def test_the_run_lock_excludes_a_second_writer(make_db, tmp_path, separate_log):
    target_db = make_db(demo=True)
    log_db = make_db(demo=True) if separate_log else target_db
    extra = {"log_dsn": log_db} if separate_log else {}
    first = daemon_for(tmp_path / "one", [target_data("app", target_db, **extra)])
    second = daemon_for(tmp_path / "two", [target_data("app", target_db, **extra)])
    target = first.settings.targets[0]
    with psycopg.connect(log_db, autocommit=True) as other:  # another replica, mid-run
        assert other.execute("SELECT pg_try_advisory_lock(%s)", [advisory_key("app")]).fetchone()[0]
        assert first.run_target(target, "start") is None
        assert count_rows(log_db) == 0
    # A run holds the lock on its session until it ends: a second daemon racing it is skipped.
    started = threading.Event()
    holder = hold_lock_on_a_new_table(target_db)  # the run waits on it, its run lock held
    slow = target_data("app", target_db, **extra, checks={"critical_tables": ["slow_table"]})
    slow_daemon = daemon_for(tmp_path / "slow", [slow])
    results = []

    def run():
        started.set()
        results.append(slow_daemon.run_target(slow_daemon.settings.targets[0], "start"))

    thread = threading.Thread(target=run)
    thread.start()
    try:
        started.wait()
        wait_for_lock_waiter(target_db)
        assert second.run_target(target, "start") is None
    finally:
        holder.rollback()
        holder.close()
        thread.join(60)
    assert results and results[0] is not None
    assert count_rows(log_db) == 1
    with psycopg.connect(log_db, autocommit=True) as other:  # released when the run's session closed
        assert other.execute("SELECT pg_try_advisory_lock(%s)", [advisory_key("app")]).fetchone()[0]
    # The lock is free but the period has its row: one row per target per period.
    assert first.run_target(target, "start") is None
    assert count_rows(log_db) == 1


def wait_for_lock_waiter(dsn: str, timeout: float = 10) -> int:
    """The pid of the pgbv session waiting on a lock in this database."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            row = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = 'pgbv'"
                               " AND datname = current_database() AND wait_event_type = 'Lock'").fetchone()
            if row:
                return row[0]
            assert time.monotonic() < deadline, "no pgbv session waits on the lock"
            time.sleep(0.01)


def hold_lock_on_a_new_table(dsn: str) -> psycopg.Connection:
    holder = psycopg.connect(dsn)
    holder.execute("CREATE TABLE slow_table (id int)")
    holder.commit()
    holder.execute("LOCK TABLE slow_table IN ACCESS EXCLUSIVE MODE")
    return holder


def test_a_session_lost_mid_run_spools_the_row_and_the_refresh_writes_it(demo_db, tmp_path):
    daemon = daemon_for(tmp_path, [target_data("app", demo_db, checks={"critical_tables": ["slow_table"]})])
    target = daemon.settings.targets[0]
    holder = hold_lock_on_a_new_table(demo_db)
    results = []
    thread = threading.Thread(target=lambda: results.append(daemon.run_target(target, "start")))
    thread.start()
    try:
        pid = wait_for_lock_waiter(demo_db)
        execute(demo_db, f"SELECT pg_terminate_backend({pid})")
    finally:
        holder.rollback()
        holder.close()
        thread.join(60)
    result = results[0]
    assert result is not None and result.status == "failure"
    assert any("connection lost" in c.message for c in result.checks if c.outcome == "error"), result.checks
    # The session that was to write the row is gone: the row waits in the spool, and the
    # refresh thread is asked to write it at once.
    assert count_rows(demo_db) == 0 and daemon.spool.pending("app") == 1
    assert daemon._take_dirty() == {"app"}
    daemon.refresh_targets(["app"])
    assert count_rows(demo_db) == 1 and daemon.spool.pending("app") == 0
    assert picture(daemon, "app").last_status == "failure"
    with psycopg.connect(demo_db) as conn:
        assert conn.execute("SELECT verified_at FROM backup_verification_log").fetchone()[0] == result.verified_at


def test_a_refused_insert_is_spooled_and_written_once_when_accepted(demo_db, tmp_path):
    execute(demo_db,
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$",
            "CREATE TRIGGER refuse BEFORE INSERT ON backup_verification_log FOR EACH ROW EXECUTE FUNCTION refuse()")
    daemon = daemon_for(tmp_path, [target_data("app", demo_db)])
    result = daemon.run_target(daemon.settings.targets[0], "start")
    assert result is not None and result.status == "success"
    assert count_rows(demo_db) == 0 and daemon.spool.pending("app") == 1
    daemon.refresh_targets(daemon._take_dirty())  # still refused: kept
    assert daemon.spool.pending("app") == 1 and daemon.current_snapshot().spool_rows == 1
    execute(demo_db, "DROP TRIGGER refuse ON backup_verification_log")
    daemon.refresh_targets(["app"])
    daemon.refresh()
    assert count_rows(demo_db) == 1 and daemon.spool.pending("app") == 0
    assert daemon.current_snapshot().spool_rows == 0 and picture(daemon, "app").last_status == "success"


def test_a_run_refreshes_its_own_picture_only(make_db, pg_server, tmp_path):
    a, b = make_db(demo=True), make_db(demo=True)
    daemon = daemon_for(tmp_path, [target_data("a", a), target_data("b", b)])
    daemon.refresh()
    assert picture(daemon, "a").last_status is None and picture(daemon, "b").last_status is None
    execute(b, "INSERT INTO backup_verification_log (verified_at, status, verification_details)"
               " VALUES (now(), 'failure', '{\"target\": \"b\", \"trigger\": \"start\"}')")
    before_b = sessions_opened(pg_server, b)
    before_b_picture = picture(daemon, "b")
    assert daemon.run_target(daemon.settings.targets[0], "start") is not None
    assert picture(daemon, "a").last_status == "success"
    assert picture(daemon, "b") is before_b_picture  # not re-read: b's new row is not seen yet
    assert sessions_opened(pg_server, b) == before_b
    # Refreshing one target takes one session on it, probe included.
    daemon.refresh_targets(["b"])
    assert sessions_opened(pg_server, b) == before_b + 1
    assert picture(daemon, "b").last_status == "failure" and picture(daemon, "b").up
    assert picture(daemon, "a").last_status == "success"
    # A picture read earlier never replaces a later one (runs and the refresh thread both publish).
    stale = replace(picture(daemon, "a"), last_status="warning")
    daemon._publish([(0.0, stale)])
    assert picture(daemon, "a").last_status == "success"


def test_a_finished_run_shows_at_once_without_a_full_refresh(make_db, tmp_path):
    a, b = make_db(demo=True), make_db(demo=True)
    # b ran recently, so only a is due at start; full refreshes are an hour apart.
    execute(b, "INSERT INTO backup_verification_log (verified_at, status, verification_details)"
               " VALUES (now(), 'success', '{\"target\": \"b\", \"trigger\": \"start\"}')")
    daemon = daemon_for(tmp_path, [target_data("a", a), target_data("b", b)], refresh_seconds=3600)
    daemon.start()
    try:
        assert picture(daemon, "b").last_status == "success"
        execute(b, "INSERT INTO backup_verification_log (verified_at, status, verification_details)"
                   " VALUES (now(), 'failure', '{\"target\": \"b\", \"trigger\": \"start\"}')")
        deadline = time.monotonic() + 60
        while picture(daemon, "a").last_status != "success":
            assert time.monotonic() < deadline, "a's run never showed"
            time.sleep(0.05)
        time.sleep(0.5)
        assert picture(daemon, "b").last_status == "success"  # b was not re-read
    finally:
        daemon.stop()
    assert count_rows(a) == 1


def test_the_daily_cleanup_deletes_old_rows_and_leaves_no_session_behind(demo_db, pg_server, tmp_path):
    # The cleanup runs in the refresh thread, between its sessions, and closes its own
    # (db.close waits for the backend to exit; here it exits fast enough either way,
    # so what this catches is a session left open).
    execute(demo_db,
            "INSERT INTO backup_verification_log (verified_at, status) VALUES (now() - interval '100 days', 'success')",
            "INSERT INTO backup_verification_log (verified_at, status) VALUES (now() - interval '1 day', 'success')")
    daemon = daemon_for(tmp_path, [target_data("app", demo_db)])
    for _ in range(5):
        daemon.cleanup()
        (left,), = pg_server.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = 'pgbv'", [dbname(demo_db)])
        assert left == 0
    assert count_rows(demo_db) == 1
