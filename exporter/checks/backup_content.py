"""The newest pg_dump archive holds this database: its name, the critical tables with
their data, row-level security and policies, the required indexes and functions.

A dump of the wrong database, a --schema-only dump, or one made with
--exclude-table-data or -T on a critical table is readable to its last byte and
passes every other backup check; only its table of contents (TOC) shows what it
holds. The TOC is read in Python (exporter/backups/toc.py): kilobytes, no data
decompressed. It proves what the archive lists, not that the data behind each
entry is whole: that is backup_readable's full read.

"Created after the dump" is told by OID. PostgreSQL hands out OIDs from one
counter per cluster that only grows, so a live table (index, function) whose OID
is greater than every OID the archive lists did not exist when pg_dump ran: it is
mentioned, never a failure, as the design demands. That holds only for a dump of
the whole database: when a live user table older than the archive's newest OID is
missing from it, pg_dump was told to leave tables out (-t, -T, -n, -N) and a missing
table may be one more it left out, so nothing counts as created after such a dump
(the message names the tables it leaves out); nor after a dump of another database.
A critical table pgbv counted rows of (row_baseline) two days or more before the
archive's start time existed when pg_dump ran, whatever its OID. What OIDs still get
wrong: after the counter wraps around (4 billion OIDs; pg_upgrade and dump/restore
migrations renumber too), a new table gets a small OID and is reported missing (a
false alarm, never a false pass); and a critical table excluded with -T that was
also the very last object created before the dump, not yet seen by pgbv two days
before it, looks new. Policies are compared by name and get no leniency: a policy
missing from the archive is missing from every restore of it (the issue's "dropped
before the dump, re-created after" case, or another policy in its place), so a live
policy the archive lacks fails until the next dump carries it. A partition of a
critical table must be attached to its parent in the archive: one detached when
pg_dump ran comes back as a table of its own, its rows outside the parent.

Without a connection to the target (the outage path, ctx.conn is None) the archive
is compared with the configuration only: the database name from backup.database or
the DSN, the critical tables with their data, the required indexes and functions.
The live policy counts and the created-after detection are skipped and the message
says so.
"""

from __future__ import annotations

import getpass
import os
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import ClassVar

from psycopg.conninfo import conninfo_to_dict

from exporter.backups.base import BackupSourceError
from exporter.backups.toc import ARCHIVE_KINDS, PLAIN_KINDS, ArchiveToc, TocError, read_archive_toc, read_plain_toc
from exporter.catalog import Table, counted, find_functions, find_indexes, listing, split_name
from exporter.checks.backup_age import BackupCheck
from exporter.checks.base import CheckContext
from exporter.checks.rls_policies import _tables as rls_table_names
from exporter.checks.row_counts import entries_for
from exporter.config import TargetConfig
from exporter.redact import scrub
from exporter.result import CheckResult

# The greatest OID: "created after" a dump without OIDs matches nothing.
NO_OID_ABOVE = 2**32 - 1
# How many tables created after the dump are named in the message; the rest are counted.
MAX_NAMED = 10
_FUNCTION_DESCS = ("FUNCTION", "PROCEDURE", "AGGREGATE")

Key = tuple[str, str]  # (schema, name) as the catalog spells them, unquoted


@dataclass
class _Archive:
    """What the TOC says, indexed by (schema, name)."""

    toc: ArchiveToc
    tables: dict[Key, int] = field(default_factory=dict)  # -> dump id
    with_data: set[Key] = field(default_factory=set)
    row_security: set[Key] = field(default_factory=set)
    policies: dict[Key, set[str]] = field(default_factory=lambda: defaultdict(set))
    indexes: set[Key] = field(default_factory=set)  # indexes, and constraints backed by one
    functions: set[Key] = field(default_factory=set)
    children: dict[Key, list[Key]] = field(default_factory=lambda: defaultdict(list))  # partitions
    attach_tags: set[Key] = field(default_factory=set)  # partitions with a TABLE ATTACH entry
    matviews: set[Key] = field(default_factory=set)
    matview_data: set[Key] = field(default_factory=set)

    @classmethod
    def of(cls, toc: ArchiveToc) -> _Archive:
        archive = cls(toc)
        by_id = toc.by_id()

        def key(entry) -> Key:
            return (entry.schema or "", entry.tag)

        def owning_table(entry):
            return next((by_id[d] for d in entry.dependencies if d in by_id and by_id[d].desc == "TABLE"), None)

        for entry in toc.entries:
            if entry.desc == "TABLE":
                archive.tables[key(entry)] = entry.dump_id
                # A partition (pg_dump 13 and older: CREATE TABLE ... PARTITION OF) or an
                # inheritance child depends on its parent's TABLE entry.
                parent = owning_table(entry)
                if parent is not None:
                    archive.children[key(parent)].append(key(entry))
            elif entry.desc == "TABLE DATA":
                archive.with_data.add(key(entry))
            elif entry.desc == "ROW SECURITY":
                archive.row_security.add(key(entry))
            elif entry.desc in ("INDEX", "CONSTRAINT"):
                # A primary key's or unique constraint's index has the constraint's name,
                # and a CONSTRAINT entry's tag is "<table> <constraint>".
                table = owning_table(entry) if entry.desc == "CONSTRAINT" else None
                name = toc.member_name(entry, table) if table else entry.tag
                archive.indexes.add((entry.schema or "", name))
            elif entry.desc == "POLICY":
                table = owning_table(entry)
                if table is not None:
                    archive.policies[key(table)].add(toc.member_name(entry, table))
            elif entry.desc in _FUNCTION_DESCS:
                archive.functions.add((entry.schema or "", entry.tag.partition("(")[0]))
            elif entry.desc == "MATERIALIZED VIEW":
                archive.matviews.add(key(entry))
            elif entry.desc == "MATERIALIZED VIEW DATA":
                archive.matview_data.add(key(entry))
            elif entry.desc == "TABLE ATTACH":
                archive.attach_tags.add(key(entry))
                # pg_dump 14+: "ALTER TABLE parent ATTACH PARTITION child", tagged with the
                # child's name, depending on both tables.
                tables = [by_id[d] for d in entry.dependencies if d in by_id and by_id[d].desc == "TABLE"]
                child = next((t for t in tables if key(t) == key(entry)), None)
                for parent in tables:
                    if child is not None and parent is not child and key(child) not in archive.children[key(parent)]:
                        archive.children[key(parent)].append(key(child))
        return archive

    def find(self, keys, name: str) -> Key | None:
        """The archive's object for a configured name (schema.name, or a bare name in
        any schema, public first) when no live catalog resolved it."""
        schema, obj = split_name(name)
        # The catalog's rule (catalog.NamePart): the exact spelling first, then the folded one.
        for spelling in ("exact", "folded"):
            wanted_schema = getattr(schema, spelling) if schema is not None else None
            matches = sorted(
                (k for k in keys if k[1] == getattr(obj, spelling) and (wanted_schema is None or k[0] == wanted_schema)),
                key=lambda k: (k[0] != "public", k),
            )
            if matches:
                return matches[0]
        return None

    def attached(self, partition: Key, parent: Key) -> bool | None:
        """Whether the archive attaches partition to parent; None when it cannot say (a
        plain script of pg_dump 13 or older: CREATE TABLE ... PARTITION OF, no entry
        of its own, and a plain script has no dependencies)."""
        if self.toc.has_oids:
            return partition in self.children.get(parent, [])
        if partition in self.attach_tags:
            return True  # pg_dump 14+: a TABLE ATTACH entry tagged with the partition
        major = (self.toc.dumped_by or "0").split(".")[0]
        return False if major.isdigit() and int(major) >= 14 else None

    def leaves(self, table: Key) -> list[Key]:
        """The tables whose TABLE DATA holds table's rows: itself when it has data of its
        own or no partitions, else its partitions' leaves, as the archive knows them."""
        kids = self.children.get(table, [])
        if not kids or table in self.with_data:
            return [table]
        return [leaf for kid in kids for leaf in self.leaves(kid)]


def _shown(key: Key) -> str:
    return f"{key[0]}.{key[1]}" if key[0] else key[1]


def dsn_database(dsn: str) -> str:
    """The database a DSN connects to, with libpq's defaults (PGDATABASE, then the user name)."""
    params = conninfo_to_dict(dsn)
    return (
        params.get("dbname") or os.environ.get("PGDATABASE") or params.get("user")
        or os.environ.get("PGUSER") or getpass.getuser()
    )


# One statement for all tables, whatever their number: the partitions of the
# partitioned critical tables (with their parents), the policies of the RLS tables,
# the OIDs of the required indexes and functions, the tables created after the dump,
# and the first few tables older than the dump that the archive leaves out (a -t, -T,
# -n or -N dump: the anti-join runs in the server, only the names found come back).
_LIVE_SQL = """
SELECT 'database', NULL::oid, NULL::name, pg_catalog.current_database()::name, NULL::oid,
       NULL::name, NULL::name, NULL::bool
UNION ALL
SELECT 'partition', r.root, n.nspname, c.relname, c.oid, pn.nspname, pc.relname, c.relkind = 'r'
  FROM unnest(%(partitioned)s::oid[]) AS r(root)
 CROSS JOIN LATERAL pg_catalog.pg_partition_tree(r.root) AS t
  JOIN pg_catalog.pg_class AS c ON c.oid = t.relid
  JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
  JOIN pg_catalog.pg_class AS pc ON pc.oid = t.parentrelid
  JOIN pg_catalog.pg_namespace AS pn ON pn.oid = pc.relnamespace
 WHERE t.level > 0
UNION ALL
SELECT 'policy', p.polrelid, NULL, p.polname, p.oid, NULL, NULL, NULL
  FROM pg_catalog.pg_policy AS p
 WHERE p.polrelid = ANY (%(rls)s::oid[])
UNION ALL
SELECT 'index', NULL, n.nspname, c.relname, c.oid, NULL, NULL, NULL
  FROM pg_catalog.pg_class AS c
  JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('i', 'I')
   AND (n.nspname, c.relname) IN (SELECT * FROM unnest(%(index_schemas)s::text[], %(index_names)s::text[]))
UNION ALL
SELECT 'function', NULL, n.nspname, p.proname, min(p.oid), NULL, NULL, NULL
  FROM pg_catalog.pg_proc AS p
  JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace
 WHERE (n.nspname, p.proname) IN (SELECT * FROM unnest(%(function_schemas)s::text[], %(function_names)s::text[]))
 GROUP BY n.nspname, p.proname
UNION ALL
(SELECT 'new table', NULL, n.nspname, c.relname, c.oid, NULL, NULL, NULL
   FROM pg_catalog.pg_class AS c
   JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
  WHERE c.oid > %(max_oid)s::oid AND c.relkind IN ('r', 'p')
    AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'
  ORDER BY c.oid
  LIMIT %(limit)s)
"""

# Only when a live object missing from the archive would be taken as created after it:
# the first few tables older than the dump that the archive leaves out (a -t, -T, -n or
# -N dump). The anti-join runs in the server and only the names found come back; the
# archive's table names (10,000 of them at 10,000 tables) are sent only then.
_LEFT_OUT_SQL = """
SELECT n.nspname, c.relname
  FROM pg_catalog.pg_class AS c
  JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
 WHERE c.oid < %(max_oid)s::oid AND c.relkind IN ('r', 'p') AND c.relpersistence <> 't'
   AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') AND n.nspname !~ '^pg_temp_'
   AND n.nspname !~ '^pg_toast_temp_'
   -- pg_dump leaves out the members of an extension (CREATE EXTENSION makes them).
   AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend AS d
                    WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
   AND (n.nspname, c.relname) NOT IN (
         SELECT * FROM unnest(%(archive_schemas)s::text[], %(archive_names)s::text[]) AS a(s, t)
          WHERE a.s IS NOT NULL AND a.t IS NOT NULL)
 ORDER BY n.nspname, c.relname
 LIMIT %(limit)s
"""


def _left_out(conn, max_oid: int, archive_tables: list[Key]) -> list[Key]:
    rows = conn.execute(_LEFT_OUT_SQL, {
        "max_oid": max_oid, "limit": MAX_NAMED + 1,
        "archive_schemas": [k[0] for k in archive_tables], "archive_names": [k[1] for k in archive_tables],
    }).fetchall()
    return [(schema, name) for schema, name in rows]


@dataclass
class _Partition:
    key: Key
    oid: int
    parent: Key
    holds_rows: bool  # a leaf of relkind 'r' (a partitioned leaf has no partitions yet, no rows)


@dataclass
class _Live:
    database: str
    partitions: dict[int, list[_Partition]]  # partitioned table oid -> every partition below it
    policies: dict[int, set[str]]  # table oid -> policy names
    index_oids: dict[Key, int]
    function_oids: dict[Key, int]
    new_tables: list[Key]


def _ask_live(conn, partitioned: list[int], rls: list[int], indexes: list[Key], functions: list[Key],
              max_oid: int) -> _Live:
    rows = conn.execute(_LIVE_SQL, {
        "partitioned": partitioned, "rls": rls,
        "index_schemas": [k[0] for k in indexes], "index_names": [k[1] for k in indexes],
        "function_schemas": [k[0] for k in functions], "function_names": [k[1] for k in functions],
        "max_oid": max_oid, "limit": MAX_NAMED + 1,
    }).fetchall()
    live = _Live("", defaultdict(list), defaultdict(set), {}, {}, [])
    for kind, owner, schema, name, oid, parent_schema, parent_name, holds_rows in rows:
        if kind == "database":
            live.database = name
        elif kind == "partition":
            live.partitions[int(owner)].append(
                _Partition((schema, name), int(oid), (parent_schema, parent_name), bool(holds_rows))
            )
        elif kind == "policy":
            live.policies[int(owner)].add(name)
        elif kind == "index":
            live.index_oids[(schema, name)] = int(oid)
        elif kind == "function":
            live.function_oids[(schema, name)] = int(oid)
        else:
            live.new_tables.append((schema, name))
    return live


def _newer_and_absent(archive: _Archive, max_oid: int, tables: dict[str, Table], critical: list[str], live: _Live,
                      rls_live: list[Table], index_keys: dict[str, Key], function_keys: dict[str, Key]) -> bool:
    """Whether an object the check looks at is missing from the archive with an OID above
    its highest: only then does it matter whether the dump left tables out (the healthy
    case sends no second statement)."""
    candidates = [((t.schema, t.name), t.oid, archive.tables) for n in critical if (t := tables.get(n)) is not None]
    candidates += [(p.key, p.oid, archive.tables) for parts in live.partitions.values() for p in parts]
    candidates += [((t.schema, t.name), t.oid, archive.tables) for t in rls_live]
    candidates += [(k, live.index_oids.get(k), archive.indexes) for k in index_keys.values()]
    candidates += [(k, live.function_oids.get(k), archive.functions) for k in function_keys.values()]
    return any(key not in held and oid is not None and oid > max_oid for key, oid, held in candidates)


def _seen_before_the_dump(ctx: CheckContext, names: dict[str, Table | None]) -> dict[str, str]:
    """Per critical table, the earliest day pgbv's previous runs counted its rows
    (verification_details.row_baseline, exporter/checks/row_counts.py), when that day is
    surely before the dump started: the archive's start time is the dumping host's local
    time of unknown zone (up to 14 hours either side of UTC), so the day must be at least
    two days before that local day. Such a table existed when pg_dump ran, whatever its OID."""
    started = ctx.backup.info.details.get("archive_started_local") if ctx.backup and ctx.backup.info else None
    stored = (ctx.previous or {}).get("row_baseline")
    tables = stored.get("tables") if isinstance(stored, dict) else None
    if not isinstance(started, str) or not isinstance(tables, dict):
        return {}
    try:
        latest = datetime.fromisoformat(started).date() - timedelta(days=2)
    except ValueError:
        return {}
    seen: dict[str, str] = {}
    for name, table in names.items():
        days = []
        # row_counts keys a baseline by the table itself (schema.name), older runs by the
        # configured spelling: entries_for tries both.
        entries = entries_for(tables, table) if table is not None else tables.get(name)
        for entry in entries or []:
            try:
                days.append(date.fromisoformat(entry[0]))
            except (TypeError, ValueError, IndexError, KeyError):
                continue  # a damaged record is no evidence
        if days and min(days) <= latest:
            seen[name] = min(days).isoformat()
    return seen


class _Findings:
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.after_dump: list[str] = []  # live, created after the dump: mentioned only
        self.after_dump_keys: set[Key] = set()
        self.absent_keys: set[Key] = set()  # live tables already reported absent from the archive
        self.notes: list[str] = []
        # Whether a live object missing from the archive may be taken as created after
        # the dump: not for a dump of another database, nor for a selective dump.
        self.created_after_allowed = True
        self.other_database = False  # the archive is a dump of another database
        self.rls_checked = 0  # RLS tables in the archive whose policies were compared


PHYSICAL_KINDS = ("pg_basebackup",)


class BackupContentCheck(BackupCheck):
    name = "backup_content"
    title = "Newest backup holds this database's tables, data, policies, indexes and functions"
    # The archive against the configuration still means something while the target is down.
    needs_database: ClassVar[bool] = False

    def applies(self, target: TargetConfig) -> bool:
        # Only the directory source yields pg_dump archives; pgBackRest, Barman and WAL-G
        # backups are physical copies of the whole cluster, with no table of contents.
        return target.backup.source == "directory"

    def applies_to_run(self, ctx: CheckContext) -> bool:
        # A base backup in the directory source is a physical copy of the whole cluster,
        # with no table of contents to read: pg_verifybackup (backup_readable) and the
        # physical drill prove it. A warning on every run would be an alarm that never clears.
        info = ctx.backup.info if ctx.backup is not None else None
        return super().applies_to_run(ctx) and not (info is not None and info.kind in PHYSICAL_KINDS)

    def run(self, ctx: CheckContext) -> CheckResult:
        problem = self.problem(ctx.backup)
        if problem is not None:
            return problem
        info = ctx.backup.info
        if info.kind not in ARCHIVE_KINDS + PLAIN_KINDS:
            # Not a pass: nothing was compared. A warning, like backup_readable's for a
            # kind it has no reader for.
            return self.warned(
                f"content not verified: newest backup {info.id} is a {info.kind}; backup_content reads the table "
                "of contents of pg_dump custom, directory and tar archives only",
                info.kind, "a pg_dump archive",
            )
        path = Path(info.location) if info.location else Path(ctx.target.backup.path) / info.id
        secrets = ctx.target.secrets()
        try:
            if info.kind in PLAIN_KINDS:
                toc = read_plain_toc(path, info.kind == "plain SQL gzip", ctx.target.backup.timeout_seconds)
            else:
                toc = read_archive_toc(path, info.kind, ctx.target.backup.timeout_seconds)
        except TocError as exc:
            return self.failed(
                f"the table of contents of {info.id} cannot be read: {scrub(str(exc), secrets)}",
                "unreadable", "a readable table of contents",
            )
        except BackupSourceError as exc:
            return self.errored(
                f"could not read the table of contents of {info.id}: {scrub(str(exc), secrets)}",
                "not read", "a readable table of contents",
            )
        archive = _Archive.of(toc)
        if ctx.conn is None:
            return self._compare_offline(ctx, info.id, archive)
        return self._compare_live(ctx, info.id, archive)

    # --- shared -----------------------------------------------------------------------

    def _database(self, ctx: CheckContext, archive: _Archive, live_name: str | None, found: _Findings) -> str:
        wanted = ctx.target.backup.database or live_name or dsn_database(ctx.target.dsn)
        if archive.toc.database is None:
            found.notes.append("the plain SQL dump does not name its database (dumped without -C): name not compared")
        elif archive.toc.database != wanted:
            why = "backup.database" if ctx.target.backup.database else "the target's database"
            found.problems.append(
                f"the archive is a dump of database {archive.toc.database!r}, not {wanted!r} ({why}); "
                "set backup.database when the dump is of another name on purpose"
            )
        return wanted

    def _table_data(self, archive: _Archive, key: Key, shown: str, found: _Findings) -> None:
        """A table in the archive: its rows are in it (for a partitioned table, its leaves')."""
        for leaf in archive.leaves(key):
            if leaf not in archive.with_data:
                where = "" if leaf == key else f" (partition {_shown(leaf)})"
                found.problems.append(f"{shown}{where}: no TABLE DATA, the rows are not in the backup")

    def _verdict(self, backup_id: str, archive: _Archive, found: _Findings, wanted_db: str,
                 checked: dict[str, list[str]], skipped: str | None) -> CheckResult:
        toc = archive.toc
        origin = f"pg_dump {toc.dumped_by}" if toc.dumped_by else "pg_dump"
        if toc.database is not None:
            origin += f" of database {toc.database!r}"
        observed = {
            "database": toc.database,
            "entries": len(toc.entries),
            "differences": found.problems,
            "created_after_dump": found.after_dump,
        }
        expected = {"database": wanted_db, **checked}
        tail = ""
        if found.after_dump:
            tail += f"; created after the dump, so not in it (fine): {listing(found.after_dump)}"
        if found.notes:
            tail += "; " + "; ".join(found.notes)
        if skipped:
            tail += f"; {skipped}"
        if found.problems:
            return self.failed(
                f"{backup_id} ({origin}) lacks what the database holds: "
                + "; ".join(found.problems) + tail,
                observed, expected,
            )
        held = []
        if checked["critical_tables"]:
            held.append(counted(len(checked["critical_tables"]), "critical table") + " with their data")
        if found.rls_checked:
            held.append(f"row-level security and every live policy of {counted(found.rls_checked, 'table')}")
        if checked.get("required_indexes"):
            held.append(counted(len(checked["required_indexes"]), "required index", "required indexes"))
        if checked.get("required_functions"):
            held.append(counted(len(checked["required_functions"]), "required function"))
        what = (
            "holds " + ", ".join(held) if held
            else "is a dump of this database (no critical tables, required indexes or functions configured to look for)"
        )
        return self.passed(
            f"{backup_id} ({origin}, {len(toc.entries)} {'TOC' if toc.has_oids else 'SQL'} entries) {what}" + tail,
            observed, expected,
        )

    # --- with the live database ---------------------------------------------------------

    def _compare_live(self, ctx: CheckContext, backup_id: str, archive: _Archive) -> CheckResult:
        checks = ctx.target.checks
        critical = list(dict.fromkeys(checks.critical_tables))
        rls = rls_table_names(ctx.target)
        tables = ctx.tables(critical + rls)
        indexes = find_indexes(ctx.conn, list(dict.fromkeys(checks.required_indexes)))
        functions = find_functions(ctx.conn, list(dict.fromkeys(checks.required_functions)))
        max_oid = archive.toc.max_oid
        index_keys = {name: (i.schema, i.name) for name, i in indexes.items()}
        function_keys = {name: (f[0].schema, f[0].name) for name, f in functions.items()}
        rls_live = [tables[name] for name in rls if name in tables and tables[name].rls_enabled]
        live = _ask_live(
            ctx.conn,
            partitioned=[tables[n].oid for n in critical if n in tables and tables[n].kind == "p"],
            rls=[t.oid for t in rls_live],
            indexes=list(index_keys.values()), functions=list(function_keys.values()),
            # No OIDs (a plain dump): no table counts as created after it.
            max_oid=NO_OID_ABOVE if max_oid is None else max_oid,
        )
        found = _Findings()
        if max_oid is None:
            found.notes.append(
                "a plain SQL dump carries no OIDs: objects created after it cannot be told apart and count as missing"
            )
        wanted_db = self._database(ctx, archive, live.database, found)
        if archive.toc.database is not None and archive.toc.database != wanted_db:
            # Another database's OIDs say nothing about when this one's tables were made.
            found.created_after_allowed = False
            found.other_database = True
        elif max_oid is not None and _newer_and_absent(
            archive, max_oid, tables, critical, live, rls_live, index_keys, function_keys,
        ) and (left_out := _left_out(ctx.conn, max_oid, list(archive.tables))):
            # A table older than the dump is not in it: pg_dump was told to leave tables
            # out (-t, -T, -n, -N), so a missing table may be one more it left out.
            found.created_after_allowed = False
            more = " and more" if len(left_out) > MAX_NAMED else ""
            found.notes.append(
                "the dump leaves out tables that existed before it: "
                f"{listing([_shown(k) for k in left_out[:MAX_NAMED]])}{more}, "
                "so tables missing from it are not taken as created after it"
            )

        seen_before = _seen_before_the_dump(ctx, {name: tables.get(name) for name in critical})

        def present(table_key: Key, oid: int, shown: str) -> bool:
            return self._present(archive, table_key, oid, shown, max_oid, found, seen_before.get(shown))

        for name in critical:
            table = tables.get(name)
            if table is None:
                self._critical_offline(archive, name, found)  # critical_tables reports it missing live
                continue
            key = (table.schema, table.name)
            if not present(key, table.oid, name):
                continue
            if table.kind != "p":
                if key not in archive.with_data:
                    found.problems.append(
                        f"{name}: no TABLE DATA, the rows are not in the backup "
                        "(a --schema-only dump, or --exclude-table-data)"
                    )
                continue
            for part in live.partitions.get(table.oid, []):
                shown = f"{name} (partition {_shown(part.key)})"
                if not present(part.key, part.oid, shown):
                    continue
                if archive.attached(part.key, part.parent) is False:
                    # Detached when pg_dump ran: a restore brings it back as a table of
                    # its own, and its rows are not in the partitioned table.
                    found.problems.append(
                        f"{shown} is in the backup but not attached to {_shown(part.parent)} there "
                        f"(detached when the dump ran?): a restored {name} lacks its rows"
                    )
                if part.holds_rows and part.key not in archive.with_data:
                    found.problems.append(f"{shown}: no TABLE DATA, the rows are not in the backup")

        for table in rls_live:
            self._rls(archive, table, live.policies.get(table.oid, set()), max_oid, found)

        for what, names, resolved, oids, keys in (
            ("index", checks.required_indexes, index_keys, live.index_oids, archive.indexes),
            ("function", checks.required_functions, function_keys, live.function_oids, archive.functions),
        ):
            for name in dict.fromkeys(names):
                if name in resolved:
                    self._required(keys, resolved[name], oids.get(resolved[name]), what, max_oid, found)
                elif archive.find(keys, name) is None:
                    found.problems.append(f"{what} {name} is not in the backup (nor in the database)")

        if found.created_after_allowed:
            found.after_dump.extend(
                _shown(k) for k in live.new_tables[:MAX_NAMED] if k not in found.after_dump_keys
            )
            if len(live.new_tables) > MAX_NAMED:
                found.notes.append(f"more than {MAX_NAMED} tables were created after the dump")
        checked = {
            "critical_tables": critical,
            "rls_tables": [t.requested for t in rls_live],
            "required_indexes": list(dict.fromkeys(checks.required_indexes)),
            "required_functions": list(dict.fromkeys(checks.required_functions)),
        }
        return self._verdict(backup_id, archive, found, wanted_db, checked, None)

    def _present(self, archive: _Archive, key: Key, oid: int, shown: str, max_oid: int | None,
                 found: _Findings, seen_on: str | None = None) -> bool:
        """Whether the live table is in the archive; if not, a problem or a created-after
        note (once per table: a critical table is often an RLS table too)."""
        if key in archive.tables:
            return True
        if key in found.absent_keys:
            return False
        found.absent_keys.add(key)
        if seen_on is not None and max_oid is not None and oid > max_oid:
            found.problems.append(
                f"{shown} is not in the backup, yet pgbv counted its rows on {seen_on}, before the dump was made"
            )
        elif found.created_after_allowed and max_oid is not None and oid > max_oid:
            found.after_dump.append(shown)
            found.after_dump_keys.add(key)
        elif found.other_database:
            found.problems.append(f"{shown} is not in the backup")
        else:
            found.problems.append(f"{shown} is not in the backup (left out with -T or --exclude-table?)")
        return False

    def _rls(self, archive: _Archive, table: Table, live_policies: set[str], max_oid: int | None,
             found: _Findings) -> None:
        key = (table.schema, table.name)
        if not self._present(archive, key, table.oid, table.requested, max_oid, found):
            return
        if key not in archive.row_security:
            found.problems.append(f"{table.requested}: no ENABLE ROW LEVEL SECURITY in the backup")
        found.rls_checked += 1
        held = archive.policies.get(key, set())
        # By name, whatever the counts: a live policy the archive lacks is missing from
        # every restore of it, even when another policy took its place at dump time.
        missing = sorted(live_policies - held)
        if missing:
            extra = sorted(held - live_policies)
            found.problems.append(
                f"{table.requested} has {counted(len(live_policies), 'policy', 'policies')} live, the backup "
                f"{len(held)}; not in the backup: {listing(missing)}"
                + (f"; in the backup only: {listing(extra)}" if extra else "")
            )

    def _required(self, archive_keys: set[Key], key: Key, oid: int | None, what: str, max_oid: int | None,
                  found: _Findings) -> None:
        if key in archive_keys:
            return
        if found.created_after_allowed and oid is not None and max_oid is not None and oid > max_oid:
            found.after_dump.append(f"{what} {_shown(key)}")
        else:
            found.problems.append(f"{what} {_shown(key)} is not in the backup")

    # --- without it ---------------------------------------------------------------------

    def _critical_offline(self, archive: _Archive, name: str, found: _Findings) -> None:
        key = archive.find(archive.tables, name)
        if key is not None:
            self._table_data(archive, key, name, found)
            return
        view = archive.find(archive.matviews, name)
        if view is None:
            found.problems.append(f"{name} is not in the backup")
        elif view in archive.matview_data:
            # critical_tables refuses it (not a table); what the backup holds of it is whole.
            found.notes.append(f"{name} is a materialized view, not a table: it is in the backup with its data")
        else:
            found.problems.append(
                f"{name} (materialized view): no MATERIALIZED VIEW DATA, it is restored empty until refreshed"
            )

    def _compare_offline(self, ctx: CheckContext, backup_id: str, archive: _Archive) -> CheckResult:
        checks = ctx.target.checks
        found = _Findings()
        wanted_db = self._database(ctx, archive, None, found)
        critical = list(dict.fromkeys(checks.critical_tables))
        for name in critical:
            self._critical_offline(archive, name, found)
        for what, names, keys in (("index", checks.required_indexes, archive.indexes),
                                  ("function", checks.required_functions, archive.functions)):
            for name in dict.fromkeys(names):
                if archive.find(keys, name) is None:
                    found.problems.append(f"{what} {name} is not in the backup")
        checked = {
            "critical_tables": critical,
            "required_indexes": list(dict.fromkeys(checks.required_indexes)),
            "required_functions": list(dict.fromkeys(checks.required_functions)),
        }
        skipped = (
            "the database was not reachable: compared with the configuration only, the live policy counts "
            "and the detection of tables created after the dump were skipped"
        )
        return self._verdict(backup_id, archive, found, wanted_db, checked, skipped)


CHECK = BackupContentCheck()
