"""wal_continuity judges a WAL folder's content, not only its names: real PostgreSQL 15
clusters archive into folders next to real pg_basebackups, and then the folder of
ANOTHER cluster (the same names, another system identifier), a torn newest .gz, empty
files named as segments, a misnamed segment, and a 64 MiB-segment cluster archived
compressed only (the size from the header)."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from exporter.backups.wal_folder import read_archive
from exporter.backups.wal_header import HEADER_SIZE, MAGIC, read_header
from exporter.pgtools import find_tool, run_tool
from tests.checks.test_wal_continuity import (
    PG15_BIN,
    SEGMENT_NAME_LENGTH,
    _copy_cmd,
    _gzip_cmd,
    _need_pg15,
    _private_dir,
    _restored_cluster,
    _unprivileged_user,
    run,
    segments,
)
from tests.conftest import make_target
from tests.pgcluster import Cluster

MiB = 1024 * 1024


class _SegsizeCluster(Cluster):
    """A cluster initialised with another WAL segment size (initdb --wal-segsize)."""

    def __init__(self, wal_segsize_mb: int, **kwargs) -> None:
        self.wal_segsize_mb = wal_segsize_mb
        super().__init__(**kwargs)

    def _run(self, *argv) -> None:
        if argv and argv[0] == self.initdb.path:
            argv = (*argv, f"--wal-segsize={self.wal_segsize_mb}")
        super()._run(*argv)


class Archiving:
    """A PG15 cluster archiving into plain/ (cp) and gz/ (gzip), one base backup in backups/."""

    def __init__(self, switches: int, wal_segsize_mb: int | None = None) -> None:
        _need_pg15()
        self.root = _private_dir("pgbv-walid-")
        self.plain, self.gz, self.backups = self.root / "plain", self.root / "gz", self.root / "backups"
        for folder in (self.plain, self.gz, self.backups):
            folder.mkdir()
            os.chmod(folder, 0o755)
            if _unprivileged_user():
                shutil.chown(folder, _unprivileged_user())
        settings = {"archive_mode": "on", "wal_level": "replica",
                    "archive_command": f"{_copy_cmd(self.plain)} && {_gzip_cmd(self.gz)}"}
        if wal_segsize_mb is None:
            self.cluster = Cluster(bin_dir=PG15_BIN, settings=settings)
        else:
            self.cluster = _SegsizeCluster(wal_segsize_mb, bin_dir=PG15_BIN, settings=settings)
        self.cluster.start()
        self.execute("CREATE TABLE t (x int)")
        self.switch()
        self.base = self.backups / "base-1"
        tool = find_tool("pg_basebackup", 150000, pg_bin_dir=PG15_BIN)
        run_tool(tool, ["-D", str(self.base), "-Fp", "-X", "stream", "-c", "fast", "-d", self.cluster.dsn()], timeout=120)
        for _ in range(switches):
            self.switch()
        (self.sysid,), = self.execute("SELECT system_identifier FROM pg_control_system()")

    def execute(self, *statements: str):
        with psycopg.connect(self.cluster.dsn(), autocommit=True) as conn:
            rows = None
            for statement in statements:
                cur = conn.execute(statement)
                rows = cur.fetchall() if cur.description else None
            return rows

    def switch(self) -> str:
        (segment,), = self.execute("INSERT INTO t SELECT generate_series(1, 1000)",
                                   "SELECT pg_walfile_name(pg_switch_wal())")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            (last,), = self.execute("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
            if last[:SEGMENT_NAME_LENGTH] >= segment:
                return segment
            time.sleep(0.1)
        raise AssertionError(f"segment {segment} not archived within 60 s")

    def target(self, wal_path: Path):
        return make_target(self.cluster.dsn(), checks={}, backup={
            "source": "directory", "path": str(self.backups), "pattern": "base-*", "min_size_mb": 0,
            "wal_path": str(wal_path)})

    def copy(self, folder: Path) -> Path:
        copy = self.root / f"copy-{len(list(self.root.iterdir()))}-{folder.name}"
        shutil.copytree(folder, copy)
        return copy

    def destroy(self) -> None:
        self.cluster.destroy()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def ours():
    built = Archiving(switches=4)
    yield built
    built.destroy()


@pytest.fixture(scope="module")
def theirs():
    # Another cluster, the same history: its segment names cover ours and go further.
    built = Archiving(switches=8)
    yield built
    built.destroy()


def test_healthy_archive_passes_with_its_identifier_checked(ours):
    for folder in (ours.plain, ours.gz):
        result = run(ours.target(folder))
        assert result.outcome == "pass", result.message
        wal = result.data["wal"]
        assert "identity_problem" not in wal
        assert any(n.startswith(f"system identifier {ours.sysid} (its global/pg_control of base-1) in the headers of "
                                f"{segments(folder)[-1]}") and "(start)" in n for n in wal["notes"]), wal["notes"]
    assert read_header(str(ours.plain / segments(ours.plain)[-1])).version == "PostgreSQL 15"


def test_another_clusters_archive_fails_naming_both_identifiers(ours, theirs):
    assert ours.sysid != theirs.sysid
    # The trial's false pass: their names cover our backup's start and our server's last
    # archived segment, so a check by name passed, and the live comparison with it.
    assert set(segments(ours.plain)) < set(segments(theirs.plain))
    for folder, suffix in ((theirs.plain, ""), (theirs.gz, ".gz")):
        started = time.monotonic()
        result = run(ours.target(folder))
        elapsed = time.monotonic() - started
        print(f"\nanother cluster's WAL ({elapsed:.3f}s): {result.message}")
        assert result.outcome == "fail", result.message
        newest = segments(theirs.plain)[-1]
        start = result.data["wal"]["checked_from"]
        assert result.message.startswith(
            f"WAL folder {folder} holds another cluster's WAL: {newest}{suffix} (the newest segment) by system "
            f"identifier {theirs.sysid} and {start}{suffix} (the start segment) by system identifier {theirs.sysid}, "
            f"but base backup base-1 is of system identifier {ours.sysid} (its global/pg_control)"), result.message
        assert result.observed == "not this cluster's WAL"
        assert result.data["wal"]["recovery_window"]["start"] is None


def test_one_foreign_segment_in_our_archive_fails(ours, theirs):
    copy = ours.copy(ours.plain)
    newest = segments(copy)[-1]
    theirs_next = next(s for s in segments(theirs.plain) if s > newest)
    shutil.copy(theirs.plain / theirs_next, copy / theirs_next)
    result = run(ours.target(copy))
    assert result.outcome == "fail", result.message
    assert f"holds another cluster's WAL: {theirs_next} (the newest segment) by system identifier {theirs.sysid}, " \
           f"but base backup base-1 is of system identifier {ours.sysid}" in result.message


def test_misnamed_segment_fails(ours):
    copy = ours.copy(ours.plain)
    newest = segments(copy)[-1]
    following = f"{newest[:16]}{int(newest[16:], 16) + 1:08X}"
    shutil.copy(copy / newest, copy / following)  # our WAL, under the next segment's name
    result = run(ours.target(copy))
    assert result.outcome == "fail", result.message
    assert f"{following}'s header places it at 0/{int(newest[16:], 16) * 16 * MiB:X}, its name at " \
           f"0/{int(following[16:], 16) * 16 * MiB:X}: a misnamed segment" in result.message


@pytest.mark.parametrize("damage", ["truncated", "empty", "not gzip"])
def test_torn_newest_gz_is_not_held(ours, damage):
    copy = ours.copy(ours.gz)
    newest = segments(copy)[-1]
    path = copy / f"{newest}.gz"
    if damage == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[:20])  # the gzip header and a few bytes of the deflate stream
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(b"x" * 1000)
    result = run(ours.target(copy))
    # The server archived it, the folder does not hold it readable: the silent-drop failure.
    assert result.outcome == "fail", result.message
    wal = result.data["wal"]
    assert wal["last"] == segments(copy)[-2] and wal["gap"] is None
    assert f"the server's pg_stat_archiver reports {newest} archived" in result.message
    assert any(n.startswith("not counted, the newest segment(s) hold no readable WAL page header (a torn copy): "
                            f"{newest}.gz") for n in wal["notes"]), wal["notes"]


def test_empty_files_named_as_segments_fail(ours):
    fake = ours.root / "fake"
    fake.mkdir()
    start = run(ours.target(ours.gz)).data["wal"]["checked_from"]
    first = int(start[16:], 16)
    count = 5000
    for number in range(first, first + count):
        (fake / f"{start[:8]}{number // 256:08X}{number % 256:08X}.gz").touch()
    started = time.monotonic()
    result = run(ours.target(fake))
    elapsed = time.monotonic() - started
    print(f"\n{count} empty .gz files ({elapsed:.3f}s): {result.message}")
    assert result.outcome == "fail", result.message
    # Not opened one by one down to the start: past 64 unreadable newest ones, the folder is not WAL.
    newest = f"{start[:8]}{(first + count - 1) // 256:08X}{(first + count - 1) % 256:08X}.gz"
    assert f"the newest 64 segments hold no readable WAL page header ({newest} down to " in result.message
    assert "files named as segments that are not WAL" in result.message
    assert f"WAL segment {start} is missing" in result.message  # the start, empty too, is not held
    assert result.data["wal"]["gap"] == start


def test_start_segment_torn_is_the_gap(ours):
    copy = ours.copy(ours.gz)
    start = run(ours.target(copy)).data["wal"]["checked_from"]
    (copy / f"{start}.gz").write_bytes(gzip.compress(b"\0" * 100))  # valid gzip, no WAL inside
    result = run(ours.target(copy))
    assert result.outcome == "fail", result.message
    assert result.data["wal"]["gap"] == start
    assert f"WAL segment {start} is missing" in result.message


@pytest.mark.parametrize("tool", ["zstd", "lz4"])
def test_header_read_through_zstd_and_lz4(ours, tool):
    suffix = "zst" if tool == "zstd" else "lz4"
    binary = shutil.which(tool)
    if binary is None:
        pytest.skip(f"{tool} is not installed (apt-get install {tool})")
    folder = ours.root / f"by-{tool}"
    folder.mkdir()
    for name in segments(ours.plain):
        with open(folder / f"{name}.{suffix}", "wb") as out:
            subprocess.run([binary, "-q", "-c", str(ours.plain / name)], check=True, stdout=out)
    newest = segments(folder)[-1]
    header = read_header(str(next(folder.glob(f"{newest}.*"))))
    assert header.sysid == ours.sysid and header.seg_size == 16 * MiB
    result = run(ours.target(folder))
    assert result.outcome == "pass", result.message
    assert f"segment size 16 MiB, from the first page header of {newest}.{suffix}" in result.data["wal"]["notes"]
    # Cut inside its first frame: the binary fails, the segment is a torn copy.
    compressed = folder / f"{newest}.{suffix}"
    compressed.write_bytes(compressed.read_bytes()[:12])
    torn = run(ours.target(folder))
    assert torn.outcome == "fail" and torn.data["wal"]["last"] == segments(folder)[-2], torn.message
    assert any(n.startswith(f"not counted, the newest segment(s) hold no readable WAL page header (a torn copy): "
                            f"{newest}.{suffix} ({tool} cannot decompress it: ") for n in torn.data["wal"]["notes"]), \
        torn.data["wal"]["notes"]


def test_64_mib_segments_compressed_only_size_from_the_header():
    started = time.monotonic()
    big = Archiving(switches=3, wal_segsize_mb=64)
    setup = time.monotonic() - started
    try:
        held = segments(big.gz)
        assert not any(big.gz.glob("0*[0-9A-F]"))  # compressed only
        result = run(big.target(big.gz))
        print(f"\n64 MiB cluster (setup {setup:.1f}s): {result.message}")
        assert result.outcome == "pass", result.message
        wal = result.data["wal"]
        assert f"segment size 64 MiB, from the first page header of {held[-1]}.gz" in wal["notes"]
        assert wal["last"] == held[-1] and wal["gap"] is None
        # Read as 16 MiB segments the 64 MiB positions would leave three gaps between each.
        assert wal["segments_checked"] == int(held[-1][16:], 16) - int(wal["checked_from"][16:], 16) + 1
        header = read_header(str(big.gz / f"{held[-1]}.gz"))
        assert header.seg_size == 64 * MiB and header.sysid == big.sysid
    finally:
        big.destroy()


def test_header_layout_matches_a_real_segment(ours):
    # The offsets pgbv reads, against the server's own answer for the same segment.
    newest = segments(ours.plain)[-1]
    data = (ours.plain / newest).read_bytes()[:HEADER_SIZE]
    magic, info, tli, pageaddr = struct.unpack_from("<HHIQ", data)
    assert MAGIC[magic] == 15 and info & 0x0002 and tli == 1
    assert pageaddr == int(newest[8:16], 16) * 2 ** 32 + int(newest[16:], 16) * 16 * MiB
    header = read_header(str(ours.plain / newest))
    assert (header.sysid, header.seg_size, header.blcksz) == (ours.sysid, 16 * MiB, 8192)
    direct = read_archive(ours.plain, ours.backups, "base-*", None, None)
    assert direct.identity_problem is None and direct.last == newest


def test_new_timelines_first_segment_carries_its_parents_header():
    """A promoted server's first segment on timeline 2 starts with a copy of timeline
    1's (header included): its older timeline is right, not a misnamed segment."""
    world = Archiving(switches=2)
    restored = None
    try:
        # Archive recovery alone ends on a segment boundary (the last archived segment ends
        # in a switch): the unarchived, half-written segment in pg_wal moves the switch
        # point inside a segment, which is what makes PostgreSQL copy its start.
        (current,), = world.execute("INSERT INTO t SELECT generate_series(1, 1000)",
                                    "SELECT pg_walfile_name(pg_current_wal_lsn())")
        world.cluster.stop()
        restored = _restored_cluster(world.base, world.plain)
        shutil.copy(world.cluster.data / "pg_wal" / current, restored.data / "pg_wal" / current)
        if restored.user:
            shutil.chown(restored.data / "pg_wal" / current, restored.user)
        restored.start()
        deadline = time.monotonic() + 60
        while True:
            with psycopg.connect(restored.dsn(), autocommit=True) as conn:
                if conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,):
                    (segment,), = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchall()
                    break
            assert time.monotonic() < deadline, "the restored copy did not end recovery"
            time.sleep(0.2)
        while not (world.plain / segment).exists():
            assert time.monotonic() < deadline, f"{segment} not archived"
            time.sleep(0.1)
        tl2_first = min(s for s in segments(world.plain) if s.startswith("00000002"))
        assert segment == tl2_first == segments(world.plain)[-1]
        header = read_header(str(world.plain / tl2_first))
        assert header.timeline == 1 and header.sysid == world.sysid  # the copied page
        target = make_target(restored.dsn(), checks={}, backup={
            "source": "directory", "path": str(world.backups), "pattern": "base-*", "min_size_mb": 0,
            "wal_path": str(world.plain)})
        result = run(target)
        assert result.outcome == "pass", result.message
        assert result.data["wal"]["last"] == tl2_first and result.data["wal"]["timeline"] == 2
    finally:
        if restored is not None:
            restored.destroy()
        world.destroy()


def test_segment_renamed_onto_a_new_timeline_is_misnamed(ours):
    """A timeline switched at a segment's start begins a fresh segment (its header of
    the new timeline): timeline 1's file renamed there is not what recovery needs."""
    copy = ours.copy(ours.plain)
    newest = segments(copy)[-1]
    shutil.copy(copy / newest, copy / f"00000002{newest[8:]}")
    (copy / "00000002.history").write_text(f"1\t0/{int(newest[16:], 16) * 16 * MiB:X}\tno recovery target specified\n")
    result = run(ours.target(copy))
    assert result.outcome == "fail", result.message
    assert f"00000002{newest[8:]}'s header is of timeline 1, its name of timeline 2: a misnamed segment" \
        in result.message


def test_tar_format_backup_identifier_from_its_base_tar(ours, theirs):
    # Last in this file: the backup adds segments to ours' archive.
    backups = ours.root / "tar-backups"
    backups.mkdir()
    tool = find_tool("pg_basebackup", 150000, pg_bin_dir=PG15_BIN)
    run_tool(tool, ["-D", str(backups / "base-1"), "-Ft", "-X", "fetch", "-c", "fast", "-d", ours.cluster.dsn()],
             timeout=120)
    ours.switch()

    def target(wal: Path):
        return make_target(ours.cluster.dsn(), checks={}, backup={
            "source": "directory", "path": str(backups), "pattern": "base-*", "min_size_mb": 0, "wal_path": str(wal)})

    assert not (backups / "base-1" / "global").exists() and (backups / "base-1" / "base.tar").exists()
    healthy = run(target(ours.plain))
    assert healthy.outcome == "pass", healthy.message
    assert any(n.startswith(f"system identifier {ours.sysid} (global/pg_control in its base.tar of base-1)")
               for n in healthy.data["wal"]["notes"]), healthy.data["wal"]["notes"]
    foreign = run(target(theirs.plain))
    assert foreign.outcome == "fail", foreign.message
    assert f"but base backup base-1 is of system identifier {ours.sysid} (global/pg_control in its base.tar)" \
        in foreign.message
