"""The barman source on Barman 3.4's real output (fixtures captured from the program),
printed byte for byte by a stand-in barman executable."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from exporter.backups import BarmanBackupSource, source_for
from exporter.backups.base import BackupSourceError, BackupUnreadable, NoBackupFound
from exporter.config import BarmanBackup
from tests.backups.test_command import FIXTURES, StandIn, runuser_wrapper, wait_dead

LIST = FIXTURES / "barman-list-backups.json"
SHOW = FIXTURES / "barman-show-backup.json"
SHOW_NO_WALS = FIXTURES / "barman-show-backup-no-wals.json"
SHOW_UNKNOWN = FIXTURES / "barman-show-backup-unknown.json"
NEWEST = "20261127T174138"
OLDER = "20261127T173753"


def barman(binary, timeout: float = 10, config_file: Path | None = None, server: str = "pg15") -> BarmanBackupSource:
    return BarmanBackupSource(
        BarmanBackup(source="barman", server=server, binary=str(binary), timeout_seconds=timeout, config_file=config_file)
    )


def listing() -> dict:
    return json.loads(LIST.read_bytes())


def shown() -> dict:
    return json.loads(SHOW.read_bytes())


def dumps(data) -> bytes:
    return json.dumps(data, sort_keys=True).encode()


def test_the_newest_backup_of_the_fixtures(standin):
    binary = standin.dispatch("barman", {"list-backups": (LIST, 0), "show-backup": (SHOW, 0)})
    info = barman(binary).latest()
    assert info.id == NEWEST
    assert info.kind == "barman full"
    # show-backup's end_time with its offset, to the microsecond.
    assert info.finished_at == datetime(2026, 11, 27, 17, 41, 39, 262513, tzinfo=timezone.utc)
    assert info.size_bytes == 72481005  # the backup with the WAL it needs, as list-backups' size_bytes
    assert info.location == f"pg15/{NEWEST}"
    details = info.details
    assert (details["begin_wal"], details["end_wal"]) == ("00000001000000000000000A", "00000001000000000000000A")
    assert (details["begin_lsn"], details["end_lsn"]) == ("0/A000028", "0/B000000")
    assert details["disk_usage_bytes"] == 72464541
    assert details["postgresql_version"] == 150018
    assert details["retention_status"] == "VALID"
    assert details["wal_after_backup"]["last_available"] == "00000001000000000000000E"
    assert "newer_not_done" not in details
    json.dumps(details)


def test_the_command_lines(standin, tmp_path):
    # The last call wins the args file: check each call through its own stand-in run.
    binary = standin.dispatch("barman", {"list-backups": (LIST, 0), "show-backup": (SHOW, 0)})
    barman(binary, config_file=tmp_path / "barman.conf").latest()
    assert standin.calls("barman") == ["-c", str(tmp_path / "barman.conf"), "-f", "json", "show-backup", "pg15", NEWEST]
    with pytest.raises(BackupSourceError):
        # list-backups is asked first, with the same global options
        barman(standin.dispatch("barman", {"list-backups": (b"garbage", 0)})).latest()
    assert standin.calls("barman") == ["-f", "json", "list-backups", "pg15"]


def test_without_wal_after_the_backup(standin):
    # wal_information's ratios are the integer 0 here instead of "87.26%" texts.
    binary = standin.dispatch("barman", {"list-backups": (LIST, 0), "show-backup": (SHOW_NO_WALS, 0)})
    info = barman(binary).latest()
    assert info.id == NEWEST
    assert info.details["wal_after_backup"]["compression_ratio"] == 0


def test_newer_backups_that_are_not_done_are_passed_over(standin):
    data = listing()
    data["pg15"][:0] = [
        {"backup_id": "20261128T010000", "status": "FAILED"},
        {"backup_id": "20261128T020000", "status": "WAITING_FOR_WALS", "end_time": "Sat Nov 28 02:10:00 2026",
         "end_time_timestamp": "1795831800", "size_bytes": 72481005, "retention_status": "-"},
        {"backup_id": "20261128T030000", "status": "STARTED"},
    ]
    binary = standin.dispatch("barman", {"list-backups": (dumps(data), 0), "show-backup": (SHOW, 0)})
    info = barman(binary).latest()
    assert info.id == NEWEST
    assert [item["status"] for item in info.details["newer_not_done"]] == ["FAILED", "WAITING_FOR_WALS", "STARTED"]


def test_no_backup_done_is_no_backup(standin):
    data = {"pg15": [{"backup_id": "20261128T010000", "status": "FAILED"},
                     {"backup_id": "20261128T020000", "status": "WAITING_FOR_WALS", "end_time_timestamp": "1795831800"}]}
    binary = standin.dispatch("barman", {"list-backups": (dumps(data), 0)})
    lookup = barman(binary).lookup()
    assert lookup.error is None
    assert "none DONE: 20261128T010000 FAILED (failed), 20261128T020000 WAITING_FOR_WALS" in lookup.missing


def test_an_empty_list_is_no_backup(standin):
    binary = standin.dispatch("barman", {"list-backups": (b'{"pg15": []}', 0)})
    with pytest.raises(NoBackupFound, match="barman lists no backups for server 'pg15'"):
        barman(binary).latest()


def test_newest_by_end_time(standin):
    data = listing()
    data["pg15"].reverse()
    binary = standin.dispatch("barman", {"list-backups": (dumps(data), 0), "show-backup": (SHOW, 0)})
    assert barman(binary).latest().id == NEWEST


def test_the_offset_wins_over_end_time_timestamp(standin):
    # end_time_timestamp is strftime("%s"): off by the zone difference when PostgreSQL's
    # zone is not the Barman host's. The offset in end_time is the truth.
    data = shown()
    base = data["pg15"]["base_backup_information"]
    base["end_time"] = "2026-11-27 18:41:39.262513+01:00"
    base["end_time_timestamp"] = str(int(base["end_time_timestamp"]) + 3600)
    binary = standin.dispatch("barman", {"list-backups": (LIST, 0), "show-backup": (dumps(data), 0)})
    assert barman(binary).latest().finished_at == datetime(2026, 11, 27, 17, 41, 39, 262513, tzinfo=timezone.utc)


def test_an_end_time_without_offset_falls_back_to_the_timestamp(standin):
    data = shown()
    data["pg15"]["base_backup_information"]["end_time"] = "2026-11-27 17:41:39.262513"
    binary = standin.dispatch("barman", {"list-backups": (LIST, 0), "show-backup": (dumps(data), 0)})
    assert barman(binary).latest().finished_at == datetime(2026, 11, 27, 17, 41, 39, tzinfo=timezone.utc)


def test_unknown_server_is_an_error_with_barmans_words(standin):
    binary = standin.dispatch("barman", {"list-backups": (b'{"_ERROR": ["Unknown server \'nosuch\'"]}', 1)})
    lookup = barman(binary, server="nosuch").lookup()
    assert lookup.error == "barman list-backups: Unknown server 'nosuch'"


def test_a_backup_gone_between_the_two_commands_is_an_error(standin):
    binary = standin.dispatch("barman", {"list-backups": (LIST, 0), "show-backup": (SHOW_UNKNOWN, 1)})
    with pytest.raises(BackupSourceError, match=r"barman show-backup: Unknown backup '20200101T000000' for server 'pg15'"):
        barman(binary).latest()


def test_an_inactive_server_is_an_error(standin):
    output = b'{"_INFO": ["Skipping inactive server \'pg15\'"]}'
    binary = standin.dispatch("barman", {"list-backups": (output, 0)})
    with pytest.raises(BackupSourceError, match="printed nothing for server 'pg15'; it said: Skipping inactive server"):
        barman(binary).latest()


def test_barman_refusing_to_start_is_an_error_with_its_words(standin):
    binary = standin.fails("barman", "ERROR: please run barman as 'barman' user")
    with pytest.raises(BackupSourceError, match="exited with code 1: ERROR: please run barman as 'barman' user"):
        barman(binary).latest()


def test_other_exit_codes_are_errors(standin):
    binary = standin.fails("barman", "barman: error: argument -f/--format: invalid choice: 'jsn'", exit_code=2)
    with pytest.raises(BackupSourceError, match="barman list-backups: barman exited with code 2: barman: error: argument"):
        barman(binary).latest()


def test_a_hanging_barman_is_stopped_with_its_children(standin):
    binary = standin.sleeps("barman")
    started = time.monotonic()
    lookup = barman(binary, timeout=0.5).lookup()
    assert time.monotonic() - started < 4
    assert "timed out after 0.5 s" in lookup.error
    assert wait_dead(standin.child_pid("barman"))


def _without(data: dict, *path: str) -> bytes:
    node = data
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return dumps(data)


@pytest.mark.parametrize(
    ("list_output", "show_output", "words"),
    [
        (b"Traceback (most recent call last):", None, "barman list-backups printed something that is not JSON"),
        (b'{"pg15": {"backup_id": "x"}}', None, "the entry of server 'pg15' is an object, not a list of backups"),
        (b'{"pg15": [{"status": "DONE"}]}', None, "backup entry 0 has no backup_id"),
        (b'{"pg15": [{"backup_id": "20261127T174138", "status": "DONE"}]}', None,
         "backup 20261127T174138 has no usable end_time_timestamp"),
        (LIST, b'{"pg15": {"backup_id": "20261127T173753", "status": "DONE"}}', "describes backup '20261127T173753' instead"),
        (LIST, b'{"pg15": {"backup_id": "20261127T174138", "status": "FAILED"}}', "status is now 'FAILED', not DONE"),
        (LIST, b'{"pg15": {"backup_id": "20261127T174138", "status": "DONE"}}', "has no base_backup_information"),
        (LIST, _without(shown(), "pg15", "base_backup_information", "disk_usage_with_wals_bytes"),
         "base_backup_information has no disk_usage_with_wals_bytes"),
        (LIST, b"[]", "barman show-backup printed a list where a JSON object was expected"),
    ],
)
def test_unexpected_output_is_an_error_naming_what_is_wrong(standin, list_output, show_output, words):
    answers = {"list-backups": (list_output, 0)}
    if show_output is not None:
        answers["show-backup"] = (show_output, 0)
    with pytest.raises(BackupSourceError) as caught:
        barman(standin.dispatch("barman", answers)).latest()
    assert words in str(caught.value)


def test_an_end_time_missing_everywhere(standin):
    data = shown()
    base = data["pg15"]["base_backup_information"]
    del base["end_time"], base["end_time_timestamp"]
    binary = standin.dispatch("barman", {"list-backups": (LIST, 0), "show-backup": (dumps(data), 0)})
    with pytest.raises(BackupSourceError, match="base_backup_information has no end_time"):
        barman(binary).latest()


def test_registered_as_the_barman_source():
    found = source_for(BarmanBackup(source="barman", server="pg15"))
    assert isinstance(found, BarmanBackupSource)
    assert found.checks_readable()  # barman verify-backup


def test_barman_through_a_wrapper_running_it_as_another_user(public_dir, tmp_path):
    tool = StandIn(public_dir, record_args=False)
    real = tool.dispatch("barman", {"list-backups": (LIST, 0), "show-backup": (SHOW, 0)})
    guarded = tool.script(
        "barman-guarded",
        '[ "$(id -u)" = 65534 ] || { echo "ERROR: please run barman as \'nobody\' user" >&2; exit 1; }\n'
        f'exec {real} "$@"\n',
    )
    with pytest.raises(BackupSourceError, match="please run barman as 'nobody' user"):
        barman(guarded).latest()
    wrapper = runuser_wrapper(tmp_path, "barman-as-nobody", guarded)
    assert barman(wrapper).latest().id == NEWEST


# --- verify-backup: Barman 3.4's real answers (captured from tests/backups/test_barman_real.py's setup) ---

VERIFYING = "Verifying backup '20261127T174138' on server ['pg15']"
DATA = "/var/lib/barman/pg15/base/20261127T174138/data"
VERIFY_ANSWERS = {
    "good": ({"_INFO": [VERIFYING, "Calling pg_verifybackup", "backup successfully verified"]}, 0),
    "damaged": ({"_ERROR": [f"verify backup failure on directory '{DATA}'",
                            'pg_verifybackup: error: "base/5/1255" is present in the manifest but not on disk\n'
                            'pg_verifybackup: error: checksum mismatch for file "base/1/1255"\n'],
                 "_INFO": [VERIFYING, "Calling pg_verifybackup"]}, 1),
    "no-manifest": ({"_ERROR": [f"verify backup failure on directory '{DATA}'",
                                f'pg_verifybackup: error: could not open file "{DATA}/backup_manifest": No such file or directory\n'],
                     "_INFO": [VERIFYING, "Calling pg_verifybackup"]}, 1),
    "denied-and-missing": ({"_ERROR": [f"verify backup failure on directory '{DATA}'",
                                       f'pg_verifybackup: error: could not open directory "{DATA}/base/1": Permission denied\n'
                                       'pg_verifybackup: error: "base/5/1255" is present in the manifest but not on disk\n'],
                            "_INFO": [VERIFYING, "Calling pg_verifybackup"]}, 1),
    "denied": ({"_ERROR": [f"verify backup failure on directory '{DATA}'",
                           f'pg_verifybackup: error: could not open directory "{DATA}/base/1": Permission denied\n'],
                "_INFO": [VERIFYING, "Calling pg_verifybackup"]}, 1),
    "inactive": ({"_INFO": ["Skipping inactive server 'pg15'"]}, 0),
    "no-pg_verifybackup": ({"_ERROR": ["pg_verifybackup not found"], "_INFO": [VERIFYING, "Calling pg_verifybackup"]}, 1),
    "unknown-backup": ({"_ERROR": ["Unknown backup '20261127T174138' for server 'pg15'"]}, 1),
}


def verify(standin, case: str) -> str:
    data, code = VERIFY_ANSWERS[case]
    binary = standin.dispatch("barman", {"list-backups": (LIST, 0), "show-backup": (SHOW, 0), "verify-backup": (dumps(data), code)})
    source = barman(binary)
    info = source.latest()
    try:
        return source.verify_readable(info, 150018)
    finally:
        assert standin.calls("barman") == ["-f", "json", "verify-backup", "pg15", NEWEST]


def test_verify_of_a_good_backup_says_what_was_proved(standin):
    message = verify(standin, "good")
    assert message.startswith(f"barman verify-backup pg15 {NEWEST}: pg_verifybackup checked every file")
    assert "WAL was not parsed" in message


def test_verify_names_the_missing_and_the_corrupted_file(standin):
    with pytest.raises(BackupUnreadable) as caught:
        verify(standin, "damaged")
    message = str(caught.value)
    assert "2 file(s): base/5/1255, base/1/1255" in message
    assert '"base/5/1255" is present in the manifest but not on disk' in message
    assert 'checksum mismatch for file "base/1/1255"' in message


@pytest.mark.parametrize("case, words", [
    ("no-manifest", "could not check the backup: could not open file"),
    ("no-manifest", "rsync backups need `barman generate-manifest`"),
    ("denied", "could not check the backup: could not open directory"),
    ("inactive", "verified nothing (exit 0 without pg_verifybackup's 'backup successfully verified'); "
                 "it said: Skipping inactive server 'pg15'"),
    ("no-pg_verifybackup", "pg_verifybackup not found"),
    ("unknown-backup", "Unknown backup"),
])
def test_verify_that_could_not_look_is_an_error_never_a_pass(standin, case, words):
    with pytest.raises(BackupSourceError) as caught:
        verify(standin, case)
    assert words in str(caught.value)


def test_damage_seen_next_to_an_unreadable_folder_is_still_damage(standin):
    with pytest.raises(BackupUnreadable, match=r"1 file\(s\): base/5/1255\)"):
        verify(standin, "denied-and-missing")


def test_verify_runs_under_the_timeout(standin):
    info = barman(standin.dispatch("barman", {"list-backups": (LIST, 0), "show-backup": (SHOW, 0)})).latest()
    slow = barman(standin.sleeps("slow"), timeout=0.5)
    started = time.monotonic()
    with pytest.raises(BackupSourceError, match="barman verify-backup: slow timed out after 0.5 s"):
        slow.verify_readable(info, 150018)
    assert time.monotonic() - started < 5
    assert wait_dead(standin.child_pid("slow"))


# --- recover, for the restore drill (the real one: tests/restore/test_barman_drill.py) -----------

RECOVERED = {"_INFO": ["Starting local restore for server pg15 using backup 20261127T174138", "Copying the base backup."],
             "changes": [], "changes_count": 0, "missing_files": [], "recovery_elapsed_time": "2 seconds",
             "recovery_elapsed_time_seconds": 2.4, "recovery_start_time": "2026-12-02 12:49:30.135787+00:00",
             "warnings": [], "warnings_count": 0}


def test_recover_asks_for_the_backups_end_and_returns_barmans_warnings(standin, tmp_path):
    answer = dict(RECOVERED, warnings=["archive_command: 'false'"], warnings_count=1)
    binary = standin.dispatch("barman", {"recover": (dumps(answer), 0)})
    assert barman(binary).recover(NEWEST, tmp_path / "data", 30) == ["archive_command: 'false'"]
    assert standin.calls("barman") == ["-f", "json", "recover", "--target-immediate", "--target-action", "promote",
                                       "pg15", NEWEST, str(tmp_path / "data")]
    assert barman(standin.dispatch("barman", {"recover": (dumps(RECOVERED), 0)})).recover(NEWEST, tmp_path, 30) == []


def test_recover_that_barman_refuses_is_unreadable_with_its_words(standin, tmp_path):
    answer = {"_ERROR": ["Unknown backup '20000101T000000' for server 'pg15'"]}
    binary = standin.dispatch("barman", {"recover": (dumps(answer), 1)})
    with pytest.raises(BackupUnreadable, match="barman recover pg15 20000101T000000: Unknown backup"):
        barman(binary).recover("20000101T000000", tmp_path, 30)


def test_recover_of_an_inactive_server_recovered_nothing(standin, tmp_path):
    binary = standin.dispatch("barman", {"recover": (b'{"_INFO": ["Skipping inactive server \'pg15\'"]}', 0)})
    with pytest.raises(BackupSourceError, match="recovered nothing .*Skipping inactive server"):
        barman(binary).recover(NEWEST, tmp_path, 30)


# --- the WAL archive (wal_continuity, the recovery window) ----------------------------------
# `barman -f json list-files --target wal SERVER ID` prints each path as an "_INFO"
# message: json.dump(..., sort_keys=True) of {"_INFO": [path, ...]} (Barman's
# JsonOutputWriter; the real command is run in test_barman_real.py).


def _older_shown(begin_wal: str | None = None) -> bytes:
    data = shown()
    data["pg15"]["backup_id"] = OLDER
    data["pg15"]["base_backup_information"]["end_time"] = "2026-11-27 17:37:55.120000+00:00"
    if begin_wal is not None:
        data["pg15"]["base_backup_information"]["begin_wal"] = begin_wal
    return dumps(data)


def _wal_barman(standin, paths: list[str], list_files_exit: int = 0, list_files: bytes | None = None,
                older_begin: str | None = None) -> Path:
    out = {"list": LIST, "show-new": SHOW, "show-old": _older_shown(older_begin),
           "files": list_files if list_files is not None else dumps({"_INFO": paths} if paths else {})}
    for key, data in out.items():
        (standin.folder / f"{key}.json").write_bytes(data.read_bytes() if isinstance(data, Path) else data)
    folder = standin.folder
    return standin.script("barman", (
        'case " $* " in\n'
        f'  *" list-backups "*) cat {folder}/list.json ;;\n'
        f'  *" show-backup pg15 {OLDER} "*) cat {folder}/show-old.json ;;\n'
        f'  *" show-backup "*) cat {folder}/show-new.json ;;\n'
        f'  *" list-files --target wal pg15 {NEWEST} "*) cat {folder}/files.json; exit {list_files_exit} ;;\n'
        '  *) echo "stand-in: unexpected arguments: $*" >&2; exit 2 ;;\nesac\n'
    ))


def _wals(folder: Path, names: list[str], start: int = 1795801300) -> list[str]:
    """Barman's wals layout (<timeline+log>/<name>) with each file's time set."""
    paths = []
    for offset, name in enumerate(names):
        path = folder / "wals" / name[:16] / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"wal")
        os.utime(path, (start + offset, start + offset))
        paths.append(str(path))
    return paths


SEGMENTS = [f"0000000100000000000000{n:02X}" for n in range(0x0A, 0x0F)]  # 0A (the backup's begin_wal) .. 0E


def test_wal_archive_reads_the_catalogue_and_the_files(standin, tmp_path):
    paths = _wals(tmp_path, SEGMENTS)
    history = str(tmp_path / "wals" / "00000001.history")  # listed with the segments, not one
    source = barman(_wal_barman(standin, [*paths, history]))
    archive = source.wal_archive(source.latest())
    assert (archive.gap, archive.checked_from, archive.last, archive.segments_checked) == (
        None, "00000001000000000000000A", "00000001000000000000000E", 5)
    assert archive.last_archived_at == datetime.fromtimestamp(1795801304, timezone.utc)
    # The oldest DONE backup's end_time, from its own show-backup.
    assert archive.window_start == datetime(2026, 11, 27, 17, 37, 55, 120000, tzinfo=timezone.utc)
    # Barman's catalogue is one timeline's: wal_continuity must not read a server on a
    # later one as archiving outside the archive.
    assert archive.timeline == 1 and archive.later_timelines_unlisted is True


def test_wal_archive_a_file_gone_from_disk_is_the_gap(standin, tmp_path):
    paths = _wals(tmp_path, SEGMENTS)
    Path(paths[2]).unlink()  # 0C: still in Barman's catalogue
    source = barman(_wal_barman(standin, paths))
    archive = source.wal_archive(source.latest())
    assert archive.gap == "00000001000000000000000C" and archive.segments_checked == 2
    assert any("1 segment(s) in Barman's catalogue are missing" in note for note in archive.notes)


def test_wal_archive_a_segment_never_archived_is_the_gap(standin, tmp_path):
    paths = _wals(tmp_path, [s for s in SEGMENTS if not s.endswith("0D")])
    source = barman(_wal_barman(standin, paths))
    assert source.wal_archive(source.latest()).gap == "00000001000000000000000D"


def test_wal_archive_on_another_host_reads_the_catalogue_only(standin):
    paths = [f"/nonexistent/barman/pg15/wals/{s[:16]}/{s}" for s in SEGMENTS if not s.endswith("0B")]
    source = barman(_wal_barman(standin, paths))
    archive = source.wal_archive(source.latest())
    assert archive.gap == "00000001000000000000000B" and archive.last_archived_at is None
    assert any("wals folder is not readable here" in note for note in archive.notes)


def test_wal_archive_without_wal_listed_names_the_backups_own_wal(standin):
    source = barman(_wal_barman(standin, []))
    archive = source.wal_archive(source.latest())
    assert archive.gap == "00000001000000000000000A" and archive.last is None


def test_wal_archive_barmans_error_is_an_error_with_its_words(standin):
    source = barman(_wal_barman(standin, [], 1, dumps({"_ERROR": ["Unknown backup '20261127T174138' for server 'pg15'"]})))
    info = source.latest()
    with pytest.raises(BackupSourceError, match="barman list-files --target wal pg15 20261127T174138: Unknown backup"):
        source.wal_archive(info)


def test_wal_archive_without_a_backup_says_so(standin):
    archive = barman(standin.fails("barman", "not called")).wal_archive(None)
    assert archive.last is None and archive.notes == ["no DONE backup: Barman lists WAL per backup, none was read"]


def test_barman_keeps_wal():
    assert barman("barman").keeps_wal() is True


def test_wal_archive_a_gap_after_the_newest_backup_ends_the_window_before_it(standin, tmp_path):
    paths = _wals(tmp_path, SEGMENTS)
    Path(paths[2]).unlink()  # 0C gone: recovery from the backup (0A) reaches 0B only
    source = barman(_wal_barman(standin, paths))
    archive = source.wal_archive(source.latest())
    assert archive.last == "00000001000000000000000E"
    assert archive.last_archived_at == datetime.fromtimestamp(1795801301, timezone.utc)  # 0B's time, not 0E's
    assert archive.window_start == datetime(2026, 11, 27, 17, 37, 55, 120000, tzinfo=timezone.utc)
    assert any("ends at 00000001000000000000000B" in note for note in archive.notes)


def test_wal_archive_the_newest_backups_own_wal_missing_is_no_window(standin, tmp_path):
    paths = _wals(tmp_path, SEGMENTS)
    Path(paths[0]).unlink()  # 0A, the backup's begin_wal and end_wal
    source = barman(_wal_barman(standin, paths))
    archive = source.wal_archive(source.latest())
    assert archive.gap == "00000001000000000000000A"
    assert archive.window_start is None and archive.last_archived_at is None
    assert any("no recovery window" in note for note in archive.notes)


OLDER_BEGIN = "000000010000000000000005"
OLDER_END = datetime(2026, 11, 27, 17, 37, 55, 120000, tzinfo=timezone.utc)


def test_wal_archive_the_wal_from_the_oldest_backup_on_disk_starts_the_window_there(standin, tmp_path):
    paths = _wals(tmp_path, SEGMENTS)
    _wals(tmp_path, [f"0000000100000000000000{n:02X}" for n in range(5, 10)])  # 05..09: before the newest's 0A
    source = barman(_wal_barman(standin, paths, older_begin=OLDER_BEGIN))
    archive = source.wal_archive(source.latest())
    assert archive.window_start == OLDER_END
    assert any("5 segment(s), is in Barman's wals folder" in note for note in archive.notes)


def test_wal_archive_a_segment_lost_between_the_oldest_and_the_newest_backup_starts_at_the_newest(standin, tmp_path):
    paths = _wals(tmp_path, SEGMENTS)
    _wals(tmp_path, [f"0000000100000000000000{n:02X}" for n in range(5, 10) if n != 7])
    source = barman(_wal_barman(standin, paths, older_begin=OLDER_BEGIN))
    info = source.latest()
    archive = source.wal_archive(info)
    assert archive.window_start == info.finished_at
    assert any(note.startswith("WAL segment 000000010000000000000007 is missing from Barman's wals folder")
               for note in archive.notes)


def test_wal_archive_without_the_wals_folder_the_oldest_start_is_said_unread(standin):
    paths = [f"/nonexistent/barman/pg15/wals/{s[:16]}/{s}" for s in SEGMENTS]
    source = barman(_wal_barman(standin, paths, older_begin=OLDER_BEGIN))
    archive = source.wal_archive(source.latest())
    # No file time: the end is unknown; the start is Barman's oldest DONE backup, not proved.
    assert archive.window_start == OLDER_END and archive.last_archived_at is None
    assert any("is not read" in note for note in archive.notes)
