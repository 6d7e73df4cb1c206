"""The directory source on real files, and on real pg_dump archives of the demo database."""

from __future__ import annotations

import gzip
import os
import select
import shutil
import signal
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from exporter.backups import DirectoryBackupSource, source_for
from exporter.backups.base import BackupSourceError, NoBackupFound
from exporter.backups.directory import call_with_timeout
from exporter.config import DirectoryBackup, NoBackup


DAY = 86400
BASE = 1_760_000_000  # a fixed point in time, so mtimes are exact


def source(path: Path, pattern: str = "*", timeout: float = 60) -> DirectoryBackupSource:
    return DirectoryBackupSource(DirectoryBackup(source="directory", path=path, pattern=pattern, timeout_seconds=timeout))


def touch(path: Path, at: float, content: bytes = b"") -> Path:
    path.write_bytes(content)
    os.utime(path, (at, at))
    return path


def set_tree_mtime(folder: Path, at: float) -> None:
    for root, dirs, files in os.walk(folder):
        for name in files + dirs:
            os.utime(Path(root) / name, (at, at), follow_symlinks=False)
    os.utime(folder, (at, at))


# --- real pg_dump archives ------------------------------------------------------------


@pytest.fixture
def dumps(archives, tmp_path) -> Path:
    """A fresh copy of the archives, each made a day after the previous one."""
    folder = tmp_path / "backups"
    shutil.copytree(archives, folder)
    order = ["app.plain.sql", "app.plain.sql.gz", "app.custom.dump", "app.dir", "app.tar"]
    for day, name in enumerate(order):
        path = folder / name
        if path.is_dir():
            set_tree_mtime(path, BASE + day * DAY)
        else:
            os.utime(path, (BASE + day * DAY,) * 2)
    return folder


@pytest.mark.parametrize(
    "name, kind",
    [
        ("app.custom.dump", "pg_dump custom"),
        ("app.dir", "pg_dump directory"),
        ("app.tar", "pg_dump tar"),
        ("app.plain.sql", "plain SQL"),
        ("app.plain.sql.gz", "plain SQL gzip"),
    ],
)
def test_kind_of_each_pg_dump_format(dumps, name, kind):
    info = source(dumps, pattern=name).latest()
    assert (info.id, info.kind, info.location) == (name, kind, str(dumps / name))


def test_newest_archive_wins_and_its_facts_are_right(dumps):
    info = source(dumps).latest()
    assert info.id == "app.tar"
    assert info.kind == "pg_dump tar"
    assert info.finished_at == datetime.fromtimestamp(BASE + 4 * DAY, tz=timezone.utc)
    assert info.finished_at.tzinfo is not None
    assert info.size_bytes == (dumps / "app.tar").stat().st_size > 0

    os.utime(dumps / "app.custom.dump", (BASE + 9 * DAY,) * 2)
    info = source(dumps).latest()
    assert (info.id, info.kind) == ("app.custom.dump", "pg_dump custom")


def test_directory_archive_size_sums_its_files(dumps):
    folder = dumps / "app.dir"
    info = source(dumps, pattern="*.dir").latest()
    expected = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert len(list(folder.iterdir())) > 1  # toc.dat and one file per table
    assert info.size_bytes == expected
    assert info.finished_at == datetime.fromtimestamp(BASE + 3 * DAY, tz=timezone.utc)


def test_plain_dump_without_sql_suffix_is_recognised(dumps):
    os.rename(dumps / "app.plain.sql", dumps / "app.plain")
    assert source(dumps, pattern="app.plain").latest().kind == "plain SQL"


# --- choosing the newest --------------------------------------------------------------


def test_pattern_filters_names(tmp_path):
    touch(tmp_path / "app-1.dump", BASE)
    touch(tmp_path / "app-2.dump", BASE + DAY)
    touch(tmp_path / "notes.txt", BASE + 5 * DAY)
    touch(tmp_path / "other-3.dump", BASE + 4 * DAY)
    assert source(tmp_path, "*.dump").latest().id == "other-3.dump"
    assert source(tmp_path, "app-*.dump").latest().id == "app-2.dump"
    assert source(tmp_path, "*").latest().id == "notes.txt"
    # fnmatch, case-sensitive on every platform
    assert source(tmp_path, "APP-*").lookup().missing is not None


def test_pattern_is_not_recursive(tmp_path):
    (tmp_path / "sub").mkdir()
    touch(tmp_path / "sub" / "deep.dump", BASE + DAY)
    touch(tmp_path / "top.dump", BASE)
    assert source(tmp_path, "*.dump").latest().id == "top.dump"


def test_hidden_entries_are_skipped(tmp_path):
    touch(tmp_path / "a.dump", BASE)
    touch(tmp_path / ".b.dump", BASE + DAY)  # e.g. a dump still being written
    assert source(tmp_path, "*.dump").latest().id == "a.dump"
    assert source(tmp_path, ".*").lookup().missing is not None


def test_equal_times_prefer_the_greater_name(tmp_path):
    touch(tmp_path / "2026-01-01.dump", BASE)
    touch(tmp_path / "2026-01-02.dump", BASE)
    assert source(tmp_path).latest().id == "2026-01-02.dump"


def test_folder_time_is_its_newest_content(tmp_path):
    folder = tmp_path / "base-1"
    (folder / "pg_wal").mkdir(parents=True)
    touch(folder / "backup_manifest", BASE, b"{}")
    touch(folder / "pg_wal" / "000000010000000000000002", BASE + 3 * DAY, b"x" * 100)
    os.utime(folder / "pg_wal", (BASE, BASE))
    os.utime(folder, (BASE, BASE))
    touch(tmp_path / "base-2.tar", BASE + 2 * DAY, b"y" * 10)
    info = source(tmp_path).latest()
    assert info.id == "base-1"
    assert info.kind == "pg_basebackup"
    assert info.finished_at == datetime.fromtimestamp(BASE + 3 * DAY, tz=timezone.utc)
    assert info.size_bytes == 102


def test_folder_kinds_and_size(tmp_path):
    plain = tmp_path / "stuff"
    (plain / "a" / "b").mkdir(parents=True)
    touch(plain / "one", BASE, b"1" * 7)
    touch(plain / "a" / "b" / "two", BASE, b"2" * 5)
    os.symlink("/etc/hostname", plain / "link")  # a link does not add its target's size
    info = source(tmp_path).latest()
    assert (info.kind, info.size_bytes) == ("folder", 12)


def test_a_directory_archive_without_toc_dat_is_still_a_directory_archive(dumps):
    # Its data files give it away: backup_readable must fail it, not warn about a folder.
    (dumps / "app.dir" / "toc.dat").unlink()
    info = source(dumps, pattern="app.dir").latest()
    assert info.kind == "pg_dump directory"


def test_a_folder_of_other_dat_files_is_a_folder(tmp_path):
    (tmp_path / "stuff").mkdir()
    touch(tmp_path / "stuff" / "toc.dat.old", BASE, b"x")
    touch(tmp_path / "stuff" / "data.dat", BASE, b"x")
    assert source(tmp_path).latest().kind == "folder"


def test_file_kinds(tmp_path):
    touch(tmp_path / "x.dump", BASE, b"PGDMP\x01\x10\x00")
    touch(tmp_path / "x.sql", BASE, b"select 1;\n")
    touch(tmp_path / "x.sql.gz", BASE, gzip.compress(b"select 1;\n"))
    touch(tmp_path / "x.bin", BASE, b"\x00" * 10)
    touch(tmp_path / "empty", BASE)
    tar = bytearray(1024)
    tar[:8] = b"base.tar"
    tar[257:263] = b"ustar\x00"
    touch(tmp_path / "x.tar", BASE, bytes(tar))
    kinds = {name: source(tmp_path, name).latest().kind for name in ("x.dump", "x.sql", "x.sql.gz", "x.bin", "empty", "x.tar")}
    assert kinds == {
        "x.dump": "pg_dump custom",
        "x.sql": "plain SQL",
        "x.sql.gz": "plain SQL gzip",
        "x.bin": "file",
        "empty": "file",
        "x.tar": "tar",
    }


def test_symlink_at_the_top_is_followed(tmp_path):
    target = touch(tmp_path / "real.dump", BASE, b"PGDMP" + b"\x00" * 20)
    os.symlink(target, tmp_path / "latest.link")
    os.utime(tmp_path / "latest.link", (BASE + DAY,) * 2, follow_symlinks=False)
    info = source(tmp_path, "*.link").latest()
    assert (info.kind, info.size_bytes, info.location) == ("pg_dump custom", 25, str(tmp_path / "latest.link"))
    os.symlink(tmp_path / "gone", tmp_path / "dangling.link")
    assert source(tmp_path, "dangling.link").lookup().missing is not None


def test_a_fifo_is_never_opened(tmp_path):
    touch(tmp_path / "a.dump", BASE, b"PGDMP")
    os.mkfifo(tmp_path / "b.dump")  # newer; opening it would block forever
    info = source(tmp_path, "*.dump", timeout=5).latest()
    assert info.id == "a.dump"


# --- no backup, cannot tell ------------------------------------------------------------


def test_missing_folder_is_no_backup(tmp_path):
    lookup = source(tmp_path / "nowhere", "*.dump").lookup()
    assert lookup.info is None and lookup.error is None
    assert lookup.missing == f"folder {tmp_path / 'nowhere'} does not exist"


def test_empty_folder_is_no_backup(tmp_path):
    with pytest.raises(NoBackupFound, match=rf"no file or folder matching '\*.dump' in {tmp_path}$"):
        source(tmp_path, "*.dump").latest()
    touch(tmp_path / "other.txt", BASE)
    assert source(tmp_path, "*.dump").lookup().missing == f"no file or folder matching '*.dump' in {tmp_path}"


def test_path_is_a_file_is_an_error(tmp_path):
    file = touch(tmp_path / "backups", BASE)
    lookup = source(file).lookup()
    assert lookup.info is None and lookup.missing is None
    assert lookup.error == f"cannot read folder {file}: Not a directory"


def test_os_error_in_the_path_is_an_error(tmp_path):
    # Running as root, permissions cannot be denied; ENOTDIR is an OSError that is
    # neither "missing" nor a backup, as "Permission denied" would be.
    file = touch(tmp_path / "file", BASE)
    with pytest.raises(BackupSourceError, match=r"cannot read folder .*/file/backups: Not a directory"):
        source(file / "backups").latest()


def test_unreadable_folder_is_an_error():
    # Root reads every folder, so the scan runs in a child process that has become nobody.
    base = Path(tempfile.mkdtemp(prefix="pgbv-perm-"))
    folder = base / "locked"
    try:
        base.chmod(0o755)
        folder.mkdir()
        touch(folder / "a.dump", BASE)
        folder.chmod(0o000)
        reader, writer = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                if os.geteuid() == 0:
                    os.setgid(65534)
                    os.setuid(65534)
                os.write(writer, repr(source(folder, timeout=5).lookup().error).encode())
            finally:
                os._exit(0)
        os.close(writer)
        with os.fdopen(reader) as pipe:
            ready, _, _ = select.select([pipe], [], [], 20)
            if not ready:
                os.kill(pid, signal.SIGKILL)
            said = pipe.read() if ready else "(the child did not answer)"
        os.waitpid(pid, 0)
        assert said == repr(f"cannot read folder {folder}: Permission denied")
    finally:
        folder.chmod(0o700)
        shutil.rmtree(base)


# --- time limit -----------------------------------------------------------------------


def test_call_with_timeout_gives_up_on_a_blocked_call(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def blocked() -> bytes:
        with open(fifo, "rb") as handle:  # no writer: blocks in the kernel
            return handle.read()

    started = time.monotonic()
    with pytest.raises(BackupSourceError, match=rf"^scanning {tmp_path} took longer than 0.3s$"):
        call_with_timeout(blocked, 0.3, f"scanning {tmp_path}")
    assert time.monotonic() - started < 1
    # Release the abandoned worker so it does not outlive the test.
    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    os.close(fd)


def test_call_with_timeout_passes_results_and_errors():
    def none_there():
        raise NoBackupFound("nothing")

    assert call_with_timeout(lambda: 42, 5, "x") == 42
    with pytest.raises(NoBackupFound, match="^nothing$"):
        call_with_timeout(none_there, 5, "x")


# --- registry -------------------------------------------------------------------------


def test_registry(tmp_path):
    assert source_for(NoBackup()) is None
    found = source_for(DirectoryBackup(source="directory", path=tmp_path))
    assert isinstance(found, DirectoryBackupSource) and found.name == "directory"


# --- the archive's own date: a copy dated today of an old dump ---------------------------


def _set_archive_year(path: Path, year: int) -> None:
    """Rewrite the year of the start time in a custom archive's header (a struct tm,
    pg_backup_archiver.c WriteHead), as a year-old dump would carry it."""
    data = bytearray(path.read_bytes())
    version, int_size = tuple(data[5:8]), data[8]
    pos = 11 + (1 if version >= (1, 15, 0) else 1 + int_size)  # past the compression field
    pos += 5 * (1 + int_size)  # sec, min, hour, mday, mon: each a sign byte and int_size bytes
    data[pos] = 0
    data[pos + 1:pos + 1 + int_size] = (year - 1900).to_bytes(int_size, "little")
    path.write_bytes(bytes(data))


def test_an_old_dump_copied_today_is_dated_by_its_archive(pg_server, archives, tmp_path):
    from exporter.checks.backup_age import CHECK as AGE
    from tests.backups.conftest import ARCHIVES
    from tests.checks.helpers import check_once
    from tests.conftest import make_target

    folder = tmp_path / "backups"
    folder.mkdir()
    shutil.copyfile(archives / ARCHIVES["custom"], folder / "app.dump")  # a fresh file date
    target = make_target(pg_server.admin_dsn, checks={}, backup={"source": "directory", "path": str(folder)})
    fresh = source_for(target.backup).lookup()
    assert "archive_started_local" in fresh.info.details
    assert check_once(AGE, target, backup=fresh).outcome == "pass"

    _set_archive_year(folder / "app.dump", datetime.now(timezone.utc).year - 1)
    old = source_for(target.backup).lookup()
    assert old.info.details["archive_started_local"].startswith(str(datetime.now(timezone.utc).year - 1))
    result = check_once(AGE, target, backup=old)
    assert result.outcome == "fail", result.message
    assert "by the archive's own start time" in result.message and "a copy's date" in result.message
