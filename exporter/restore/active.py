"""Drills in progress, so that a stopping daemon or an interrupted command can
kill their tools and drop their scratch copies before it exits."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Callable

_lock = threading.Lock()
_cleanups: dict[str, Callable[[], None]] = {}
_processes: dict[str, subprocess.Popen] = {}


def register(name: str, cleanup: Callable[[], None]) -> None:
    with _lock:
        _cleanups[name] = cleanup


def register_process(name: str, proc: subprocess.Popen) -> None:
    with _lock:
        _processes[name] = proc


def unregister(name: str) -> None:
    with _lock:
        _cleanups.pop(name, None)
        _processes.pop(name, None)


def abort_all() -> int:
    """Kill every drill's tool and run its cleanup; returns how many drills were stopped."""
    with _lock:
        cleanups = dict(_cleanups)
        processes = dict(_processes)
        _cleanups.clear()
        _processes.clear()
    for proc in processes.values():
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for cleanup in cleanups.values():
        cleanup()
    return len(cleanups)
