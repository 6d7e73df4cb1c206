"""1. The scrape path: /metrics of `pgbv run` under wrk at concurrency 1, 16 and 64,
side by side with Debian's prometheus-postgres-exporter on the same database and
nginx serving pgbv's own bytes as a static file (the limit).

The snapshot is of realistic size: 10 targets x 50 tables (row counts, RLS
policies, 17 checks each), each target verified once for real before the
measurement, so every series carries what a production daemon would serve.

    .venv/bin/python -m bench.bench_scrape [--quick] [--duration S]
"""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import threading
import time
from pathlib import Path

from bench.common import (
    Cluster, Report, RunningDaemon, arguments, create_tables, discard, free_port, pg_dump, require_tools,
    tables_checks, tool_version, workdir, write_config)

CONCURRENCY = (1, 16, 64)
TARGETS = 10
TABLES = 50
# The shipped server parses plain requests itself (exporter/server.py, read_headers and
# _Handler.parse_request); this puts the standard library's parse_request back.
STDLIB_PARSING_PATCH = ("import http.server, exporter.server as s; "
                        "s._Handler.parse_request = http.server.BaseHTTPRequestHandler.parse_request")


def whatif() -> tuple[str, str, str]:
    """(name, patch, what it shows): a variant of the shipped server, patched into the
    daemon's process only (exporter/ is not changed), to put a number on one of its choices.
    The main rows measure the shipped code."""
    return ("pgbv, stdlib parsing", STDLIB_PARSING_PATCH,
            "requests parsed by BaseHTTPRequestHandler.parse_request (headers through the email parser) "
            "instead of pgbv's shortcut for plain requests, i.e. what that shortcut buys; responses are "
            "pgbv's prebuilt ones in one write either way")

_UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _seconds(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"wrk latency {text!r}")
    return float(match.group(1)) * _UNIT[match.group(2)]


def wrk(url: str, connections: int, duration: float, gzip_ok: bool) -> dict:
    threads = 1 if connections == 1 else 2
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency", "--timeout", "10s"]
    if gzip_ok:
        argv += ["-H", "Accept-Encoding: gzip"]
    argv.append(url)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60).stdout
    result = {"argv": shlex.join(argv), "raw": out}
    for pct in ("50", "99"):
        match = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        result[f"p{pct}"] = _seconds(match.group(1)) if match else float("nan")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    result["rps"] = float(match.group(1)) if match else 0.0
    match = re.search(r"(\d+) requests in", out)
    result["requests"] = int(match.group(1)) if match else 0
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result["errors"] = sum(int(g) for g in errors.groups()) if errors else 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["non2xx"] = int(non2xx.group(1)) if non2xx else 0
    return result


def fetch(url: str, gzip_ok: bool) -> tuple[int, bytes, str]:
    import urllib.request

    request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"} if gzip_ok else {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, response.read(), response.headers.get("Content-Encoding") or "identity"


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            fetch(url, False)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def start_nginx(base: Path, plain: bytes, gzipped: bytes) -> tuple[subprocess.Popen, str]:
    root = base / "www"
    root.mkdir()
    (root / "metrics").write_bytes(plain)
    (root / "metrics.gz").write_bytes(gzipped)  # the same bytes pgbv serves gzipped (gzip_static)
    for path in (root, root / "metrics", root / "metrics.gz"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    port = free_port()
    conf = base / "nginx.conf"
    conf.write_text(f"""
daemon off;
worker_processes auto;
pid {base}/nginx.pid;
error_log {base}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {base}/nginx-tmp;
    proxy_temp_path {base}/nginx-tmp;
    fastcgi_temp_path {base}/nginx-tmp;
    uwsgi_temp_path {base}/nginx-tmp;
    scgi_temp_path {base}/nginx-tmp;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location = /metrics {{
            default_type "text/plain; version=0.0.4; charset=utf-8";
            gzip_static on;
            gzip_vary on;
        }}
    }}
}}
""")
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-e", str(base / "nginx-error.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/metrics"
    wait_http(url)
    return proc, url


def start_postgres_exporter(base: Path, dsn: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {"DATA_SOURCE_NAME": dsn + " sslmode=disable", "PATH": "/usr/bin:/bin"}
    log = open(base / "postgres_exporter.log", "w")
    proc = subprocess.Popen(["prometheus-postgres-exporter", f"--web.listen-address=127.0.0.1:{port}"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/metrics"
    wait_http(url)
    return proc, url


class IdleAndSlowClients:
    """Connections that hold a server thread without asking anything (idle keep-alive),
    and slow clients that dribble a request a byte at a time."""

    def __init__(self, port: int, idle: int, slow: int):
        self.port = port
        self.socks: list[socket.socket] = []
        self._stop = threading.Event()
        for _ in range(idle):
            self.socks.append(socket.create_connection(("127.0.0.1", port)))
        self._slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(slow)]
        self._thread = threading.Thread(target=self._dribble, daemon=True)

    def _dribble(self) -> None:
        request = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10000
        position = 0
        while not self._stop.wait(0.2):
            for sock in self._slow:
                try:
                    sock.send(request[position:position + 1])
                except OSError:
                    pass
            position += 1

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=2)
        for sock in self.socks + self._slow:
            sock.close()


def cells(servers: list[tuple[str, str, bool]], c: int) -> list[tuple[str, str, bool]]:
    """Identity (no gzip) rows only at c=16, the issue's reference point: they cost time and
    tell the same story at the other levels."""
    return [s for s in servers if c == 16 or "identity" not in s[0]]


def setup(cluster: Cluster, base: Path, targets: int, tables: int) -> list[dict]:
    backups = base / "backups"
    backups.mkdir()
    configs = []
    for n in range(targets):
        db = f"app{n:02d}"
        cluster.execute(f"CREATE DATABASE {db}")
        with cluster.connect(db) as conn:
            create_tables(conn, tables, rows=200)
        cluster.migrate_sql(db)
        configs.append({
            "name": db, "dsn": cluster.dsn(db), "connect_timeout_seconds": 5,
            "backup": {"source": "directory", "path": str(backups), "pattern": "*.dump", "min_size_mb": 0.01},
            "checks": tables_checks(tables),
        })
    pg_dump(cluster, "app00", backups / "app.dump")
    return configs


def main() -> None:
    global WHATIF, WHATIF_PATCH, WHATIF_WHAT
    WHATIF, WHATIF_PATCH, WHATIF_WHAT = whatif()
    args = arguments(__doc__, lambda p: p.add_argument("--duration", type=float, default=None,
                                                       help="seconds per wrk run (default 8, quick 2)"))
    require_tools("wrk", "nginx", "prometheus-postgres-exporter")
    duration = args.duration or (2.0 if args.quick else 8.0)
    targets, tables = (3, 10) if args.quick else (TARGETS, TABLES)
    report = Report("scrape", "1. Scrape path: /metrics under wrk", quick=args.quick)
    base = workdir("scrape")
    cluster = Cluster(base).start()
    procs: list[subprocess.Popen] = []
    daemon = None
    try:
        t0 = time.monotonic()
        configs = setup(cluster, base, targets, tables)
        config = write_config(base / "pgbv.yml", configs, schedule={"interval_minutes": 1440},
                              http={"listen": "127.0.0.1:0"}, spool_dir=str(base / "spool"))
        daemon = RunningDaemon(config)
        daemon.wait_runs(targets, timeout=300)
        # The refresh after the last run has built the snapshot the scrapes will copy.
        time.sleep(2)
        print(f"set-up: {targets} targets x {tables} tables verified in {time.monotonic() - t0:.1f} s", flush=True)
        statuses = sorted({r.get("status") for r in daemon.runs})
        pgbv_url = daemon.url + "/metrics"
        _, plain, _ = fetch(pgbv_url, False)
        _, gzipped, encoding = fetch(pgbv_url, True)
        assert encoding == "gzip", encoding
        series = sum(1 for line in plain.decode().splitlines() if line and not line.startswith("#"))

        nginx, nginx_url = start_nginx(base, plain, gzipped)
        procs.append(nginx)
        pgexp, pgexp_url = start_postgres_exporter(base, cluster.dsn("app00"))
        procs.append(pgexp)
        _, pgexp_plain, _ = fetch(pgexp_url, False)
        _, pgexp_gz, pgexp_enc = fetch(pgexp_url, True)
        _, nginx_gz, nginx_enc = fetch(nginx_url, True)
        assert nginx_gz == gzipped and nginx_enc == "gzip", "nginx must serve pgbv's own gzip bytes"
        pgexp_series = sum(1 for line in pgexp_plain.decode().splitlines() if line and not line.startswith("#"))

        servers = [
            ("pgbv", pgbv_url, True),
            ("pgbv (identity)", pgbv_url, False),
            ("nginx", nginx_url, True),
            ("nginx (identity)", nginx_url, False),
            ("postgres_exporter", pgexp_url, True),
        ]
        results: dict[tuple[str, int], dict] = {}
        for c in CONCURRENCY:
            for name, url, gz in cells(servers, c):  # interleaved, so drifting load hits every server alike
                wrk(url, c, min(1.0, duration), gz)  # warm-up: connections, caches, the Go runtime
                results[(name, c)] = r = wrk(url, c, duration, gz)
                print(f"  {name:20s} c={c:<3d} {r['rps']:10.1f} req/s  p50 {r['p50'] * 1000:8.2f} ms  "
                      f"p99 {r['p99'] * 1000:8.2f} ms  errors {r['errors']} non-2xx {r['non2xx']}", flush=True)
                report.command(f"{name}: {r['argv']}")

        # A slow or idle client never delays another: the same c=16 run with 64 idle
        # keep-alive connections and 8 clients sending one byte every 0.2 s.
        with IdleAndSlowClients(int(daemon.url.rsplit(":", 1)[1]), idle=64, slow=8):
            time.sleep(0.5)
            stalled = wrk(pgbv_url, 16, duration, True)
        print(f"  pgbv with 64 idle + 8 slow clients c=16: {stalled['rps']:.1f} req/s p99 {stalled['p99'] * 1000:.2f} ms",
              flush=True)
        daemon_rss = None
        try:
            with open(f"/proc/{daemon.pid}/status") as handle:
                daemon_rss = next(int(l.split()[1]) // 1024 for l in handle if l.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass

        # What-if: the same daemon with the next change worth trying, patched into its process only.
        daemon.terminate()
        daemon = RunningDaemon(config, preamble=WHATIF_PATCH)
        time.sleep(2)
        patched_url = daemon.url + "/metrics"
        for c in CONCURRENCY:
            wrk(patched_url, c, min(1.0, duration), True)
            results[(WHATIF, c)] = r = wrk(patched_url, c, duration, True)
            print(f"  {WHATIF:20s} c={c:<3d} {r['rps']:10.1f} req/s  p50 {r['p50'] * 1000:8.2f} ms  "
                  f"p99 {r['p99'] * 1000:8.2f} ms  errors {r['errors']} non-2xx {r['non2xx']}", flush=True)
        with IdleAndSlowClients(int(daemon.url.rsplit(":", 1)[1]), idle=64, slow=8):
            time.sleep(0.5)
            stalled_patched = wrk(patched_url, 16, duration, True)
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if daemon is not None:
            daemon.terminate()
        discard(cluster, base, args.keep)

    report.say(f"Snapshot: {targets} targets x {tables} tables (each verified once for real; run statuses: "
               f"{', '.join(statuses)}); pgbv's exposition: {series} series, {len(plain):,} bytes plain, "
               f"{len(gzipped):,} bytes gzip. postgres_exporter "
               f"({tool_version(['prometheus-postgres-exporter', '--version'])}) on the same server, database app00, "
               f"default collectors: {pgexp_series} series, {len(pgexp_plain):,} bytes plain, {len(pgexp_gz):,} bytes "
               f"{pgexp_enc}. nginx ({tool_version(['nginx', '-v'])}, worker_processes auto) serves pgbv's two bodies as "
               f"static files (gzip_static). wrk {duration:g} s per cell after a 1 s warm-up, -t1 at c=1 and -t2 "
               f"otherwise, keep-alive; 'gzip' rows send `Accept-Encoding: gzip` as Prometheus does. Load generator "
               f"and server share the 2 cores.")
    report.say()
    rows = []
    for c in CONCURRENCY:
        for name, _, gz in cells(servers, c) + [(WHATIF, None, True)]:
            r = results[(name, c)]
            rows.append([name, c, f"{r['rps']:,.0f}", f"{r['p50'] * 1000:.2f}", f"{r['p99'] * 1000:.2f}",
                         r["requests"], r["errors"] + r["non2xx"]])
    report.table(["server", "concurrency", "requests/s", "p50 ms", "p99 ms", "requests", "errors"], rows)
    report.say(f"pgbv at c=16 with 64 idle keep-alive connections and 8 slow clients (1 byte / 0.2 s) held open: "
               f"{stalled['rps']:,.0f} requests/s, p50 {stalled['p50'] * 1000:.2f} ms, p99 {stalled['p99'] * 1000:.2f} ms, "
               f"errors {stalled['errors'] + stalled['non2xx']}; {WHATIF}: {stalled_patched['rps']:,.0f} requests/s, "
               f"p99 {stalled_patched['p99'] * 1000:.2f} ms, errors {stalled_patched['errors'] + stalled_patched['non2xx']}. "
               f"Daemon RSS after the runs: {daemon_rss} MiB.")
    report.say()
    report.say(f"'{WHATIF}' is not what pgbv ships: the same daemon started with `{WHATIF_PATCH}` run first in its "
               f"process: {WHATIF_WHAT}.")
    report.say()

    p99 = results[("pgbv", 16)]["p99"]
    report.target("scrape p99 at c=16", "< 10 ms", f"{p99 * 1000:.2f} ms (gzip), "
                  f"{results[('pgbv (identity)', 16)]['p99'] * 1000:.2f} ms (identity)", p99 < 0.010,
                  f"{WHATIF}: {results[(WHATIF, 16)]['p99'] * 1000:.2f} ms")
    for c in CONCURRENCY:
        ratio = results[("pgbv", c)]["rps"] / max(results[("postgres_exporter", c)]["rps"], 1e-9)
        patched = results[(WHATIF, c)]["rps"] / max(results[("postgres_exporter", c)]["rps"], 1e-9)
        report.target(f"throughput vs postgres_exporter, c={c}", ">= 10x", f"{ratio:.1f}x", ratio >= 10,
                      f"{WHATIF}: {patched:.1f}x")
    for c in CONCURRENCY:
        ratio = results[("nginx", c)]["rps"] / max(results[("pgbv", c)]["rps"], 1e-9)
        patched = results[("nginx", c)]["rps"] / max(results[(WHATIF, c)]["rps"], 1e-9)
        measured = f"{ratio:.1f}x (gzip)"
        if ("pgbv (identity)", c) in results:
            identity = results[("nginx (identity)", c)]["rps"] / max(results[("pgbv (identity)", c)]["rps"], 1e-9)
            measured += f", {identity:.1f}x (identity)"
        report.target(f"nginx / pgbv throughput, c={c}", "<= 5x", measured, ratio <= 5, f"{WHATIF}: {patched:.1f}x (gzip)")
    stalled_ok = stalled["p99"] < 0.010 and stalled["errors"] + stalled["non2xx"] == 0
    report.target("idle and slow clients delay no one (c=16 p99 with 72 held connections)", "< 10 ms, no errors",
                  f"{stalled['p99'] * 1000:.2f} ms, {stalled['errors'] + stalled['non2xx']} errors", stalled_ok,
                  f"{WHATIF}: {stalled_patched['p99'] * 1000:.2f} ms, "
                  f"{stalled_patched['errors'] + stalled_patched['non2xx']} errors")
    report.data = {"results": {f"{k[0]}@{k[1]}": {kk: vv for kk, vv in v.items() if kk != "raw"}
                               for k, v in results.items()},
                   "stalled": {k: v for k, v in stalled.items() if k != "raw"},
                   "stalled_patched": {k: v for k, v in stalled_patched.items() if k != "raw"},
                   "bytes": {"plain": len(plain), "gzip": len(gzipped)}, "series": series}
    report.finish(args.json)


if __name__ == "__main__":
    main()
