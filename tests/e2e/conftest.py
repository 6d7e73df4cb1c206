"""The end-to-end stack: `pgbv run` on a real PostgreSQL, scraped by a real Prometheus
(Debian's `prometheus`) that evaluates the shipped alert rules and sends to a real
Alertmanager (`prometheus-alertmanager`), which notifies a webhook receiver living
in the test. Everything listens on 127.0.0.1 only; every port is picked free.

What differs from production, and why:
- Prometheus scrapes and evaluates every second.
- The rules are a copy of alerts/pgbv.rules.yml in which every `for:` is cut to
  FOR_IN_TEST (still above zero, so an alert goes through pending to firing).
  The shipped rules, durations included, are tested as they are by promtool unit
  tests (tests/test_alerts.py); here we test the wiring: real metric names and
  labels from a real exporter, the rules loaded by a real Prometheus, routing and
  inhibition in a real Alertmanager, the notification's labels and annotations.
  Expressions, labels and annotations stay byte-for-byte the shipped ones.
- Alertmanager runs alerts/alertmanager.example.yml itself (routes, receivers,
  inhibition), with group_wait/group_interval cut to 1s and each receiver's
  webhook URL pointed at the test's receiver (keeping its path: /pager, /tickets).
  No gossip: --cluster.listen-address is empty.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import psycopg
import pytest
import yaml
from psycopg import sql

from exporter.pgtools import find_tool, run_tool
from tests.conftest import SEED_CHECKS, TEMPLATE_DEMO
from tests.test_daemon import RunningDaemon

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "alerts" / "pgbv.rules.yml"
ALERTMANAGER_EXAMPLE = ROOT / "alerts" / "alertmanager.example.yml"

PROMETHEUS = shutil.which("prometheus")
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
PROMTOOL = shutil.which("promtool")
AMTOOL = shutil.which("amtool")

FOR_IN_TEST = "1s"
GROUP_TIMING = {"group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h"}

needs_binaries = pytest.mark.skipif(
    PROMETHEUS is None or ALERTMANAGER is None,
    reason="end-to-end paging needs Debian's prometheus and prometheus-alertmanager "
    f"(found prometheus={PROMETHEUS}, alertmanager={ALERTMANAGER}); CI installs both",
)


# --- small helpers ----------------------------------------------------------------------


def free_port() -> int:
    """A port free on 127.0.0.1 right now (the usual small race with other processes)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout: float = 5) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"


def shortened_rules(source: Path = RULES) -> dict:
    """The shipped rules with every `for:` cut to FOR_IN_TEST; nothing else changed."""
    data = yaml.safe_load(source.read_text())
    for group in data["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = FOR_IN_TEST
    return data


def alertmanager_config(webhook_url: str, source: Path = ALERTMANAGER_EXAMPLE) -> dict:
    """The shipped Alertmanager example, fast, with every webhook aimed at webhook_url."""
    data = yaml.safe_load(source.read_text())

    def fast(route: dict) -> None:
        for key, value in GROUP_TIMING.items():
            if key in route or route is data["route"]:
                route[key] = value
        for child in route.get("routes", []):
            fast(child)

    fast(data["route"])
    for receiver in data["receivers"]:
        hooks = receiver.get("webhook_configs")
        # A receiver without a webhook would swallow its alerts unseen by this test.
        assert hooks, f"receiver {receiver['name']} of {source.name} has no webhook_configs; the e2e test cannot see it"
        for hook in hooks:
            hook["url"] = webhook_url + (urllib.parse.urlsplit(hook["url"]).path or "/")
            hook["send_resolved"] = True
    return data


# --- processes ------------------------------------------------------------------------------


class Service:
    """A server binary in a subprocess, output to a log file, ready when ready_url says 200."""

    def __init__(self, name: str, argv: list[str], workdir: Path, ready_url: str, timeout: float = 30):
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=workdir)
        try:
            self._wait_ready(ready_url, timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError) as exc:
                last = exc
            time.sleep(0.1)
        raise AssertionError(f"{self.name} not ready at {url} after {timeout:g} s ({last}):\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        self._log.flush()
        return _tail(self.log_path, lines)

    def stop(self, timeout: float = 10) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        self._log.close()


def stop_daemon(daemon: RunningDaemon) -> None:
    """SIGTERM, then SIGKILL if it does not stop (RunningDaemon.terminate only waits)."""
    if daemon.proc.poll() is not None:
        return
    try:
        daemon.terminate(timeout=10)
    except subprocess.TimeoutExpired:
        daemon.proc.kill()
        daemon.proc.wait(timeout=10)


@dataclass
class Notification:
    at: float  # time.monotonic() when it arrived
    path: str  # /pager or /tickets
    payload: dict


class WebhookReceiver:
    """Alertmanager's webhook target: a thread collecting every JSON payload it is sent."""

    def __init__(self):
        self.received: list[Notification] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    payload = json.loads(body)
                except ValueError:
                    payload = {"unparsable": body.decode(errors="replace")}
                with receiver._lock:
                    receiver.received.append(Notification(time.monotonic(), self.path, payload))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="e2e-webhook", daemon=True)
        self._thread.start()

    def alerts(self, path: str | None = None) -> list[tuple[Notification, dict]]:
        """Every (notification, alert) received so far, optionally only on one path."""
        with self._lock:
            received = list(self.received)
        return [(n, alert) for n in received if path is None or n.path == path
                for alert in n.payload.get("alerts", [])]

    def find(self, alertname: str, status: str, path: str | None = None, since: float = 0.0):
        for notification, alert in self.alerts(path):
            if notification.at >= since and alert["labels"].get("alertname") == alertname and alert["status"] == status:
                return notification, alert
        return None

    def summary(self) -> str:
        lines = []
        for notification, alert in self.alerts():
            lines.append(f"  {notification.path} {alert['status']} {alert['labels']}")
        return "\n".join(lines) or "  (nothing received)"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- the stack ---------------------------------------------------------------------------------


@dataclass
class Stack:
    workdir: Path
    dsn: str
    config: Path
    webhook: WebhookReceiver
    alertmanager: Service
    am_url: str
    daemon: RunningDaemon
    prometheus: Service
    prom_url: str
    timings: dict[str, float] = field(default_factory=dict)

    # Prometheus ----------------------------------------------------------------------

    def query(self, expr: str) -> dict:
        """/api/v1/query at now; returns the whole answer (status, data or error)."""
        url = f"{self.prom_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            return get_json(url)
        except urllib.error.HTTPError as exc:  # 400/422: a bad expression; the body says why
            return json.loads(exc.read() or b"{}") or {"status": "error", "error": str(exc)}

    def prometheus_alerts(self) -> list[dict]:
        return get_json(f"{self.prom_url}/api/v1/alerts")["data"]["alerts"]

    def prometheus_state(self, alertname: str) -> str | None:
        states = [a["state"] for a in self.prometheus_alerts() if a["labels"].get("alertname") == alertname]
        return "firing" if "firing" in states else (states[0] if states else None)

    def alertmanager_alerts(self) -> list[dict]:
        return get_json(f"{self.am_url}/api/v2/alerts")

    # pgbv ------------------------------------------------------------------------------

    def trigger_run(self) -> subprocess.CompletedProcess:
        """`pgbv verify` with the daemon's own configuration: it records a row, which the
        daemon's next snapshot refresh (1 s) serves."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PGBV_")}
        return subprocess.run([sys.executable, "-m", "exporter", "verify", "--config", str(self.config)],
                              capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)

    def newest_status(self) -> str | None:
        with psycopg.connect(self.dsn) as conn:
            row = conn.execute("SELECT status FROM backup_verification_log ORDER BY verified_at DESC LIMIT 1").fetchone()
        return row[0] if row else None

    def exporter_value(self, name: str, **labels) -> float | None:
        return self.daemon.value(name, **labels)

    # waiting and telling why ----------------------------------------------------------

    def diagnostics(self) -> str:
        def safe(what: str, fn: Callable[[], Any]) -> str:
            try:
                return json.dumps(fn(), indent=1, sort_keys=True)[:6000]
            except Exception as exc:  # noqa: BLE001 - diagnostics must never hide the failure
                return f"<{what} unavailable: {exc}>"

        return "\n".join([
            "--- Prometheus /api/v1/alerts:", safe("prometheus alerts", self.prometheus_alerts),
            "--- Prometheus up{job=\"pgbv\"}:", safe("up", lambda: self.query('up{job="pgbv"}').get("data")),
            "--- Alertmanager /api/v2/alerts:",
            safe("alertmanager alerts", lambda: [{"labels": a["labels"], "status": a["status"]}
                                                 for a in self.alertmanager_alerts()]),
            "--- webhook received:", self.webhook.summary(),
            "--- pgbv daemon log:", "\n".join(self.daemon.lines[-30:]),
            "--- prometheus log:", self.prometheus.log_tail(15),
            "--- alertmanager log:", self.alertmanager.log_tail(15),
        ])

    def wait_until(self, what: str, predicate: Callable[[], Any], timeout: float, poll: float = 0.1) -> float:
        """Seconds until predicate() is true; on timeout an AssertionError with the whole state."""
        started = time.monotonic()
        last_error = None
        while True:
            try:
                if predicate():
                    return time.monotonic() - started
            except (OSError, ValueError, KeyError) as exc:  # a server busy or restarting: try again
                last_error = exc
            if time.monotonic() - started > timeout:
                error = f" (last error: {type(last_error).__name__}: {last_error})" if last_error else ""
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{error}\n{self.diagnostics()}")
            time.sleep(poll)


@pytest.fixture(scope="module")
def e2e_db(pg_server):
    """A copy of the healthy demo database (like demo_db), for a whole module's stack."""
    name = f"pgbv_test_e2e_{os.getpid()}_{int(time.time() * 1000) % 10**8}"
    pg_server.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(TEMPLATE_DEMO)))
    yield pg_server.dsn(name)
    pg_server.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def stack(e2e_db, pg_server, tmp_path_factory):
    """Webhook, Alertmanager, a daemon whose first run (a restore drill included) succeeded,
    then Prometheus scraping it (started last, so it never sees the exporter before its
    first verdict)."""
    if PROMETHEUS is None or ALERTMANAGER is None:  # the tests are marked; this guards a direct use
        pytest.skip(needs_binaries.kwargs["reason"])
    workdir = tmp_path_factory.mktemp("e2e")
    started = time.monotonic()
    timings: dict[str, float] = {}
    with contextlib.ExitStack() as cleanup:
        webhook = WebhookReceiver()
        cleanup.callback(webhook.close)

        am_port = free_port()
        am_config = workdir / "alertmanager.yml"
        am_config.write_text(yaml.safe_dump(alertmanager_config(webhook.url), sort_keys=False))
        if AMTOOL:
            check = subprocess.run([AMTOOL, "check-config", str(am_config)], capture_output=True, text=True, timeout=30)
            assert check.returncode == 0, f"amtool rejects the test's Alertmanager config:\n{check.stdout}{check.stderr}"
        am_url = f"http://127.0.0.1:{am_port}"
        alertmanager = Service("alertmanager", [
            ALERTMANAGER, f"--config.file={am_config}", f"--storage.path={workdir / 'am-data'}",
            f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address=",
        ], workdir, f"{am_url}/-/ready")
        cleanup.callback(alertmanager.stop)
        timings["alertmanager_ready"] = time.monotonic() - started

        # SEED_CHECKS, with a lower success-rate floor: the test records one failure among
        # a handful of runs, and with the default 0.9 the third run on would warn on
        # success_rate (as designed) and keep a warning up after the fix.
        checks = dict(SEED_CHECKS, min_success_ratio=0.5)
        # A real backup (a pg_dump of the database) and restore drills, so that every
        # metric family exists: the backup age/size and limits, and after the first run
        # (which drills: none was ever done) the restore duration, rows and RTO.
        backups = workdir / "backups"
        backups.mkdir()
        run_tool(find_tool("pg_dump", pg_server.version_num),
                 ["--format=custom", f"--file={backups / 'app.dump'}", f"--dbname={e2e_db}"], timeout=120)
        config = workdir / "pgbv.yml"
        config.write_text(yaml.safe_dump({
            "targets": [{"name": "app", "dsn": e2e_db, "connect_timeout_seconds": 2, "checks": checks,
                         "backup": {"source": "directory", "path": str(backups), "pattern": "*.dump", "min_size_mb": 0},
                         "restore": {"enabled": True}}],
            "schedule": {"interval_minutes": 1, "refresh_seconds": 1, "run_on_start": True},
            "http": {"listen": "127.0.0.1:0"},
            "spool_dir": str(workdir / "spool"),
        }))
        daemon = RunningDaemon(config)
        cleanup.callback(stop_daemon, daemon)
        daemon.wait_for("pgbv_last_run_status", 1, timeout=30, target="app", status="success")
        timings["daemon_first_success"] = time.monotonic() - started
        exporter = urllib.parse.urlsplit(daemon.url).netloc
        assert exporter.startswith("127.0.0.1:"), f"the exporter must listen on loopback only, got {daemon.url}"

        rules = workdir / "pgbv.rules.yml"
        rules.write_text(yaml.safe_dump(shortened_rules(), sort_keys=False, width=10_000))
        if PROMTOOL:
            check = subprocess.run([PROMTOOL, "check", "rules", str(rules)], capture_output=True, text=True, timeout=30)
            assert check.returncode == 0, f"promtool rejects the shortened rules:\n{check.stdout}{check.stderr}"
        prom_port = free_port()
        prom_config = workdir / "prometheus.yml"
        prom_config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
            "scrape_configs": [{"job_name": "pgbv", "static_configs": [{"targets": [exporter]}]}],
        }, sort_keys=False))
        prom_url = f"http://127.0.0.1:{prom_port}"
        prometheus = Service("prometheus", [
            PROMETHEUS, f"--config.file={prom_config}", f"--storage.tsdb.path={workdir / 'prom-data'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ], workdir, f"{prom_url}/-/ready")
        cleanup.callback(prometheus.stop)
        timings["prometheus_ready"] = time.monotonic() - started

        s = Stack(workdir, e2e_db, config, webhook, alertmanager, am_url, daemon, prometheus, prom_url, timings)

        def scraped_and_evaluated() -> bool:
            up = s.query('up{job="pgbv"}').get("data", {}).get("result", [])
            if not (up and up[0]["value"][1] == "1"):
                return False
            groups = get_json(f"{prom_url}/api/v1/rules")["data"]["groups"]
            # Evaluated at least once after the first successful scrape.
            return bool(groups) and all(g.get("lastEvaluation", "0001").startswith("20") for g in groups) and bool(
                s.query('pgbv_last_run_status{job="pgbv",status="success"} == 1')["data"]["result"])

        s.wait_until("Prometheus to scrape pgbv and evaluate the rules", scraped_and_evaluated, timeout=20)
        timings["prometheus_scraping"] = time.monotonic() - started
        yield s
