"""The walg source on WAL-G's output (fixtures reconstructed from WAL-G's source),
printed byte for byte by a stand-in wal-g executable."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import pytest

from exporter.backups import WalgBackupSource, source_for
from exporter.backups.base import BackupSourceError, BackupUnreadable, NoBackupFound
from exporter.config import WalgBackup
from exporter.redact import MASK
from tests.backups.test_command import FIXTURES, StandIn, runuser_wrapper, wait_dead

LIST = FIXTURES / "walg-backup-list-detail.json"
LIST_PRETTY = FIXTURES / "walg-backup-list-detail-pretty.json"
VERIFY_OK = FIXTURES / "walg-wal-verify.json"
VERIFY_FAILURE = FIXTURES / "walg-wal-verify-failure.json"
NEWEST = "base_0000000100000032000000A1_D_0000000100000031000000D4"
SECOND = "base_0000000100000031000000D4"
NO_BACKUPS_LOG = "INFO: 2026/03/09 02:00:00.000000 No backups found"


def walg(binary, timeout: float = 10, env: dict[str, str] | None = None, wal_verify: bool = False) -> WalgBackupSource:
    config = WalgBackup(source="walg", binary=str(binary), timeout_seconds=timeout, env=env or {}, wal_verify=wal_verify)
    return WalgBackupSource(config)


def backups() -> list[dict]:
    return json.loads(LIST.read_bytes())


def dumps(data) -> bytes:
    return json.dumps(data).encode() + b"\n"


# --- backup-list -----------------------------------------------------------------------


def test_the_newest_backup_of_the_fixture(standin):
    binary = standin.prints("wal-g", LIST)
    info = walg(binary).latest()
    assert standin.calls("wal-g") == ["backup-list", "--detail", "--json"]
    assert info.id == NEWEST
    assert info.kind == "walg delta"
    assert info.finished_at == datetime(2026, 3, 9, 2, 4, 11, 602358, tzinfo=timezone.utc)
    assert info.size_bytes == 1108624377  # compressed_size: what the delta occupies in storage
    details = info.details
    assert details["delta_from_segment"] == "0000000100000031000000D4"
    assert details["wal_start_segment"] == "0000000100000032000000A1"
    # LSNs as PostgreSQL writes them; the start LSN lies in the start segment.
    assert (details["start_lsn"], details["finish_lsn"]) == ("32/A1000028", "32/A1F0A9C8")
    # Above 2^53: exact, as text.
    assert details["system_identifier"] == "7442813056472915732"
    assert details["uncompressed_size_bytes"] == 3921455104
    assert details["storage_modified_at"] == "2026-03-09T02:04:12.517000+00:00"
    assert details["user_data"] == {"initiator": "cron", "schedule": "daily"}
    assert details["pg_version"] == 160009 and details["is_permanent"] is False
    json.dumps(details)  # stored in verification_details


def test_pretty_output_gives_the_same_answer(standin):
    compact = walg(standin.prints("a", LIST)).latest()
    pretty = walg(standin.prints("b", LIST_PRETTY)).latest()
    assert (pretty.id, pretty.finished_at, pretty.size_bytes, pretty.details) == (
        compact.id, compact.finished_at, compact.size_bytes, compact.details
    )


def test_newest_by_finish_time_not_by_position(standin):
    data = list(reversed(backups()))
    info = walg(standin.prints("wal-g", dumps(data))).latest()
    assert info.id == NEWEST


def test_a_full_backup_and_two_digit_fractions(standin):
    data = [entry for entry in backups() if entry["backup_name"] != NEWEST]
    info = walg(standin.prints("wal-g", dumps(data))).latest()
    assert (info.id, info.kind) == (SECOND, "walg full")
    assert info.finished_at == datetime(2026, 3, 8, 2, 22, 10, 770150, tzinfo=timezone.utc)
    assert info.details["storage_modified_at"] == "2026-03-08T02:22:11.930000+00:00"
    assert "delta_from_segment" not in info.details


def test_previous_sizes_are_those_of_the_same_kind_newest_first(standin):
    # The newest is a delta: no earlier delta to compare with (a full stores everything).
    assert walg(standin.prints("a", LIST)).latest().previous_sizes == ()
    data = [entry for entry in backups() if entry["backup_name"] != NEWEST]
    # The newest full compares with the full before it.
    assert walg(standin.prints("b", dumps(data))).latest().previous_sizes == (15204873316,)
    older_delta = dict(backups()[2], backup_name="base_0000000100000031000000D0_D_000000010000002A000000C8",
                       finish_time="2026-03-05T02:00:00Z", compressed_size=900)
    info = walg(standin.prints("c", dumps([*backups(), older_delta]))).latest()
    assert (info.id, info.previous_sizes) == (NEWEST, (900,))


def test_backups_without_metadata_are_never_the_newest(standin):
    data = backups()
    newest = data[2]
    newest.update(start_time="0001-01-01T00:00:00Z", finish_time="0001-01-01T00:00:00Z", start_lsn=0,
                  finish_lsn=0, system_identifier=None, uncompressed_size=0, compressed_size=0)
    info = walg(standin.prints("wal-g", dumps(data))).latest()
    assert info.id == SECOND
    assert info.details["skipped_without_metadata"] == [NEWEST]


def test_only_backups_without_metadata_means_no_backup(standin):
    data = backups()
    for entry in data:
        entry.update(finish_time="0001-01-01T00:00:00Z", system_identifier=None)
    with pytest.raises(NoBackupFound, match="none with metadata"):
        walg(standin.prints("wal-g", dumps(data))).latest()


def test_no_backups_is_no_backup(standin):
    # What WAL-G really does: nothing on stdout, a log line on stderr, exit 0.
    binary = standin.prints("wal-g", b"", stderr=NO_BACKUPS_LOG)
    lookup = walg(binary).lookup()
    assert lookup.info is None and lookup.error is None
    assert "found no backups" in lookup.missing


@pytest.mark.parametrize("output", [b"[]\n", b"null\n"])
def test_an_empty_list_is_no_backup(standin, output):
    with pytest.raises(NoBackupFound):
        walg(standin.prints("wal-g", output)).latest()


def test_silence_without_the_no_backups_line_is_an_error(standin):
    binary = standin.prints("wal-g", b"", stderr="WARNING: something odd")
    with pytest.raises(BackupSourceError, match="printed nothing; it said: WARNING: something odd"):
        walg(binary).latest()


def test_a_failing_wal_g_is_an_error_with_its_words_and_no_secrets(standin):
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    binary = standin.fails(
        "wal-g", f"ERROR: 2026/03/09 02:00:00.000000 failed to list s3 folder: AccessDenied (key {secret})"
    )
    lookup = walg(binary, env={"AWS_SECRET_ACCESS_KEY": secret, "WALG_S3_PREFIX": "s3://bucket/app"}).lookup()
    assert lookup.error.startswith("wal-g backup-list: wal-g exited with code 1: ERROR:")
    assert "AccessDenied" in lookup.error
    assert secret not in lookup.error and MASK in lookup.error


def test_env_reaches_wal_g(standin):
    binary = standin.prints(
        "wal-g", LIST, before='[ "$WALG_S3_PREFIX" = "s3://bucket/app" ] || { echo "ERROR: no prefix" >&2; exit 1; }\n'
    )
    assert walg(binary, env={"WALG_S3_PREFIX": "s3://bucket/app"}).latest().id == NEWEST
    with pytest.raises(BackupSourceError, match="no prefix"):
        walg(binary).latest()


def test_a_hanging_wal_g_is_stopped_with_its_children(standin):
    binary = standin.sleeps("wal-g")
    started = time.monotonic()
    lookup = walg(binary, timeout=0.5).lookup()
    assert time.monotonic() - started < 4
    assert "timed out after 0.5 s" in lookup.error
    assert wait_dead(standin.child_pid("wal-g"))


@pytest.mark.parametrize(
    ("output", "words"),
    [
        (b"<html>502 Bad Gateway</html>", "wal-g backup-list printed something that is not JSON"),
        (b'{"backups": []}', "printed an object where a list of backups was expected"),
        (b'["base_000000010000002A000000C8"]', "entry 0 is a text, not a backup object"),
        (b'[{"backup_name": "base_1", "time": "2026-03-09T02:04:12Z"}]', "base_1 has no finish_time"),
        (b'[{"finish_time": "2026-03-09T02:04:12Z"}]', "entry 0 has no backup_name"),
        (b'[{"backup_name": "base_1", "finish_time": "2026-03-09T02:04:12"}]', "finish_time '2026-03-09T02:04:12' has no time zone"),
        (b'[{"backup_name": "base_1", "finish_time": "2026-03-09T02:04:12Z"}]', "base_1 has no compressed_size"),
        (b'[{"backup_name": "base_1", "finish_time": "2026-03-09T02:04:12Z", "compressed_size": "1 GB"}]',
         "compressed_size must be an integer"),
    ],
)
def test_unexpected_output_is_an_error_naming_what_is_wrong(standin, output, words):
    with pytest.raises(BackupSourceError) as caught:
        walg(standin.prints("wal-g", output)).latest()
    assert words in str(caught.value)


def test_registered_as_the_walg_source():
    found = source_for(WalgBackup(source="walg"))
    assert isinstance(found, WalgBackupSource)
    assert not found.checks_readable()
    assert source_for(WalgBackup(source="walg", wal_verify=True)).checks_readable()


def test_wal_g_through_a_wrapper_running_it_as_another_user(public_dir, tmp_path):
    # The stand-in refuses to run as root, and needs the env: both must pass the wrapper.
    tool = StandIn(public_dir, record_args=False).prints(
        "wal-g", LIST,
        before='[ "$(id -u)" = 65534 ] || { echo "ERROR: run me as nobody, not $(id -u)" >&2; exit 1; }\n'
               '[ "$WALG_S3_PREFIX" = "s3://bucket/app" ] || { echo "ERROR: no prefix" >&2; exit 1; }\n',
    )
    with pytest.raises(BackupSourceError, match="run me as nobody, not 0"):
        walg(tool, env={"WALG_S3_PREFIX": "s3://bucket/app"}).latest()
    wrapper = runuser_wrapper(tmp_path, "wal-g-as-nobody", tool)
    info = walg(wrapper, env={"WALG_S3_PREFIX": "s3://bucket/app"}).latest()
    assert info.id == NEWEST


# --- wal-verify --------------------------------------------------------------------------


def newest_info(standin):
    return walg(standin.prints("list", LIST)).latest()


def test_wal_verify_ok(standin):
    info = newest_info(standin)
    binary = standin.prints("wal-g", VERIFY_OK)
    message = walg(binary, wal_verify=True).verify_readable(info, 160009)
    assert standin.calls("wal-g") == ["wal-verify", "integrity", "--json"]
    assert message == ("wal-verify integrity OK: 287 WAL segments found from "
                       "0000000100000031000000D4 to 0000000100000032000000F2")


def test_wal_verify_failure_exits_0_and_still_fails(standin):
    info = newest_info(standin)
    binary = standin.prints("wal-g", VERIFY_FAILURE)  # exit 0, as WAL-G does
    with pytest.raises(BackupUnreadable) as caught:
        walg(binary, wal_verify=True).verify_readable(info, 160009)
    message = str(caught.value)
    assert "lost segments: 00000001000000320000003A..00000001000000320000003B (2 segments)" in message
    assert f"before the newest backup {NEWEST}" in message
    assert "probably still uploading: 0000000100000032000000F1..0000000100000032000000F2" in message


def test_wal_verify_failure_after_the_newest_backup_start(standin):
    info = newest_info(standin)
    data = json.loads(VERIFY_FAILURE.read_bytes())
    data["integrity"]["details"][1].update(start_segment="0000000100000032000000B0", end_segment="0000000100000032000000B1")
    with pytest.raises(BackupUnreadable, match=f"at or after the start of the newest backup {NEWEST}"):
        walg(standin.prints("wal-g", dumps(data)), wal_verify=True).verify_readable(info, None)


def test_wal_verify_warning_is_a_message_starting_with_warning(standin):
    info = newest_info(standin)
    data = json.loads(VERIFY_FAILURE.read_bytes())
    data["integrity"]["status"] = "WARNING"
    del data["integrity"]["details"][1]  # no lost range left: only uploading ones
    message = walg(standin.prints("wal-g", dumps(data)), wal_verify=True).verify_readable(info, None)
    assert message.startswith("warning: ")
    assert "probably still uploading: 0000000100000032000000F1..0000000100000032000000F2 (2 segments)" in message


def test_wal_verify_with_nothing_scanned(standin):
    info = newest_info(standin)
    output = b'{"integrity":{"status":"OK","details":null}}'
    message = walg(standin.prints("wal-g", output), wal_verify=True).verify_readable(info, None)
    assert message == "wal-verify integrity OK: no WAL segment was scanned"


@pytest.mark.parametrize(
    ("output", "words"),
    [
        (b"garbage", "wal-g wal-verify integrity printed something that is not JSON"),
        (b'{"timeline":{"status":"OK"}}', "printed no integrity result"),
        (b'{"integrity":{"status":"MAYBE","details":[]}}', "unknown status 'MAYBE'"),
        (b'{"integrity":{"status":"OK","details":[{"status":"FOUND"}]}}', "details entry 0 has no start_segment"),
        (b'{"integrity":{"status":"FAILURE","details":[]}}', "says FAILURE but lists no MISSING_LOST range"),
    ],
)
def test_wal_verify_unexpected_output_is_an_error(standin, output, words):
    info = newest_info(standin)
    with pytest.raises(BackupSourceError) as caught:
        walg(standin.prints("wal-g", output), wal_verify=True).verify_readable(info, None)
    assert words in str(caught.value)


def test_wal_verify_that_cannot_run_is_an_error(standin):
    info = newest_info(standin)
    binary = standin.fails("wal-g", "ERROR: failed to connect to PostgreSQL: connection refused")
    with pytest.raises(BackupSourceError, match="wal-verify integrity: wal-g exited with code 1: .*connection refused"):
        walg(binary, wal_verify=True).verify_readable(info, None)
    with pytest.raises(BackupSourceError, match="timed out after 0.5 s"):
        walg(standin.sleeps("slow"), timeout=0.5, wal_verify=True).verify_readable(info, None)
