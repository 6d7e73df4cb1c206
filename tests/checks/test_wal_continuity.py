"""wal_continuity against real archives: a PostgreSQL 15 whose archive_command copies
(and, separately, gzips) its WAL into a folder next to a real pg_basebackup, rows
written over several WAL switches; then segments removed, archiving stopped or made
to drop, a timeline switch by a promoted restored copy, an unreadable folder and an
unreachable target."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest

from exporter.backups.directory import DirectoryBackupSource
from exporter.checks.wal_continuity import CHECK
from exporter.config import TargetConfig
from exporter.pgtools import find_tool, run_tool
from exporter.verify import verify_target
from tests.checks.helpers import check_once
from tests.conftest import make_target
from tests.pgcluster import Cluster, _unprivileged_user

PG15_BIN = Path("/usr/lib/postgresql/15/bin")
SEGMENT_NAME_LENGTH = 24


def _need_pg15() -> None:
    if not (PG15_BIN / "initdb").exists():
        pytest.skip(f"no PostgreSQL 15 server binaries in {PG15_BIN} (apt-get install postgresql-15)")


def _private_dir(prefix: str) -> Path:
    """A folder the cluster's unprivileged user can write (archive_command runs as it)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(path, 0o755)
    user = _unprivileged_user()
    if user:
        shutil.chown(path, user)
    return path


def _copy_cmd(folder: Path) -> str:
    # The documented example (docs/backup-sources.md): never overwrite, copy under a
    # temporary name and rename, so that a torn copy never carries a segment's name.
    return f"test ! -f {folder}/%f && cp %p {folder}/%f.tmp && mv {folder}/%f.tmp {folder}/%f"


def _gzip_cmd(folder: Path) -> str:
    return f"test ! -f {folder}/%f.gz && gzip -c %p > {folder}/%f.gz.tmp && mv {folder}/%f.gz.tmp {folder}/%f.gz"


class World:
    """A PG15 cluster archiving into plain/ (cp) and gz/ (gzip), one base backup in backups/."""

    def __init__(self, switches: int = 4) -> None:
        _need_pg15()
        self.root = _private_dir("pgbv-walcheck-")
        self.plain = self.root / "plain"
        self.gz = self.root / "gz"
        self.backups = self.root / "backups"
        for folder in (self.plain, self.gz, self.backups):
            folder.mkdir()
            os.chmod(folder, 0o755)
            if _unprivileged_user():
                shutil.chown(folder, _unprivileged_user())
        self.cluster = Cluster(bin_dir=PG15_BIN, settings={
            "archive_mode": "on", "wal_level": "replica",
            "archive_command": f"{_copy_cmd(self.plain)} && {_gzip_cmd(self.gz)}",
        })
        self.cluster.start()
        self.execute("CREATE TABLE t (x int)")
        self.switch()
        self.base = self.backups / "base-1"
        tool = find_tool("pg_basebackup", 150000, pg_bin_dir=PG15_BIN)
        run_tool(tool, ["-D", str(self.base), "-Fp", "-X", "stream", "-c", "fast", "-d", self.cluster.dsn()], timeout=120)
        for _ in range(switches):
            self.switch()

    def execute(self, *statements: str, dsn: str | None = None):
        with psycopg.connect(dsn or self.cluster.dsn(), autocommit=True) as conn:
            rows = None
            for statement in statements:
                cur = conn.execute(statement)
                rows = cur.fetchall() if cur.description else None
            return rows

    def switch(self, dsn: str | None = None, wait: bool = True) -> str:
        """Rows written, the segment switched; waits until the archiver reports it."""
        (segment,), = self.execute(
            "INSERT INTO t SELECT generate_series(1, 1000)", "SELECT pg_walfile_name(pg_switch_wal())", dsn=dsn
        )
        if wait:
            self.wait_archived(segment, dsn)
        return segment

    def wait_archived(self, segment: str, dsn: str | None = None) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            (last,), = self.execute("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver", dsn=dsn)
            if last[:SEGMENT_NAME_LENGTH] >= segment:
                return
            time.sleep(0.1)
        raise AssertionError(f"segment {segment} not archived within 60 s (last: {last})")

    def target(self, wal_path: Path, dsn: str | None = None, **checks) -> TargetConfig:
        return make_target(
            dsn or self.cluster.dsn(), checks=checks,
            backup={"source": "directory", "path": str(self.backups), "pattern": "base-*", "min_size_mb": 0,
                    "wal_path": str(wal_path)},
        )

    def copy(self, folder: Path) -> Path:
        """A copy of an archive folder to damage (times kept)."""
        copy = Path(tempfile.mkdtemp(prefix="pgbv-walcopy-")) / folder.name
        shutil.copytree(folder, copy)
        return copy

    def destroy(self) -> None:
        self.cluster.destroy()
        shutil.rmtree(self.root, ignore_errors=True)


def run(target: TargetConfig, now: datetime | None = None):
    lookup = DirectoryBackupSource(target.backup).lookup()
    return check_once(CHECK, target, backup=lookup, now=now)


def segments(folder: Path) -> list[str]:
    return sorted(p.name[:SEGMENT_NAME_LENGTH] for p in folder.iterdir()
                  if len(p.name.split(".")[0]) == SEGMENT_NAME_LENGTH and not p.name.endswith((".backup", ".partial")))


@pytest.fixture(scope="module")
def world():
    started = time.monotonic()
    built = World()
    built.setup_seconds = time.monotonic() - started
    yield built
    built.destroy()


def test_healthy_plain_archive_passes(world):
    target = world.target(world.plain)
    started = time.monotonic()
    result = run(target)
    elapsed = time.monotonic() - started
    print(f"\nwal_continuity on a real archive ({elapsed:.3f}s, setup {world.setup_seconds:.1f}s): {result.message}")
    assert result.outcome == "pass", result.message
    wal = result.data["wal"]
    label = (world.base / "backup_label").read_text()
    # The start segment the backup itself names (backup_label's "(file ...)").
    start = label.split("(file ", 1)[1][:SEGMENT_NAME_LENGTH]
    assert wal["checked_from"] == start
    assert wal["last"] == segments(world.plain)[-1]
    assert wal["segments_checked"] == int(wal["last"], 16) - int(start, 16) + 1 >= 5
    assert wal["gap"] is None and wal["timeline"] == 1
    assert f"{wal['segments_checked']} WAL segment(s) present without a gap" in result.message
    assert f"from {start} to {wal['last']}" in result.message
    # The live server's last archived segment is the archive's newest.
    assert wal["live"]["compared"] is True and wal["live"]["held"] is True
    assert "the server's last archived segment" in result.message and "is held in the archive" in result.message
    # The window: from the base backup's STOP TIME (its .backup file) to the newest segment's time.
    stop_line = next(line for p in world.plain.glob("*.backup") for line in p.read_text().splitlines()
                     if line.startswith("STOP TIME:"))
    stopped = datetime.strptime(stop_line[len("STOP TIME: "):-4], "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
    assert stop_line.endswith(" UTC")
    assert datetime.fromisoformat(wal["recovery_window"]["start"]) == stopped
    newest = max(p.stat().st_mtime for p in world.plain.iterdir() if p.name[:SEGMENT_NAME_LENGTH] == wal["last"])
    assert datetime.fromisoformat(wal["recovery_window"]["end"]).timestamp() == pytest.approx(newest)
    assert any("16 MiB, the size of its uncompressed segments" in n for n in wal["notes"])


def test_healthy_gzip_archive_passes(world):
    result = run(world.target(world.gz))
    assert result.outcome == "pass", result.message
    wal = result.data["wal"]
    assert wal["gap"] is None and wal["last"] == segments(world.gz)[-1] == segments(world.plain)[-1]
    assert wal["segments_checked"] >= 5
    # Compressed segments only: the size is read from the newest one's first page header.
    assert f"segment size 16 MiB, from the first page header of {wal['last']}.gz" in wal["notes"]
    assert wal["recovery_window"]["start"] is not None  # the .backup file, gzipped, still read


def test_missing_segment_in_the_middle_fails_naming_it(world):
    for folder, suffix in ((world.plain, ""), (world.gz, ".gz")):
        copy = world.copy(folder)
        try:
            held = segments(copy)
            result = run(world.target(copy))
            assert result.outcome == "pass", result.message
            start = result.data["wal"]["checked_from"]
            after_start = [s for s in held if s > start]
            missing = after_start[len(after_start) // 2]
            (copy / f"{missing}{suffix}").unlink()
            result = run(world.target(copy))
            print(f"\n{folder.name}, {missing} removed: {result.message}")
            assert result.outcome == "fail", result.message
            assert f"WAL segment {missing} is missing from WAL folder {copy}" in result.message
            assert result.data["wal"]["gap"] == missing
            assert result.observed == f"missing {missing}"
            # The recovery window needs a backup that can replay to the end: none can.
            assert result.data["wal"]["recovery_window"]["start"] is None
        finally:
            shutil.rmtree(copy.parent, ignore_errors=True)


def test_backup_start_segment_missing_fails(world):
    copy = world.copy(world.plain)
    try:
        start = run(world.target(copy)).data["wal"]["checked_from"]
        (copy / start).unlink()
        result = run(world.target(copy))
        assert result.outcome == "fail" and f"WAL segment {start} is missing" in result.message
        assert result.data["wal"]["segments_checked"] == 0
    finally:
        shutil.rmtree(copy.parent, ignore_errors=True)


def test_torn_uncompressed_segment_is_not_held(world):
    copy = world.copy(world.plain)
    try:
        last = segments(copy)[-1]
        with open(copy / last, "r+b") as handle:
            handle.truncate(8192)  # a cp cut short, under the segment's own name
        result = run(world.target(copy))
        assert result.outcome == "fail", result.message
        # The newest whole segment is the one before; the server's last archived is the torn one.
        assert "does not hold it" in result.message and last in result.message
        assert any(f"{last} (8192 bytes)" in n for n in result.data["wal"]["notes"])
    finally:
        shutil.rmtree(copy.parent, ignore_errors=True)


def test_old_archive_warns_past_the_limit(world):
    copy = world.copy(world.plain)
    try:
        hours_ago = time.time() - 2 * 3600
        for path in copy.iterdir():
            os.utime(path, (hours_ago, hours_ago))
        result = run(world.target(copy, wal_archiving_max_age_minutes=30))
        assert result.outcome == "warn", result.message
        assert "older than wal_archiving_max_age_minutes 30" in result.message
        assert result.expected == "< 30 min" and result.observed.endswith(" min")
        # Within the limit, or no limit: a pass.
        assert run(world.target(copy, wal_archiving_max_age_minutes=180)).outcome == "pass"
        assert run(world.target(copy)).outcome == "pass"
    finally:
        shutil.rmtree(copy.parent, ignore_errors=True)


def test_stopped_archiving_warns_then_a_silent_drop_fails():
    """Archiving stops (archive_command fails): the archive stops growing and warns past
    the limit while pg_stat_archiver still names a held segment; then archive_command
    becomes /bin/true, which "archives" by dropping: the live comparison fails."""
    world = World(switches=2)
    try:
        target = world.target(world.plain, wal_archiving_max_age_minutes=30)
        assert run(target).outcome == "pass"
        world.execute("ALTER SYSTEM SET archive_command = '/bin/false'", "SELECT pg_reload_conf()")
        time.sleep(0.5)
        world.switch(wait=False)
        # Archived two hours ago, as far as the files tell (no sleeping through the limit).
        hours_ago = time.time() - 2 * 3600
        for path in world.plain.iterdir():
            os.utime(path, (hours_ago, hours_ago))
        stopped = run(target)
        print(f"\narchiving failing: {stopped.message}")
        assert stopped.outcome == "warn", stopped.message
        assert "older than wal_archiving_max_age_minutes 30" in stopped.message
        assert stopped.data["wal"]["live"]["held"] is True  # the server archived nothing since

        world.execute("ALTER SYSTEM SET archive_command = '/bin/true'", "SELECT pg_reload_conf()")
        dropped_segment = world.switch()  # waits until the server counts it archived
        assert dropped_segment not in segments(world.plain)
        dropped = run(target)
        print(f"silent drop: {dropped.message}")
        assert dropped.outcome == "fail", dropped.message
        assert dropped_segment in dropped.message
        assert "archive_command reported success for a segment the archive does not have" in dropped.message
        assert dropped.data["wal"]["live"] == {
            **dropped.data["wal"]["live"], "compared": True, "segment": dropped_segment, "held": False,
        }
        assert dropped.data["wal"]["gap"] is None  # the folder alone looks continuous: only the server tells
    finally:
        world.destroy()


def _restored_cluster(backup: Path, wal: Path) -> Cluster:
    """A copy of the base backup started with restore_command from the WAL folder and no
    standby.signal: it replays the archive to its end and promotes onto timeline 2."""
    cluster = Cluster.__new__(Cluster)
    cluster.pg_ctl = find_tool("pg_ctl", pg_bin_dir=PG15_BIN)
    cluster.user = _unprivileged_user()
    cluster.base = _private_dir("pgbv-walcheck-restored-")
    cluster.data = cluster.base / "data"
    shutil.copytree(backup, cluster.data)
    with open(cluster.data / "postgresql.auto.conf", "a") as conf:
        conf.write(f"restore_command = 'cp {wal}/%f %p'\n")
    (cluster.data / "recovery.signal").touch()
    if cluster.user:
        subprocess.run(["chown", "-R", cluster.user, str(cluster.data)], check=True)
    os.chmod(cluster.data, 0o700)
    return cluster


def test_timeline_switch_follows_the_history_file():
    world = World(switches=3)
    restored = None
    try:
        world.cluster.stop()
        tl1 = segments(world.plain)
        restored = _restored_cluster(world.base, world.plain)
        restored.start()
        dsn = restored.dsn()
        deadline = time.monotonic() + 60
        while world.execute("SELECT pg_is_in_recovery()", dsn=dsn) == [(True,)]:
            assert time.monotonic() < deadline, "the restored copy did not end recovery"
            time.sleep(0.2)
        for _ in range(2):
            world.switch(dsn=dsn)
        assert (world.plain / "00000002.history").exists()
        history = (world.plain / "00000002.history").read_text()
        target = world.target(world.plain, dsn=dsn)
        result = run(target)
        print(f"\ntimeline switch ({history.strip()}): {result.message}")
        assert result.outcome == "pass", result.message
        wal = result.data["wal"]
        assert wal["timeline"] == 2 and wal["last"].startswith("00000002")
        assert wal["checked_from"].startswith("00000001")  # the backup's start, on timeline 1
        assert wal["live"]["held"] is True
        # Timeline 2 starts where the history says: every segment before it from timeline 1.
        tl2_first = min(s for s in segments(world.plain) if s.startswith("00000002"))
        assert wal["segments_checked"] == int(wal["last"][8:], 16) - int(wal["checked_from"][8:], 16) + 1
        assert max(tl1)[8:] <= tl2_first[8:]

        # Timeline 2's first segment missing: recovery cannot cross the switch.
        copy = world.copy(world.plain)
        try:
            (copy / tl2_first).unlink()
            broken = run(world.target(copy, dsn=dsn))
            assert broken.outcome == "fail" and f"WAL segment {tl2_first} is missing" in broken.message
            # A segment of timeline 1 at that position does not stand in for it: past the
            # switch, timeline 1 holds what the old primary wrote, not what recovery replays.
            stand_in = copy / ("00000001" + tl2_first[8:])
            shutil.copy2(world.plain / tl2_first, stand_in)
            assert run(world.target(copy, dsn=dsn)).data["wal"]["gap"] == tl2_first
            stand_in.unlink()
            # Without the history file, recovery to latest stays on timeline 1: said in the notes.
            (copy / "00000002.history").unlink()
            stays = run(world.target(copy, dsn=dsn))
            print(f"history file removed: {stays.message}")
            assert stays.data["wal"]["timeline"] == 1 and stays.data["wal"]["last"] == max(tl1)
            assert any("no 00000002.history" in n for n in stays.data["wal"]["notes"])
            # The promoted server archives on timeline 2: its newest WAL is out of reach.
            assert stays.outcome == "fail", stays.message
            assert "the server archives on timeline 2" in stays.message and "no 00000002.history there" in stays.message
        finally:
            shutil.rmtree(copy.parent, ignore_errors=True)
    finally:
        if restored is not None:
            restored.destroy()
        world.destroy()


def _promoted(world: World, backup: Path, wal: Path) -> Cluster:
    """A restored copy of ``backup`` started on the WAL folder, once it has promoted (it
    inherits the original's archive_command: it archives into the same folders)."""
    restored = _restored_cluster(backup, wal)
    restored.start()
    deadline = time.monotonic() + 60
    while world.execute("SELECT pg_is_in_recovery()", dsn=restored.dsn()) == [(True,)]:
        assert time.monotonic() < deadline, "the restored copy did not end recovery"
        time.sleep(0.2)
    return restored


def test_a_restored_copy_promoted_into_the_archive_fails_naming_the_fork():
    """The DBA trial's false pass: a test restore promoted with archiving left on pushes
    timeline 2 into the production folder while the original keeps archiving timeline 1.
    The folder is continuous along 1 -> 2 (true for the copy); recovery to latest
    follows 2 and loses the original's WAL after the fork, which the live comparison
    catches. The promoted copy as the target (the legitimate switch) still passes."""
    world = World(switches=3)
    restored = None
    try:
        before = world.execute("SELECT last_archived_wal FROM pg_stat_archiver")[0][0]
        restored = _promoted(world, world.base, world.plain)
        for _ in range(2):
            world.switch(dsn=restored.dsn())
        history = (world.plain / "00000002.history").read_text()
        switch = history.split()[1]
        print(f"\nstray timeline ({history.strip()}), original last archived {before}")

        # The original wrote after the fork but archived nothing since: its write
        # position is past the switch point already.
        world.execute("INSERT INTO t SELECT generate_series(1, 10)")
        early = run(world.target(world.plain))
        print(f"written past the fork, not archived: {early.message}")
        assert early.outcome == "fail", early.message
        assert f"the archive's timeline 2 forks off the server's timeline 1 at {switch}" in early.message
        assert "has written up to" in early.message and early.observed == f"timeline 2 forks off timeline 1 at {switch}"

        # The original archives past the fork: the trial's case, held in the folder and
        # "older" by name than the newest segment, yet never replayed.
        kept = world.switch()
        assert kept.startswith("00000001") and (world.plain / kept).exists()
        result = run(world.target(world.plain))
        print(f"original archived {kept} after the fork: {result.message}")
        assert result.outcome == "fail", result.message
        assert (f"the archive's timeline 2 forks off the server's timeline 1 at {switch} (a restored copy promoted "
                f"with archiving on?)") in result.message
        assert f"follows timeline 2 and never replays the server's WAL after the fork (server archived {kept}" in result.message
        wal = result.data["wal"]
        assert wal["gap"] is None and wal["timeline"] == 2  # the walk alone is continuous along 1 -> 2
        assert wal["live"]["held"] is True and wal["live"]["fork"] == {"timeline": 2, "parent": 1, "switch": switch}
        assert wal["history"] == [{"parent": 1, "switch": switch}]
        # The gzip folder the same.
        assert run(world.target(world.gz)).outcome == "fail"

        # The promoted copy is the server (the failover was meant): recovery to latest is its WAL.
        legit = run(world.target(world.plain, dsn=restored.dsn()))
        print(f"the promoted copy as the server: {legit.message}")
        assert legit.outcome == "pass", legit.message
        assert legit.data["wal"]["live"]["held"] is True and legit.data["wal"]["live"]["segment"].startswith("00000002")

        # Production takes its next base backup, on timeline 1 past the fork: recovery to
        # latest cannot even start from it (PostgreSQL refuses a timeline that is not a
        # child of the backup's), though the walk from its position finds the copy's
        # timeline-2 segments. Judged with the target down too.
        tool = find_tool("pg_basebackup", 150000, pg_bin_dir=PG15_BIN)
        run_tool(tool, ["-D", str(world.backups / "base-2"), "-Fp", "-X", "stream", "-c", "fast",
                        "-d", world.cluster.dsn()], timeout=120)
        world.switch()
        down = world.target(world.plain, dsn=f"host={world.root}/nowhere dbname=postgres user=postgres connect_timeout=2")
        after = verify_target(down, record_result=False).check("wal_continuity")
        print(f"production's base backup after the fork, target down: {after.message}")
        assert after.outcome == "fail", after.message
        assert "base backup base-2 started on timeline 1 at " in after.message
        assert "which timeline 2's history does not pass through at that position: recovery from it to latest" in after.message
        assert after.data["wal"]["live"]["compared"] is False
    finally:
        if restored is not None:
            restored.destroy()
        world.destroy()


def test_a_server_timeline_before_the_fork_or_off_the_history():
    """Where recovery to latest leaves the server's lower timeline, from a real history
    file's switch point: a last archived segment before it (an old primary that stopped
    after a failover, a standby's leftover statistics) is replayed; at or past it, or a
    timeline the history never passes through, is not."""
    from exporter.backups.wal import WalArchive, parse_history
    from exporter.checks.wal_continuity import compare_live

    history = parse_history("1\t0/5000000\tno recovery target specified\n\n2\t0/9000060\tno recovery target specified\n")
    names = frozenset([f"000000010000000000000{n:03X}" for n in range(3, 8)] + [f"000000020000000000000{n:03X}" for n in range(5, 11)]
                      + ["000000030000000000000009", "00000003000000000000000A"])
    archive = WalArchive(where="WAL folder /w", last="00000003000000000000000A", timeline=3, names=names, history=history)

    live, problem = compare_live(archive, "000000020000000000000008", None)
    assert problem is None and live["before_fork"] is True and live["fork"] == {"timeline": 3, "parent": 2, "switch": "0/9000060"}
    # ... unless it is a primary on that timeline that has written past the switch.
    _, problem = compare_live(archive, "000000020000000000000008", None, "0/9000100", "000000020000000000000009")
    assert problem is not None and "has written up to 0/9000100" in problem
    # A position on another timeline (promoted since) is no evidence.
    _, problem = compare_live(archive, "000000020000000000000008", None, "0/B000000", "00000003000000000000000B")
    assert problem is None
    # The switch point's own segment: recovery reads timeline 3's copy of it.
    _, problem = compare_live(archive, "000000020000000000000009", None)
    assert "timeline 3 forks off the server's timeline 2 at 0/9000060" in problem
    # Timeline 1 is left at 0/5000000, for timeline 2.
    _, problem = compare_live(archive, "000000010000000000000005", None)
    assert "the archive's timeline 2 forks off the server's timeline 1 at 0/5000000" in problem
    # Before the fork and not held: dropped, as on the recovery timeline.
    _, problem = compare_live(archive, "000000010000000000000002", None)
    assert "does not hold it" in problem
    # A sibling branch the history never passes through.
    sibling = WalArchive(where="WAL folder /w", last="00000003000000000000000A", timeline=3, names=names,
                         history=history[1:])
    _, problem = compare_live(sibling, "000000010000000000000004", None)
    assert "which is not on the history of timeline 3 (2 → 3)" in problem
    # A source that gives no history: not compared, and not passed as compared either.
    unknown = WalArchive(where="WAL-G wal-verify", last="00000003000000000000000A", timeline=3)
    live, problem = compare_live(unknown, "00000002000000000000000C", None)
    assert problem is None and live["compared"] is False and "not compared" in live["reason"]


def test_unreadable_wal_path_is_an_error(world, tmp_path):
    missing = tmp_path / "no-such-folder"
    result = run(world.target(missing))
    assert result.outcome == "error", result.message
    assert f"cannot read WAL folder {missing} (backup.wal_path): No such file or directory" in result.message
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("")
    result = run(world.target(not_a_folder))
    assert result.outcome == "error" and "Not a directory" in result.message
    if os.geteuid() != 0:  # root reads a folder whatever its mode
        locked = tmp_path / "locked"
        locked.mkdir(mode=0)
        result = run(world.target(locked))
        assert result.outcome == "error" and "Permission denied" in result.message


def test_unreachable_target_is_still_judged(world):
    target = world.target(world.plain, dsn=f"host={world.root}/nowhere dbname=postgres user=postgres connect_timeout=2")
    result = verify_target(target, record_result=False)
    assert result.unreachable is not None
    check = result.check("wal_continuity")
    assert check is not None and check.outcome == "pass", check and check.message
    assert "not compared with the server: target unreachable" in check.message
    assert check.data["wal"]["live"]["compared"] is False
    # Hoisted for the metrics: verification_details->'wal'->'recovery_window'.
    window = result.facts["wal"]["recovery_window"]
    assert window["start"] is not None and window["end"] is not None
    assert datetime.fromisoformat(window["start"]) < datetime.fromisoformat(window["end"])


def test_dump_backups_with_wal_path_are_refused(world, tmp_path):
    backups = tmp_path / "dumps"
    backups.mkdir()
    tool = find_tool("pg_dump", 150000, pg_bin_dir=PG15_BIN)
    run_tool(tool, ["-Fc", "-f", str(backups / "app.dump"), "-d", world.cluster.dsn()], timeout=120)
    target = make_target(world.cluster.dsn(), checks={}, backup={
        "source": "directory", "path": str(backups), "min_size_mb": 0, "wal_path": str(world.plain)})
    result = run(target)
    assert result.outcome == "error", result.message
    assert "holds no pg_basebackup folder" in result.message and "pg_dump custom" in result.message
    assert "unset wal_path for dump backups" in result.message


def test_no_base_backup_fails(world, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    target = make_target(world.cluster.dsn(), checks={}, backup={
        "source": "directory", "path": str(empty), "pattern": "base-*", "wal_path": str(world.plain)})
    result = run(target)
    assert result.outcome == "fail" and "no backup found" in result.message


def test_applies_only_with_wal_path(world):
    assert CHECK.applies(world.target(world.plain))
    without = make_target(world.cluster.dsn(), checks={}, backup={"source": "directory", "path": str(world.backups)})
    assert not CHECK.applies(without)
    assert not CHECK.applies(make_target(world.cluster.dsn(), checks={}))


def test_manifest_start_matches_backup_label(world):
    manifest = json.loads((world.base / "backup_manifest").read_text())
    source = DirectoryBackupSource(world.target(world.plain).backup)
    archive = source.wal_archive(source.latest())
    first_range = manifest["WAL-Ranges"][0]
    high, low = first_range["Start-LSN"].split("/")
    position = ((int(high, 16) << 32) | int(low, 16)) // (16 * 1024 * 1024)
    assert archive.checked_from == f"{first_range['Timeline']:08X}{position >> 8:08X}{position & 0xFF:08X}"
    assert archive.holds(archive.last) is True and archive.holds("0000000100000000000000FE") is False
    assert archive.last_archived_at is not None and archive.last_archived_at <= datetime.now(timezone.utc) + timedelta(seconds=5)


def test_recorded_recovery_window_is_where_the_metrics_read_it(world):
    from exporter.migrate import migrate

    target = world.target(world.plain)
    migrate(target)
    result = verify_target(target)
    assert result.check("wal_continuity").outcome == "pass"
    (start, end, gap), = world.execute(
        "SELECT verification_details->'wal'->'recovery_window'->>'start',"
        "       verification_details->'wal'->'recovery_window'->>'end',"
        "       verification_details->'wal'->>'gap'"
        "  FROM backup_verification_log ORDER BY verified_at DESC LIMIT 1"
    )
    assert (start, end) == (result.facts["wal"]["recovery_window"]["start"], result.facts["wal"]["recovery_window"]["end"])
    assert datetime.fromisoformat(start) < datetime.fromisoformat(end) and gap is None


def test_window_starts_at_the_oldest_backup_that_replays_to_the_end():
    """Two base backups (the newer in tar format: its start comes from backup_manifest
    alone). A segment lost between their starts leaves the newer one's range whole (a
    pass) and moves the recovery window's start to the newer backup's end."""
    world = World(switches=2)
    try:
        tool = find_tool("pg_basebackup", 150000, pg_bin_dir=PG15_BIN)
        newer = world.backups / "base-2"
        time.sleep(1.1)  # STOP TIME is in whole seconds: the two backups' ends must differ
        run_tool(tool, ["-D", str(newer), "-Ft", "-X", "stream", "-c", "fast", "-d", world.cluster.dsn()], timeout=120)
        assert not (newer / "backup_label").exists() and (newer / "backup_manifest").exists()
        world.switch()
        world.switch()
        result = run(world.target(world.plain))
        assert result.outcome == "pass", result.message
        wal = result.data["wal"]
        first_backup_start = (world.base / "backup_label").read_text().split("(file ", 1)[1][:SEGMENT_NAME_LENGTH]
        assert wal["checked_from"] > first_backup_start  # the newer backup's start
        backup_files = sorted(world.plain.glob("*.backup"))
        assert len(backup_files) == 2
        assert any(f"end of base backup base-1 (STOP TIME of {backup_files[0].name})" in n for n in wal["notes"])
        window_with_both = datetime.fromisoformat(wal["recovery_window"]["start"])

        between = [s for s in segments(world.plain) if first_backup_start < s < wal["checked_from"]]
        assert between, segments(world.plain)
        (world.plain / between[0]).unlink()
        result = run(world.target(world.plain))
        assert result.outcome == "pass", result.message  # the newest backup still replays to the end
        wal = result.data["wal"]
        assert any(f"end of base backup base-2 (STOP TIME of {backup_files[1].name})" in n for n in wal["notes"])
        assert datetime.fromisoformat(wal["recovery_window"]["start"]) > window_with_both
    finally:
        world.destroy()


def test_a_server_on_a_timeline_the_source_does_not_list_is_not_compared():
    """Barman's catalogue lists the backup's own timeline only: a server promoted since
    archives on a later one, which is no evidence against the archive (it failed as
    'no 00000002.history there' before)."""
    from exporter.backups.wal import WalArchive
    from exporter.checks.wal_continuity import compare_live

    names = frozenset({"000000010000000000000004", "000000010000000000000005"})
    listed_only = WalArchive(where="Barman server pg", last="000000010000000000000005", timeline=1, names=names,
                             later_timelines_unlisted=True)
    live, problem = compare_live(listed_only, "000000020000000000000007", None)
    assert problem is None and live["compared"] is False and "lists timeline 1 only" in live["reason"]
    # A source that lists every timeline it follows: the same server is a failure.
    follows = WalArchive(where="WAL folder /w", last="000000010000000000000005", timeline=1, names=names)
    live, problem = compare_live(follows, "000000020000000000000007", None)
    assert problem is not None and "no 00000002.history there" in problem
