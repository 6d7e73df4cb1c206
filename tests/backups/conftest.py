"""Fixtures the backup sources' tests share: a stand-in program in the test's folder,
a folder another user can reach (for runuser wrappers), and the demo database in
every pg_dump format."""

from __future__ import annotations

import gzip
import shutil
import uuid
from pathlib import Path

import pytest
from psycopg import sql

from exporter.pgtools import find_tool, run_tool
from tests.backups.test_command import StandIn, public_folder
from tests.conftest import TEMPLATE_DEMO

# The archives' file names, by format; "plain gzip" is the plain dump gzipped.
ARCHIVES = {
    "custom": "app.custom.dump", "tar": "app.tar", "directory": "app.dir",
    "plain": "app.plain.sql", "plain gzip": "app.plain.sql.gz",
}
_PG_DUMP_FLAGS = {"custom": "c", "tar": "t", "directory": "d", "plain": "p"}


@pytest.fixture
def standin(tmp_path) -> StandIn:
    return StandIn(tmp_path)


@pytest.fixture
def public_dir():
    with public_folder() as folder:
        yield folder


@pytest.fixture(scope="session")
def archives(pg_server, tmp_path_factory) -> Path:
    """The demo database in every pg_dump format (ARCHIVES), dumped once for the session:
    read-only; a test that changes them works on a copy."""
    name = f"pgbv_test_{uuid.uuid4().hex[:12]}"
    pg_server.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(TEMPLATE_DEMO)))
    folder = tmp_path_factory.mktemp("archives")
    try:
        pg_dump = find_tool("pg_dump", pg_server.version_num)
        for fmt, flag in _PG_DUMP_FLAGS.items():
            run_tool(pg_dump, [f"-F{flag}", "-f", str(folder / ARCHIVES[fmt]), "-d", pg_server.dsn(name)], timeout=120)
        with open(folder / ARCHIVES["plain"], "rb") as src, gzip.open(folder / ARCHIVES["plain gzip"], "wb") as dst:
            shutil.copyfileobj(src, dst)
    finally:
        pg_server.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    return folder
