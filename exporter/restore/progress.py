"""Runs pg_restore with a timeout, reporting progress while it works.

pg_restore --verbose prints a line per item it creates or loads; the total comes
from `pg_restore --list`. Progress is logged at least every 10 s and drawn as a
bar when stderr is a terminal.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from exporter.pgtools import Tool, ToolError, _tail

log = logging.getLogger("pgbv.restore")

LOG_EVERY_SECONDS = 10
_ITEM_PREFIXES = ("pg_restore: creating ", "pg_restore: processing data", "pg_restore: executing ", "pg_restore: launching item")


def count_items(list_output: str) -> int:
    """Entries of a `pg_restore --list` table of contents (comment lines start with ';')."""
    return sum(1 for line in list_output.splitlines() if line.strip() and not line.startswith(";"))


class Progress:
    def __init__(self, label: str, total: int, stream=None):
        self.label = label
        self.total = max(total, 1)
        self.done = 0
        self.started = time.monotonic()
        self._last_log = self.started
        self.stream = stream if stream is not None else sys.stderr
        self.bar = self.stream.isatty()

    def step(self) -> None:
        self.done += 1
        now = time.monotonic()
        if self.bar:
            share = min(self.done / self.total, 1.0)
            filled = int(share * 30)
            self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total}")
            self.stream.flush()
        if now - self._last_log >= LOG_EVERY_SECONDS:
            self._last_log = now
            self.log()

    def log(self) -> None:
        log.info("%s: %d of %d items restored (%.0f s)", self.label, min(self.done, self.total), self.total,
                 time.monotonic() - self.started)

    def finish(self) -> None:
        if self.bar:
            self.stream.write("\n")
            self.stream.flush()


def run_with_progress(
    tool: Tool,
    args: Sequence[str],
    timeout: float,
    progress: Progress,
    env: Mapping[str, str] | None = None,
    register: Callable[[subprocess.Popen], None] | None = None,
) -> None:
    """Run tool; each item line of its stderr advances progress. Raises ToolError on a
    non-zero exit or a timeout (the whole process group is killed)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.Popen(
        [str(tool.path), *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env=full_env, start_new_session=True, text=True, errors="replace",
    )
    if register is not None:
        register(proc)
    said: list[str] = []
    ticker_stop = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            if line.startswith(_ITEM_PREFIXES):
                progress.step()
            else:
                said.append(line)

    def tick() -> None:
        # A single item (one big table) can take minutes: still say something every 10 s.
        while not ticker_stop.wait(LOG_EVERY_SECONDS):
            progress.log()

    reader = threading.Thread(target=read, daemon=True)
    ticker = threading.Thread(target=tick, daemon=True)
    reader.start()
    ticker.start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        raise ToolError(f"{tool.name} timed out after {timeout:g} s and was stopped", timed_out=True) from None
    except BaseException:
        _kill(proc)
        raise
    finally:
        ticker_stop.set()
        reader.join(5)
        progress.finish()
    if proc.returncode != 0:
        raise ToolError(f"{tool.name} exited with code {proc.returncode}: {_tail(''.join(said)) or 'no output'}",
                        returncode=proc.returncode, stderr="".join(said))


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
