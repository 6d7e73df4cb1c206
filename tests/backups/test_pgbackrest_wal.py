"""The pgBackRest source's WAL archive (wal_continuity, the recovery window): a real
repository fed by a throwaway PostgreSQL 15 over several WAL switches, healthy and
with a segment deleted from a copy, and a restored copy promoted into the same
repository (a stray timeline); stand-ins (recorded output of pgBackRest 2.45) for the
listing's traps and for timelines."""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest

from exporter.backups.base import BackupSourceError
from exporter.backups.pgbackrest import (
    PgBackRestSource, archive_contents, judge_verify, parse_info, parse_repo_ls, parse_verify,
)
from exporter.backups.wal import Branch, Segment, parse_segment
from exporter.backups.wal_listing import BackupWal, continuity, infer_segment_size
from exporter.checks.wal_continuity import LIVE_QUERY, compare_live
from tests.backups.test_pgbackrest import (
    FULL, INCR, INFO_FULL_INCR, PGBACKREST, STANZA, VERIFY, Repo, _archiving_cluster, _private_dir, config,
)
from tests.pgcluster import Cluster, _unprivileged_user

SWITCHES = 6

# `pgbackrest --stanza=demo repo-ls archive/demo/15-1 --recurse --output=json` of
# pgBackRest 2.45 on a repository with a full and an incremental backup and three WAL
# switches between them (captured here, 2026-12-02): "." is the folder itself, a
# "path" per timeline+log folder, ".backup" files next to the segments.
REPO_LS = (
    '{".":{"type":"path"},"0000000100000000":{"type":"path"},'
    '"0000000100000000/000000010000000000000001-2e055249721141cfce02490b46f71c11d84a2068.gz":{"type":"file","size":1396816,"time":1796226491},'
    '"0000000100000000/000000010000000000000002-4b81446a30a5bf015c32d8d65bf542a2bde3c87c.gz":{"type":"file","size":16461,"time":1796226494},'
    '"0000000100000000/000000010000000000000002.00000028.backup":{"type":"file","size":371,"time":1796226494},'
    '"0000000100000000/000000010000000000000003-f5385146d6c305018f90759fc9244288cc9c628e.gz":{"type":"file","size":59231,"time":1796226494},'
    '"0000000100000000/000000010000000000000004-f43cb9fddf6d1881f9cbf00b4150a35b82d91329.gz":{"type":"file","size":31641,"time":1796226494},'
    '"0000000100000000/000000010000000000000005-6b4a843a2778c2f6a1d750e56406fd1b47cbf5f3.gz":{"type":"file","size":31460,"time":1796226494},'
    '"0000000100000000/000000010000000000000006-8eaf66551bfea16499dc9766858cea4fd9ba5812.gz":{"type":"file","size":16394,"time":1796226495},'
    '"0000000100000000/000000010000000000000007-c8edb3db0b31db5da4ffe291f81b98c62381467c.gz":{"type":"file","size":16460,"time":1796226496},'
    '"0000000100000000/000000010000000000000007.00000028.backup":{"type":"file","size":371,"time":1796226496}}'
)


def _sha(n: int) -> str:
    return f"{n:040x}"


# --- parsing: the listing's traps ---------------------------------------------------------


def test_the_recorded_listing_holds_segments_not_backup_files():
    held, histories = archive_contents(parse_repo_ls(REPO_LS, "archive/demo/15-1"), "x")
    assert sorted(held) == [f"0000000100000000000000{n:02X}" for n in range(1, 8)]
    assert held["000000010000000000000007"] == datetime(2026, 12, 2, 15, 48, 16, tzinfo=timezone.utc)
    assert histories == []


@pytest.mark.parametrize("text, said", [
    ("", "printed nothing"),
    ("not json", "did not print JSON"),
    ("[]", "printed a list, expected an object of files"),
    ('{"x": {"size": 1}}', "entry 'x' is an object without a type"),
])
def test_a_listing_of_the_wrong_shape_is_an_error(text, said):
    with pytest.raises(BackupSourceError, match=said):
        parse_repo_ls(text, "archive/demo/15-1")


@pytest.mark.parametrize("per_log, names", [
    (256, ["0000000100000000000000FF", "000000010000000100000000"]),  # 16 MiB
    (64, ["00000001000000000000003F", "000000010000000100000000"]),  # 64 MiB
    (4096, ["000000010000000000000FFF", "000000010000000100000000"]),  # 1 MiB
    (256, ["000000010000000000000005"]),  # no log crossed: the default
    (2048, ["0000000100000000000007A1"]),  # no log crossed, but no 16 MiB name either
])
def test_the_segment_size_is_inferred_from_the_names(per_log, names):
    assert infer_segment_size(names) == 0x100000000 // per_log


def test_a_missing_tail_in_one_log_does_not_shrink_the_segment_size():
    names = ["0000000100000000000000FF", "000000010000000100000000", "00000001000000010000007F", "000000010000000200000000"]
    assert infer_segment_size(names) == 16 * 1024 * 1024


# --- the source through a stand-in (several commands) ---------------------------------------


def _stand_in(tmp_path: Path, answers: dict[str, str]) -> Path:
    """A pgbackrest that answers each command (info, repo-ls, repo-get) with its text and
    records every call's arguments."""
    for command, text in answers.items():
        (tmp_path / f"{command}.out").write_text(text)
    script = tmp_path / "pgbackrest"
    script.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$*" >> "{tmp_path}/calls"\n'
        "for a in \"$@\"; do case \"$a\" in info|repo-ls|repo-get) "
        f'cat "{tmp_path}/$a.out"; exit 0;; esac; done\nexit 99\n'
    )
    script.chmod(0o755)
    return script


def _listing(entries: dict[str, int]) -> str:
    """A repo-ls answer holding these files (relative path -> time)."""
    data = {".": {"type": "path"}}
    for path, when in entries.items():
        data[path] = {"type": "file", "size": 100, "time": when}
    return json.dumps(data, separators=(",", ":"))


def _seg(name: str, n: int = 1) -> str:
    return f"{name[:16]}/{name}-{_sha(n)}.gz"


def test_a_healthy_recorded_archive_from_the_newest_backups_start(tmp_path):
    info = parse_info(INFO_FULL_INCR, STANZA)
    source = PgBackRestSource(config(_stand_in(tmp_path, {"repo-ls": REPO_LS})))
    archive = source.wal_archive(info)
    assert (archive.gap, archive.checked_from, archive.last, archive.first) == (
        None, "000000010000000000000004", "000000010000000000000007", "000000010000000000000001")
    assert archive.segments_checked == 4 and archive.timeline == 1
    assert archive.window_start == datetime.fromtimestamp(1795803778, timezone.utc)  # the full's stop
    assert archive.holds("000000010000000000000005") and archive.holds("000000010000000000000008") is False
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls == ["--stanza=demo --repo=1 repo-ls archive/demo/15-1 --recurse --output=json"]


def test_a_segment_missing_in_the_recorded_archive_is_the_gap(tmp_path):
    gone = '"0000000100000000/000000010000000000000005-6b4a843a2778c2f6a1d750e56406fd1b47cbf5f3.gz":{"type":"file","size":31460,"time":1796226494},'
    source = PgBackRestSource(config(_stand_in(tmp_path, {"repo-ls": REPO_LS.replace(gone, "")})))
    archive = source.wal_archive(parse_info(INFO_FULL_INCR, STANZA))
    assert archive.gap == "000000010000000000000005" and archive.segments_checked == 1


def test_the_backups_own_wal_missing_is_the_gap(tmp_path):
    # Only segments older than the newest backup's start: its WAL never arrived.
    listing = _listing({_seg("000000010000000000000001"): 1796226491, _seg("000000010000000000000002"): 1796226494})
    source = PgBackRestSource(config(_stand_in(tmp_path, {"repo-ls": listing})))
    archive = source.wal_archive(parse_info(INFO_FULL_INCR, STANZA))
    assert archive.gap == "000000010000000000000004" and archive.last == "000000010000000000000002"


def test_a_timeline_switch_is_followed_through_its_history_file(tmp_path):
    # Timeline 2 branched off 1 at 0/6000100: recovery reads 1's 04 and 05, then 2's 06 on
    # (1's own 06, archived before the switch, is not needed).
    files = {_seg(f"0000000100000000000000{n:02X}", n): 1796226490 + n for n in (4, 5, 6)}
    files.update({_seg(f"0000000200000000000000{n:02X}", n): 1796226500 + n for n in (6, 7, 8)})
    files["00000002.history"] = 1796226499
    history = "1\t0/6000100\tno recovery target specified\n"
    tmp = tmp_path / "ok"
    tmp.mkdir()
    source = PgBackRestSource(config(_stand_in(tmp, {"repo-ls": _listing(files), "repo-get": history})))
    archive = source.wal_archive(parse_info(INFO_FULL_INCR, STANZA))
    assert (archive.gap, archive.timeline, archive.last, archive.segments_checked) == (None, 2, "000000020000000000000008", 5)
    assert archive.last_archived_at == datetime.fromtimestamp(1796226508, timezone.utc)
    assert "repo-get archive/demo/15-1/00000002.history" in (tmp / "calls").read_text()

    # Timeline 1's 05 gone: the gap is on timeline 1, before the switch.
    del files[_seg("000000010000000000000005", 5)]
    tmp = tmp_path / "gap"
    tmp.mkdir()
    source = PgBackRestSource(config(_stand_in(tmp, {"repo-ls": _listing(files), "repo-get": history})))
    assert source.wal_archive(parse_info(INFO_FULL_INCR, STANZA)).gap == "000000010000000000000005"


def test_a_missing_history_file_is_said_and_the_switch_is_not_crossed(tmp_path):
    files = {_seg("000000010000000000000004"): 1796226494, _seg("000000020000000000000005"): 1796226495}
    source = PgBackRestSource(config(_stand_in(tmp_path, {"repo-ls": _listing(files)})))
    archive = source.wal_archive(parse_info(INFO_FULL_INCR, STANZA))
    assert archive.gap == "000000020000000000000004"
    assert any("00000002.history is missing from the archive" in note for note in archive.notes)


def test_a_stray_timeline_pushed_by_a_promoted_restored_copy_fails_the_live_comparison(tmp_path):
    """The DBA trial's archive (as a stand-in: recorded listing shape, a history file by
    repo-get): a test restore promoted with archiving on pushed 00000003.history (off
    timeline 2 at 0/25000000) and timeline 3 up to ..26, while the live server keeps
    archiving timeline 2 up to ..2C. The walk along 1 -> 2 -> 3 is continuous (true for
    the copy); the live comparison fails naming the fork."""
    files = {_seg("000000010000000000000004", 4): 1796226494}
    files.update({_seg(f"000000020000000000000{n:03X}", n): 1796226500 + n for n in range(5, 0x2D)})
    files.update({_seg(f"000000030000000000000{n:03X}", n): 1796226600 + n for n in (0x25, 0x26)})
    files["00000002.history"] = 1796226499
    files["00000003.history"] = 1796226599
    history = "1\t0/5000000\tno recovery target specified\n\n2\t0/25000000\tno recovery target specified\n"
    source = PgBackRestSource(config(_stand_in(tmp_path, {"repo-ls": _listing(files), "repo-get": history})))
    archive = source.wal_archive(parse_info(INFO_FULL_INCR, STANZA))
    assert (archive.gap, archive.timeline, archive.last) == (None, 3, "000000030000000000000026")
    assert archive.segments_checked == 0x26 - 4 + 1
    assert "repo-get archive/demo/15-1/00000003.history" in (tmp_path / "calls").read_text()
    assert archive.as_dict()["history"] == [{"parent": 1, "switch": "0/5000000"}, {"parent": 2, "switch": "0/25000000"}]
    live, problem = compare_live(archive, "00000002000000000000002C", None)
    assert live["held"] is True  # held, and "older" by name than ..26: what passed before
    assert problem == (
        "the archive's timeline 3 forks off the server's timeline 2 at 0/25000000 (a restored copy promoted with "
        "archiving on?); recovery from pgBackRest archive 15-1 (repo1) to latest follows timeline 3 and never "
        "replays the server's WAL after the fork (server archived 00000002000000000000002C)"
    )
    # The promoted copy as the server: its newest segment is recovery's end.
    assert compare_live(archive, "000000030000000000000026", None)[1] is None

    # A backup the live server took on timeline 2 after the fork: the walk from its start
    # finds the copy's timeline-3 segments, yet recovery to latest cannot start from it.
    held = {name: None for name in archive.names}
    after = continuity("pgBackRest archive 15-1", held, "000000020000000000000026", archive.history)
    assert after.gap is None and after.start_off_history == (
        "the newest backup's start 000000020000000000000026 (0/26000000 on timeline 2) is not on timeline 3's history")
    before = continuity("pgBackRest archive 15-1", held, "000000020000000000000024", archive.history)
    assert before.start_off_history is None and before.gap is None


def test_without_a_backup_the_current_archive_is_listed_and_not_checked(tmp_path):
    source = PgBackRestSource(config(_stand_in(tmp_path, {"info": INFO_FULL_INCR, "repo-ls": REPO_LS})))
    archive = source.wal_archive(None)
    assert archive.last == "000000010000000000000007" and archive.checked_from is None and archive.gap is None
    assert "no backup: continuity not checked" in archive.notes
    # No backup, no window start; the newest segment's time still tells whether archiving goes on.
    assert archive.window_start is None and archive.last_archived_at == datetime.fromtimestamp(1796226496, timezone.utc)


def test_info_lists_every_backups_wal_for_the_window():
    info = parse_info(INFO_FULL_INCR, STANZA)
    assert [(b["label"], b["wal_start"], b["wal_stop"]) for b in info.details["backups_wal"]] == [
        (FULL, "000000010000000000000002", "000000010000000000000002"),
        (INCR, "000000010000000000000004", "000000010000000000000004"),
    ]


def test_a_backup_without_an_archive_start_is_left_out_of_the_window_with_a_note(tmp_path):
    data = json.loads(INFO_FULL_INCR)
    del data[0]["backup"][0]["archive"]
    info = parse_info(json.dumps(data), STANZA)
    archive = PgBackRestSource(config(_stand_in(tmp_path, {"repo-ls": REPO_LS}))).wal_archive(info)
    assert archive.window_start == info.finished_at  # the incremental's own stop: the full cannot be placed
    assert f"pgbackrest info gives no archive start for backup {FULL}: not in the recovery window" in archive.notes


def test_a_failing_listing_is_an_error_with_the_tools_words(tmp_path):
    script = tmp_path / "pgbackrest"
    script.write_text("#!/bin/sh\necho 'ERROR: [055]: unable to list file info for missing path' >&2\nexit 55\n")
    script.chmod(0o755)
    with pytest.raises(BackupSourceError, match=r"pgbackrest repo-ls: exited with code 55: ERROR: \[055\]: unable to list"):
        PgBackRestSource(config(script)).wal_archive(parse_info(INFO_FULL_INCR, STANZA))


# --- verify's WAL part ----------------------------------------------------------------------


def test_verify_warns_of_a_hole_in_the_wal_after_the_backup_naming_it():
    stdout, stderr = VERIFY["good"]
    # As verify logs a hole: a new range starts after it.
    stderr = stderr.replace(
        "DETAIL: archiveId: 15-1, wal start: 000000010000000000000001, wal stop: 000000010000000000000004\n",
        "DETAIL: archiveId: 15-1, wal start: 000000010000000000000001, wal stop: 000000010000000000000005\n"
        "DETAIL: archiveId: 15-1, wal start: 000000010000000000000007, wal stop: 000000010000000000000009\n",
    )
    message = judge_verify(parse_verify(stdout, stderr), parse_info(INFO_FULL_INCR, STANZA), STANZA)
    assert message.startswith(f"warning: WAL 000000010000000000000006 is missing from archive 15-1 after backup {INCR}")
    assert f"backup {INCR} is valid" in message


def test_verify_does_not_warn_of_a_hole_before_the_backup():
    stdout, stderr = VERIFY["good"]
    stderr = stderr.replace(
        "DETAIL: archiveId: 15-1, wal start: 000000010000000000000001, wal stop: 000000010000000000000004\n",
        "DETAIL: archiveId: 15-1, wal start: 000000010000000000000001, wal stop: 000000010000000000000001\n"
        "DETAIL: archiveId: 15-1, wal start: 000000010000000000000003, wal stop: 000000010000000000000004\n",
    )
    message = judge_verify(parse_verify(stdout, stderr), parse_info(INFO_FULL_INCR, STANZA), STANZA)
    assert message.startswith(f"pgbackrest verify: backup {INCR} is valid") and FULL in message


# --- the real tool --------------------------------------------------------------------------


def _archived(cluster) -> str | None:
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        return conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()[0]


def _switch(cluster, times: int) -> str:
    """Write rows and switch WAL `times` times; returns the last segment switched out,
    once the archiver has pushed it."""
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS w (g int)")
        for _ in range(times):
            conn.execute("INSERT INTO w SELECT generate_series(1, 1000)")
            last = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
    deadline = time.monotonic() + 60
    while _archived(cluster) != last:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{last} was not archived within 60 s (archiver at {_archived(cluster)})")
        time.sleep(0.2)
    return last


@pytest.fixture(scope="module")
def wal_repo():
    """Its own PG15 cluster and repository (the WAL tests damage copies of it): a full
    backup, an incremental, then SWITCHES WAL switches with rows in each."""
    base, cluster = _archiving_cluster()
    try:
        cluster.start()
        repo = Repo(base, cluster.data, cluster.base)
        repo.pgbackrest("stanza-create")
        repo.pgbackrest("backup", "--type=full")
        repo.pgbackrest("backup", "--type=incr")
        repo.cluster = cluster
        repo.last_switched = _switch(cluster, SWITCHES)
        repo.switched_at = datetime.now(timezone.utc)
        yield repo
    finally:
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def wrapper(tmp_path_factory) -> Path:
    script = tmp_path_factory.mktemp("wrapper") / "pgbackrest-as-postgres"
    script.write_text(f'#!/bin/sh\nexec runuser -u postgres -- {PGBACKREST or "/usr/bin/pgbackrest"} "$@"\n')
    script.chmod(0o755)
    return script


def _source(repo: Repo, wrapper: Path, **fields) -> PgBackRestSource:
    return PgBackRestSource(config(wrapper, config_file=repo.conf, **fields))


def test_real_archive_without_a_gap(wal_repo, wrapper):
    source = _source(wal_repo, wrapper)
    info = source.latest()
    started = time.monotonic()
    archive = source.wal_archive(info)
    elapsed = time.monotonic() - started
    print(f"\nreal wal_archive, healthy ({elapsed:.2f}s): {archive.as_dict()}")
    assert archive.gap is None and archive.timeline == 1
    assert archive.checked_from == info.details["wal_start"]
    assert archive.last >= wal_repo.last_switched >= info.details["archive_max"]
    expected = parse_segment(archive.last).number - parse_segment(archive.checked_from).number + 1
    assert archive.segments_checked == expected >= SWITCHES
    # The live server's last archived segment is in the archive (the silent-drop check).
    assert archive.holds(_archived(wal_repo.cluster)) is True
    full = datetime.fromisoformat(info.details["oldest_backup"]["stopped_at"])
    assert archive.window_start == full < info.finished_at
    assert info.finished_at <= archive.last_archived_at <= wal_repo.switched_at + timedelta(seconds=1)
    assert archive.as_dict()["recovery_window"]["end"] == archive.last_archived_at.isoformat()


def _segment_files(repo: Repo, archive_id: str) -> dict[str, Path]:
    return {p.name[:24]: p for p in (repo.path / "archive" / STANZA / archive_id).rglob("*-*") if len(p.name) > 40}


def test_real_archive_with_a_segment_deleted_names_the_gap(wal_repo, wrapper):
    copy = wal_repo.copy()
    try:
        source = _source(copy, wrapper, verify_every_days=1)
        info = source.latest()
        start = parse_segment(info.details["wal_start"])
        files = _segment_files(copy, info.details["archive_id"])
        after = sorted(name for name in files if name > start.name)
        victim = after[len(after) // 2]  # in the middle: segments on both sides remain
        files[victim].unlink()
        archive = source.wal_archive(info)
        print(f"\nreal wal_archive, {victim} deleted: {archive.as_dict()}")
        assert archive.gap == victim and archive.last == max(files)
        assert archive.segments_checked == parse_segment(victim).number - start.number
        assert archive.holds(victim) is False

        # pgbackrest verify (backup_readable's full read) names it too.
        started = time.monotonic()
        message = source.verify_readable(info, 150000)
        print(f"real verify, {victim} deleted ({time.monotonic() - started:.2f}s): {message}")
        assert message.startswith(f"warning: WAL {victim} is missing from archive {info.details['archive_id']} after backup {info.id}")
    finally:
        shutil.rmtree(copy.base, ignore_errors=True)


def test_real_restored_copy_promoted_into_the_repository_fails_naming_the_fork(wrapper):
    """The DBA trial with the real tool: `pgbackrest restore` of the production stanza
    into another folder, started and promoted with archive-push into the same
    repository (a test restore that left archiving on), while production keeps
    archiving. Recovery to latest follows the copy's timeline 2; production's
    pg_stat_archiver (read with the check's own query) fails the comparison naming the
    fork, the copy's passes."""
    base, cluster = _archiving_cluster()
    copy = None
    try:
        cluster.start()
        repo = Repo(base, cluster.data, cluster.base)
        repo.pgbackrest("stanza-create")
        repo.pgbackrest("backup", "--type=full")
        _switch(cluster, 2)

        copy = Cluster.__new__(Cluster)
        copy.pg_ctl, copy.user = cluster.pg_ctl, _unprivileged_user()
        copy.base = _private_dir("pgbv-pgbackrest-restored-")
        copy.data = copy.base / "data"
        repo.pgbackrest("restore", f"--pg1-path={copy.data}")
        # The copy's own pg1-path, as its host's pgbackrest.conf would say: archive-push
        # reads its WAL from there.
        with open(copy.data / "postgresql.auto.conf", "a") as conf:
            conf.write(f"archive_command = '{PGBACKREST} --stanza={STANZA} --config={repo.conf} "
                       f"--pg1-path={copy.data} archive-push %p'\n")
        copy.start()
        deadline = time.monotonic() + 60
        while True:
            with psycopg.connect(copy.dsn(), autocommit=True) as conn:
                if conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False:
                    break
            assert time.monotonic() < deadline, "the restored copy did not end recovery"
            time.sleep(0.2)
        _switch(copy, 2)
        kept = _switch(cluster, 2)  # production archives on, past the fork

        source = _source(repo, wrapper)
        archive = source.wal_archive(source.latest())
        print(f"\nreal stray timeline: {archive.as_dict()}")
        assert archive.timeline == 2 and archive.gap is None and archive.holds(kept)
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            production = conn.execute(LIVE_QUERY).fetchone()
        live, problem = compare_live(archive, *production)
        print(f"production compared: {problem}")
        assert problem is not None, live  # held, and "older" by name: what passed before
        switch = archive.as_dict()["history"][0]["switch"]
        assert (
            f"the archive's timeline 2 forks off the server's timeline 1 at {switch} (a restored copy promoted "
            "with archiving on?)") in problem
        assert f"never replays the server's WAL after the fork (server archived {kept}" in problem
        with psycopg.connect(copy.dsn(), autocommit=True) as conn:
            promoted = conn.execute(LIVE_QUERY).fetchone()
        live, problem = compare_live(archive, *promoted)
        assert problem is None and live["held"] is True and live["segment"].startswith("00000002")
    finally:
        if copy is not None:
            copy.destroy()
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)


# --- the recovery window over several backups ---------------------------------------------


def _backups_then_switches(repo: Repo, cluster, kinds: list[str]) -> list[str]:
    """Each backup of ``kinds`` followed by two WAL switches; their labels, oldest first."""
    for kind in kinds:
        repo.pgbackrest("backup", f"--type={kind}")
        _switch(cluster, 2)
    data = json.loads(repo.pgbackrest("info", "--output=json").stdout)
    return [b["label"] for b in data[0]["backup"]]


@pytest.fixture(scope="module")
def multi_repo():
    """Its own PG15 cluster and repository: full, full, differential, full, each
    followed by two WAL switches, then three more (the tests damage or expire copies
    of it)."""
    base, cluster = _archiving_cluster()
    try:
        cluster.start()
        repo = Repo(base, cluster.data, cluster.base)
        repo.pgbackrest("stanza-create")
        repo.cluster = cluster
        repo.labels = _backups_then_switches(repo, cluster, ["full", "full", "diff", "full"])
        _switch(cluster, 3)  # room for a gap after the newest backup with segments past it
        yield repo
    finally:
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)


def _stops(source: PgBackRestSource) -> tuple:
    """The newest backup, and per backup label: (archive start, archive stop, stop time)."""
    info = source.latest()
    return info, {b["label"]: (b["wal_start"], b["wal_stop"], datetime.fromisoformat(b["stopped_at"]))
                  for b in info.details["backups_wal"]}


def test_real_healthy_archive_window_starts_at_the_oldest_full(multi_repo, wrapper):
    source = _source(multi_repo, wrapper)
    info, backups = _stops(source)
    assert list(backups) == multi_repo.labels and len(backups) == 4
    archive = source.wal_archive(info)
    print(f"\nreal wal_archive, 4 backups: {archive.as_dict()}")
    assert archive.gap is None
    assert archive.window_start == backups[multi_repo.labels[0]][2]
    newest_file = _segment_files(multi_repo, info.details["archive_id"])[archive.last]
    assert archive.last_archived_at == datetime.fromtimestamp(int(newest_file.stat().st_mtime), timezone.utc)


def test_real_expire_keeping_wal_of_the_newest_full_only_starts_the_window_there(multi_repo, wrapper):
    copy = multi_repo.copy()
    try:
        copy.pgbackrest("expire", "--repo1-retention-full=5", "--repo1-retention-archive=1")
        source = _source(copy, wrapper)
        info, backups = _stops(source)
        assert list(backups) == multi_repo.labels  # every backup is kept, the WAL between them is not
        newest_full = multi_repo.labels[3]
        files = _segment_files(copy, info.details["archive_id"])
        first_start = parse_segment(backups[multi_repo.labels[0]][0])
        newest_start = parse_segment(backups[newest_full][0])
        assert any(parse_segment(n).number not in {parse_segment(f).number for f in files}
                   for n in (Segment(1, k).name for k in range(first_start.number, newest_start.number)))
        archive = source.wal_archive(info)
        print(f"\nreal wal_archive after expire --repo1-retention-archive=1: {archive.as_dict()}")
        assert archive.gap is None  # from the newest backup on, nothing is missing
        assert archive.window_start == backups[newest_full][2]
        assert archive.window_start > backups[multi_repo.labels[0]][2]
    finally:
        shutil.rmtree(copy.base, ignore_errors=True)


@pytest.mark.parametrize("older, newer", [(0, 1), (1, 2)], ids=["between-two-fulls", "between-full-and-diff"])
def test_real_segment_deleted_between_two_backups_moves_the_start_to_the_newer(multi_repo, wrapper, older, newer):
    copy = multi_repo.copy()
    try:
        source = _source(copy, wrapper)
        info, backups = _stops(source)
        old, new = multi_repo.labels[older], multi_repo.labels[newer]
        files = _segment_files(copy, info.details["archive_id"])
        between = sorted(n for n in files if backups[old][1] < n < backups[new][0])
        assert between, f"no segment between {old} and {new}"
        victim = between[len(between) // 2]
        files[victim].unlink()
        archive = source.wal_archive(info)
        print(f"\nreal wal_archive, {victim} deleted between {old} and {new}: {archive.as_dict()}")
        assert archive.gap is None  # before the newest backup: continuity holds
        assert archive.window_start == backups[new][2]
    finally:
        shutil.rmtree(copy.base, ignore_errors=True)


def test_real_gap_after_the_newest_backup_ends_the_window_before_it(multi_repo, wrapper):
    copy = multi_repo.copy()
    try:
        source = _source(copy, wrapper)
        info, backups = _stops(source)
        files = _segment_files(copy, info.details["archive_id"])
        after = sorted(n for n in files if n > info.details["wal_stop"])
        victim = after[len(after) // 2]  # segments on both sides remain
        before = max(n for n in files if n < victim)
        files[victim].unlink()
        # The segments past the gap stored an hour later (as archiving goes on past a
        # lost segment): the window must not end at their time.
        for name in after:
            if name > victim:
                os.utime(files[name], (files[name].stat().st_atime, files[name].stat().st_mtime + 3600))
        archive = source.wal_archive(info)
        print(f"\nreal wal_archive, {victim} deleted after the newest backup: {archive.as_dict()}")
        assert archive.gap == victim
        before_time = datetime.fromtimestamp(int(files[before].stat().st_mtime), timezone.utc)
        assert archive.last_archived_at == before_time
        assert archive.last_archived_at < datetime.fromtimestamp(int(files[archive.last].stat().st_mtime), timezone.utc)
        assert archive.window_start == backups[multi_repo.labels[0]][2]
        assert any(f"ends at {before}" in note for note in archive.notes)
    finally:
        shutil.rmtree(copy.base, ignore_errors=True)


# --- the recovery window: edge cases on stand-in listings ----------------------------------

T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)


def _held(numbers, timeline: int = 1, timed: bool = True) -> dict:
    return {Segment(timeline, n).name: (T0 + timedelta(minutes=n) if timed else None) for n in numbers}


def _bk(label: str, start: int, stop: int, timeline: int = 1) -> BackupWal:
    return BackupWal(label, Segment(timeline, start).name, Segment(timeline, stop).name, T0 + timedelta(minutes=stop, seconds=30))


def test_window_edge_a_hole_between_backups_moves_the_start():
    held = _held([*range(2, 6), *range(7, 20)])
    backups = [_bk("a", 2, 3), _bk("b", 8, 9), _bk("c", 12, 13)]
    archive = continuity("x", held, backups[-1].start, [], backups=backups)
    assert archive.gap is None and archive.window_start == backups[1].ended
    assert archive.last_archived_at == T0 + timedelta(minutes=19)


def test_window_edge_a_hole_after_the_newest_backup_ends_the_window_before_it():
    held = _held([*range(2, 15), *range(16, 20)])
    backups = [_bk("a", 2, 3), _bk("c", 12, 13)]
    archive = continuity("x", held, backups[-1].start, [], backups=backups)
    assert archive.gap == Segment(1, 15).name
    assert archive.window_start == backups[0].ended and archive.last_archived_at == T0 + timedelta(minutes=14)


def test_window_edge_the_newest_backup_not_consistent_leaves_the_older_window():
    # c's stop segment is missing: recovery from c never becomes consistent; a reaches 14.
    held = _held([*range(2, 15), *range(16, 20)])
    backups = [_bk("a", 2, 3), _bk("c", 14, 16)]
    archive = continuity("x", held, backups[-1].start, [], backups=backups)
    assert archive.window_start == backups[0].ended and archive.last_archived_at == T0 + timedelta(minutes=14)


def test_window_edge_no_backup_replays_is_no_window_with_a_note():
    held = _held(range(10, 20))
    backups = [_bk("a", 2, 3), _bk("b", 5, 6)]
    archive = continuity("x", held, backups[-1].start, [], backups=backups)
    assert archive.window_start is None and archive.last_archived_at is None
    assert any("no recovery window" in note for note in archive.notes)


def test_window_edge_an_end_segment_without_a_time_is_an_unknown_end_with_a_note():
    held = _held(range(2, 10), timed=False)
    archive = continuity("x", held, Segment(1, 2).name, [], backups=[_bk("a", 2, 3)])
    assert archive.window_start == _bk("a", 2, 3).ended and archive.last_archived_at is None
    assert any("not known" in note for note in archive.notes)


def test_window_edge_backups_on_the_parent_timeline_replay_across_the_switch():
    # Timeline 2 branched at segment 10: 1..9 from timeline 1, 10.. from timeline 2.
    held = {**_held(range(2, 11)), **_held(range(10, 16), timeline=2)}
    history = [Branch(1, 10 * 16 * 1024 * 1024 + 0x28)]
    backups = [_bk("a", 2, 3), _bk("b", 12, 13, timeline=2)]
    archive = continuity("x", held, backups[-1].start, history, backups=backups)
    assert archive.gap is None and archive.window_start == backups[0].ended
    # A backup of timeline 1 past the switch is on a branch recovery does not follow.
    stray = [_bk("stray", 10, 10)]
    archive = continuity("x", held, stray[0].start, history, backups=stray)
    assert archive.window_start is None and any("does not pass through" in n for n in archive.notes)


def test_window_of_a_50000_segment_archive_is_one_quick_pass():
    count = 50_000
    held = {Segment(1, n).name: T0 + timedelta(seconds=n) for n in range(1, count + 1) if n != 20_000}
    backups = [_bk(f"b{i}", n, n + 1) for i, n in enumerate(range(100, count, 5_000))]
    started = time.perf_counter()
    archive = continuity("x", held, backups[-1].start, [], backups=backups)
    elapsed = time.perf_counter() - started
    print(f"\ncontinuity with the recovery window, {len(held)} segments, {len(backups)} backups: {elapsed * 1000:.0f} ms")
    assert archive.window_start == backups[4].ended  # the first backup after the hole at 20000
    assert archive.gap is None and elapsed < 2
