"""Shared pieces of the benchmarks: a private PostgreSQL 18 cluster, the machine's
description, a `pgbv run` subprocess, a /proc sampler and the report every
script prints (and hands to run_all.py as JSON).

Nothing here is imported by pgbv or its tests; the benchmarks only use pgbv's
public modules the way the CLI does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

import psycopg
import yaml

from exporter.pgtools import find_tool
from tests.pgcluster import _unprivileged_user  # the tests' own rule for whom PostgreSQL runs as

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
DEMO_SCHEMA = ROOT / "exporter" / "demo" / "schema.sql"
MIGRATIONS = sorted((ROOT / "sql").glob("*.sql"))

# Debian packages each tool comes from, for the "how to install" hint.
APT_PACKAGES = {
    "wrk": "wrk",
    "nginx": "nginx-light",
    "prometheus-postgres-exporter": "prometheus-postgres-exporter",
}

# The seed application's checks (examples/seed-app.yml) without the drill.
SEED_CHECKS: dict[str, Any] = {
    "critical_tables": ["organizations", "profiles", "agents", "appointments", "contacts", "call_logs",
                        "knowledge_base_chunks"],
    "required_tables": ["webhook_delivery_log", "audit_logs"],
    "min_policies": {"organizations": 3, "profiles": 1, "agents": 4, "appointments": 5, "contacts": 5,
                     "call_logs": 3, "knowledge_base_chunks": 2},
    "required_indexes": ["idx_appointments_scheduling_lookup", "idx_appointments_time_range"],
    "required_functions": ["book_appointment_with_lock", "cleanup_old_webhook_logs"],
    "min_database_size_mb": 1,
    "max_row_drop_percent": 10,
    "min_success_ratio": 0.9,
}


# --- the machine --------------------------------------------------------------------------


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        with open("/proc/loadavg") as handle:
            return "load average: " + " ".join(handle.read().split()[:3])


def loadavg() -> tuple[float, float, float]:
    with open("/proc/loadavg") as handle:
        one, five, fifteen = handle.read().split()[:3]
    return float(one), float(five), float(fifteen)


def machine() -> dict[str, Any]:
    model = "unknown"
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "uptime": uptime(),
    }


# --- tools --------------------------------------------------------------------------------


def require_tools(*names: str) -> dict[str, str]:
    """Paths of the named programs; exits 2 with the apt-get line when one is missing."""
    found, missing = {}, []
    for name in names:
        path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
        if path is None:
            missing.append(name)
        else:
            found[name] = path
    if missing:
        packages = " ".join(sorted({APT_PACKAGES.get(n, n) for n in missing}))
        print(f"bench: missing {', '.join(missing)}; install with:\n"
              f"  apt-get install -y --no-install-recommends {packages}\n"
              f"(`make bench` does it when run as root)", file=sys.stderr)
        raise SystemExit(2)
    return found


def tool_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({exc})"
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def workdir(prefix: str) -> Path:
    base = Path(os.environ.get("PGBV_BENCH_DIR") or tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"pgbv-bench-{prefix}-", dir=base))
    os.chmod(path, 0o755)
    return path


# --- PostgreSQL ---------------------------------------------------------------------------


class Cluster:
    """A throwaway PostgreSQL (the newest initdb found: the embedded wheel's 18) on a
    Unix socket in its own folder. fsync is off unless settings say otherwise."""

    def __init__(self, base: Path, settings: dict[str, str] | None = None):
        self.initdb = find_tool("initdb")
        self.pg_ctl = find_tool("pg_ctl")
        self.bin_dir = self.initdb.path.parent
        self.user = _unprivileged_user()
        self.base = base / "pg"
        self.base.mkdir()
        os.chmod(self.base, 0o755)
        if self.user:
            shutil.chown(self.base, self.user)
        self.data = self.base / "data"
        self._run(self.initdb.path, "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        conf = {"listen_addresses": "", "unix_socket_directories": str(self.base), "fsync": "off",
                "full_page_writes": "off", "synchronous_commit": "off", "max_connections": "200",
                "shared_buffers": "256MB", "max_wal_size": "4GB", "log_min_duration_statement": "-1",
                "logging_collector": "off"}
        conf.update(settings or {})
        with open(self.data / "postgresql.conf", "a") as handle:
            for name, value in conf.items():
                handle.write(f"{name} = '{value.replace(chr(39), chr(39) * 2)}'\n")
        self.settings = conf

    def _run(self, *argv, timeout: float = 300) -> None:
        command = [str(a) for a in argv]
        if self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=timeout)

    def start(self) -> "Cluster":
        self._run(self.pg_ctl.path, "-D", self.data, "-l", self.base / "server.log", "-w", "-t", "120", "start")
        return self

    def stop(self) -> None:
        try:
            self._run(self.pg_ctl.path, "-D", self.data, "-m", "fast", "-w", "stop", timeout=120)
        except subprocess.CalledProcessError:
            pass

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.base} dbname={dbname} user=postgres"

    def connect(self, dbname: str = "postgres", autocommit: bool = True) -> psycopg.Connection:
        return psycopg.connect(self.dsn(dbname), autocommit=autocommit)

    def execute(self, statement: str, params=None, dbname: str = "postgres") -> list[tuple]:
        with self.connect(dbname) as conn:
            cur = conn.execute(statement, params)
            return cur.fetchall() if cur.description else []

    def create_db(self, name: str, template: str | None = None) -> str:
        extra = f" TEMPLATE {template} STRATEGY FILE_COPY" if template else ""
        self.execute(f"CREATE DATABASE {name}{extra}")
        return self.dsn(name)

    def migrate_sql(self, dbname: str) -> None:
        """The migrations applied as plain SQL (what `pgbv migrate` runs, without its bookkeeping)."""
        with self.connect(dbname) as conn:
            for migration in MIGRATIONS:
                conn.execute(migration.read_text())

    def tool(self, name: str) -> Path:
        return self.bin_dir / name

    def __enter__(self) -> "Cluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.destroy()


def discard(cluster: Cluster, base: Path, keep: bool) -> None:
    """Stop a benchmark's cluster and remove its folder, unless --keep asked to look at them."""
    if not keep:
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)


def make_demo_template(cluster: Cluster, name: str = "pgbv_bench_template") -> str:
    """The seed application (demo schema, 65 rows, 23 policies) with the log table: every
    fleet and footprint target is a copy of it."""
    cluster.execute(f"CREATE DATABASE {name}")
    with cluster.connect(name) as conn:
        conn.execute(DEMO_SCHEMA.read_text())
        for migration in MIGRATIONS:
            conn.execute(migration.read_text())
        conn.execute("VACUUM ANALYZE")
    return name


def pg_dump(cluster: Cluster, dbname: str, out: Path, *extra: str) -> float:
    started = time.monotonic()
    subprocess.run([str(cluster.tool("pg_dump")), "--format=custom", f"--file={out}", *extra,
                    f"--dbname={cluster.dsn(dbname)}"], check=True, capture_output=True, timeout=3600)
    return time.monotonic() - started


# --- the daemon ---------------------------------------------------------------------------


def write_config(path: Path, targets: list[dict], **top: Any) -> Path:
    data = {"targets": targets, "log_format": "json", **top}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class RunningDaemon:
    """`pgbv run` in a subprocess (log_format json); its URL from its own log line; every
    `run finished` line kept with its timestamp."""

    def __init__(self, config: Path, start_timeout: float = 120, preamble: str | None = None, wait: bool = True):
        """preamble: Python run in the daemon's process before pgbv starts (a what-if patch)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PGBV_")}
        self.started = time.time()
        argv = [PYTHON, "-m", "exporter", "run", "--config", str(config)]
        if preamble:
            argv = [PYTHON, "-c", f"{preamble}\nimport sys\nfrom exporter.cli import main\n"
                                  f"sys.exit(main(['run', '--config', {str(config)!r}]))"]
        self.proc = subprocess.Popen(argv,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                     cwd=ROOT)
        self.lines: list[str] = []
        self.runs: list[dict] = []
        self.url: str | None = None
        self.serving_at: float | None = None
        threading.Thread(target=self._read, daemon=True).start()
        if wait:
            self.wait_started(start_timeout)

    def wait_started(self, start_timeout: float = 120) -> None:
        deadline = time.monotonic() + start_timeout
        while self.url is None:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.kill()
                raise RuntimeError("daemon did not start:\n" + "\n".join(self.lines[-30:]))
            time.sleep(0.02)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip()
            self.lines.append(line)
            try:
                record = json.loads(line)
            except ValueError:
                continue
            record["_seen"] = time.time()
            msg = record.get("msg", "")
            match = re.search(r"serving metrics on (https?://\S+)/metrics", msg)
            if match and self.url is None:
                self.serving_at = _parse_ts(record.get("ts")) or time.time()
                self.url = match.group(1)
            if msg == "run finished":
                self.runs.append(record)

    def wait_runs(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.runs) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(self.runs)} of {count} runs finished in {timeout:g}s:\n"
                                   + "\n".join(self.lines[-20:]))
            if self.proc.poll() is not None:
                raise RuntimeError("daemon exited:\n" + "\n".join(self.lines[-30:]))
            time.sleep(0.05)

    def get(self, path: str = "/metrics", gzip: bool = False) -> bytes:
        request = urllib.request.Request(self.url + path, headers={"Accept-Encoding": "gzip"} if gzip else {})
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read()

    def terminate(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def _parse_ts(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def run_ts(record: dict) -> float:
    return _parse_ts(record.get("ts")) or record["_seen"]


# --- /proc sampling -----------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def children(pid: int) -> list[int]:
    """Every descendant; a child belongs to the thread that started it, so all tasks are read."""
    direct: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return []
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                direct.extend(int(p) for p in handle.read().split())
        except FileNotFoundError:
            continue
    out = []
    for child in direct:
        out.append(child)
        out.extend(children(child))
    return out


@dataclass
class Sample:
    t: float
    rss: int
    cpu: float
    child_rss: int
    child_cpu: float
    threads: int


class ProcSampler:
    """Samples a process (and its children) every `interval` seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.5):
        self.pid = pid
        self.interval = interval
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._child_cpu: dict[int, float] = {}
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _threads(self) -> int:
        try:
            return len(os.listdir(f"/proc/{self.pid}/task"))
        except FileNotFoundError:
            return 0

    def take(self) -> Sample | None:
        rss, cpu = rss_bytes(self.pid), cpu_seconds(self.pid)
        if rss is None or cpu is None:
            return None
        child_rss = 0
        for child in children(self.pid):
            r, c = rss_bytes(child), cpu_seconds(child)
            if r is not None:
                child_rss += r
            if c is not None:
                self._child_cpu[child] = c
        sample = Sample(time.monotonic(), rss, cpu, child_rss, sum(self._child_cpu.values()), self._threads())
        self.samples.append(sample)
        return sample

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.take()
            self._stop.wait(self.interval)

    def __enter__(self) -> "ProcSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.take()

    def summary(self) -> dict[str, float]:
        s = self.samples
        if len(s) < 2:
            return {}
        wall = s[-1].t - s[0].t
        return {
            "seconds": wall,
            "rss_max_mib": max(x.rss for x in s) / 2**20,
            "rss_mean_mib": sum(x.rss for x in s) / len(s) / 2**20,
            "rss_last_mib": s[-1].rss / 2**20,
            "cpu_seconds": s[-1].cpu - s[0].cpu,
            "cpu_percent": 100 * (s[-1].cpu - s[0].cpu) / wall if wall else 0.0,
            "child_rss_max_mib": max(x.child_rss for x in s) / 2**20,
            "child_cpu_seconds": s[-1].child_cpu - s[0].child_cpu,
            "threads_max": max(x.threads for x in s),
            "samples": len(s),
        }


class ConnectionSampler:
    """Peak of pgbv's sessions (application_name = pgbv) on a server, polled from one
    extra connection every `interval` seconds."""

    def __init__(self, dsn: str, interval: float = 0.01, application_name: str = "pgbv"):
        self.dsn = dsn
        self.interval = interval
        self.application_name = application_name
        self.peak = 0
        self.counts: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True, application_name="pgbv-bench-sampler") as conn:
            while not self._stop.is_set():
                n = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                                 [self.application_name]).fetchone()[0]
                self.counts.append(n)
                self.peak = max(self.peak, n)
                self._stop.wait(self.interval)

    def __enter__(self) -> "ConnectionSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# --- the report ---------------------------------------------------------------------------


@dataclass
class Target:
    what: str
    target: str
    measured: str
    met: bool | None  # None: not judged (informational)
    note: str = ""


@dataclass
class Report:
    """What one benchmark prints, and hands to run_all.py as JSON (--json FILE)."""

    name: str
    title: str
    quick: bool = False
    lines: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    load_before: str = field(default_factory=uptime)

    def say(self, text: str = "") -> None:
        self.lines.append(text)
        print(text, flush=True)

    def table(self, headers: list[str], rows: Iterable[Iterable[Any]]) -> None:
        self.say("| " + " | ".join(headers) + " |")
        self.say("|" + "|".join(" --- " for _ in headers) + "|")
        for row in rows:
            self.say("| " + " | ".join(str(c) for c in row) + " |")
        self.say()

    def code(self, text: str, lang: str = "") -> None:
        self.say(f"```{lang}")
        for line in text.rstrip("\n").splitlines():
            self.say(line)
        self.say("```")
        self.say()

    def command(self, text: str) -> None:
        self.commands.append(text)

    def target(self, what: str, target: str, measured: str, met: bool | None, note: str = "") -> None:
        self.targets.append(Target(what, target, measured, met, note))
        verdict = "n/a" if met is None else ("MET" if met else "MISSED")
        print(f"  target {what}: {target}; measured {measured}: {verdict}{' (' + note + ')' if note else ''}", flush=True)

    def finish(self, json_path: str | None) -> None:
        payload = {
            "name": self.name,
            "title": self.title,
            "quick": self.quick,
            "markdown": "\n".join(self.lines),
            "targets": [t.__dict__ for t in self.targets],
            "commands": self.commands,
            "data": self.data,
            "seconds": time.monotonic() - self.started,
            "load_before": self.load_before,
            "load_after": uptime(),
        }
        if json_path:
            Path(json_path).write_text(json.dumps(payload, indent=2, default=str))


def arguments(description: str, extra: Any = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes, to try the script out (not figures)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON (run_all.py reads it)")
    parser.add_argument("--keep", action="store_true", help="leave the work folder and cluster data behind")
    if extra is not None:
        extra(parser)
    return parser.parse_args()


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    if not n:
        return float("nan")
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


# --- schemas ------------------------------------------------------------------------------


def table_name(i: int, prefix: str = "t") -> str:
    return f"{prefix}_{i:05d}"


def create_tables(conn: psycopg.Connection, count: int, rows: int = 5, prefix: str = "t", batch: int = 250) -> None:
    """`count` tables shaped like an application's: a primary key, a CHECK constraint, a
    secondary index, row-level security with two policies, `rows` rows each. One
    transaction per batch (a transaction locks every table it creates)."""
    for start in range(1, count + 1, batch):
        end = min(count, start + batch - 1)
        conn.execute(f"""
DO $$
DECLARE t text;
BEGIN
  FOR i IN {start}..{end} LOOP
    t := '{prefix}_' || lpad(i::text, 5, '0');
    EXECUTE format('CREATE TABLE %I (id bigint PRIMARY KEY, org_id int NOT NULL CHECK (org_id > 0), '
                   'name text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())', t);
    EXECUTE format('CREATE INDEX %I ON %I (org_id, created_at)', t || '_org_idx', t);
    EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
    EXECUTE format('CREATE POLICY tenant_read ON %I FOR SELECT USING (org_id = current_setting(''app.org_id'', true)::int)', t);
    EXECUTE format('CREATE POLICY tenant_write ON %I FOR INSERT WITH CHECK (org_id = current_setting(''app.org_id'', true)::int)', t);
    EXECUTE format('INSERT INTO %I (id, org_id, name) SELECT g, 1 + g %% 7, ''row '' || g FROM generate_series(1, {rows}) g', t);
  END LOOP;
END $$""")
    conn.execute("CREATE OR REPLACE FUNCTION app_health() RETURNS int LANGUAGE sql AS 'SELECT 1'")
    conn.execute("ANALYZE")


def tables_checks(count: int, prefix: str = "t") -> dict[str, Any]:
    """Checks naming every generated table: exists, rows, RLS with 2 policies, an index each."""
    names = [table_name(i, prefix) for i in range(1, count + 1)]
    return {
        "critical_tables": names,
        "required_tables": names,
        "min_policies": {name: 2 for name in names},
        "required_indexes": [f"{name}_org_idx" for name in names],
        "required_functions": ["app_health"],
        "min_database_size_mb": 1,
        "max_row_drop_percent": 10,
        "min_success_ratio": 0.5,
    }
