"""The TOC reader against real archives: every entry pg_restore --list shows, with the
same dump id, OIDs, kind, schema and name, in every format; damage is a TocError."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from exporter.backups.base import BackupSourceError
from exporter.backups.toc import TocError, read_archive_toc
from exporter.pgtools import find_tool, run_tool
from tests.backups.conftest import ARCHIVES

KINDS = {"custom": "pg_dump custom", "tar": "pg_dump tar", "directory": "pg_dump directory"}
_FLAGS = {"custom": "-Fc", "tar": "-Ft", "directory": "-Fd"}
# "<dump id>; <catalog oid> <oid> <desc and the rest>", as pg_restore --list prints.
_SETTINGS = {"ENCODING", "STDSTRINGS", "SEARCHPATH", "DATABASE"}
_LINE = re.compile(r"^(\d+); (\d+) (\d+) (.*)$")


def _listed(path: Path, fmt: str) -> list[tuple[int, int, int, str]]:
    done = run_tool(find_tool("pg_restore"), [_FLAGS[fmt], "--list", str(path)], timeout=60)
    return [
        (int(m[1]), int(m[2]), int(m[3]), m[4])
        for line in done.stdout.splitlines() if (m := _LINE.match(line))
    ]


@pytest.mark.parametrize("fmt", list(KINDS))
def test_every_entry_matches_pg_restore_list(archives, fmt):
    path = archives / ARCHIVES[fmt]
    toc = read_archive_toc(path, KINDS[fmt], timeout=30)
    assert toc.database.startswith("pgbv_test_")
    assert toc.version >= (1, 14, 0)
    assert_matches_pg_restore_list(path, fmt, toc)


def assert_matches_pg_restore_list(path: Path, fmt: str, toc) -> None:
    listed = _listed(path, fmt)
    entries = toc.by_id()
    # pg_restore lists in restore order and leaves out the session settings it applies
    # itself and the DATABASE entry (shown only with --create).
    assert {e.desc for e in toc.entries if e.dump_id not in {row[0] for row in listed}} <= _SETTINGS
    assert len(listed) > 50
    for dump_id, catalog, oid, rest in listed:
        entry = entries[dump_id]
        assert (catalog, oid) == (entry.catalog, entry.oid)
        # pg_restore prints "DESC schema tag owner" ("-" for no schema).
        assert rest.startswith(f"{entry.desc} {entry.schema or '-'} {entry.tag} "), (rest, entry)
    descs = {entry.desc for entry in toc.entries}
    assert {"TABLE", "TABLE DATA", "POLICY", "ROW SECURITY", "INDEX", "FUNCTION", "CONSTRAINT"} <= descs


@pytest.mark.parametrize("fmt", list(KINDS))
def test_entries_read_across_chunk_boundaries_are_the_same(archives, fmt, monkeypatch):
    # An entry cut by the end of what was read so far is parsed again once more is read:
    # with 7-byte chunks every entry is cut, many times over, and none may change.
    from exporter.backups import toc as toc_module

    path = archives / ARCHIVES[fmt]
    whole = read_archive_toc(path, KINDS[fmt], timeout=30)
    monkeypatch.setattr(toc_module, "_CHUNK", 7)
    assert read_archive_toc(path, KINDS[fmt], timeout=60) == whole


def test_cut_short_is_a_toc_error(archives, tmp_path):
    whole = (archives / ARCHIVES["custom"]).read_bytes()
    cut = tmp_path / "cut.dump"
    cut.write_bytes(whole[:2000])
    with pytest.raises(TocError, match="ends early"):
        read_archive_toc(cut, "pg_dump custom", timeout=30)


def test_not_an_archive_is_a_toc_error(tmp_path):
    junk = tmp_path / "junk.dump"
    junk.write_bytes(b"hello, this is not a dump" * 10)
    with pytest.raises(TocError, match="PGDMP"):
        read_archive_toc(junk, "pg_dump custom", timeout=30)


def test_unknown_version_is_not_guessed(archives, tmp_path):
    data = bytearray((archives / ARCHIVES["custom"]).read_bytes()[:4096])
    data[6] = 99  # minor version 1.99
    path = tmp_path / "future.dump"
    path.write_bytes(bytes(data))
    with pytest.raises(BackupSourceError, match="1.99"):
        read_archive_toc(path, "pg_dump custom", timeout=30)


def test_directory_without_toc_dat(archives, tmp_path):
    folder = tmp_path / "app.dir"
    shutil.copytree(archives / ARCHIVES["directory"], folder)
    (folder / "toc.dat").unlink()
    with pytest.raises(TocError, match="toc.dat is missing"):
        read_archive_toc(folder, "pg_dump directory", timeout=30)
