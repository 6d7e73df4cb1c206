"""The command source, through real executables: small shell scripts standing in for
the program, so the subprocess, time limit and exit code paths are the real ones.

StandIn, public_folder and runuser_wrapper are shared with test_walg.py and test_barman.py.
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import pytest

from exporter.backups import CommandBackupSource, source_for
from exporter.backups.base import BackupSourceError, NoBackupFound
from exporter.config import CommandBackup, load_settings
from exporter.redact import MASK

ROOT = Path(__file__).resolve().parent.parent.parent
# Tool outputs, byte for byte as the tools wrote them (copied from shared/fixtures,
# with their README on how each was made).
FIXTURES = ROOT / "tests" / "fixtures"


class StandIn:
    """Writes executables that stand in for a backup tool in one folder."""

    def __init__(self, folder: Path, record_args: bool = True):
        self.folder = folder
        self.record_args = record_args

    def script(self, name: str, body: str) -> Path:
        path = self.folder / name
        record = f'printf "%s\\n" "$@" > {shlex.quote(str(self.folder / (name + ".args")))}\n' if self.record_args else ""
        path.write_text("#!/bin/sh\n" + record + body)
        path.chmod(0o755)
        return path

    def _output_file(self, name: str, output: bytes | Path) -> Path:
        data = output.read_bytes() if isinstance(output, Path) else output
        path = self.folder / f"{name}.out"
        path.write_bytes(data)
        path.chmod(0o644)
        return path

    def prints(self, name: str, output: bytes | Path, *, stderr: str = "", exit_code: int = 0, before: str = "") -> Path:
        """A tool printing output byte for byte, then stderr, then exiting with exit_code."""
        out = self._output_file(name, output)
        err = f"printf '%s\\n' {shlex.quote(stderr)} >&2\n" if stderr else ""
        return self.script(name, f"{before}cat {shlex.quote(str(out))}\n{err}exit {exit_code}\n")

    def dispatch(self, name: str, answers: dict[str, tuple[bytes | Path, int]]) -> Path:
        """A tool answering per subcommand: {"list-backups": (output, exit code), ...}."""
        cases = []
        for word, (output, code) in answers.items():
            out = self._output_file(f"{name}-{word}", output)
            cases.append(f'  *" {word} "*) cat {shlex.quote(str(out))}; exit {code} ;;\n')
        body = 'case " $* " in\n' + "".join(cases) + '  *) echo "stand-in: unexpected arguments: $*" >&2; exit 2 ;;\nesac\n'
        return self.script(name, body)

    def sleeps(self, name: str) -> Path:
        """A tool that hangs, with a child of its own, which must die with it."""
        pidfile = self.folder / f"{name}.child"
        return self.script(name, f"sleep 30 & echo $! > {shlex.quote(str(pidfile))}\necho working >&2\nwait\n")

    def fails(self, name: str, stderr: str, exit_code: int = 1) -> Path:
        return self.script(name, f"printf '%s\\n' {shlex.quote(stderr)} >&2\nexit {exit_code}\n")

    def calls(self, name: str) -> list[str]:
        return (self.folder / f"{name}.args").read_text().splitlines()

    def child_pid(self, name: str) -> int:
        return int((self.folder / f"{name}.child").read_text())


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def wait_dead(pid: int, seconds: float = 3) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.02)
    return not alive(pid)


@contextmanager
def public_folder() -> Iterator[Path]:
    """A folder the nobody user can read and execute from (pytest's tmp_path is 0700);
    skips the test unless we are root with runuser at hand."""
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs root and runuser to run a stand-in as another user")
    folder = Path(tempfile.mkdtemp(prefix="pgbv-standin-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def runuser_wrapper(folder: Path, name: str, target: Path, user: str = "nobody") -> Path:
    """The documented pattern: a wrapper that runs the real tool as its repository's owner."""
    path = folder / name
    path.write_text(f'#!/bin/sh\nexec runuser -u {user} -- {shlex.quote(str(target))} "$@"\n')
    path.chmod(0o755)
    return path


# --- the command source ----------------------------------------------------------------


def source(command: list[str], timeout: float = 10, env: dict[str, str] | None = None) -> CommandBackupSource:
    return CommandBackupSource(CommandBackup(source="command", command=command, timeout_seconds=timeout, env=env or {}))


def test_reads_the_newest_backup(standin):
    program = standin.prints(
        "snapshots",
        b'{"id": "snap-0123", "finished_at": "2026-03-09T04:04:11.5+02:00", "size_bytes": 3921455104,'
        b' "kind": "rds snapshot", "location": "arn:aws:rds:eu-west-1:1:snapshot:snap-0123",'
        b' "engine": "postgres", "details": {"region": "eu-west-1"}}\n',
    )
    info = source([str(program), "--db", "app db"]).latest()
    assert info.id == "snap-0123"
    assert info.finished_at == datetime(2026, 3, 9, 2, 4, 11, 500000, tzinfo=timezone.utc)
    assert info.finished_at.utcoffset().total_seconds() == 0
    assert info.size_bytes == 3921455104
    assert (info.kind, info.location) == ("rds snapshot", "arn:aws:rds:eu-west-1:1:snapshot:snap-0123")
    assert info.details == {"engine": "postgres", "region": "eu-west-1"}
    # argv as given, no shell: the space stays inside its argument.
    assert standin.calls("snapshots") == ["--db", "app db"]


def test_defaults_and_forms_of_numbers_and_times(standin):
    program = standin.prints("p", b'{"id": 42, "finished_at": "2026-03-09T02:04:11.93z", "size_bytes": 1e9}')
    info = source([str(program)]).latest()
    assert (info.id, info.kind, info.location, info.details) == ("42", "command", "", {})
    assert info.finished_at == datetime(2026, 3, 9, 2, 4, 11, 930000, tzinfo=timezone.utc)
    assert info.size_bytes == 1_000_000_000 and isinstance(info.size_bytes, int)


def test_size_may_be_unknown(standin):
    program = standin.prints("p", b'{"id": "x", "finished_at": "2026-03-09T02:04:11Z", "size_bytes": null}')
    assert source([str(program)]).latest().size_bytes is None


@pytest.mark.parametrize("output", [b"{}", b"{}\n", b"null", b"  null\n"])
def test_empty_object_or_null_means_no_backup(standin, output):
    program = standin.prints("p", output)
    with pytest.raises(NoBackupFound, match="reports no backup"):
        source([str(program)]).latest()


@pytest.mark.parametrize("missing", ["id", "finished_at", "size_bytes"])
def test_a_missing_key_is_named(standin, missing):
    data = {"id": "x", "finished_at": "2026-03-09T02:04:11Z", "size_bytes": 5}
    del data[missing]
    program = standin.prints("p", str(data).replace("'", '"').encode())
    with pytest.raises(BackupSourceError, match=f"has no '{missing}'"):
        source([str(program)]).latest()


@pytest.mark.parametrize(
    ("output", "words"),
    [
        (b'{"id": "x", "finished_at": "2026-03-09T02:04:11", "size_bytes": 5}', "finished_at '2026-03-09T02:04:11' has no time zone"),
        (b'{"id": "x", "finished_at": "2026-03-09", "size_bytes": 5}', "has no time zone"),
        (b'{"id": "x", "finished_at": "yesterday", "size_bytes": 5}', "finished_at 'yesterday' is not an ISO 8601 time"),
        (b'{"id": "x", "finished_at": 1773021851, "size_bytes": 5}', "finished_at must be an ISO 8601 time text with a zone, got a number"),
        (b'{"id": "x", "finished_at": "2026-03-09T02:04:11Z", "size_bytes": -1}', "size_bytes must not be negative"),
        (b'{"id": "x", "finished_at": "2026-03-09T02:04:11Z", "size_bytes": true}', "size_bytes must be an integer, got a boolean"),
        (b'{"id": "x", "finished_at": "2026-03-09T02:04:11Z", "size_bytes": 1.5}', "size_bytes must be an integer, got 1.5"),
        (b'{"id": "x", "finished_at": "2026-03-09T02:04:11Z", "size_bytes": "5 MB"}', "size_bytes must be an integer, got a text"),
        (b'{"id": "x", "finished_at": "2026-03-09T02:04:11Z", "size_bytes": NaN}', "not usable JSON"),
        (b'{"id": "", "finished_at": "2026-03-09T02:04:11Z", "size_bytes": 5}', "id must be a non-empty text"),
        (b'{"id": "x", "finished_at": "2026-03-09T02:04:11Z", "size_bytes": 5, "details": []}', "details must be an object"),
        (b'[{"id": "x"}]', "must print a JSON object"),
        (b"not json at all", "printed something that is not JSON"),
        (b"", "printed nothing"),
        (b"[" * 100000, "JSON"),
    ],
)
def test_malformed_output_is_an_error_never_a_pass(standin, output, words):
    program = standin.prints("p", output)
    with pytest.raises(BackupSourceError) as caught:
        source([str(program)]).latest()
    assert words in str(caught.value)
    assert str(caught.value).startswith("command p")


def test_a_failing_program_is_an_error_with_its_words_and_no_secrets(standin):
    secret = "tok-9f8e7d6c5b4a"
    program = standin.fails("p", f"api error: 401 for token {secret}\nrequest id abc", exit_code=3)
    lookup = source([str(program), "--token", secret], env={"API_TOKEN": secret}).lookup()
    assert lookup.info is None and lookup.missing is None
    assert "exited with code 3" in lookup.error and "request id abc" in lookup.error
    assert secret not in lookup.error and MASK in lookup.error


def test_env_reaches_the_program(standin):
    program = standin.script(
        "p",
        '[ "$API_TOKEN" = "s3cret" ] || { echo "no token" >&2; exit 1; }\n'
        '[ -n "$PATH" ] || { echo "no PATH" >&2; exit 1; }\n'
        'echo \'{"id": "x", "finished_at": "2026-03-09T02:04:11Z", "size_bytes": 5}\'\n',
    )
    assert source([str(program)], env={"API_TOKEN": "s3cret"}).latest().id == "x"


def test_a_program_running_over_its_time_is_stopped_with_its_children(standin):
    program = standin.sleeps("p")
    started = time.monotonic()
    lookup = source([str(program)], timeout=0.5).lookup()
    assert time.monotonic() - started < 4
    assert lookup.error is not None and "timed out after 0.5 s" in lookup.error
    assert wait_dead(standin.child_pid("p")), "the program's child survived the time limit"


def test_a_program_that_does_not_exist(tmp_path):
    with pytest.raises(BackupSourceError, match="cannot run pgbv-no-such-program"):
        source([str(tmp_path / "pgbv-no-such-program")]).latest()


def test_registered_as_the_command_source(standin):
    program = standin.prints("p", b"null")
    found = source_for(CommandBackup(source="command", command=[str(program)]))
    assert isinstance(found, CommandBackupSource)
    lookup = found.lookup()
    assert (lookup.source, lookup.info, lookup.error) == ("command", None, None)
    assert "no backup" in lookup.missing
    assert not found.checks_readable()


def test_a_byte_order_mark_is_not_an_error(standin):
    program = standin.prints("p", b'\xef\xbb\xbf{"id": "x", "finished_at": "2026-03-09T02:04:11Z", "size_bytes": 5}\r\n')
    assert source([str(program)]).latest().id == "x"


@pytest.mark.parametrize(("example", "kind"), [("command", "CommandBackupSource"), ("walg", "WalgBackupSource"),
                                               ("barman", "BarmanBackupSource")])
def test_the_examples_are_valid_and_build_their_source(example, kind):
    settings = load_settings(ROOT / "examples" / f"{example}.yml", environ={})
    found = source_for(settings.targets[0].backup)
    assert type(found).__name__ == kind
