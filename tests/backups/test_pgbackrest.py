"""The pgBackRest source: the real tool against a throwaway PostgreSQL 15 cluster,
the captured fixtures for each trap, and stand-in executables for the subprocess,
timeout and exit-code paths (the real ones: run_tool starts the script)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from exporter.backups import SOURCES, source_for
from exporter.backups.base import BackupSourceError, BackupUnreadable, NoBackupFound
from exporter.backups.pgbackrest import PgBackRestSource, judge_verify, parse_info, parse_verify
from exporter.config import ConfigError, PgBackRestBackup, load_settings
from exporter.result import BackupInfo
from exporter.verify import verify_target
from tests.conftest import make_target
from tests.pgcluster import Cluster

from tests.backups.test_command import FIXTURES, wait_dead  # noqa: E402 - the byte-exact copies in tests/fixtures
PG15_BIN = Path(os.environ.get("PGBV_PGBACKREST_PG_BIN", "/usr/lib/postgresql/15/bin"))
PGBACKREST = shutil.which("pgbackrest")

STANZA = "demo"
FULL = "20261127-182253F"
INCR = "20261127-182253F_20261127-182637I"

# `pgbackrest --stanza=demo info --output=json` of pgBackRest 2.45: one full, one
# incremental on it (captured along with the verify outputs below).
INFO_FULL_INCR = (
    '[{"archive":[{"database":{"id":1,"repo-key":1},"id":"15-1","max":"000000010000000000000004",'
    '"min":"000000010000000000000001"}],"backup":[{"archive":{"start":"000000010000000000000002",'
    '"stop":"000000010000000000000002"},"backrest":{"format":5,"version":"2.45"},"database":{"id":1,"repo-key":1},'
    '"error":false,"info":{"delta":23213880,"repository":{"delta":3062593,"size":3062593},"size":23213880},'
    '"label":"20261127-182253F","lsn":{"start":"0/2000028","stop":"0/2000100"},"prior":null,"reference":null,'
    '"timestamp":{"start":1795803773,"stop":1795803778},"type":"full"},{"archive":{"start":"000000010000000000000004",'
    '"stop":"000000010000000000000004"},"backrest":{"format":5,"version":"2.45"},"database":{"id":1,"repo-key":1},'
    '"error":false,"info":{"delta":2326794,"repository":{"delta":303027,"size":3117899},"size":23664442},'
    '"label":"20261127-182253F_20261127-182637I","lsn":{"start":"0/4000028","stop":"0/4000100"},'
    '"prior":"20261127-182253F","reference":["20261127-182253F"],"timestamp":{"start":1795803997,"stop":1795803999},'
    '"type":"incr"}],"cipher":"none","db":[{"id":1,"repo-key":1,"system-id":7712918468971985576,"version":"15"}],'
    '"name":"demo","repo":[{"cipher":"none","key":1,"status":{"code":0,"message":"ok"}}],'
    '"status":{"code":0,"lock":{"backup":{"held":false}},"message":"ok"}}]'
)

# `pgbackrest --stanza=demo verify --output=text --verbose --log-level-console=off
# --log-level-stderr=detail --log-timestamp=n` of pgBackRest 2.45 on that repository:
# (stdout, stderr). Every one of them exited 0.
_BEGIN = (
    "INFO: verify command begin 2.45: --config=/etc/pgbackrest/pgbackrest.conf --exec-id=11294-b0a06c0e "
    "--log-level-console=off --log-level-stderr=detail --no-log-timestamp --output=text "
    "--repo1-path=/var/lib/pgbackrest --stanza=demo --verbose\n"
)
_RANGE = "DETAIL: archiveId: 15-1, wal start: 000000010000000000000001, wal stop: 000000010000000000000004\n"
_END = "INFO: verify command end: completed successfully\n"
_ARCHIVE_OK = "  archiveId: 15-1, total WAL checked: 4, total valid WAL: 4\n    missing: 0, checksum invalid: 0, size invalid: 0, other: 0\n"


def _result(status: str, full: str, incr: str) -> str:
    return f"stanza: demo\nstatus: {status}\n{_ARCHIVE_OK}{full}{incr}"


_FULL_VALID = (
    f"  backup: {FULL}, status: valid, total files checked: 964, total valid files: 964\n"
    "    missing: 0, checksum invalid: 0, size invalid: 0, other: 0\n"
)
_INCR_VALID = (
    f"  backup: {INCR}, status: valid, total files checked: 965, total valid files: 965\n"
    "    missing: 0, checksum invalid: 0, size invalid: 0, other: 0\n"
)
VERIFY = {
    "good": (_result("ok", _FULL_VALID, _INCR_VALID), _BEGIN + _RANGE + _END),
    # PG_VERSION of the full backup overwritten: the incremental, which uses it, is invalid too.
    "full-corrupt": (
        _result(
            "error",
            f"  backup: {FULL}, status: invalid, total files checked: 964, total valid files: 963\n"
            "    missing: 0, checksum invalid: 1, size invalid: 0, other: 0\n",
            f"  backup: {INCR}, status: invalid, total files checked: 965, total valid files: 964\n"
            "    missing: 0, checksum invalid: 1, size invalid: 0, other: 0\n",
        ),
        _BEGIN + f"INFO: invalid checksum '{FULL}/pg_data/PG_VERSION.gz'\n" + _RANGE + _END,
    ),
    "incr-missing": (
        _result(
            "error",
            _FULL_VALID,
            f"  backup: {INCR}, status: invalid, total files checked: 965, total valid files: 964\n"
            "    missing: 1, checksum invalid: 0, size invalid: 0, other: 0\n",
        ),
        _BEGIN + f"INFO: file missing '{INCR}/pg_data/base/5/1247.gz'\n" + _RANGE + _END,
    ),
    # Both manifest files of the incremental deleted: the stanza still says "ok".
    "manifest-missing": (
        _result("ok", _FULL_VALID, f"  backup: {INCR}, status: manifest missing, total files checked: 0, total valid files: 0\n"),
        _BEGIN
        + f"DETAIL: unable to open missing file '/var/lib/pgbackrest/backup/demo/{INCR}/backup.manifest' for read\n"
        + f"DETAIL: manifest missing for '{INCR}' - backup may have expired\n"
        + _RANGE
        + _END,
    ),
    # The newest backup's WAL segment overwritten (pgBackRest retries for 15 s first,
    # too slow for the real-repository tests): the backups are "valid".
    "wal-corrupt": (
        "stanza: demo\nstatus: error\n  archiveId: 15-1, total WAL checked: 4, total valid WAL: 3\n"
        "    missing: 0, checksum invalid: 0, size invalid: 0, other: 1\n" + _FULL_VALID + _INCR_VALID,
        _BEGIN
        + "INFO: invalid result 15-1/0000000100000000/000000010000000000000004-91810d02f126b15b5728621294e008d4073149fe.gz: "
        "[29] raised from local-1 protocol: zlib threw error: [-3] data error\n"
        "      [FormatError] on retry after 0ms\n      [FormatError] on retry after 15000ms\n"
        + _RANGE
        + _END,
    ),
    "no-backup-info": ("stanza: demo\nstatus: error\n  No usable backup.info file\n", _BEGIN + _END),
    # The segments after 000000010000000000000002 removed from the archive: verify
    # lists every backup as valid and the stanza as ok.
    "wal-missing": (
        "stanza: demo\nstatus: ok\n  archiveId: 15-1, total WAL checked: 2, total valid WAL: 2\n"
        "    missing: 0, checksum invalid: 0, size invalid: 0, other: 0\n" + _FULL_VALID + _INCR_VALID,
        _BEGIN + "DETAIL: archiveId: 15-1, wal start: 000000010000000000000001, wal stop: 000000010000000000000002\n" + _END,
    ),
}


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def config(binary, stanza: str = STANZA, **fields) -> PgBackRestBackup:
    return PgBackRestBackup(source="pgbackrest", stanza=stanza, binary=str(binary), **fields)


def stand_in(tmp_path: Path, stdout: str = "", stderr: str = "", exit_code: int = 0, sleep: float = 0, name="pgbackrest") -> Path:
    """An executable in tmp_path that records its arguments, prints stdout and stderr
    byte-exact (fixtures have no trailing newline), then exits with exit_code."""
    (tmp_path / "stdout").write_text(stdout)
    (tmp_path / "stderr").write_text(stderr)
    script = tmp_path / name
    lines = ["#!/bin/sh", f'printf "%s\\n" "$@" > "{tmp_path}/args"']
    if sleep:
        # A child in the background too: the timeout must take the whole group.
        lines += [f'sleep {sleep} & echo $! > "{tmp_path}/child"', f"sleep {sleep}"]
    lines += [f'cat "{tmp_path}/stdout"', f'cat "{tmp_path}/stderr" >&2', f"exit {exit_code}"]
    script.write_text("\n".join(lines) + "\n")
    script.chmod(0o755)
    return script


def args_of(tmp_path: Path) -> list[str]:
    return (tmp_path / "args").read_text().splitlines()


# --- the fixtures' traps, through a stand-in ------------------------------------------------


def test_newest_backup_of_the_captured_info(tmp_path):
    binary = stand_in(tmp_path, fixture("pgbackrest-info.json"))
    info = PgBackRestSource(config(binary)).latest()
    assert info.id == "20261127-174243F_20261127-174259I"
    assert info.kind == "pgbackrest incr"
    assert info.finished_at == datetime(2026, 11, 27, 17, 43, 2, tzinfo=timezone.utc)
    assert info.finished_at.tzinfo is timezone.utc
    # The stored size of the whole set, not the database size.
    assert info.size_bytes == 6472745
    assert info.location == "repo1/backup/demo/20261127-174243F_20261127-174259I"
    d = info.details
    assert d["database_size_bytes"] == 71964392 and d["database_delta_bytes"] == 49742090
    assert d["repository_delta_bytes"] == 3525595
    assert d["type"] == "incr" and d["prior"] == "20261127-174243F" and d["reference"] == ["20261127-174243F"]
    assert (d["wal_start"], d["wal_stop"]) == ("00000001000000000000000A", "00000001000000000000000A")
    assert (d["archive_id"], d["archive_min"], d["archive_max"]) == ("15-1", "000000010000000000000001", "00000001000000000000000A")
    assert d["stanza_status"] == {"code": 0, "message": "ok"}
    assert d["started_at"] == "2026-11-27T17:42:59+00:00"
    # Above 2^53: read as an integer, every digit kept.
    assert d["system_id"] == 7712908087203931668
    assert d["pg_version"] == "15" and d["backrest_version"] == "2.45" and d["backup_running"] is False
    json.dumps(d)  # stored in verification_details
    assert args_of(tmp_path) == ["--stanza=demo", "info", "--output=json"]


def test_config_file_and_repo_are_passed(tmp_path):
    binary = stand_in(tmp_path, fixture("pgbackrest-info.json"))
    PgBackRestSource(config(binary, config_file="/etc/pgbackrest/app.conf", repo=2)).latest()
    assert args_of(tmp_path) == ["--config=/etc/pgbackrest/app.conf", "--stanza=demo", "--repo=2", "info", "--output=json"]


def test_missing_stanza_code_1_is_no_backup(tmp_path):
    binary = stand_in(tmp_path, fixture("pgbackrest-info-missing-stanza.json"))
    with pytest.raises(NoBackupFound, match=r"no backup of stanza 'nosuch': repo1: missing stanza path"):
        PgBackRestSource(config(binary, stanza="nosuch")).latest()


def test_no_valid_backups_code_2_is_no_backup(tmp_path):
    binary = stand_in(tmp_path, fixture("pgbackrest-info-no-backups.json"))
    with pytest.raises(NoBackupFound, match=r"no backup of stanza 'demo': repo1: no valid backups"):
        PgBackRestSource(config(binary)).latest()


def test_unreadable_repo_code_99_is_an_error_with_the_repos_message(tmp_path):
    binary = stand_in(tmp_path, fixture("pgbackrest-info-repo-error.json"))
    with pytest.raises(BackupSourceError) as caught:
        PgBackRestSource(config(binary)).latest()
    # The stanza-level message is just "other"; the repository's says what happened.
    assert str(caught.value) == (
        "pgbackrest info cannot read stanza 'demo': repo1: [PathOpenError] unable to list file info for path "
        "'/var/lib/pgbackrest-denied/backup': [13] Permission denied"
    )


def _error_case(title: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of one case of pgbackrest-info-error.txt."""
    text = fixture("pgbackrest-info-error.txt")
    section = text.split(f"### {title}\n", 1)[1].split("--- end ---", 1)[0]
    code = int(section.split("exit code: ", 1)[1].split("\n", 1)[0])
    stdout = section.split("--- stdout ---\n", 1)[1].split("--- stderr ---\n", 1)[0]
    stderr = section.split("--- stderr ---\n", 1)[1]
    return code, stdout.rstrip("\n"), stderr


def test_invalid_option_exit_32_is_an_error_with_stderr(tmp_path):
    code, stdout, stderr = _error_case("relative repo path (option validation error, non-zero exit)")
    assert code == 32 and stdout == ""
    binary = stand_in(tmp_path, stdout, stderr, exit_code=code)
    with pytest.raises(BackupSourceError) as caught:
        PgBackRestSource(config(binary)).latest()
    assert str(caught.value) == (
        "pgbackrest info: exited with code 32: ERROR: [032]: 'relative/repo' must begin with / for 'repo1-path' option"
    )


def test_missing_repo_path_with_stanza_is_no_backup(tmp_path):
    code, stdout, stderr = _error_case("repo path that does not exist, with --stanza (exit 0, error reported inside JSON)")
    binary = stand_in(tmp_path, stdout, stderr, exit_code=code)
    with pytest.raises(NoBackupFound, match="missing stanza path"):
        PgBackRestSource(config(binary)).latest()


def test_empty_list_is_no_backup(tmp_path):
    code, stdout, stderr = _error_case("repo path that does not exist, without --stanza (exit 0, empty list)")
    assert stdout == "[]"
    binary = stand_in(tmp_path, stdout, stderr, exit_code=code)
    with pytest.raises(NoBackupFound, match=r"no stanza at all \(an empty list\)"):
        PgBackRestSource(config(binary)).latest()


def test_invalid_stanza_shape_is_an_error_with_the_repos_message(tmp_path):
    code, stdout, stderr = _error_case("repo path not readable, without --stanza (exit 0, stanza name '[invalid]')")
    binary = stand_in(tmp_path, stdout, stderr, exit_code=code)
    with pytest.raises(BackupSourceError) as caught:
        PgBackRestSource(config(binary)).latest()
    assert "cannot read the repository" in str(caught.value)
    assert "[13] Permission denied (stanza [invalid])" in str(caught.value)


def test_other_stanzas_only_is_no_backup():
    text = fixture("pgbackrest-info.json").replace('"name":"demo"', '"name":"other"')
    with pytest.raises(NoBackupFound, match=r"no stanza 'demo' \(it lists: other\)"):
        parse_info(text, "demo")


def test_lookup_maps_answers_to_missing_and_error(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    missing = PgBackRestSource(config(stand_in(tmp_path / "a", fixture("pgbackrest-info-no-backups.json")))).lookup()
    assert missing.info is None and missing.error is None and "no valid backups" in missing.missing
    error = PgBackRestSource(config(stand_in(tmp_path / "b", fixture("pgbackrest-info-repo-error.json")))).lookup()
    assert error.info is None and error.missing is None and "Permission denied" in error.error


# --- failed backups, several repositories ---------------------------------------------------


def _info_data() -> list:
    return json.loads(fixture("pgbackrest-info.json"))


def test_a_backup_marked_error_is_skipped_and_reported():
    data = _info_data()
    data[0]["backup"][1]["error"] = True
    info = parse_info(json.dumps(data), "demo")
    assert info.id == "20261127-174243F" and info.kind == "pgbackrest full"
    assert info.size_bytes == 5613657 and info.details["prior"] is None
    assert info.details["failed_backups"] == [
        {"label": "20261127-174243F_20261127-174259I", "type": "incr", "stopped_at": "2026-11-27T17:43:02+00:00"}
    ]


def test_only_failed_backups_is_no_backup():
    data = _info_data()
    for backup in data[0]["backup"]:
        backup["error"] = True
    with pytest.raises(NoBackupFound, match=r"2 backup\(s\) of stanza 'demo', all marked as failed \(error: true\)"):
        parse_info(json.dumps(data), "demo")


def test_backups_without_error_flag_count_as_good():
    # pgBackRest before 2.36 prints no "error" key.
    data = _info_data()
    for backup in data[0]["backup"]:
        del backup["error"]
    assert parse_info(json.dumps(data), "demo").id == "20261127-174243F_20261127-174259I"


def test_previous_sizes_are_those_of_the_same_type_in_the_same_repository():
    data = _info_data()
    full, incr = data[0]["backup"]
    # The newest is an incremental, the only one: nothing of its type before it.
    assert parse_info(json.dumps(data), "demo").previous_sizes == ()

    def backup(label, kind, stop, size, repo=1, error=False):
        raw = json.loads(json.dumps(full if kind == "full" else incr))
        raw.update(label=label, type=kind, error=error)
        raw["timestamp"] = {"start": stop - 10, "stop": stop}
        raw["info"]["repository"]["size"] = size
        raw["database"]["repo-key"] = repo
        return raw

    stop = full["timestamp"]["stop"]
    data[0]["backup"] = [
        backup("A", "full", stop - 300, 100), backup("B", "full", stop - 200, 200),
        backup("C", "full", stop - 150, 999, error=True),  # failed: not a backup to compare with
        backup("D", "full", stop - 100, 777, repo=2),  # another repository's copy
        backup("E", "diff", stop - 50, 50), backup("F", "full", stop, 40),
    ]
    data[0]["repo"].append({"cipher": "none", "key": 2, "status": {"code": 0, "message": "ok"}})
    info = parse_info(json.dumps(data), "demo")
    assert (info.id, info.previous_sizes) == ("F", (200, 100))


def test_newest_is_by_stop_time_not_by_list_order():
    data = _info_data()
    data[0]["backup"].reverse()
    assert parse_info(json.dumps(data), "demo").id == "20261127-174243F_20261127-174259I"


def _two_repos(second_status: dict) -> list:
    data = _info_data()
    entry = data[0]
    entry["repo"].append({"cipher": "none", "key": 2, "status": second_status})
    entry["status"] = {"code": 4, "lock": {"backup": {"held": True}}, "message": "different across repos"}
    return data


def test_mixed_repos_where_one_has_no_stanza_yet_still_answer():
    data = _two_repos({"code": 1, "message": "missing stanza path"})
    info = parse_info(json.dumps(data), "demo")
    assert info.id == "20261127-174243F_20261127-174259I"
    assert info.details["stanza_status"]["code"] == 4
    assert info.details["repos"][1] == {"key": 2, "code": 1, "message": "missing stanza path"}
    assert info.details["backup_running"] is True


def test_mixed_repos_where_one_is_unreadable_is_an_error():
    data = _two_repos({"code": 99, "message": "[HostConnectError] unable to connect to 's3.example:443'"})
    with pytest.raises(BackupSourceError, match=r"repo2: \[HostConnectError\] unable to connect"):
        parse_info(json.dumps(data), "demo")


# --- output of the wrong shape: an error naming what was missing, never a traceback -------------


def _mutate(change):
    data = _info_data()
    change(data)
    return json.dumps(data)


MALFORMED = {
    "not json": ("ERROR: something else", "did not print JSON"),
    "nothing": ("", "printed nothing"),
    "an object": ('{"name": "demo"}', "printed an object, expected a list of stanzas"),
    "a stanza that is a string": ('["demo"]', r"stanza\[0\] is a string, expected an object"),
    "no status": (_mutate(lambda d: d[0].pop("status")), "stanza 'demo' has no 'status'"),
    "status code a string": (
        _mutate(lambda d: d[0]["status"].update(code="0")),
        r"stanza 'demo'.status.code is a string, expected an integer",
    ),
    "no repo list": (_mutate(lambda d: d[0].pop("repo")), "stanza 'demo' has no 'repo'"),
    "backup not a list": (_mutate(lambda d: d[0].update(backup={})), r"stanza 'demo'.backup is an object, expected a list"),
    "backup without label": (_mutate(lambda d: d[0]["backup"][1].pop("label")), r"backup\[1\] has no 'label'"),
    "backup without stop time": (
        _mutate(lambda d: d[0]["backup"][1]["timestamp"].pop("stop")),
        r"backup\[1\] \(20261127-174243F_20261127-174259I\).timestamp has no 'stop'",
    ),
    "stop time as text": (
        _mutate(lambda d: d[0]["backup"][0]["timestamp"].update(stop="1795801367")),
        r"timestamp.stop is a string, expected a number",
    ),
    "stop time out of range": (
        _mutate(lambda d: d[0]["backup"][1]["timestamp"].update(stop=10**20)),
        "is not a usable time",
    ),
    "unknown type": (_mutate(lambda d: d[0]["backup"][1].update(type="snapshot")), "type is 'snapshot', expected one of full, diff, incr"),
    "error flag as text": (_mutate(lambda d: d[0]["backup"][1].update(error="false")), r"\.error is a string, expected a boolean"),
    "no repository size": (
        _mutate(lambda d: d[0]["backup"][1]["info"]["repository"].pop("size")),
        r"info.repository has no 'size'",
    ),
    "size as a float": (
        _mutate(lambda d: d[0]["backup"][1]["info"]["repository"].update(size=1.5)),
        r"info.repository.size is a number, expected an integer",
    ),
    "no info": (_mutate(lambda d: d[0]["backup"][1].pop("info")), r"has no 'info'"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_output_is_an_error_naming_what_is_missing(case):
    text, message = MALFORMED[case]
    with pytest.raises(BackupSourceError, match=message) as caught:
        parse_info(text, "demo")
    assert str(caught.value).startswith("pgbackrest info")


def test_garbage_from_the_tool_is_an_error(tmp_path):
    binary = stand_in(tmp_path, "Segmentation fault? no: \x00\xff garbage")
    with pytest.raises(BackupSourceError, match=r"^pgbackrest info did not print JSON .*: Segmentation fault"):
        PgBackRestSource(config(binary)).latest()


# --- the process: exit codes, timeout, secrets ------------------------------------------------


def test_non_zero_exit_is_an_error_with_the_tools_stderr(tmp_path):
    binary = stand_in(tmp_path, "", "  something went wrong  \n\n", exit_code=1)
    with pytest.raises(BackupSourceError) as caught:
        PgBackRestSource(config(binary)).latest()
    assert str(caught.value) == "pgbackrest info: pgbackrest exited with code 1: something went wrong"


def test_a_tool_that_runs_over_is_killed_with_its_children(tmp_path):
    binary = stand_in(tmp_path, fixture("pgbackrest-info.json"), sleep=30)
    started = time.monotonic()
    with pytest.raises(BackupSourceError, match=r"^pgbackrest info: pgbackrest timed out after 0.5 s") as caught:
        PgBackRestSource(config(binary, timeout_seconds=0.5)).latest()
    assert time.monotonic() - started < 5
    assert "timed out after 0.5 s" in str(caught.value)
    child = int((tmp_path / "child").read_text())
    assert wait_dead(child, 2), "the tool's child survived the timeout"


def test_verify_runs_under_the_timeout_too(tmp_path):
    stdout, stderr = VERIFY["good"]
    binary = stand_in(tmp_path, stdout, stderr, sleep=30)
    info = parse_info(INFO_FULL_INCR, STANZA)
    with pytest.raises(BackupSourceError, match=r"^pgbackrest verify: pgbackrest timed out after 0.5 s"):
        PgBackRestSource(config(binary, timeout_seconds=0.5, verify_every_days=1)).verify_readable(info, 150000)


def test_missing_binary_is_an_error(tmp_path):
    with pytest.raises(BackupSourceError, match=r"^pgbackrest info: cannot run nosuch-pgbackrest"):
        PgBackRestSource(config(tmp_path / "nosuch-pgbackrest")).latest()


def test_secrets_never_appear_in_a_message(tmp_path, monkeypatch):
    conf = tmp_path / "pgbackrest.conf"
    conf.write_text("[global]\nrepo1-path=/var/lib/pgbackrest\nrepo1-cipher-pass=Sup3rSecretPassphrase\n")
    monkeypatch.setenv("PGBACKREST_REPO2_S3_KEY_SECRET", "AWSs3cr3tKEYvalue")
    (tmp_path / "tool").mkdir()
    binary = stand_in(
        tmp_path / "tool",
        "",
        "ERROR: [031]: cannot decrypt with 'Sup3rSecretPassphrase' or key AWSs3cr3tKEYvalue\n",
        exit_code=31,
    )
    with pytest.raises(BackupSourceError) as caught:
        PgBackRestSource(config(binary, config_file=conf)).latest()
    message = str(caught.value)
    assert "Sup3rSecretPassphrase" not in message and "AWSs3cr3tKEYvalue" not in message
    assert "cannot decrypt with '********' or key ********" in message


def test_a_wrapper_that_cannot_switch_user_is_an_error_with_its_words(tmp_path):
    wrapper = tmp_path / "pgbackrest-as-nobody"
    wrapper.write_text('#!/bin/sh\nexec runuser -u pgbv-no-such-user -- /usr/bin/pgbackrest "$@"\n')
    wrapper.chmod(0o755)
    with pytest.raises(BackupSourceError, match=r"pgbackrest info: pgbackrest-as-nobody exited with code \d+: runuser: user pgbv-no-such-user does not exist"):
        PgBackRestSource(config(wrapper)).latest()


@pytest.mark.skipif(os.geteuid() != 0, reason="runuser switches users only for root")
def test_a_wrapper_running_over_is_killed_with_the_tool_it_started(tmp_path):
    # runuser stays as the parent of the program it runs; both must go.
    shared = Path(tempfile.mkdtemp(prefix="pgbv-wrapper-"))
    try:
        os.chmod(shared, 0o777)
        wrapper = tmp_path / "pgbackrest-as-postgres"
        wrapper.write_text(
            f"#!/bin/sh\nexec runuser -u postgres -- /bin/sh -c 'echo $$ > {shared}/pid; exec sleep 30' \"$@\"\n"
        )
        wrapper.chmod(0o755)
        with pytest.raises(BackupSourceError, match=r"pgbackrest-as-postgres timed out after 0.5 s"):
            PgBackRestSource(config(wrapper, timeout_seconds=0.5)).latest()
        tool = int((shared / "pid").read_text())
        assert wait_dead(tool, 2), "the program the wrapper started survived the timeout"
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_the_example_is_valid_and_builds_this_source():
    settings = load_settings(Path(__file__).resolve().parents[2] / "examples" / "pgbackrest.yml", environ={})
    source = source_for(settings.targets[0].backup)
    assert isinstance(source, PgBackRestSource) and source.checks_readable()
    assert source.config.binary == "/usr/local/bin/pgbackrest-as-postgres"


def test_registered_as_a_source(tmp_path):
    assert SOURCES["pgbackrest"] is PgBackRestSource
    source = source_for(config("pgbackrest", verify_every_days=1))
    assert isinstance(source, PgBackRestSource) and source.checks_readable()
    # Read by default, on a cadence; 0 leaves it to --full-read.
    default = PgBackRestSource(config("pgbackrest"))
    assert default.checks_readable() and default.full_read_every_days() == 7
    never = PgBackRestSource(config("pgbackrest", verify_every_days=0))
    assert not never.checks_readable() and never.full_read_on_demand()


# --- verify, on captured outputs ----------------------------------------------------------------


def _verify(tmp_path, case: str, info_text: str = INFO_FULL_INCR, exit_code: int = 0) -> str:
    stdout, stderr = VERIFY[case]
    binary = stand_in(tmp_path, stdout, stderr, exit_code=exit_code)
    info = parse_info(info_text, STANZA)
    return PgBackRestSource(config(binary, verify_every_days=1)).verify_readable(info, 150000)


def test_verify_of_a_good_repository_says_what_it_proved(tmp_path):
    message = _verify(tmp_path, "good")
    assert message == (
        f"pgbackrest verify: backup {INCR} is valid (965 of 965 files checked), as are the backups it depends on ({FULL}); "
        "its WAL 000000010000000000000004 is in archive 15-1 (4 of 4 WAL valid); stanza demo status ok"
    )
    assert args_of(tmp_path) == [
        "--stanza=demo", "--repo=1", "verify", "--output=text", "--verbose",
        "--log-level-console=off", "--log-level-stderr=detail", "--log-timestamp=n",
    ]


def test_verify_names_the_damaged_file_of_a_backup_the_newest_depends_on(tmp_path):
    with pytest.raises(BackupUnreadable) as caught:
        _verify(tmp_path, "full-corrupt")
    message = str(caught.value)
    assert f"backup {INCR} is invalid (964 of 965 files valid)" in message
    assert f"backup {FULL}, which {INCR} depends on, is invalid" in message
    assert f"invalid checksum '{FULL}/pg_data/PG_VERSION.gz'" in message


def test_verify_names_a_missing_file_of_the_newest(tmp_path):
    with pytest.raises(BackupUnreadable, match=rf"file missing '{INCR}/pg_data/base/5/1247.gz'"):
        _verify(tmp_path, "incr-missing")


def test_verify_fails_a_missing_manifest_although_the_stanza_says_ok(tmp_path):
    with pytest.raises(BackupUnreadable, match=rf"backup {INCR}: manifest missing \(stanza demo status ok\)"):
        _verify(tmp_path, "manifest-missing")


def test_verify_fails_an_unusable_backup_info(tmp_path):
    with pytest.raises(BackupUnreadable) as caught:
        _verify(tmp_path, "no-backup-info")
    assert str(caught.value) == (
        f"pgbackrest verify: backup {INCR} was not verified: No usable backup.info file (stanza demo status error)"
    )
    report = parse_verify(*VERIFY["no-backup-info"])
    assert report.notes == ["No usable backup.info file"]


def test_verify_fails_when_the_wal_the_newest_needs_is_gone(tmp_path):
    # pgBackRest 2.45 itself calls this repository ok.
    with pytest.raises(BackupUnreadable) as caught:
        _verify(tmp_path, "wal-missing")
    assert str(caught.value) == (
        "pgbackrest verify: WAL 000000010000000000000004, needed to make backup "
        f"{INCR} consistent, is missing from archive 15-1 (it holds 000000010000000000000001-000000010000000000000002) "
        "(stanza demo status ok)"
    )


def test_verify_names_a_corrupt_wal_segment_the_newest_needs(tmp_path):
    with pytest.raises(BackupUnreadable) as caught:
        _verify(tmp_path, "wal-corrupt")
    assert str(caught.value) == (
        "pgbackrest verify: WAL segment 000000010000000000000004: invalid result '15-1/0000000100000000/000000010000000000000004-"
        "91810d02f126b15b5728621294e008d4073149fe.gz' ([29] raised from local-1 protocol: zlib threw error: [-3] data error) "
        "(stanza demo status error)"
    )


def test_verify_of_an_older_full_passes_when_its_wal_is_there(tmp_path):
    # The same WAL-less repository is fine for the full backup, whose WAL (…02) is kept.
    data = json.loads(INFO_FULL_INCR)
    data[0]["backup"].pop()
    assert "is valid (964 of 964 files checked)" in _verify(tmp_path, "wal-missing", json.dumps(data))


def test_verify_fails_when_the_repository_is_in_error_elsewhere(tmp_path):
    # The incremental is damaged, the full (treated as the newest here) is not: the
    # stanza is still in error, and pgbv does not overrule the tool.
    data = json.loads(INFO_FULL_INCR)
    data[0]["backup"].pop()
    with pytest.raises(BackupUnreadable) as caught:
        _verify(tmp_path, "incr-missing", json.dumps(data))
    message = str(caught.value)
    assert f"status error although backup {FULL} is valid" in message
    assert f"backup {INCR} is invalid (964 of 965 files valid)" in message and f"file missing '{INCR}/pg_data/base/5/1247.gz'" in message


def test_verify_non_zero_exit_is_an_error(tmp_path):
    binary = stand_in(tmp_path, "", _BEGIN + "ERROR: [032]: key '7' is not valid for 'repo' option\n", exit_code=32)
    info = parse_info(INFO_FULL_INCR, STANZA)
    with pytest.raises(BackupSourceError) as caught:
        PgBackRestSource(config(binary, verify_every_days=1)).verify_readable(info, 150000)
    assert str(caught.value) == "pgbackrest verify: exited with code 32: ERROR: [032]: key '7' is not valid for 'repo' option"


def test_verify_without_a_result_is_an_error(tmp_path):
    binary = stand_in(tmp_path, "something else entirely\n", "")
    info = parse_info(INFO_FULL_INCR, STANZA)
    with pytest.raises(BackupSourceError, match=r"printed no result \(no 'status:' line\); it said: something else"):
        PgBackRestSource(config(binary, verify_every_days=1)).verify_readable(info, 150000)


def test_verify_that_does_not_list_the_backup_is_an_error(tmp_path):
    report = parse_verify(*VERIFY["good"])
    info = BackupInfo(id="20261128-000000F", finished_at=datetime.now(timezone.utc), size_bytes=1, kind="pgbackrest full")
    with pytest.raises(BackupSourceError, match="did not list backup 20261128-000000F"):
        judge_verify(report, info, STANZA)


def test_verify_of_another_stanza_is_an_error():
    stdout, stderr = VERIFY["good"]
    report = parse_verify(stdout.replace("stanza: demo", "stanza: other"), stderr)
    with pytest.raises(BackupSourceError, match="reported stanza 'other'"):
        judge_verify(report, parse_info(INFO_FULL_INCR, STANZA), STANZA)


# --- the real tool, against a throwaway PostgreSQL 15 with archiving ------------------------------


def _as_postgres(*argv, timeout: float = 120) -> subprocess.CompletedProcess:
    command = [str(a) for a in argv]
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    # cwd /: the postgres user may not enter the test runner's folder.
    return subprocess.run(command, check=True, capture_output=True, text=True, timeout=timeout, cwd="/")


class Repo:
    """A pgBackRest repository in its own folder, owned by the PostgreSQL user, with the
    configuration file that points at it (a copy gets its own file and folder)."""

    def __init__(self, base: Path, pg_data: Path, socket_dir: Path):
        self.base = base
        self.pg_data, self.socket_dir = pg_data, socket_dir
        self.path = base / "repo"
        self.conf = base / "pgbackrest.conf"
        self.conf.write_text(
            "[global]\n"
            f"repo1-path={self.path}\n"
            f"log-path={base / 'log'}\n"
            # A private lock folder: pgBackRest's default /tmp/pgbackrest is shared.
            f"lock-path={base / 'lock'}\n"
            "log-level-file=off\n"
            "repo1-retention-full=9\n"
            "start-fast=y\n"
            f"[{STANZA}]\n"
            f"pg1-path={pg_data}\n"
            f"pg1-socket-path={socket_dir}\n"
        )
        if os.geteuid() == 0:
            shutil.chown(self.conf, "postgres")

    def pgbackrest(self, *args) -> subprocess.CompletedProcess:
        return _as_postgres(PGBACKREST, f"--stanza={STANZA}", f"--config={self.conf}", *args)

    def copy(self) -> Repo:
        base = _private_dir("pgbv-pgbackrest-copy-")
        # cp -a: keeps the owner, which a damaged copy must still have.
        subprocess.run(["cp", "-a", str(self.path), str(base / "repo")], check=True)
        return Repo(base, self.pg_data, self.socket_dir)

    def backup_dir(self, label: str) -> Path:
        return self.path / "backup" / STANZA / label


def _private_dir(prefix: str) -> Path:
    base = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(base, 0o755)
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
    return base


def _archiving_cluster() -> tuple[Path, Cluster]:
    """A PG15 cluster whose archive_command pushes into the repository configured at
    base/pgbackrest.conf (not started)."""
    if PGBACKREST is None:
        pytest.skip("pgbackrest is not installed (apt-get install pgbackrest)")
    if not (PG15_BIN / "initdb").exists():
        pytest.skip(f"no PostgreSQL 15 server binaries in {PG15_BIN} (pgBackRest 2.45 supports up to 15)")
    base = _private_dir("pgbv-pgbackrest-")
    conf = base / "pgbackrest.conf"
    cluster = Cluster(
        bin_dir=PG15_BIN,
        settings={
            "archive_mode": "on",
            "archive_command": f"{PGBACKREST} --stanza={STANZA} --config={conf} archive-push %p",
            "wal_level": "replica",
        },
    )
    return base, cluster


def _psql(cluster: Cluster, statement: str) -> None:
    _as_postgres(cluster.pg_ctl.path.parent / "psql", "-h", cluster.base, "-U", "postgres", "-qc", statement)


@pytest.fixture(scope="module")
def real_repo():
    """A PG15 cluster archiving into a fresh repository, with a full backup and an
    incremental on it; module-scoped, as it takes a few seconds to build."""
    base, cluster = _archiving_cluster()
    timings: dict[str, float] = {}
    try:
        cluster.start()
        repo = Repo(base, cluster.data, cluster.base)
        started = time.monotonic()
        repo.pgbackrest("stanza-create")
        timings["stanza-create"] = time.monotonic() - started
        before_full = datetime.now(timezone.utc).replace(microsecond=0)
        started = time.monotonic()
        repo.pgbackrest("backup", "--type=full")
        timings["backup full"] = time.monotonic() - started
        repo.full_info_json = repo.pgbackrest("info", "--output=json").stdout
        after_full = datetime.now(timezone.utc)
        _psql(cluster, "CREATE TABLE t AS SELECT g FROM generate_series(1, 10000) g")
        started = time.monotonic()
        repo.pgbackrest("backup", "--type=incr")
        timings["backup incr"] = time.monotonic() - started
        repo.full_window = (before_full, after_full)
        repo.timings = timings
        yield repo
    finally:
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def as_postgres_wrapper(tmp_path_factory) -> Path:
    """The documented way to run pgbackrest as the repository's owner."""
    wrapper = tmp_path_factory.mktemp("wrapper") / "pgbackrest-as-postgres"
    wrapper.write_text(f'#!/bin/sh\nexec runuser -u postgres -- {PGBACKREST or "/usr/bin/pgbackrest"} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def _real_source(where: Repo, wrapper: Path, **fields) -> PgBackRestSource:
    return PgBackRestSource(config(wrapper, config_file=where.conf, **fields))


def test_real_repository_newest_backup(real_repo, as_postgres_wrapper, tmp_path):
    started = time.monotonic()
    info = _real_source(real_repo, as_postgres_wrapper).latest()
    elapsed = time.monotonic() - started
    print(f"\nreal info ({elapsed:.2f}s; setup {real_repo.timings}): {info}")
    full = parse_info(real_repo.full_info_json, STANZA)
    assert full.kind == "pgbackrest full" and full.details["prior"] is None
    low, high = real_repo.full_window
    assert low <= full.finished_at <= high
    assert info.kind == "pgbackrest incr"
    assert info.details["prior"] == full.id and info.details["reference"] == [full.id]
    assert info.finished_at.tzinfo is timezone.utc and info.finished_at > full.finished_at
    assert info.size_bytes == info.details["repository_size_bytes"] > full.details["repository_size_bytes"]
    assert info.details["database_size_bytes"] > info.size_bytes  # compressed in the repository
    assert info.details["pg_version"] == "15" and info.details["archive_id"] == "15-1"
    assert info.details["wal_start"] <= info.details["wal_stop"] <= info.details["archive_max"]
    assert info.details["stanza_status"] == {"code": 0, "message": "ok"}
    assert info.location == f"repo1/backup/{STANZA}/{info.id}"
    assert (real_repo.backup_dir(info.id) / "backup.manifest").exists()


def test_real_repository_unknown_stanza_is_no_backup(real_repo, as_postgres_wrapper):
    with pytest.raises(NoBackupFound, match=r"no backup of stanza 'nosuch': repo1: missing stanza path"):
        _real_source(real_repo, as_postgres_wrapper, stanza="nosuch").latest()


def test_real_repository_invalid_option_is_an_error(real_repo, as_postgres_wrapper):
    with pytest.raises(BackupSourceError) as caught:
        _real_source(real_repo, as_postgres_wrapper, repo=7).latest()
    assert str(caught.value) == "pgbackrest info: exited with code 32: ERROR: [032]: key '7' is not valid for 'repo' option"


def test_real_verify_of_a_good_repository(real_repo, as_postgres_wrapper):
    source = _real_source(real_repo, as_postgres_wrapper, verify_every_days=1)
    info = source.latest()
    started = time.monotonic()
    message = source.verify_readable(info, 150000)
    print(f"\nreal verify, good ({time.monotonic() - started:.2f}s): {message}")
    assert message.startswith(f"pgbackrest verify: backup {info.id} is valid (")
    assert f"as are the backups it depends on ({info.details['prior']})" in message
    assert "stanza demo status ok" in message


def _damaged(real_repo: Repo, wrapper: Path, damage) -> tuple[BackupInfo, str]:
    copy_ = real_repo.copy()
    try:
        source = _real_source(copy_, wrapper, verify_every_days=1)
        info = source.latest()
        what = damage(copy_, info)
        started = time.monotonic()
        with pytest.raises(BackupUnreadable) as caught:
            source.verify_readable(info, 150000)
        print(f"\nreal verify, {what} ({time.monotonic() - started:.2f}s): {caught.value}")
        return info, str(caught.value)
    finally:
        shutil.rmtree(copy_.base, ignore_errors=True)


def _largest_file(folder: Path) -> Path:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


def test_real_verify_names_a_corrupted_file(real_repo, as_postgres_wrapper):
    flipped = {}

    def corrupt(repo, info):
        victim = _largest_file(repo.backup_dir(info.id) / "pg_data")
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0xFF
        victim.write_bytes(bytes(data))
        # As verify names it: relative to the stanza's backup folder.
        flipped["name"] = victim.relative_to(repo.path / "backup" / STANZA).as_posix()
        return f"flipped a byte of {flipped['name']}"

    info, message = _damaged(real_repo, as_postgres_wrapper, corrupt)
    assert f"backup {info.id} is invalid" in message
    assert f"'{flipped['name']}'" in message


def test_real_verify_names_a_deleted_file_of_the_full_the_newest_needs(real_repo, as_postgres_wrapper):
    def delete(repo, info):
        victim = repo.backup_dir(info.details["prior"]) / "pg_data" / "PG_VERSION.gz"
        victim.unlink()
        return f"deleted {victim.name} of the full backup"

    info, message = _damaged(real_repo, as_postgres_wrapper, delete)
    assert f"which {info.id} depends on, is invalid" in message
    assert f"'{info.details['prior']}/pg_data/PG_VERSION.gz'" in message


def test_real_verify_fails_a_missing_manifest(real_repo, as_postgres_wrapper):
    def delete_manifest(repo, info):
        for name in ("backup.manifest", "backup.manifest.copy"):
            (repo.backup_dir(info.id) / name).unlink()
        return "deleted the newest backup's manifest"

    info, message = _damaged(real_repo, as_postgres_wrapper, delete_manifest)
    assert f"backup {info.id}: manifest missing" in message


def test_real_verify_fails_when_the_backups_wal_is_gone(real_repo, as_postgres_wrapper):
    def delete_wal(repo, info):
        segment = info.details["wal_stop"]
        folder = repo.path / "archive" / STANZA / info.details["archive_id"] / segment[:16]
        for victim in folder.glob(f"{segment}*"):
            victim.unlink()
        return f"deleted WAL {segment}"

    info, message = _damaged(real_repo, as_postgres_wrapper, delete_wal)
    assert f"needed to make backup {info.id} consistent, is missing from archive 15-1" in message


# --- verify on a cadence (verify_every_days), through real runs ----------------------------


def _flip_a_byte(repo: Repo, label: str) -> tuple[Path, bytes]:
    """Corrupt the largest file of backup label; returns it and its good bytes."""
    victim = _largest_file(repo.backup_dir(label) / "pg_data")
    good = victim.read_bytes()
    data = bytearray(good)
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    return victim, good


def _cadence_target(demo_db: str, where: Repo, wrapper: Path, **backup):
    # The default configuration: no verify_every_days unless a test says so.
    return make_target(demo_db, checks={}, backup={
        "source": "pgbackrest", "stanza": STANZA, "config_file": str(where.conf), "binary": str(wrapper),
        "timeout_seconds": 300, **backup,
    })


def _readable(target, at: datetime, **kwargs):
    started = time.monotonic()
    result = verify_target(target, now=at, **kwargs)
    assert result.record_error is None, result.record_error
    check = result.check("backup_readable")
    print(f"\n{at.isoformat()} {kwargs} ({time.monotonic() - started:.2f}s): {check and check.outcome}: {check and check.message}")
    return result, check


def test_real_verify_on_a_cadence_by_default(real_repo, as_postgres_wrapper, demo_db):
    copy_ = real_repo.copy()
    try:
        target = _cadence_target(demo_db, copy_, as_postgres_wrapper)
        assert target.backup.verify_every_days == 7
        start = datetime.now(timezone.utc).replace(microsecond=0)
        day = timedelta(days=1)

        # First run: no full read recorded before, so it reads; the facts go forward.
        result, first = _readable(target, start)
        assert first.outcome == "pass", first.message
        assert first.message.startswith("pgbackrest verify: backup ")
        said = first.message.removesuffix(" (full read this run: no full read recorded before)")
        assert said != first.message
        label = result.backup.info.id
        # What the read found, when and of which backup: what the next runs report.
        assert result.verification_details()["full_read"] == {
            "source": "pgbackrest", "at": start.isoformat(), "backup_id": label, "outcome": "pass", "message": said,
        }

        victim, good = _flip_a_byte(copy_, label)
        # Two days later, inside the cadence: not read again, the last read reported.
        _, inside = _readable(target, start + 2 * day)
        assert inside.outcome == "pass"
        assert inside.message.startswith(f"last full read {start.isoformat()} (2.0 days ago, next due by {(start + 7 * day).isoformat()}")
        assert f"pgbackrest verify: backup {label} is valid" in inside.message
        # Seven days after the last read: read, and the corruption found.
        _, due = _readable(target, start + 7 * day)
        assert due.outcome == "fail"
        assert f"backup {label} is invalid" in due.message and victim.name in due.message
        assert due.message.endswith(f"(full read this run: the last one, at {start.isoformat()}, is older than verify_every_days 7)")
        # A found corruption keeps failing, read again every run, until a read passes.
        _, again = _readable(target, start + 7 * day + timedelta(hours=2))
        assert again.outcome == "fail" and "did not pass)" in again.message
        victim.write_bytes(good)
        _, repaired = _readable(target, start + 7 * day + timedelta(hours=4))
        assert repaired.outcome == "pass" and "did not pass)" in repaired.message

        # Within the cadence again; --full-read reads now and finds the damage.
        _flip_a_byte(copy_, label)
        _, skipped = _readable(target, start + 8 * day)
        assert skipped.outcome == "pass" and skipped.message.startswith("last full read ")
        _, forced = _readable(target, start + 8 * day + timedelta(hours=1), full_read=True)
        assert forced.outcome == "fail" and forced.message.endswith("(full read this run: asked for with --full-read)")
    finally:
        shutil.rmtree(copy_.base, ignore_errors=True)


def test_real_corrupted_repository_fails_on_the_first_run_by_default(real_repo, as_postgres_wrapper, demo_db):
    copy_ = real_repo.copy()
    try:
        target = _cadence_target(demo_db, copy_, as_postgres_wrapper)
        _flip_a_byte(copy_, PgBackRestSource(target.backup).latest().id)
        result, check = _readable(target, datetime.now(timezone.utc))
        assert check.outcome == "fail" and "is invalid" in check.message
        assert result.status == "failure"
    finally:
        shutil.rmtree(copy_.base, ignore_errors=True)


def test_real_verify_never_unless_asked(real_repo, as_postgres_wrapper, demo_db):
    copy_ = real_repo.copy()
    try:
        target = _cadence_target(demo_db, copy_, as_postgres_wrapper, verify_every_days=0)
        _flip_a_byte(copy_, PgBackRestSource(target.backup).latest().id)
        now = datetime.now(timezone.utc)
        _, check = _readable(target, now, record_result=False)
        assert check is None  # 0: never on its own
        _, forced = _readable(target, now, record_result=False, full_read=True)
        assert forced.outcome == "fail" and forced.message.endswith("(full read this run: asked for with --full-read)")

        # The same from the command line.
        config = copy_.base / "pgbv.yml"
        config.write_text(json.dumps({"targets": [target.model_dump(mode="json", exclude_none=True)]}))

        def cli(*flags):
            proc = subprocess.run([sys.executable, "-m", "exporter", "verify", "--config", str(config), "--no-record",
                                   "--format", "json", *flags], capture_output=True, text=True, timeout=300)
            checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
            return proc.returncode, checks.get("backup_readable")

        assert cli()[1] is None
        code, check = cli("--full-read")
        assert code == 2 and check["outcome"] == "fail" and "is invalid" in check["message"], check
    finally:
        shutil.rmtree(copy_.base, ignore_errors=True)


def test_the_old_verify_key_is_refused_naming_the_new_one(tmp_path):
    config = tmp_path / "pgbv.yml"
    config.write_text(
        "targets:\n  - name: app\n    dsn: postgresql://x@h/app\n"
        "    backup: {source: pgbackrest, stanza: app, verify: true}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(config, environ={})
    assert str(caught.value) == (
        "targets.0.backup: verify: this key was replaced by verify_every_days (default 7: a full read every 7 days; "
        "1: every daily run, what verify: true did; 0: never, what verify: false did)"
    )
    proc = subprocess.run([sys.executable, "-m", "exporter", "check-config", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3 and "verify_every_days" in proc.stderr and "Traceback" not in proc.stderr


# --- backup_size's trend on a real repository -----------------------------------------------------


def test_real_full_backup_that_shrank_fails_backup_size(as_postgres_wrapper, demo_db):
    """Two full backups of a database with a large table, then a full after it was
    dropped: the newest full is compared with the fulls before it (the incremental
    in between is of another type) and fails."""
    from exporter.checks.backup_size import CHECK as BACKUP_SIZE
    from tests.checks.helpers import check_once

    base, cluster = _archiving_cluster()
    try:
        cluster.start()
        repo = Repo(base, cluster.data, cluster.base)
        repo.pgbackrest("stanza-create")
        # md5 text compresses poorly: the table dominates the repository's size.
        _psql(cluster, "CREATE TABLE big AS SELECT md5(g::text) || md5((-g)::text) AS x FROM generate_series(1, 300000) g")
        repo.pgbackrest("backup", "--type=full")
        repo.pgbackrest("backup", "--type=incr")
        repo.pgbackrest("backup", "--type=full")
        target = _cadence_target(demo_db, repo, as_postgres_wrapper, min_size_mb=0)
        steady = PgBackRestSource(target.backup).lookup()
        assert steady.info.kind == "pgbackrest full" and len(steady.info.previous_sizes) == 1
        healthy = check_once(BACKUP_SIZE, target, backup=steady)
        assert healthy.outcome == "pass", healthy.message

        _psql(cluster, "DROP TABLE big")
        repo.pgbackrest("backup", "--type=full")
        shrunk = PgBackRestSource(target.backup).lookup()
        result = check_once(BACKUP_SIZE, target, backup=shrunk)
        print(f"\nreal pgBackRest fulls {shrunk.info.previous_sizes} -> {shrunk.info.size_bytes}: {result.message}")
        assert result.outcome == "fail", result.message
        assert "of the 2 previous pgbackrest full backup(s) the pgbackrest source lists" in result.message
    finally:
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)
