"""The readers behind backup_readable, on real pg_dump archives of the demo database
and real pg_basebackup folders: whole ones read through, damaged ones fail naming the
file and quoting the tool, and a tool that cannot do the job is an error, not a pass."""

from __future__ import annotations

import gzip
import os
import shutil
import tarfile
import time
from pathlib import Path

import pytest

from exporter.backups import DirectoryBackupSource
from exporter.backups.base import BackupSourceError, BackupUnreadable
from exporter.backups.directory import file_kind, folder_kind, scan
from exporter.backups.readable import (
    PLAIN_MARKERS,
    Deadline,
    parse_archive_header,
    plain_ending,
    verify_entry,
    walk_tar,
)
from exporter.config import DirectoryBackup
from exporter.pgtools import ToolNotFound, find_tool, run_tool
from tests.backups.conftest import ARCHIVES
from tests.pgcluster import Cluster

PG15_BIN = Path("/usr/lib/postgresql/15/bin")
FILES = ARCHIVES
KINDS = {
    "custom": "pg_dump custom", "tar": "pg_dump tar", "directory": "pg_dump directory",
    "plain": "plain SQL", "plain gzip": "plain SQL gzip",
}


def read(path: Path, timeout: float = 60, server_version_num: int | None = None, pg_bin_dir=None) -> str:
    """What backup_readable gets: the directory source's answer for its newest entry."""
    config = DirectoryBackup(source="directory", path=path.parent, pattern=path.name, timeout_seconds=timeout)
    source = DirectoryBackupSource(config)
    assert source.checks_readable()
    # Listed without the time limit: a tiny one is meant for the reading.
    return source.verify_readable(scan(path.parent, path.name), server_version_num, pg_bin_dir)


def cut(path: Path, keep: float = 0.5) -> Path:
    """Truncate the file at path to keep of its length, as a full disk or a killed copy does."""
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.truncate(int(size * keep))
    return path


@pytest.fixture
def dumps(archives, tmp_path) -> Path:
    """A private copy, for tests that damage it."""
    for entry in archives.iterdir():
        if entry.is_dir():
            shutil.copytree(entry, tmp_path / entry.name)
        else:
            shutil.copy2(entry, tmp_path / entry.name)
    return tmp_path


# --- whole archives pass ------------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(FILES))
def test_every_pg_dump_format_of_the_demo_database_reads_through(archives, fmt):
    path = archives / FILES[fmt]
    assert (folder_kind(path) if path.is_dir() else file_kind(path)) == KINDS[fmt]
    message = read(path)
    assert not message.startswith("warning:"), message
    assert message.startswith(FILES[fmt])
    if fmt in ("plain", "plain gzip"):
        assert f"ends with '{PLAIN_MARKERS[0]}'" in message
    else:
        pg_restore = find_tool("pg_restore")
        assert f"read through to the end by pg_restore {pg_restore.version}" in message
        assert f"({KINDS[fmt]}, " in message and "pg_dump 1" in message


def test_plain_gzip_says_the_crc_was_checked(archives):
    assert "gzip stream read to the end, CRC verified" in read(archives / FILES["plain gzip"])


# --- cut in half: each format fails, naming the file and quoting the tool ------------------------


def test_custom_archive_cut_in_half_fails_although_pg_restore_list_passes(dumps):
    path = cut(dumps / FILES["custom"])
    pg_restore = find_tool("pg_restore")
    # The point of reading through: the table of contents at the start is intact.
    listing = run_tool(pg_restore, ["--list", str(path)], timeout=60)
    assert "TABLE DATA public appointments" in listing.stdout
    with pytest.raises(BackupUnreadable) as caught:
        read(path)
    message = str(caught.value)
    assert str(path) in message
    assert "pg_restore: error: could not read from input file: end of file" in message


def test_custom_archive_cut_near_its_end_fails(dumps):
    path = dumps / FILES["custom"]
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size - 10)
    with pytest.raises(BackupUnreadable, match="end of file"):
        read(path)


def test_custom_archive_with_zeroed_bytes_fails(dumps):
    path = dumps / FILES["custom"]
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = bytes(4096)
    path.write_bytes(bytes(data))
    with pytest.raises(BackupUnreadable) as caught:
        read(path)
    assert str(path) in str(caught.value) and "pg_restore: error:" in str(caught.value)


def test_tar_archive_cut_in_half_fails_without_running_into_the_pg_restore_hang(dumps):
    # pg_restore 18 spins forever on this file (measured); the tar walk stops it first.
    path = cut(dumps / FILES["tar"])
    started = time.monotonic()
    with pytest.raises(BackupUnreadable) as caught:
        read(path, timeout=30)
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert str(path) in message and "is truncated: member " in message and "but the file ends at byte" in message


@pytest.mark.parametrize("keep", [0.002, 0.9999])
def test_tar_archive_cut_anywhere_fails(dumps, keep):
    # 0.002: inside toc.dat; 0.9999: in the trailing restore.sql, which pg_restore never reads.
    path = cut(dumps / FILES["tar"], keep)
    with pytest.raises(BackupUnreadable, match="is truncated"):
        read(path)


def test_tar_archive_missing_a_data_member_fails(dumps):
    path = dumps / FILES["tar"]
    rebuilt = dumps / "rebuilt.tar"
    with tarfile.open(path) as src, tarfile.open(rebuilt, "w", format=tarfile.USTAR_FORMAT) as dst:
        members = src.getmembers()
        biggest = max((m for m in members if m.name.endswith(".dat")), key=lambda m: m.size)
        for member in members:
            if member is not biggest:
                dst.addfile(member, src.extractfile(member))
    os.replace(rebuilt, path)
    with pytest.raises(BackupUnreadable) as caught:
        read(path)
    assert "pg_restore: error:" in str(caught.value) and str(path) in str(caught.value)


def _data_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.dat*"), key=lambda p: p.stat().st_size)


def test_directory_archive_missing_a_data_file_fails(dumps):
    folder = dumps / FILES["directory"]
    gone = _data_files(folder)[0]
    gone.unlink()
    with pytest.raises(BackupUnreadable) as caught:
        read(folder)
    message = str(caught.value)
    stem = gone.name.split(".")[0]
    assert f'could not open input file "{folder}/{stem}.dat' in message and "No such file or directory" in message


def test_directory_archive_with_a_truncated_data_file_fails(dumps):
    folder = dumps / FILES["directory"]
    biggest = _data_files(folder)[-1]
    assert biggest.name.endswith(".dat.gz"), "pg_dump compresses directory archives with gzip by default"
    cut(biggest)
    with pytest.raises(BackupUnreadable) as caught:
        read(folder)
    message = str(caught.value)
    stem = biggest.name.split(".")[0]
    # pg_restore's own words, then what is wrong with which file.
    assert f'pg_restore: error: could not close data file "{folder}/{stem}.dat"' in message
    assert f"damaged: {biggest.name} is truncated (Compressed file ended before the end-of-stream marker was reached)" in message


def test_directory_archive_with_one_file_deleted_and_one_truncated_fails_naming_both(dumps):
    folder = dumps / FILES["directory"]
    files = _data_files(folder)
    files[0].unlink()
    cut(files[-1])
    with pytest.raises(BackupUnreadable) as caught:
        read(folder)
    message = str(caught.value)
    assert str(folder) in message and "pg_restore: error: " in message
    assert f"{files[0].name.split('.')[0]}.dat is missing" in message
    assert f"{files[-1].name} is truncated" in message


def test_directory_archive_without_toc_fails(dumps):
    folder = dumps / FILES["directory"]
    (folder / "toc.dat").rename(folder / "toc.old")
    # Without toc.dat the folder is no pg_dump archive any more: the source calls it a folder.
    with pytest.raises(BackupUnreadable, match="toc.dat is missing"):
        verify_entry(folder, "pg_dump directory", 60, None)


def test_plain_dump_cut_in_half_fails_quoting_its_last_line(dumps):
    path = cut(dumps / FILES["plain"])
    with pytest.raises(BackupUnreadable) as caught:
        read(path)
    message = str(caught.value)
    assert str(path) in message
    assert f"does not end with pg_dump's completion marker '{PLAIN_MARKERS[0]}'" in message
    assert "it ends with '" in message


def test_plain_gzip_cut_in_half_fails(dumps):
    path = cut(dumps / FILES["plain gzip"])
    with pytest.raises(BackupUnreadable) as caught:
        read(path)
    message = str(caught.value)
    assert str(path) in message and "is truncated: the gzip stream ends after" in message
    assert "Compressed file ended before the end-of-stream marker was reached" in message


def test_plain_gzip_with_a_corrupt_byte_fails(dumps):
    path = dumps / FILES["plain gzip"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BackupUnreadable, match=r"is corrupt after \d+ bytes of SQL"):
        read(path)


def test_plain_gzip_of_a_dump_cut_before_compression_fails(dumps):
    # A whole gzip stream around an incomplete dump (pg_dump died, gzip finished).
    text = (dumps / FILES["plain"]).read_bytes()
    path = dumps / FILES["plain gzip"]
    path.write_bytes(gzip.compress(text[: len(text) // 2]))
    with pytest.raises(BackupUnreadable, match="does not end with pg_dump's completion marker"):
        read(path)


def test_plain_completion_marker_rules():
    complete = b"SET x;\n\n--\n-- PostgreSQL database dump complete\n--\n\n\\unrestrict AbC123\n\n"
    assert plain_ending(complete) == (True, PLAIN_MARKERS[0])
    assert plain_ending(complete.replace(b"\n", b"\r\n"))[0]
    assert plain_ending(b"--\n-- PostgreSQL database cluster dump complete\n--\n\n") == (True, PLAIN_MARKERS[1])
    # Older pg_dump releases write no \unrestrict line.
    assert plain_ending(b"--\n-- PostgreSQL database dump complete\n--\n\n")[0]
    assert plain_ending(b"COPY t FROM stdin;\n1\t2\n") == (False, "1\t2")
    assert plain_ending(b"-- PostgreSQL database dump complete\nSELECT 1;\n") == (False, "SELECT 1;")
    assert plain_ending(b"") == (False, "")


# --- archive header, tool version ---------------------------------------------------------


def test_archive_header_gives_the_pg_dump_version(archives, pg_server):
    pg_dump = find_tool("pg_dump", pg_server.version_num)
    header = parse_archive_header((archives / FILES["custom"]).read_bytes()[:4096])
    assert header.format == "custom" and header.version >= (1, 14, 0)
    assert header.dumped_by == pg_dump.version and header.dumped_by_major == pg_dump.major
    assert header.server.split(".")[0] == str(pg_server.version_num // 10000)
    toc = (archives / FILES["directory"] / "toc.dat").read_bytes()[:4096]
    assert parse_archive_header(toc).format == "tar or directory"
    with pytest.raises(ValueError):
        parse_archive_header(b"PGDMP\x01\x10")


def test_archive_header_cut_short_fails(dumps):
    path = dumps / FILES["custom"]
    with open(path, "r+b") as handle:
        handle.truncate(20)
    with pytest.raises(BackupUnreadable, match="the pg_dump archive header is damaged"):
        read(path)


@pytest.mark.skipif(not PG15_BIN.is_dir(), reason="Debian's PostgreSQL 15 client tools are not installed")
def test_pg_restore_older_than_the_archive_is_an_error_naming_both(archives):
    pg_dump = find_tool("pg_dump")
    with pytest.raises(ToolNotFound) as caught:
        read(archives / FILES["custom"], pg_bin_dir=PG15_BIN)
    message = str(caught.value)
    assert f"was written by pg_dump {pg_dump.version}" in message
    assert "pg_restore 15" in message and "set pg_bin_dir" in message


def test_pg_bin_dir_without_pg_restore_is_an_error(archives, tmp_path):
    with pytest.raises(ToolNotFound, match=f"pg_bin_dir {tmp_path} has no pg_restore"):
        read(archives / FILES["custom"], pg_bin_dir=tmp_path)


# --- timeouts -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["custom", "directory", "plain", "plain gzip", "tar"])
def test_a_tiny_timeout_is_an_error_that_says_timed_out(archives, fmt):
    with pytest.raises(BackupSourceError, match="timed out after 1e-06 s"):
        read(archives / FILES[fmt], timeout=1e-6)


def test_a_hung_pg_restore_is_stopped_at_the_timeout(dumps, monkeypatch):
    # The hang measured on a cut tar, reached by skipping the walk that prevents it.
    import exporter.backups.readable as readable

    monkeypatch.setattr(readable, "walk_tar", lambda path, deadline, read_data: ["toc.dat"])
    path = cut(dumps / FILES["tar"])
    started = time.monotonic()
    with pytest.raises(BackupSourceError, match=r"pg_restore timed out after 1 s and was stopped"):
        read(path, timeout=1)
    assert time.monotonic() - started < 10


# --- other files -------------------------------------------------------------------------


def test_a_plain_tar_is_walked_to_its_end(tmp_path):
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "a.txt").write_bytes(os.urandom(50_000))
    path = tmp_path / "files.tar"
    with tarfile.open(path, "w") as archive:
        archive.add(inner / "a.txt", arcname="a.txt")
    assert file_kind(path) == "tar"
    assert "tar archive read to the end, 1 members" in read(path)
    assert walk_tar(path, Deadline(60), read_data=True) == ["a.txt"]
    cut(path)
    with pytest.raises(BackupUnreadable, match="member a.txt needs 50000 bytes"):
        read(path)


def test_a_gzip_file_is_read_to_its_end(tmp_path):
    path = tmp_path / "app.dump.gz"
    path.write_bytes(gzip.compress(os.urandom(100_000)))
    assert "gzip stream read to the end, CRC verified" in read(path)
    cut(path)
    with pytest.raises(BackupUnreadable, match="is truncated"):
        read(path)


def test_an_unknown_file_or_folder_is_a_warning(tmp_path):
    (tmp_path / "app.bin").write_bytes(b"\x00" * 100)
    message = read(tmp_path / "app.bin")
    assert message.startswith("warning: app.bin is a file of no format pgbv can read through")
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "x").write_text("x")
    assert read(tmp_path / "stuff").startswith("warning: stuff is a folder of no format")


def test_a_backup_gone_since_listing_is_an_error(tmp_path):
    (tmp_path / "app.dump").write_bytes(b"PGDMP")
    info = scan(tmp_path, "*.dump")
    (tmp_path / "app.dump").unlink()
    source = DirectoryBackupSource(DirectoryBackup(source="directory", path=tmp_path))
    with pytest.raises(BackupSourceError, match="is gone since it was listed"):
        source.verify_readable(info, None)


# --- pg_basebackup ----------------------------------------------------------------------------


def _basebackup(cluster: Cluster, folder: Path, *extra: str) -> Path:
    pg_basebackup = find_tool("pg_basebackup", pg_bin_dir=cluster.initdb.path.parent)
    run_tool(pg_basebackup, ["-d", cluster.dsn(), "-D", str(folder), "--no-sync", *extra], timeout=120)
    return folder


@pytest.fixture(scope="module")
def basebackups(tmp_path_factory):
    """Base backups of a private cluster of the newest PostgreSQL: plain with its WAL
    streamed, plain without WAL, tar format."""
    cluster = Cluster()
    cluster.start()
    try:
        folder = tmp_path_factory.mktemp("basebackups")
        backups = {
            "plain": _basebackup(cluster, folder / "base.plain", "-Fp", "-X", "stream"),
            "no wal": _basebackup(cluster, folder / "base.nowal", "-Fp", "-X", "none"),
            "tar": _basebackup(cluster, folder / "base.tar", "-Ft", "-X", "stream"),
        }
        yield cluster, backups
    finally:
        cluster.destroy()


@pytest.fixture
def basebackup(basebackups, tmp_path) -> Path:
    """A private copy of the plain backup, for tests that damage it."""
    return Path(shutil.copytree(basebackups[1]["plain"], tmp_path / "base.plain", symlinks=True))


def test_plain_basebackup_with_its_wal_passes_pg_verifybackup(basebackups):
    cluster, backups = basebackups
    path = backups["plain"]
    assert folder_kind(path) == "pg_basebackup"
    message = read(path)
    tool = find_tool("pg_verifybackup")
    assert message.startswith(f"base.plain (pg_basebackup, manifest version {2 if cluster.initdb.major >= 17 else 1}, ")
    assert f"verified by pg_verifybackup {tool.version}; its WAL parsed from start to end" in message


def test_basebackup_without_wal_passes_and_says_the_wal_is_elsewhere(basebackups):
    message = read(basebackups[1]["no wal"])
    assert "it holds no WAL (pg_basebackup -X none)" in message and not message.startswith("warning:")


def test_tar_basebackup_passes_on_a_new_enough_pg_verifybackup(basebackups):
    message = read(basebackups[1]["tar"])
    assert "verified by pg_verifybackup" in message
    assert "pg_wal.tar not parsed (pg_waldump cannot read WAL inside a tar file)" in message


def test_basebackup_with_a_changed_file_fails(basebackup):
    victim = next(p for p in sorted((basebackup / "base").rglob("*")) if p.is_file() and p.stat().st_size > 8192)
    with open(victim, "r+b") as handle:
        handle.seek(4000)
        handle.write(b"garbage!")
    relative = victim.relative_to(basebackup)
    with pytest.raises(BackupUnreadable) as caught:
        read(basebackup)
    message = str(caught.value)
    assert str(basebackup) in message and f'checksum mismatch for file "{relative}"' in message


def test_basebackup_with_a_missing_file_fails(basebackup):
    victim = next(p for p in sorted((basebackup / "global").iterdir()) if p.is_file() and p.name[0].isdigit())
    victim.unlink()
    with pytest.raises(BackupUnreadable, match=f'"global/{victim.name}" is present in the manifest but not on disk'):
        read(basebackup)


def test_basebackup_with_damaged_wal_fails(basebackup):
    segment = next(p for p in sorted((basebackup / "pg_wal").iterdir()) if len(p.name) == 24)
    # The backup's own records sit in the first pages; behind the 40-byte page header.
    with open(segment, "r+b") as handle:
        handle.seek(40)
        handle.write(b"\xa5" * 8000)
    with pytest.raises(BackupUnreadable, match="WAL parsing failed"):
        read(basebackup)


def test_basebackup_with_a_truncated_manifest_fails(basebackup):
    cut(basebackup / "backup_manifest")
    with pytest.raises(BackupUnreadable, match="could not parse backup manifest"):
        read(basebackup)


def test_basebackup_without_manifest_is_a_warning(basebackup):
    (basebackup / "backup_manifest").unlink()
    message = read(basebackup)
    assert message.startswith("warning: base.plain has no backup_manifest")


@pytest.mark.skipif(not PG15_BIN.is_dir(), reason="Debian's PostgreSQL 15 client tools are not installed")
def test_pg_verifybackup_15_on_a_manifest_v2_backup_is_an_error_not_a_pass(basebackups):
    cluster, backups = basebackups
    assert cluster.initdb.major >= 17, "the newest PostgreSQL found writes version 2 manifests"
    with pytest.raises(BackupSourceError) as caught:
        read(backups["plain"], pg_bin_dir=PG15_BIN)
    message = str(caught.value)
    assert message.startswith("pg_verifybackup 15.")
    assert "its backup_manifest is version 2, written by PostgreSQL 17 and newer" in message
    assert 'which pg_verifybackup 15 rejects ("unexpected manifest version")' in message
    assert f"set pg_bin_dir to PostgreSQL {cluster.initdb.major} or newer client tools" in message
    # What the tool itself would have said, had it been run.
    with pytest.raises(Exception, match="unexpected manifest version"):
        run_tool(PG15_BIN / "pg_verifybackup", [str(backups["plain"])], timeout=60)


@pytest.fixture(scope="module")
def pg15_basebackup(tmp_path_factory) -> Path:
    """A plain base backup, WAL streamed, of a Debian PostgreSQL 15 cluster."""
    if not PG15_BIN.is_dir():
        pytest.skip("Debian's PostgreSQL 15 server is not installed")
    cluster = Cluster(bin_dir=PG15_BIN)
    cluster.start()
    try:
        return _basebackup(cluster, tmp_path_factory.mktemp("pg15") / "base15", "-Fp", "-X", "stream")
    finally:
        cluster.destroy()


def test_a_postgresql_15_basebackup_is_verified_with_pg_verifybackup_15(pg15_basebackup):
    # pg_waldump reads only its own version's WAL: the newest pg_verifybackup would fail
    # "WAL parsing failed" on this backup, so the reader picks the backup's own version.
    path = pg15_basebackup
    message = read(path)
    assert "(pg_basebackup, manifest version 1, " in message
    assert "verified by pg_verifybackup 15." in message and "its WAL parsed from start to end" in message
    newest = find_tool("pg_verifybackup")
    if newest.major != 15:
        with pytest.raises(Exception, match="WAL parsing failed"):
            run_tool(newest, [str(path)], timeout=60)
        # Told to use the newer tools, it checks the files and says the WAL went unchecked.
        warned = read(path, pg_bin_dir=newest.path.parent)
        assert warned.startswith("warning: ")
        assert f"its WAL was not checked: pg_waldump {newest.major} cannot read PostgreSQL 15 WAL" in warned


def test_basebackup_timeout_is_an_error(basebackups):
    with pytest.raises(BackupSourceError, match="pg_verifybackup timed out after 1e-06 s"):
        read(basebackups[1]["plain"], timeout=1e-6)


# --- a tool that cannot do the job is an error, never taken for damage --------------------------


@pytest.mark.skipif(not PG15_BIN.is_dir(), reason="Debian's PostgreSQL 15 client tools are not installed")
def test_a_pg_restore_that_refuses_the_archive_version_is_an_error(archives, monkeypatch):
    import exporter.backups.readable as readable

    # Past the version choice, as a wrong header reading would be.
    old = find_tool("pg_restore", pg_bin_dir=PG15_BIN)
    monkeypatch.setattr(readable, "_pg_restore", lambda *args: old)
    with pytest.raises(BackupSourceError, match=r"unsupported version \(1\.\d+\) in file header"):
        read(archives / FILES["custom"])


def test_pg_verifybackup_without_its_pg_waldump_is_an_error(pg15_basebackup, tmp_path):
    lonely = tmp_path / "bin"
    lonely.mkdir()
    shutil.copy2(PG15_BIN / "pg_verifybackup", lonely)
    with pytest.raises(BackupSourceError, match='program "pg_waldump" is needed by pg_verifybackup'):
        read(pg15_basebackup, pg_bin_dir=lonely)
