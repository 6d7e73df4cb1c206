"""Catalog look-ups shared by the checks. Each asks for all names at once, so a
check sends the same number of statements for 7 tables or 10,000.

Names from configuration are parsed here (``split_name``, the one place) and
then compared as values (parameters), never formatted into SQL: a hostile name
such as ``x"; DROP TABLE t; --`` is simply a name that matches nothing.
``schema.name`` picks a schema; a bare name is looked up along the session's
search_path, first match wins, like PostgreSQL. docs/checks.md, "Names", gives
the rules for quotes and letter case.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import psycopg
from psycopg import sql

# PostgreSQL's NAMEDATALEN - 1: a longer identifier cannot exist (the server truncates it).
MAX_IDENTIFIER_BYTES = 63
# PostgreSQL folds only A-Z in an unquoted identifier (downcase_identifier, UTF-8).
_FOLD = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


@dataclass(frozen=True)
class NamePart:
    """One part of a configured name. ``exact`` is the spelling without quotes;
    ``folded`` is what PostgreSQL would make of it (lower case unless quoted).
    An object spelled ``exact`` is preferred to one spelled ``folded``, so that a
    configuration written before quotes were understood finds what it found then."""

    exact: str
    folded: str


def _parts(name: str) -> list[tuple[str, bool]]:
    """The dot-separated parts of a name, each with whether it was quoted."""
    parts: list[tuple[str, bool]] = []
    start = 0
    while True:
        if name.startswith('"', start):
            end = start + 1
            while (end := name.find('"', end)) != -1 and name.startswith('""', end):
                end += 2  # "" inside quotes is one quote
            if end == -1:
                raise ValueError("unbalanced double quote")
            parts.append((name[start + 1:end].replace('""', '"'), True))
            start = end + 1
            if start < len(name) and name[start] != ".":
                raise ValueError("a quoted part must be followed by '.' or the end of the name")
        else:
            end = name.find(".", start)
            # A raw part is taken as written: a quote inside it (Leads "2026") is an
            # ordinary character, as it was before quoting was understood.
            parts.append((name[start:] if end == -1 else name[start:end], False))
            start = len(name) if end == -1 else end
        if start >= len(name):
            return parts
        start += 1  # past the dot
        if start == len(name):
            parts.append(("", False))  # "schema." ends in an empty part
            return parts


@functools.lru_cache(maxsize=65536)
def split_name(name: str) -> tuple[NamePart | None, NamePart]:
    """(schema or None, object) of a configured name; ValueError says what is wrong.
    Remembered: the configuration is checked once, then each run looks its names up
    again in several checks (30,000 splits a run at 10,000 tables: 0.19 s).

    ``Billing.Invoices`` (unquoted: the exact spelling, else the lower-case fold),
    ``"Billing"."Invoices"`` (quoted: exactly), ``"my.schema"."a table"``, ``"has""quote"``.
    """
    parts = _parts(name)
    if len(parts) > 2:
        raise ValueError(f"{len(parts)} dot-separated parts; expected name or schema.name (quote a name that holds a dot)")
    resolved = []
    for text, quoted in parts:
        if not text:
            raise ValueError("an empty part (write name or schema.name)")
        if len(text.encode()) > MAX_IDENTIFIER_BYTES:
            raise ValueError(f"a part longer than PostgreSQL's {MAX_IDENTIFIER_BYTES}-byte limit for names")
        resolved.append(NamePart(text, text if quoted else text.translate(_FOLD)))
    return (resolved[0] if len(resolved) == 2 else None), resolved[-1]


def valid_name(name: str) -> str:
    """A configured name as given, once split_name accepts it (for the config validator)."""
    try:
        split_name(name)
    except ValueError as exc:
        raise ValueError(f"{name!r} is not a valid name: {exc}") from None
    return name


def _wanted(names: list[str]) -> dict[str, list]:
    """Query parameters for the ``wanted`` rows of the look-ups below."""
    wanted: dict[str, list] = {"requested": [], "nsp": [], "nsp_folded": [], "obj": [], "obj_folded": []}
    for name in dict.fromkeys(names):
        schema, obj = split_name(name)
        wanted["requested"].append(name)
        wanted["nsp"].append(schema.exact if schema else None)
        wanted["nsp_folded"].append(schema.folded if schema else None)
        wanted["obj"].append(obj.exact)
        wanted["obj_folded"].append(obj.folded)
    return wanted


# The rows asked for, and how a candidate object ranks for each: an exact spelling
# first, then (for a bare name) the earlier schema on search_path.
_WANTED_CTE = """
WITH wanted(requested, nsp, nsp_folded, obj, obj_folded) AS (
    SELECT * FROM unnest(%(requested)s::text[], %(nsp)s::text[], %(nsp_folded)s::text[],
                         %(obj)s::text[], %(obj_folded)s::text[])
)
"""
_SCHEMA_MATCHES = """
       ((w.nsp IS NULL AND n.nspname = ANY (pg_catalog.current_schemas(false)))
        OR n.nspname IN (w.nsp, w.nsp_folded))
"""
_EXACT_FIRST = "COALESCE(n.nspname <> w.nsp, false), {name} <> w.obj"  # false sorts first
_PATH_ORDER = "pg_catalog.array_position(pg_catalog.current_schemas(false), n.nspname)"


@dataclass(frozen=True)
class Table:
    requested: str
    schema: str
    name: str
    oid: int
    kind: str  # pg_class.relkind: 'r' table, 'p' partitioned table, 'm' materialized view
    reltuples: float  # -1 (PostgreSQL 14+) when never vacuumed or analyzed
    relpages: int
    rls_enabled: bool
    rls_forced: bool
    ever_analyzed: bool  # vacuumed or analyzed at least once since statistics were last reset
    policies: int = 0  # row-level security policies on the table
    valid_indexes: int = 0  # an invalid index (failed CREATE INDEX CONCURRENTLY) serves no query

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


# Tables, partitioned tables: what critical_tables and the checks driven by it need.
TABLE_KINDS = "rp"
# required_tables: any relation that holds the application's rows, materialized views too.
ROW_KINDS = "rpm"

_TABLES_SQL = _WANTED_CTE + """
SELECT DISTINCT ON (w.requested)
       w.requested, n.nspname, c.relname, c.oid, c.relkind, c.reltuples, c.relpages,
       c.relrowsecurity, c.relforcerowsecurity,
       -- The functions behind pg_stat_all_tables, called for the matched tables only:
       -- joining the view builds its row for every table in the database (seconds at 10,000).
       (pg_catalog.pg_stat_get_last_vacuum_time(c.oid) IS NOT NULL
        OR pg_catalog.pg_stat_get_last_autovacuum_time(c.oid) IS NOT NULL
        OR pg_catalog.pg_stat_get_last_analyze_time(c.oid) IS NOT NULL
        OR pg_catalog.pg_stat_get_last_autoanalyze_time(c.oid) IS NOT NULL) AS ever_analyzed,
       (SELECT count(*) FROM pg_catalog.pg_policy AS p WHERE p.polrelid = c.oid) AS policies,
       (SELECT count(*) FROM pg_catalog.pg_index AS i WHERE i.indrelid = c.oid AND i.indisvalid) AS valid_indexes
  FROM wanted AS w
  JOIN pg_catalog.pg_class AS c
    ON c.relname IN (w.obj, w.obj_folded) AND c.relkind = ANY (%(kinds)s::"char"[])
  JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
 WHERE """ + _SCHEMA_MATCHES + """
 ORDER BY w.requested, """ + _EXACT_FIRST.format(name="c.relname") + ", " + _PATH_ORDER + """
"""


def find_tables(conn: psycopg.Connection, names: list[str], kinds: str = TABLE_KINDS) -> dict[str, Table]:
    """Tables by the name asked for; names that match nothing are absent from the result.
    ``kinds`` lists the pg_class.relkind letters that count (TABLE_KINDS or ROW_KINDS)."""
    if not names:
        return {}
    rows = conn.execute(_TABLES_SQL, {**_wanted(names), "kinds": list(kinds)}).fetchall()
    return {
        row[0]: Table(
            requested=row[0], schema=row[1], name=row[2], oid=row[3], kind=row[4],
            reltuples=float(row[5]), relpages=int(row[6]), rls_enabled=row[7], rls_forced=row[8],
            ever_analyzed=bool(row[9]), policies=int(row[10]), valid_indexes=int(row[11]),
        )
        for row in rows
    }


@dataclass(frozen=True)
class Index:
    requested: str
    schema: str
    name: str
    table: str
    valid: bool
    ready: bool


_INDEXES_SQL = _WANTED_CTE + """
SELECT DISTINCT ON (w.requested)
       w.requested, n.nspname, c.relname, t.relname, i.indisvalid, i.indisready
  FROM wanted AS w
  JOIN pg_catalog.pg_class AS c ON c.relname IN (w.obj, w.obj_folded) AND c.relkind IN ('i', 'I')
  JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
  JOIN pg_catalog.pg_index AS i ON i.indexrelid = c.oid
  JOIN pg_catalog.pg_class AS t ON t.oid = i.indrelid
 WHERE """ + _SCHEMA_MATCHES + """
 ORDER BY w.requested, """ + _EXACT_FIRST.format(name="c.relname") + ", " + _PATH_ORDER + """
"""


def find_indexes(conn: psycopg.Connection, names: list[str]) -> dict[str, Index]:
    if not names:
        return {}
    rows = conn.execute(_INDEXES_SQL, _wanted(names)).fetchall()
    return {row[0]: Index(row[0], row[1], row[2], row[3], row[4], row[5]) for row in rows}


# Every overload in every schema that matches, but only of the best spelling:
# "Audit" finds "Audit"(...) where it exists, and audit(...) only where it does not.
_FUNCTIONS_SQL = _WANTED_CTE + """
SELECT requested, nspname, proname, arguments, returns, proretset
  FROM (SELECT w.requested, n.nspname, p.proname,
               pg_catalog.pg_get_function_identity_arguments(p.oid) AS arguments,
               pg_catalog.format_type(p.prorettype, NULL) AS returns, p.proretset,
               pg_catalog.rank() OVER (PARTITION BY w.requested
                                       ORDER BY """ + _EXACT_FIRST.format(name="p.proname") + """) AS spelling,
               """ + _PATH_ORDER + """ AS path_position
          FROM wanted AS w
          JOIN pg_catalog.pg_proc AS p ON p.proname IN (w.obj, w.obj_folded)
          JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace
         WHERE """ + _SCHEMA_MATCHES + """) AS candidates
 WHERE spelling = 1
 ORDER BY requested, path_position, arguments
"""


@dataclass(frozen=True)
class Function:
    requested: str
    schema: str
    name: str
    arguments: str  # identity arguments, e.g. "days integer"
    returns: str
    returns_set: bool


def find_functions(conn: psycopg.Connection, names: list[str]) -> dict[str, list[Function]]:
    """Every overload of each function asked for, by the name asked for."""
    if not names:
        return {}
    rows = conn.execute(_FUNCTIONS_SQL, _wanted(names)).fetchall()
    found: dict[str, list[Function]] = {}
    for row in rows:
        found.setdefault(row[0], []).append(Function(*row))
    return found


# Above this many tables an exact count is too heavy to be a catalog check's fallback.
MAX_EXACT_COUNTS = 100


def exact_row_counts(conn: psycopg.Connection, tables: list[Table]) -> dict[int, int]:
    """count(*) of each table, by oid, in one statement.

    Row-level security would silently count only the rows this role may see;
    with row_security off, PostgreSQL raises an error instead of a wrong number.
    """
    unique = list({table.oid: table for table in tables}.values())
    if not unique:
        return {}
    if len(unique) > MAX_EXACT_COUNTS:
        raise ValueError(f"at most {MAX_EXACT_COUNTS} exact counts in one statement, got {len(unique)}")
    conn.execute("SET LOCAL row_security = off")
    query = sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT %s::oid, count(*) FROM {}.{}").format(sql.Identifier(t.schema), sql.Identifier(t.name))
        for t in unique
    )
    rows = conn.execute(query, [t.oid for t in unique]).fetchall()
    return {int(oid): int(count) for oid, count in rows}


@dataclass(frozen=True)
class Constraint:
    table_oid: int
    name: str
    kind: str  # 'f' foreign key, 'c' check
    validated: bool


_CONSTRAINTS_SQL = """
SELECT con.conrelid, con.conname, con.contype, con.convalidated
  FROM pg_catalog.pg_constraint AS con
 WHERE con.conrelid = ANY (%(oids)s::oid[]) AND con.contype = ANY (%(kinds)s::"char"[])
 ORDER BY con.conrelid, con.conname
"""


def find_constraints(conn: psycopg.Connection, tables: list[Table], kinds: str = "fc") -> list[Constraint]:
    """Constraints of the given kinds (pg_constraint.contype letters) on these tables."""
    if not tables:
        return []
    params = {"oids": [t.oid for t in tables], "kinds": list(kinds)}
    return [Constraint(int(r[0]), r[1], r[2], r[3]) for r in conn.execute(_CONSTRAINTS_SQL, params).fetchall()]


def counted(count: int, singular: str, plural: str | None = None) -> str:
    """'1 table', '7 tables'."""
    return f"{count} {singular if count == 1 else plural or singular + 's'}"


def listing(names: list[str]) -> str:
    """Names for a one-line message; one with control characters is shown quoted."""
    return ", ".join(name if name.isprintable() else repr(name) for name in names)


@dataclass(frozen=True)
class LeafStatistics:
    """What the server knows about the row count of one leaf of a critical table (the
    table itself, or one leaf partition of a partitioned table)."""

    table_oid: int  # the critical table this leaf belongs to
    reltuples: float  # pg_class: set by VACUUM and ANALYZE; -1 before either, and after TRUNCATE
    live: int  # pg_stat_get_live_tuples: moved at every commit, reset by VACUUM and ANALYZE
    changed: int  # pg_stat_get_mod_since_analyze: rows inserted, updated or deleted since ANALYZE
    relpages: int  # pg_class: pages when reltuples was set
    pages: int | None  # pages now; read only when live is well above reltuples
    countable: bool  # this role may count the critical table: SELECT, and row-level security does not apply
    empty: bool = False  # its main fork has no page: no row for certain (asked only when reltuples <= 0)


# Leaves, not the parent: a partitioned table holds no rows itself, and autovacuum never
# analyzes it, so its own reltuples is whatever the last manual ANALYZE left (item 2 of
# issue 13: 30,000 after TRUNCATE). pg_partition_tree is called for partitioned tables
# only. The pg_stat_get_* functions read one entry each; the pg_stat_all_tables view
# would build a row for every table in the database. The size (a lock and a file look-up
# per table: 10,000 of them cost a second and could fill the lock table) is read only
# for leaves with more live rows than autoanalyze lets pass (10 % + 50), the few whose
# counters need checking against the pages (checks/row_counts.py). Likewise whether a
# leaf has no page at all is asked only when the catalog says empty or nothing
# (reltuples 0, or -1: a new partition autovacuum never analyzes, a truncated table).
# Size 0 means no row for certain, and needs no privilege on the table, so the
# least-privilege role need not count it (count(*) would be refused).
_LEAF_STATISTICS_SQL = """
WITH me AS (
    SELECT r.rolsuper OR r.rolbypassrls AS bypasses_rls FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user
), unit AS (
    SELECT c.oid, c.relkind,
           pg_catalog.has_table_privilege(c.oid, 'SELECT')
           AND (NOT c.relrowsecurity OR (SELECT bypasses_rls FROM me)
                OR (NOT c.relforcerowsecurity AND pg_catalog.pg_has_role(c.relowner, 'USAGE'))) AS countable
      FROM unnest(%(oids)s::oid[]) AS u(oid) JOIN pg_catalog.pg_class AS c ON c.oid = u.oid
), leaf(unit, oid, countable) AS (
    SELECT oid, oid, countable FROM unit WHERE relkind <> 'p'
    UNION ALL
    SELECT u.oid, t.relid, u.countable FROM unit AS u, pg_catalog.pg_partition_tree(u.oid) AS t
     WHERE u.relkind = 'p' AND t.isleaf
)
SELECT leaf.unit, l.reltuples, s.live, s.changed, l.relpages,
       CASE WHEN l.reltuples >= 0 AND s.live > l.reltuples * 1.1 + 50
            THEN pg_catalog.pg_relation_size(l.oid) / pg_catalog.current_setting('block_size')::int END,
       leaf.countable,
       CASE WHEN l.reltuples <= 0 THEN pg_catalog.pg_relation_size(l.oid) = 0 ELSE false END
  FROM leaf
  JOIN pg_catalog.pg_class AS l ON l.oid = leaf.oid
  CROSS JOIN LATERAL (
      SELECT pg_catalog.pg_stat_get_live_tuples(l.oid) AS live, pg_catalog.pg_stat_get_mod_since_analyze(l.oid) AS changed
  ) AS s
"""


def leaf_statistics(conn: psycopg.Connection, tables: list[Table]) -> list[LeafStatistics]:
    """Row statistics of every leaf of these tables, in one statement."""
    oids = list(dict.fromkeys(table.oid for table in tables))
    if not oids:
        return []
    rows = conn.execute(_LEAF_STATISTICS_SQL, {"oids": oids}).fetchall()
    return [
        LeafStatistics(int(r[0]), float(r[1]), int(r[2] or 0), int(r[3] or 0), int(r[4] or 0),
                       None if r[5] is None else int(r[5]), bool(r[6]), bool(r[7]))
        for r in rows
    ]
