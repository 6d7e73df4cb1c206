"""The parts of the WAL folder reader a real PostgreSQL 15 in tests/checks/test_wal_continuity.py
cannot show: another segment size, and the zones a .backup file's STOP TIME is written in."""

from __future__ import annotations

import gzip
import os
import struct
from datetime import datetime, timezone

import pytest

from exporter.backups.base import BackupSourceError
from exporter.backups.wal import parse_segment
from exporter.backups.wal_folder import _stop_time, read_archive

MiB = 1024 * 1024


SYSID = 7300000000000000001


def _segment(folder, name: str, size: int) -> None:
    # The long page header PostgreSQL 15 writes (exporter/backups/wal_header.py):
    # without it the file is a torn copy, not a segment.
    segment = parse_segment(name, size)
    with open(folder / name, "wb") as handle:
        handle.write(struct.pack("<HHIQI4xQII", 0xD110, 0x0002, segment.timeline, segment.number * size, 0,
                                 SYSID, size, 8192))
        handle.truncate(size)  # sparse: a 64 MiB segment costs no disk


def _base_backup(folder, start_lsn: str, timeline: int = 1):
    backup = folder / "base-1"
    backup.mkdir(parents=True)
    (backup / "backup_label").write_text(
        f"START WAL LOCATION: {start_lsn} (file whatever)\nCHECKPOINT LOCATION: {start_lsn}\n"
        f"START TIMELINE: {timeline}\n"
    )
    return backup


def test_64_mib_segments_measured_and_the_log_boundary_crossed(tmp_path):
    wal, backups = tmp_path / "wal", tmp_path / "backups"
    wal.mkdir()
    # With 64 MiB segments a log holds 0x00..0x3F: ...0000003F is followed by ...0000000100000000.
    for name in ("00000001000000000000003E", "00000001000000000000003F", "000000010000000100000000"):
        _segment(wal, name, 64 * MiB)
    _base_backup(backups, "0/F8000028")  # 0xF8000028 // 64 MiB = 62 = 0x3E
    archive = read_archive(wal, backups, "base-*", None, None)
    assert archive.gap is None and archive.segments_checked == 3
    assert archive.checked_from == "00000001000000000000003E" and archive.last == "000000010000000100000000"
    assert "segment size 64 MiB, the size of its uncompressed segments" in archive.notes
    # Read as 16 MiB segments, 0x40.. would be missing between them.
    (wal / "000000010000000100000000").unlink()
    _segment(wal, "000000010000000100000001", 64 * MiB)
    archive = read_archive(wal, backups, "base-*", None, None)
    assert archive.gap == "000000010000000100000000"


def test_gzipped_history_followed(tmp_path):
    wal, backups = tmp_path / "wal", tmp_path / "backups"
    wal.mkdir()
    for name in ("000000010000000000000002", "000000010000000000000003", "000000020000000000000004"):
        _segment(wal, name, 16 * MiB)
    with gzip.open(wal / "00000002.history.gz", "wt") as handle:
        handle.write("1\t0/4000000\tno recovery target specified\n")
    (wal / "000000010000000000000004.partial").write_bytes(b"")
    _base_backup(backups, "0/2000028")
    archive = read_archive(wal, backups, "base-*", None, None)
    assert archive.timeline == 2 and archive.gap is None and archive.segments_checked == 3
    assert any("1 .partial file(s)" in note for note in archive.notes)


def test_unreadable_history_names_it(tmp_path):
    wal, backups = tmp_path / "wal", tmp_path / "backups"
    wal.mkdir()
    _segment(wal, "000000010000000000000002", 16 * MiB)
    (wal / "00000002.history").write_text("not a history\n")
    _base_backup(backups, "0/2000028")
    with pytest.raises(BackupSourceError, match=f"{wal}/00000002.history is not a history file"):
        read_archive(wal, backups, "base-*", None, None)


@pytest.mark.parametrize("line,expected", [
    ("STOP TIME: 2026-12-02 15:50:01 UTC", datetime(2026, 12, 2, 15, 50, 1, tzinfo=timezone.utc)),
    ("STOP TIME: 2026-12-02 15:50:01 GMT", datetime(2026, 12, 2, 15, 50, 1, tzinfo=timezone.utc)),
    ("STOP TIME: 2026-12-02 16:50:01 +01", datetime(2026, 12, 2, 15, 50, 1, tzinfo=timezone.utc)),
    ("STOP TIME: 2026-12-02 10:20:01 -0530", datetime(2026, 12, 2, 15, 50, 1, tzinfo=timezone.utc)),
    ("STOP TIME: 2026-12-02 16:50:01 CET", None),  # an abbreviation: not guessed
    ("START TIME: 2026-12-02 15:50:01 UTC", None),
])
def test_stop_time_zones(line, expected):
    text = f"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n{line}\nSTOP TIMELINE: 1\n"
    stopped = _stop_time(text)
    assert stopped == expected
    if expected is not None:
        assert stopped.utcoffset() is not None


def test_abbreviated_zone_falls_back_to_the_backup_files_time(tmp_path):
    wal, backups = tmp_path / "wal", tmp_path / "backups"
    wal.mkdir()
    for name in ("000000010000000000000002", "000000010000000000000003"):
        _segment(wal, name, 16 * MiB)
    backup_file = wal / "000000010000000000000002.00000028.backup"
    backup_file.write_text("START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n"
                           "STOP TIME: 2026-12-02 16:50:01 CET\n")
    archived = datetime(2026, 12, 2, 15, 50, 9, tzinfo=timezone.utc)
    os.utime(backup_file, (archived.timestamp(), archived.timestamp()))
    _base_backup(backups, "0/2000028")
    archive = read_archive(wal, backups, "base-*", None, None)
    assert archive.window_start == archived
    assert any("the modification time of 000000010000000000000002.00000028.backup" in n for n in archive.notes)


def test_the_recovery_timelines_history_and_segment_size_reach_the_live_comparison(tmp_path):
    """wal_continuity locates where recovery leaves a server's lower timeline from the
    folder's history and segment size: with 64 MiB segments the switch 0/FC000000 is in
    segment 0x3F (as 16 MiB segments it would be 0xFC, and timeline 1's 3F would pass as
    archived before the fork)."""
    from exporter.checks.wal_continuity import compare_live

    wal, backups = tmp_path / "wal", tmp_path / "backups"
    wal.mkdir()
    for name in ("00000001000000000000003E", "00000001000000000000003F", "00000002000000000000003F",
                 "000000020000000100000000"):
        _segment(wal, name, 64 * MiB)
    (wal / "00000002.history").write_text("1\t0/FC000000\tno recovery target specified\n")
    _base_backup(backups, "0/F8000028")
    archive = read_archive(wal, backups, "base-*", None, None)
    assert (archive.timeline, archive.gap, archive.segment_size) == (2, None, 64 * MiB)
    assert archive.as_dict()["history"] == [{"parent": 1, "switch": "0/FC000000"}]
    live, problem = compare_live(archive, "00000001000000000000003F", None)
    assert "the archive's timeline 2 forks off the server's timeline 1 at 0/FC000000" in problem
    live, problem = compare_live(archive, "00000001000000000000003E", None)
    assert problem is None and live["before_fork"] is True
