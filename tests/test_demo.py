"""`pgbv demo` from nothing: an embedded PostgreSQL, the seed's application, a real
pg_dump, the seed's fifteen tests each passing with a measured result, and then
the daemon serving /metrics until interrupted."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith("PGBV_")}


def test_demo_once_prints_the_fifteen_seed_tests_passing(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "exporter", "demo", "--once", "--dir", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=300, env=_env(),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = re.findall(r"^\| (\d+) \| .* \| (✅ PASS|.*) \|$", proc.stdout, re.MULTILINE)
    assert [int(n) for n, _ in table] == list(range(1, 16))
    assert all(status == "✅ PASS" for _, status in table), table
    assert "65 rows in 7 critical tables" in proc.stdout
    assert "RLS enabled on 7 tables with 23 policies" in proc.stdout
    assert re.search(r"### Test \d+: restore .*\n\*\*Status:\*\* PASS", proc.stdout)
    assert re.search(r"pg_dump .* wrote seed_app-\d{8}T\d{6}Z\.dump: \d+ bytes", proc.stderr)


def test_demo_runs_the_daemon_until_interrupted(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "demo", "--dir", str(tmp_path / "demo"), "--listen", "127.0.0.1:0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(),
    )
    lines: list[str] = []
    url: list[str] = []

    def read():
        for line in proc.stderr:
            lines.append(line)
            found = re.search(r"metrics: (http://\S+/metrics)", line)
            if found:
                url.append(found.group(1))

    threading.Thread(target=read, daemon=True).start()
    try:
        deadline = time.monotonic() + 240
        while not url:
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.1)
        body = urllib.request.urlopen(url[0], timeout=5).read().decode()
        assert 'pgbv_last_run_status{status="success",target="seed_app"} 1.0' in body
        assert 'pgbv_table_rows{table="appointments",target="seed_app"} 23.0' in body
        assert 'pgbv_restore_rows{table="appointments",target="seed_app"} 23.0' in body
        assert re.search(r'pgbv_restore_duration_seconds\{target="seed_app"\} [0-9.]+', body)
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
    assert code == 0, "".join(lines)
