"""The walg source's WAL archive (wal_continuity, the recovery window) on STAND-INS:
no WAL-G binary is packaged for Debian, so `wal-g wal-verify integrity timeline --json`
is answered by a script printing JSON shaped exactly as WAL-G's code prints it
(json.Marshal of a map of check results, keys sorted, no trailing newline; see
tests/fixtures/README.md). The fixtures are the shared reconstructed ones; variants
are made by replacing segment names in them, so the byte shape stays WAL-G's."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from exporter.backups.base import BackupSourceError
from tests.backups.test_walg import LIST, VERIFY_FAILURE, VERIFY_OK, walg

# The fixture's backups: a permanent full at 2A C8 (finished 2026-03-01), a full at
# 31 D4 (2026-03-08), the newest, a delta at 32 A1 (2026-03-09).
SECOND_FINISHED = datetime(2026, 3, 8, 2, 22, 10, 770150, tzinfo=timezone.utc)
NEWEST_FINISHED = datetime(2026, 3, 9, 2, 4, 11, 602358, tzinfo=timezone.utc)


def _source(standin, verify: bytes):
    binary = standin.dispatch("wal-g", {"wal-verify": (verify, 0), "backup-list": (LIST, 0)})
    source = walg(binary)
    return source, source.latest()


def _shifted_failure(lost: tuple[str, str], found_to: str, found_from: str) -> bytes:
    """The failure fixture with its MISSING_LOST range moved (and the FOUND ranges
    around it adjusted; counts are not read for the gap)."""
    text = VERIFY_FAILURE.read_text()
    text = text.replace("000000010000003200000039", found_to)
    text = text.replace("00000001000000320000003A", lost[0]).replace("00000001000000320000003B", lost[1])
    return text.replace("00000001000000320000003C", found_from).encode()


def test_standin_healthy_archive(standin):
    source, info = _source(standin, VERIFY_OK.read_bytes())
    archive = source.wal_archive(info)
    assert standin.calls("wal-g") == ["backup-list", "--detail", "--json"]  # the second call, for the window
    assert (archive.gap, archive.first, archive.last, archive.timeline) == (
        None, "0000000100000031000000D4", "0000000100000032000000F2", 1)
    assert archive.checked_from == "0000000100000032000000A1"
    assert archive.segments_checked == 0xF2 - 0xA1 + 1
    assert archive.holds("0000000100000031000000FF") and archive.holds("000000010000003200000000")
    assert archive.holds("0000000100000032000000F3") is False
    # wal-verify skips the permanent full (2A C8) when it chooses where to start: the
    # window starts at the oldest backup inside what it walked.
    assert archive.window_start == SECOND_FINISHED
    assert archive.last_archived_at is None and any("no archive times" in note for note in archive.notes)


def test_standin_verify_is_called_with_both_checks(standin):
    binary = standin.script("wal-g", 'printf "%s\\n" "$@" >> "$0.all"\ncase "$1" in wal-verify) '
                            f'cat {VERIFY_OK};; *) cat {LIST};; esac\n')
    walg(binary).wal_archive(None)
    calls = (standin.folder / "wal-g.all").read_text().split("\n")
    assert calls[:4] == ["wal-verify", "integrity", "timeline", "--json"]


def test_standin_failure_exits_0_and_a_lost_range_after_the_newest_backup_is_the_gap(standin):
    verify = _shifted_failure(("0000000100000032000000B0", "0000000100000032000000B1"),
                              "0000000100000032000000AF", "0000000100000032000000B2")
    source, info = _source(standin, verify)
    archive = source.wal_archive(info)  # the stand-in exits 0, as WAL-G does on FAILURE
    assert archive.gap == "0000000100000032000000B0"
    assert archive.segments_checked == 0xB0 - 0xA1
    assert archive.last == "0000000100000032000000F0"
    # The tail WAL-G calls uploading is a note, not the gap, and not held.
    assert any(n == "probably still uploading (not counted as a gap): 0000000100000032000000F1..0000000100000032000000F2"
               for n in archive.notes)
    assert archive.holds("0000000100000032000000F1") is False
    # Every backup replays up to the segment before the gap: the start stands. WAL-G
    # gives no times, so the end is unknown rather than the newest segment's, past the gap.
    assert archive.window_start == SECOND_FINISHED
    assert archive.last_archived_at is None and archive.as_dict()["recovery_window"]["end"] is None


def test_standin_failure_before_the_newest_backup_shortens_the_window(standin):
    # The fixture as it is: 32 3A..3B lost, before the delta's start (32 A1).
    source, info = _source(standin, VERIFY_FAILURE.read_bytes())
    archive = source.wal_archive(info)
    assert archive.gap is None and archive.checked_from == "0000000100000032000000A1"
    assert any(n.startswith("WAL lost 00000001000000320000003A..00000001000000320000003B (2 segments)") for n in archive.notes)
    # The full at 31 D4 cannot reach the newest segment: the delta (its own start 32 A1)
    # is the oldest point to recover to.
    assert archive.window_start == NEWEST_FINISHED


def test_standin_the_lost_range_holding_the_backups_start_is_named_at_the_start(standin):
    verify = _shifted_failure(("00000001000000320000009F", "0000000100000032000000A3"),
                              "00000001000000320000009E", "0000000100000032000000A4")
    source, info = _source(standin, verify)
    assert source.wal_archive(info).gap == "0000000100000032000000A1"


def test_standin_delayed_segments_are_a_note(standin):
    verify = VERIFY_FAILURE.read_text().replace('"MISSING_LOST"', '"FOUND"').replace('"MISSING_UPLOADING"', '"MISSING_DELAYED"')
    verify = verify.replace('"status":"FAILURE"', '"status":"WARNING"')
    source, info = _source(standin, verify.encode())
    archive = source.wal_archive(info)
    assert archive.gap is None and archive.last == "0000000100000032000000F0"
    assert any(n.startswith("probably delayed (not counted as a gap)") for n in archive.notes)


def test_standin_a_timeline_mismatch_is_a_note(standin):
    verify = VERIFY_OK.read_text().replace('"timeline":{"status":"OK"', '"timeline":{"status":"FAILURE"')
    verify = verify.replace('"highest_storage_timeline_id":1', '"highest_storage_timeline_id":2')
    source, info = _source(standin, verify.encode())
    notes = source.wal_archive(info).notes
    assert "wal-verify timeline FAILURE: the server is on timeline 1, the storage's highest is 2" in notes


@pytest.mark.parametrize("verify, said", [
    (b'{"timeline":{"status":"OK","details":null}}', "printed no integrity result"),
    (b'{"integrity":{"status":"BROKEN","details":null}}', "unknown status 'BROKEN'"),
    (b'{"integrity":{"status":"FAILURE","details":null}}', "says FAILURE but lists no MISSING_LOST range"),
    (b'{"integrity":{"status":"OK","details":[{"timeline_id":1,"start_segment":"X","end_segment":"Y",'
     b'"segments_count":1,"status":"FOUND"}]}}', "entry 0: 'X' is not a WAL segment name"),
    (b'{"integrity":{"status":"OK","details":[{"start_segment":"000000010000000000000001"}]}}', "entry 0 has no end_segment"),
    (b"not json", "wal-g wal-verify"),
])
def test_standin_output_of_the_wrong_shape_is_an_error(standin, verify, said):
    source, info = _source(standin, verify)
    with pytest.raises(BackupSourceError, match=said):
        source.wal_archive(info)


def test_standin_no_segment_scanned(standin):
    source, info = _source(standin, b'{"integrity":{"status":"OK","details":null},"timeline":{"status":"OK","details":'
                                    b'{"current_timeline_id":1,"highest_storage_timeline_id":1}}}')
    archive = source.wal_archive(info)
    assert archive.last is None and archive.names == frozenset() and "wal-verify found no WAL segment" in archive.notes


def test_standin_wal_verify_that_cannot_reach_the_server_is_an_error(standin):
    binary = standin.fails("wal-g", "ERROR: 2026/03/09 02:00:00.000000 Failed to establish a connection to Postgres cluster")
    with pytest.raises(BackupSourceError, match="Failed to establish a connection to Postgres"):
        walg(binary).wal_archive(None)


def test_the_source_keeps_wal():
    assert walg("wal-g").keeps_wal() is True
