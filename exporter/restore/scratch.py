"""Scratch databases and folders of restore drills: named with the pgbv_restore_
prefix, and nothing without that prefix is ever dropped or deleted."""

from __future__ import annotations

import re
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
from psycopg import sql

PREFIX = "pgbv_restore_"
_STAMP = "%Y%m%dT%H%M%S"
_NAME = re.compile(r"^pgbv_restore_([a-z0-9_]+)_(\d{8}T\d{6})$")


class NotScratch(ValueError):
    """Refused: the name or folder is not one of pgbv's scratch copies."""


def _slug(target: str) -> str:
    # Database names are folded and limited to 63 bytes; keep the stamp whole.
    slug = re.sub(r"[^a-z0-9_]", "_", target.lower())
    return slug[: 63 - len(PREFIX) - 1 - 15]


def scratch_name(target: str, now: datetime | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    return f"{PREFIX}{_slug(target)}_{now.astimezone(timezone.utc).strftime(_STAMP)}"


def is_scratch(name: str) -> bool:
    return _NAME.match(name) is not None


def created_at(name: str) -> datetime | None:
    match = _NAME.match(name)
    if match is None:
        return None
    return datetime.strptime(match.group(2), _STAMP).replace(tzinfo=timezone.utc)


def create_database(conn: psycopg.Connection, name: str) -> None:
    if not is_scratch(name):
        raise NotScratch(f"refusing to create {name!r}: not a pgbv_restore_ scratch name")
    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(conn: psycopg.Connection, name: str) -> None:
    """DROP DATABASE for a scratch copy only; any other name raises NotScratch."""
    if not is_scratch(name):
        raise NotScratch(f"refusing to drop {name!r}: only pgbv_restore_ scratch databases are dropped")
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def leftovers(conn: psycopg.Connection, target: str, older_than: timedelta, now: datetime | None = None) -> list[str]:
    """This target's scratch databases older than a drill may last: left by a killed drill."""
    now = now or datetime.now(timezone.utc)
    rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", [f"{PREFIX}{_slug(target)}\\_%"]).fetchall()
    stale = []
    for (name,) in rows:
        born = created_at(name)
        if born is not None and now - born > older_than and name.startswith(f"{PREFIX}{_slug(target)}_"):
            stale.append(name)
    return stale


def remove_folder(path: Path) -> None:
    """rm -r for a scratch folder only (its name carries the prefix)."""
    if not path.name.startswith(PREFIX):
        raise NotScratch(f"refusing to delete {path}: only pgbv_restore_ scratch folders are deleted")
    shutil.rmtree(path, ignore_errors=True)
