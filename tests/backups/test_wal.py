"""WAL segment names, LSNs, history files and the first gap (exporter/backups/wal.py).

The expected names are PostgreSQL's own: XLogFileName for 16 MiB segments puts 256
segments in a log ("...000000FF" is followed by "...0000000100000000"); with
initdb --wal-segsize=64 a log holds 64 segments, with 1 GiB four.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from exporter.backups.wal import (
    DEFAULT_SEGMENT_SIZE,
    Branch,
    Segment,
    WalArchive,
    WalNameError,
    expected_segments,
    first_gap,
    parse_history,
    parse_lsn,
    parse_segment,
    segment_at,
    segment_of_name,
    timeline_of,
)

MiB = 1024 * 1024


# --- segment names ----------------------------------------------------------------------

def test_segment_name_round_trip_16_mib():
    segment = parse_segment("000000010000000000000002")
    assert segment == Segment(1, 2) and segment.size == DEFAULT_SEGMENT_SIZE
    assert segment.name == str(segment) == "000000010000000000000002"


def test_next_crosses_the_log_boundary_at_16_mib():
    last_of_log = parse_segment("0000000100000000000000FF")
    assert last_of_log.number == 255
    assert last_of_log.next().name == "000000010000000100000000"
    assert parse_segment("000000010000000100000000").number == 256


def test_next_crosses_the_log_boundary_at_64_mib():
    size = 64 * MiB
    last_of_log = parse_segment("00000001000000000000003F", size)
    assert last_of_log.per_log == 64 and last_of_log.number == 63
    assert last_of_log.next().name == "000000010000000100000000"
    # 0x40 does not exist with 64 MiB segments: the log ends at 0x3F.
    with pytest.raises(WalNameError, match="64 MiB"):
        parse_segment("000000010000000000000040", size)
    assert segment_of_name("000000010000000000000040", size) is None
    assert parse_segment("000000010000000000000040").number == 0x40  # fine at 16 MiB


def test_one_gib_segments_four_per_log():
    size = 1024 * MiB
    assert parse_segment("000000010000000200000003", size).number == 2 * 4 + 3
    assert Segment(1, 11, size).name == "000000010000000200000003"
    with pytest.raises(WalNameError):
        parse_segment("000000010000000000000004", size)


def test_one_mib_segments():
    size = MiB
    segment = Segment(3, 4096 + 5, size)
    assert segment.name == "000000030000000100000005"
    assert parse_segment(segment.name, size) == segment


@pytest.mark.parametrize("size", [0, 512 * 1024, 3 * MiB, 2048 * MiB])
def test_segment_size_must_be_a_power_of_two_within_limits(size):
    with pytest.raises(WalNameError, match="not a WAL segment size"):
        parse_segment("000000010000000000000001", size)


@pytest.mark.parametrize("name", [
    "000000010000000000000007.gz",
    "000000010000000000000007.zst",
    "000000010000000000000007.lz4",
    "000000010000000000000007.bz2",
    "000000010000000000000007.xz",
    "000000010000000000000007.br",
    "000000010000000000000007-" + "0123456789abcdef0123456789abcdef01234567",
    "000000010000000000000007-" + "0123456789abcdef0123456789abcdef01234567" + ".gz",
])
def test_archive_suffixes_name_the_same_segment(name):
    assert parse_segment(name) == Segment(1, 7)
    assert segment_of_name(name).name == "000000010000000000000007"


@pytest.mark.parametrize("name", [
    "00000002.history",
    "000000010000000000000002.00000028.backup",
    "000000010000000000000003.partial",
    "000000010000000000000003.partial.gz",
    "000000010000000000000003.tmp",
    "000000010000000000000003.gz.tmp",
    "00000001000000000000003",  # 23 digits
    "0000000100000000000000030",  # 25
    "000000010000000000000003-abc",  # not a sha1
    "00000001000000000000000g",
    "000000000000000000000003",  # timeline 0 does not exist
    "",
])
def test_other_archive_files_are_not_segments(name):
    assert segment_of_name(name) is None
    with pytest.raises(WalNameError):
        parse_segment(name)


def test_ordering_is_timeline_then_position():
    assert Segment(1, 300) < Segment(2, 4)
    assert max([Segment(1, 9), Segment(2, 3), Segment(1, 12)]) == Segment(2, 3)
    assert sorted(["000000020000000000000003", "000000010000000000000009"]) == [
        s.name for s in sorted([Segment(2, 3), Segment(1, 9)])
    ]


# --- LSNs -------------------------------------------------------------------------------

def test_parse_lsn_and_the_segment_holding_it():
    lsn = parse_lsn("0/2000028")
    assert lsn == 0x2000028
    assert segment_at(lsn, 1).name == "000000010000000000000002"
    assert segment_at(parse_lsn("1/FF000000"), 1).name == "0000000100000001000000FF"
    assert segment_at(parse_lsn("2/4000000"), 1, 64 * MiB).name == "000000010000000200000001"
    assert parse_lsn(" a/b ") == (0xA << 32) | 0xB


@pytest.mark.parametrize("text", ["", "0", "0/", "/1", "x/1", "0x1/2", "1_0/2", "-1/2", "0/100000000", "1/2/3"])
def test_parse_lsn_rejects_what_postgres_never_prints(text):
    # "0x1", "1_0" and "-1" pass int(x, 16); a low half of 9 digits would spill into the high one.
    with pytest.raises(WalNameError, match="not an LSN"):
        parse_lsn(text)


# --- history files and timelines --------------------------------------------------------

# 00000003.history as PostgreSQL writes it: timeline 1 ended at 0/3000000 (a segment
# boundary), timeline 2 at 0/50000A0 (inside segment 5).
HISTORY_3 = """1\t0/3000000\tno recovery target specified

2\t0/50000A0\tbefore 2026-12-02 10:00:00+00
"""


def test_parse_history():
    assert parse_history(HISTORY_3) == [Branch(1, 0x3000000), Branch(2, 0x50000A0)]
    assert parse_history("# a comment\n\n") == []


@pytest.mark.parametrize("text", ["1\n", "one\t0/3000000\treason\n", "1\tnowhere\n"])
def test_parse_history_names_the_bad_line(text):
    with pytest.raises(WalNameError, match="line 1 of a history file"):
        parse_history(text)


def test_timeline_of_follows_the_history():
    history = parse_history(HISTORY_3)
    at = {n: timeline_of(Segment(3, n), 3, history) for n in range(1, 8)}
    # Before the first switch: timeline 1; the switch at a boundary starts timeline 2 at
    # segment 3; segment 5 holds the second switch, read from timeline 3 (which copied it).
    assert at == {1: 1, 2: 1, 3: 2, 4: 2, 5: 3, 6: 3, 7: 3}
    assert timeline_of(Segment(1, 9), 1, []) == 1


def test_expected_segments_across_timelines():
    history = parse_history(HISTORY_3)
    names = [s.name for s in expected_segments(Segment(1, 2), Segment(3, 6), 3, history)]
    assert names == [
        "000000010000000000000002",
        "000000020000000000000003",
        "000000020000000000000004",
        "000000030000000000000005",
        "000000030000000000000006",
    ]


def test_two_switches_in_one_segment_read_it_from_the_newest():
    history = [Branch(1, 0x3000100), Branch(2, 0x3000200)]
    assert [s.name for s in expected_segments(Segment(1, 2), Segment(3, 4), 3, history)] == [
        "000000010000000000000002", "000000030000000000000003", "000000030000000000000004",
    ]


# --- first gap --------------------------------------------------------------------------

def _names(*segments: Segment) -> set[str]:
    return {s.name for s in segments}


def test_first_gap_none_when_complete():
    present = _names(*(Segment(1, n) for n in range(250, 262)))
    gap, checked = first_gap(present, Segment(1, 250), Segment(1, 261), 1, [])
    assert gap is None and checked == 12


def test_first_gap_across_the_log_boundary():
    present = _names(*(Segment(1, n) for n in range(250, 262) if n != 256))
    gap, checked = first_gap(present, Segment(1, 250), Segment(1, 261), 1, [])
    assert gap.name == "000000010000000100000000" and checked == 6


def test_first_gap_reports_the_first_of_several():
    present = _names(Segment(1, 2), Segment(1, 5))
    gap, checked = first_gap(present, Segment(1, 2), Segment(1, 5), 1, [])
    assert gap.name == "000000010000000000000003" and checked == 1


def test_first_gap_wants_the_new_timelines_copy_of_the_switch_segment():
    history = parse_history(HISTORY_3)
    present = _names(Segment(1, 2), Segment(2, 3), Segment(2, 4), Segment(2, 5), Segment(3, 6))
    # Timeline 2's segment 5 runs past the switch: recovery onto 3 reads timeline 3's.
    gap, checked = first_gap(present, Segment(1, 2), Segment(3, 6), 3, history)
    assert gap.name == "000000030000000000000005" and checked == 3
    present.add(Segment(3, 5).name)
    assert first_gap(present, Segment(1, 2), Segment(3, 6), 3, history) == (None, 5)


def test_first_gap_when_the_archive_ends_before_the_backup_starts():
    # The newest archived segment precedes the backup's start: the start itself is missing.
    present = _names(Segment(1, 2), Segment(1, 3))
    gap, checked = first_gap(present, Segment(1, 7), Segment(1, 3), 1, [])
    assert gap.name == "000000010000000000000007" and checked == 0
    # ... and a start held, with nothing after it, is complete.
    present.add(Segment(1, 7).name)
    assert first_gap(present, Segment(1, 7), Segment(1, 3), 1, []) == (None, 1)


def test_first_gap_other_segment_size():
    size = 64 * MiB
    present = {Segment(1, n, size).name for n in (62, 63, 65)}
    gap, checked = first_gap(present, Segment(1, 62, size), Segment(1, 65, size), 1, [])
    assert gap.name == "000000010000000100000000" and checked == 2


# --- WalArchive -------------------------------------------------------------------------

def test_wal_archive_holds_and_as_dict():
    at = datetime(2026, 12, 2, 10, tzinfo=timezone.utc)
    start = datetime(2026, 12, 1, 5, tzinfo=timezone.utc)
    archive = WalArchive(
        "WAL folder /x", last="000000010000000000000005", last_archived_at=at, first="000000010000000000000001",
        checked_from="000000010000000000000002", segments_checked=4, timeline=1, window_start=start,
        names=frozenset({"000000010000000000000005"}),
    )
    assert archive.holds("000000010000000000000005") is True
    assert archive.holds("000000010000000000000006") is False
    assert WalArchive("pgBackRest archive 15-1").holds("000000010000000000000005") is None
    out = archive.as_dict()
    assert out["recovery_window"] == {"start": "2026-12-01T05:00:00+00:00", "end": "2026-12-02T10:00:00+00:00"}
    assert out["gap"] is None and out["segments_checked"] == 4 and "notes" not in out
    assert "names" not in out  # a big archive's names stay out of verification_details
