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
from pathlib import Path

import psycopg
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import Settings
from exporter.daemon import Daemon
from exporter.migrate import migrate
from tests.conftest import make_target
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

    def __init__(self, config: Path):
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
            match = re.search(r"serving metrics on (http://\S+)/metrics", line)
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
