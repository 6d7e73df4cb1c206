"""backup_readable judges what the source proved by reading the newest backup: a whole
pg_dump of the demo database passes, one cut in half fails naming the file and quoting
pg_restore, a reading that could not run is an error, a reservation is a warning."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import exporter.checks.backup_readable as backup_readable
from exporter.backups import DirectoryBackupSource
from exporter.backups.base import BackupSource, BackupSourceError, BackupUnreadable
from exporter.checks import ORDER
from exporter.checks.backup_readable import CHECK
from exporter.pgtools import ToolError, ToolNotFound, find_tool, run_tool
from exporter.result import BackupLookup
from tests.checks.helpers import check_once
from tests.conftest import make_target


@pytest.fixture(scope="module")
def dump(pg_server, tmp_path_factory) -> Path:
    """A custom-format pg_dump of the demo template, made once for the module."""
    from tests.conftest import TEMPLATE_DEMO

    path = tmp_path_factory.mktemp("dump") / "app.dump"
    pg_dump = find_tool("pg_dump", pg_server.version_num)
    run_tool(pg_dump, ["-Fc", "-f", str(path), "-d", pg_server.dsn(TEMPLATE_DEMO)], timeout=120)
    return path


@pytest.fixture
def backups(dump, tmp_path) -> Path:
    folder = tmp_path / "backups"
    folder.mkdir()
    shutil.copy2(dump, folder / dump.name)
    return folder


def target_for(pg_server, folder: Path, **backup):
    # The check reads files, not the database; the runner still needs a connection.
    return make_target(pg_server.admin_dsn, checks={}, backup={"source": "directory", "path": str(folder), **backup})


def run(target, lookup: BackupLookup | None = None):
    if lookup is None:
        lookup = DirectoryBackupSource(target.backup).lookup()
    return check_once(CHECK, target, backup=lookup)


def test_registered_after_backup_size_and_before_wal_archiving():
    assert ORDER.index("backup_readable") == ORDER.index("backup_size") + 1
    assert ORDER.index("wal_archiving") == ORDER.index("backup_readable") + 2  # backup_content between


def test_applies_when_the_source_can_read_its_backups(pg_server, tmp_path):
    assert CHECK.applies(target_for(pg_server, tmp_path))
    assert not CHECK.applies(make_target(pg_server.admin_dsn, checks={}))
    assert not CHECK.uses_log_db


def test_does_not_apply_to_a_source_without_a_reader(pg_server, monkeypatch):
    class Blind(BackupSource):
        name = "blind"

        def latest(self):
            raise AssertionError("not called")

    monkeypatch.setattr(backup_readable, "source_for", lambda config: Blind())
    assert not CHECK.applies(target_for(pg_server, Path("/nowhere")))


def test_whole_custom_dump_passes(pg_server, backups):
    result = run(target_for(pg_server, backups))
    assert result.outcome == "pass", result.message
    pg_restore = find_tool("pg_restore")
    assert result.message.startswith("app.dump (pg_dump custom, ")
    assert result.message.endswith(f"read through to the end by pg_restore {pg_restore.version}")
    assert (result.observed, result.expected) == ("readable", "readable to the end")


def test_custom_dump_cut_in_half_fails_naming_the_file_and_quoting_pg_restore(pg_server, backups):
    path = backups / "app.dump"
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size // 2)
    # backup_size and backup_age see nothing wrong with it; pg_restore --list neither.
    run_tool(find_tool("pg_restore"), ["--list", str(path)], timeout=60)
    result = run(target_for(pg_server, backups))
    assert result.outcome == "fail"
    assert result.message.startswith(f"newest backup app.dump is damaged: {path} could not be read through (pg_restore ")
    assert "pg_restore: error: could not read from input file: end of file" in result.message
    assert result.observed == "damaged"


def test_tiny_timeout_is_an_error_that_says_timed_out(pg_server, backups):
    target = target_for(pg_server, backups, timeout_seconds=1e-6)
    lookup = DirectoryBackupSource(target_for(pg_server, backups).backup).lookup()
    result = run(target, lookup)
    assert result.outcome == "error"
    assert result.message.startswith("could not verify that newest backup app.dump is readable: ")
    assert "pg_restore timed out after 1e-06 s and was stopped" in result.message


def test_missing_client_tools_are_an_error(pg_server, backups, tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    target = make_target(
        pg_server.admin_dsn, checks={}, pg_bin_dir=str(empty), backup={"source": "directory", "path": str(backups)}
    )
    result = run(target)
    assert result.outcome == "error"
    assert f"pg_bin_dir {empty} has no pg_restore" in result.message


def test_a_file_no_reader_knows_is_a_warning(pg_server, tmp_path):
    (tmp_path / "app.bin").write_bytes(b"\x01" * 2048)
    result = run(target_for(pg_server, tmp_path))
    assert result.outcome == "warn"
    assert result.message.startswith("app.bin is a file of no format pgbv can read through")
    assert result.observed == "not fully verified"


def test_a_directory_dump_without_toc_dat_fails(pg_server, tmp_path):
    folder = tmp_path / "backups"
    folder.mkdir()
    pg_dump = find_tool("pg_dump", pg_server.version_num)
    from tests.conftest import TEMPLATE_DEMO

    run_tool(pg_dump, ["-Fd", "-f", str(folder / "app.dir"), "-d", pg_server.dsn(TEMPLATE_DEMO)], timeout=120)
    target = target_for(pg_server, folder)
    assert run(target).outcome == "pass"
    (folder / "app.dir" / "toc.dat").unlink()
    result = run(target)
    assert result.outcome == "fail", result.message
    assert result.message == (
        f"newest backup app.dir is damaged: {folder / 'app.dir'}: toc.dat is missing, without it nothing in the "
        "folder can be restored"
    )


def test_no_backup_fails_and_a_source_that_cannot_answer_errors(pg_server, tmp_path):
    target = target_for(pg_server, tmp_path)
    assert run(target).outcome == "fail"  # the real lookup of an empty folder
    missing = run(target, BackupLookup("directory", missing="no file or folder matching '*' in /x"))
    assert missing.outcome == "fail" and missing.message == "no backup found: no file or folder matching '*' in /x"
    broken = run(target, BackupLookup("directory", error="scanning /x took longer than 60s"))
    assert broken.outcome == "error"
    assert broken.message == "backup source directory could not answer: scanning /x took longer than 60s"


class Scripted(BackupSource):
    """A source whose verify_readable does what the test says (others' sources use the same contract)."""

    name = "scripted"

    def __init__(self, outcome):
        self.outcome = outcome
        self.called_with = None

    def latest(self):
        raise AssertionError("the check uses the run's lookup")

    def checks_readable(self):
        return True

    def verify_readable(self, info, server_version_num, pg_bin_dir=None):
        self.called_with = (info.id, server_version_num, pg_bin_dir)
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


@pytest.mark.parametrize(
    ("outcome", "expected", "message"),
    [
        ("repository verified", "pass", "repository verified"),
        ("warning: 3 WAL files not checked", "warn", "3 WAL files not checked"),
        (BackupUnreadable("file x: checksum mismatch"), "fail", "newest backup b1 is damaged: file x: checksum mismatch"),
        (BackupSourceError("verify exited 2"), "error", "could not verify that newest backup b1 is readable: verify exited 2"),
        (ToolError("wal-g timed out after 5 s"), "error", "could not verify that newest backup b1 is readable: wal-g timed out after 5 s"),
        (ToolNotFound("pg_restore not found"), "error", "could not verify that newest backup b1 is readable: pg_restore not found"),
    ],
)
def test_the_source_answer_becomes_the_outcome(pg_server, monkeypatch, outcome, expected, message):
    from datetime import datetime, timezone

    from exporter.result import BackupInfo

    source = Scripted(outcome)
    monkeypatch.setattr(backup_readable, "source_for", lambda config: source)
    target = make_target(pg_server.admin_dsn, checks={}, pg_bin_dir="/opt/pg/bin", backup={"source": "directory", "path": "/x"})
    lookup = BackupLookup("scripted", info=BackupInfo("b1", datetime.now(timezone.utc), 1, "full"))
    result = check_once(CHECK, target, backup=lookup)
    assert (result.outcome, result.message) == (expected, message)
    assert source.called_with == ("b1", pg_server.version_num, Path("/opt/pg/bin"))


def test_secrets_in_a_source_message_are_masked(pg_server, monkeypatch):
    from datetime import datetime, timezone

    from exporter.result import BackupInfo

    monkeypatch.setattr(backup_readable, "source_for", lambda config: Scripted(BackupSourceError("failed with key s3cr3t-key")))
    target = make_target(
        pg_server.admin_dsn, checks={},
        backup={"source": "walg", "env": {"AWS_SECRET_ACCESS_KEY": "s3cr3t-key"}, "wal_verify": True},
    )
    lookup = BackupLookup("walg", info=BackupInfo("b1", datetime.now(timezone.utc), 1, "full"))
    result = check_once(CHECK, target, backup=lookup)
    assert result.outcome == "error" and "s3cr3t-key" not in result.message and "********" in result.message


# --- a source that reads on a cadence: the last full read carried from run to run -------------


class OnCadence(Scripted):
    def full_read_every_days(self):
        return 7


def cadence_run(pg_server, monkeypatch, previous, outcome="repository verified", lookup=None, now=None):
    from datetime import datetime, timezone

    from exporter.result import BackupInfo

    source = OnCadence(outcome)
    monkeypatch.setattr(backup_readable, "source_for", lambda config: source)
    target = make_target(pg_server.admin_dsn, checks={}, backup={"source": "directory", "path": "/x"})
    now = now or datetime(2026, 12, 10, 5, 0, tzinfo=timezone.utc)
    lookup = lookup or BackupLookup("scripted", info=BackupInfo("b2", now, 1, "full"))
    return check_once(CHECK, target, previous=previous, backup=lookup, now=now), source


LAST = {"source": "scripted", "at": "2026-12-08T05:00:00+00:00", "backup_id": "b1", "outcome": "pass", "message": "read b1"}


def test_inside_the_cadence_the_last_read_is_reported_and_carried(pg_server, monkeypatch):
    result, source = cadence_run(pg_server, monkeypatch, {"full_read": LAST})
    assert source.called_with is None  # not read
    assert result.outcome == "pass"
    assert result.message == (
        "last full read 2026-12-08T05:00:00+00:00 (2.0 days ago, next due by 2026-12-15T05:00:00+00:00; "
        "verify_every_days 7): read b1; newest backup b2 came after it and has not been read yet"
    )
    assert result.data["full_read"] == LAST


@pytest.mark.parametrize(
    "fact",
    [
        None,
        {**LAST, "source": "other"},  # the source changed since
        {**LAST, "at": "yesterday"},
        {**LAST, "at": "2026-12-08T05:00:00"},  # no zone
        {**LAST, "outcome": None},
        "not an object",
    ],
)
def test_a_missing_or_odd_fact_means_a_read(pg_server, monkeypatch, fact):
    result, source = cadence_run(pg_server, monkeypatch, {"full_read": fact})
    assert source.called_with is not None
    assert result.outcome == "pass" and result.message == "repository verified (full read this run: no full read recorded before)"
    assert result.data["full_read"]["at"] == "2026-12-10T05:00:00+00:00" and result.data["full_read"]["backup_id"] == "b2"


def test_a_lookup_problem_keeps_the_last_read(pg_server, monkeypatch):
    result, source = cadence_run(pg_server, monkeypatch, {"full_read": LAST},
                                 lookup=BackupLookup("scripted", error="info timed out"))
    assert result.outcome == "error" and source.called_with is None
    assert result.data["full_read"] == LAST  # the next run still knows when the last read was
