"""The expected shape of backup_verification_log and its functions, as data, and a
comparison with what a database really holds.

The shape is the one ``sql/20260128_create_backup_verification_log.sql`` creates.
``pgbv migrate`` uses :func:`differences` to adopt a table that was created by hand
from the seed's report (no difference) or to explain, without altering anything,
why it cannot; the ``log_table`` and ``log_functions`` checks use the same
comparison every run. Every difference is a sentence an operator can act on.

The whole introspection is one catalog query, whatever the table holds. The table
is the one an unqualified ``backup_verification_log`` resolves to (the first schema
on the search_path that has it), which is the one pgbv's own statements touch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import psycopg

TABLE = "backup_verification_log"
# pgbv's own function (not the seed's): the row's target, as the target indexes are built.
TARGET_FUNCTION = "backup_verification_log_target"


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # as format_type() spells it
    not_null: bool
    default: str | None  # as pg_get_expr() spells it


@dataclass(frozen=True)
class Index:
    name: str
    definition: str  # the part of pg_get_indexdef() after ON <table>: method and keys
    unique: bool = False
    primary: bool = False
    # Partial index on a status membership test: the statuses it covers; None for a full index.
    where_status: frozenset[str] | None = None


@dataclass(frozen=True)
class StatusConstraint:
    name: str
    column: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class Function:
    name: str
    arguments: str  # identity arguments, as pg_get_function_identity_arguments() spells them
    arguments_declared: str  # with defaults, as pg_get_function_arguments() spells them
    returns: str | None  # scalar result type; None for functions returning table rows
    # For table-returning functions: the columns pgbv reads. A hand-applied seed version
    # may return fewer columns than ours and still serve pgbv, so only these are required.
    columns: tuple[tuple[str, str], ...] = ()

    @property
    def signature(self) -> str:
        return f"{self.name}({self.arguments})"


COLUMNS: tuple[Column, ...] = (
    Column("id", "uuid", True, "gen_random_uuid()"),
    Column("verified_at", "timestamp with time zone", True, "now()"),
    Column("backup_id", "text", False, None),
    Column("backup_age_hours", "integer", False, None),
    Column("backup_size_mb", "integer", False, None),
    Column("status", "text", True, None),
    Column("checks_passed", "integer", True, "0"),
    Column("checks_failed", "integer", True, "0"),
    Column("error_details", "jsonb", False, None),
    Column("verification_details", "jsonb", False, None),
    Column("created_at", "timestamp with time zone", True, "now()"),
)

STATUSES: tuple[str, ...] = ("success", "warning", "failure")

INDEXES: tuple[Index, ...] = (
    Index("backup_verification_log_pkey", "USING btree (id)", unique=True, primary=True),
    Index("idx_backup_verification_log_verified_at", "USING btree (verified_at DESC)"),
    Index("idx_backup_verification_log_status", "USING btree (status)"),
    Index("idx_backup_verification_log_created_at", "USING btree (created_at DESC)"),
    Index(
        "idx_backup_verification_log_failures", "USING btree (verified_at DESC)",
        where_status=frozenset({"warning", "failure"}),
    ),
)

STATUS_CONSTRAINT = StatusConstraint("backup_verification_log_status_check", "status", STATUSES)

_ROW_COLUMNS: tuple[tuple[str, str], ...] = (
    ("verified_at", "timestamp with time zone"),
    ("status", "text"),
    ("backup_age_hours", "integer"),
    ("checks_passed", "integer"),
    ("checks_failed", "integer"),
    ("error_details", "jsonb"),
)

FUNCTIONS: tuple[Function, ...] = (
    Function("get_latest_backup_verification", "", "", None, _ROW_COLUMNS),
    Function("get_backup_verification_history", "days integer", "days integer", None, _ROW_COLUMNS),
    Function(
        "cleanup_old_backup_verification_logs", "retention_days integer",
        "retention_days integer DEFAULT 90", "integer",
    ),
)

LATEST, HISTORY, CLEANUP = FUNCTIONS


# --- what the database holds -------------------------------------------------------


@dataclass(frozen=True)
class FoundColumn:
    name: str
    type: str
    not_null: bool
    default: str | None


@dataclass(frozen=True)
class FoundIndex:
    name: str
    indexdef: str
    unique: bool
    primary: bool
    valid: bool
    predicate: str | None


@dataclass(frozen=True)
class FoundConstraint:
    name: str
    definition: str
    validated: bool


@dataclass(frozen=True)
class FoundFunction:
    name: str
    arguments: str
    arguments_declared: str
    result: str  # pg_get_function_result(): "integer", "TABLE(id uuid, ...)", "SETOF record"
    columns: tuple[tuple[str, str], ...]  # the row it returns (OUT/TABLE columns or a composite type)


@dataclass
class Observed:
    schema: str | None  # the table's schema; None when there is no such relation
    relkind: str | None
    function_schema: str | None  # the table's schema, else where migrate would create them
    columns: list[FoundColumn] = field(default_factory=list)
    indexes: list[FoundIndex] = field(default_factory=list)
    checks: list[FoundConstraint] = field(default_factory=list)
    functions: list[FoundFunction] = field(default_factory=list)

    @property
    def exists(self) -> bool:
        return self.relkind in ("r", "p")

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{TABLE}" if self.schema else TABLE

    def status_constraint(self) -> FoundConstraint | None:
        return next((c for c in self.checks if c.name == STATUS_CONSTRAINT.name), None)


# One statement; each part is aggregated to JSON so that the number of columns,
# indexes or overloads never changes the number of round trips.
_INSPECT_SQL = """
WITH tbl AS (
    SELECT c.oid, c.relkind::text AS relkind, n.nspname, n.oid AS nsp
      FROM pg_catalog.pg_class AS c
      JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
     WHERE c.oid = CASE
               WHEN %(schema)s::text IS NULL THEN pg_catalog.to_regclass(%(table)s::text)
               ELSE pg_catalog.to_regclass(pg_catalog.quote_ident(%(schema)s::text) || '.' || pg_catalog.quote_ident(%(table)s::text))
           END
), home AS (
    SELECT coalesce(
               (SELECT tbl.nsp FROM tbl),
               (SELECT n.oid FROM pg_catalog.pg_namespace AS n
                 WHERE n.nspname = coalesce(%(schema)s::text, pg_catalog.current_schema()))
           ) AS nsp
)
SELECT
    (SELECT tbl.nspname FROM tbl),
    (SELECT tbl.relkind FROM tbl),
    (SELECT n.nspname FROM pg_catalog.pg_namespace AS n, home WHERE n.oid = home.nsp),
    (SELECT coalesce(json_agg(json_build_array(
                a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull,
                pg_catalog.pg_get_expr(d.adbin, d.adrelid)) ORDER BY a.attnum), '[]')
       FROM pg_catalog.pg_attribute AS a
       LEFT JOIN pg_catalog.pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
      WHERE a.attrelid = (SELECT tbl.oid FROM tbl) AND a.attnum > 0 AND NOT a.attisdropped),
    (SELECT coalesce(json_agg(json_build_array(
                c.relname, pg_catalog.pg_get_indexdef(i.indexrelid), i.indisunique, i.indisprimary,
                i.indisvalid, pg_catalog.pg_get_expr(i.indpred, i.indrelid)) ORDER BY c.relname), '[]')
       FROM pg_catalog.pg_index AS i
       JOIN pg_catalog.pg_class AS c ON c.oid = i.indexrelid
      WHERE i.indrelid = (SELECT tbl.oid FROM tbl)),
    (SELECT coalesce(json_agg(json_build_array(
                k.conname, pg_catalog.pg_get_constraintdef(k.oid), k.convalidated) ORDER BY k.conname), '[]')
       FROM pg_catalog.pg_constraint AS k
      WHERE k.conrelid = (SELECT tbl.oid FROM tbl) AND k.contype = 'c'),
    (SELECT coalesce(json_agg(json_build_array(
                p.proname,
                pg_catalog.pg_get_function_identity_arguments(p.oid),
                pg_catalog.pg_get_function_arguments(p.oid),
                pg_catalog.pg_get_function_result(p.oid),
                CASE WHEN p.proallargtypes IS NOT NULL THEN
                    (SELECT coalesce(json_agg(json_build_array(x.name, pg_catalog.format_type(x.typ, NULL))
                                              ORDER BY x.ord), '[]')
                       FROM unnest(p.proargnames, p.proallargtypes, p.proargmodes)
                            WITH ORDINALITY AS x(name, typ, mode, ord)
                      WHERE x.mode IN ('o', 'b', 't'))
                ELSE
                    -- RETURNS [SETOF] some_table: the row type's columns.
                    (SELECT coalesce(json_agg(json_build_array(
                                a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod)) ORDER BY a.attnum), '[]')
                       FROM pg_catalog.pg_type AS t
                       JOIN pg_catalog.pg_attribute AS a ON a.attrelid = t.typrelid
                      WHERE t.oid = p.prorettype AND t.typrelid <> 0 AND a.attnum > 0 AND NOT a.attisdropped)
                END
            ) ORDER BY p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid)), '[]')
       FROM pg_catalog.pg_proc AS p, home
      WHERE p.pronamespace = home.nsp AND p.prokind = 'f' AND p.proname = ANY (%(functions)s::text[]))
"""


def inspect(conn: psycopg.Connection, schema: str | None = None) -> Observed:
    """What the database holds under the log table's names (one query, read-only)."""
    row = conn.execute(
        _INSPECT_SQL,
        {"schema": schema, "table": TABLE, "functions": [f.name for f in FUNCTIONS]},
    ).fetchone()
    assert row is not None
    table_schema, relkind, function_schema, columns, indexes, checks, functions = row
    return Observed(
        schema=table_schema,
        relkind=relkind,
        function_schema=function_schema,
        columns=[FoundColumn(*c) for c in columns],
        indexes=[FoundIndex(*i) for i in indexes],
        checks=[FoundConstraint(*k) for k in checks],
        functions=[
            FoundFunction(f[0], f[1], f[2], f[3], tuple((name, typ) for name, typ in (f[4] or [])))
            for f in functions
        ],
    )


_LOCATE_SQL = """
SELECT n.nspname
  FROM pg_catalog.pg_class AS c
  JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
 WHERE c.oid = pg_catalog.to_regclass(%s::text) AND c.relkind IN ('r', 'p')
"""


def locate(conn: psycopg.Connection) -> str | None:
    """The schema of the backup_verification_log that unqualified SQL reaches, or None."""
    row = conn.execute(_LOCATE_SQL, [TABLE]).fetchone()
    return row[0] if row else None


def table_exists(conn: psycopg.Connection) -> bool:
    return locate(conn) is not None


# --- comparison ----------------------------------------------------------------------

_CAST = re.compile(r"^('(?:[^']|'')*'|-?[0-9.]+)::([a-z ]+)$")
_NUMERIC_TYPES = {"integer", "int", "int4", "bigint", "int8", "smallint", "int2", "numeric"}
_NOW = {"now()", "current_timestamp", "transaction_timestamp()"}


def normalize_default(expr: str | None) -> str | None:
    """A default expression in a form where equivalent spellings compare equal:
    ``'0'::integer`` and ``0``, ``CURRENT_TIMESTAMP`` and ``now()``,
    ``pg_catalog.now()`` and ``now()``."""
    if expr is None:
        return None
    text = " ".join(expr.split())
    while text.startswith("(") and text.endswith(")") and _balanced(text[1:-1]):
        text = text[1:-1].strip()
    text = re.sub(r"\b(?:pg_catalog|public)\.", "", text)
    lowered = text.lower()
    match = _CAST.match(lowered)
    if match and match.group(2) in _NUMERIC_TYPES:
        # '0'::integer, 0::integer and 0 are one number; a quoted literal of any other type stays quoted.
        text = match.group(1).strip("'")
        lowered = text.lower()
    if lowered in _NOW:
        return "now()"
    return lowered if re.fullmatch(r"[a-z_][a-z0-9_]*\(\)", lowered) else text


def _balanced(text: str) -> bool:
    depth = 0
    for char in text:
        depth += char == "("
        depth -= char == ")"
        if depth < 0:
            return False
    return depth == 0


_LITERAL = re.compile(r"'((?:[^']|'')*)'")
# What a plain "status IN (...)" may deparse to: status = ANY (ARRAY[...]), an OR
# chain of equalities, with casts when the column is not text.
_MEMBERSHIP_WORDS = {"status", "any", "array", "text", "or", "character", "varying", "check"}


def status_values(expr: str | None, column: str = "status") -> frozenset[str] | None:
    """The values a membership test on ``column`` accepts, or None when the expression
    is anything else (a different column, another operator, NOT, AND...)."""
    if not expr:
        return None
    literals = [value.replace("''", "'") for value in _LITERAL.findall(expr)]
    rest = _LITERAL.sub("''", expr)
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", rest.lower()))
    operators = set(re.findall(r"[<>=!~*+/%|&^-]+", rest.replace("::", " ")))
    allowed = (_MEMBERSHIP_WORDS - {"status"}) | {column}
    if column not in words or not words <= allowed or operators - {"="} or not literals:
        return None
    return frozenset(literals)


def _values(values) -> str:
    return "(" + ", ".join(f"'{v}'" for v in sorted(values, key=_status_order)) + ")"


def _status_order(value: str) -> tuple[int, str]:
    return (STATUSES.index(value) if value in STATUSES else len(STATUSES), value)


_INDEXDEF = re.compile(r"^CREATE (?:UNIQUE )?INDEX .+? ON (?:ONLY )?\S+ (USING .+?)(?: WHERE .*)?$", re.S)


def _index_body(indexdef: str) -> str:
    match = _INDEXDEF.match(indexdef)
    return match.group(1) if match else indexdef


def _column_sentences(observed: Observed) -> list[str]:
    out: list[str] = []
    found = {c.name: c for c in observed.columns}
    for want in COLUMNS:
        have = found.get(want.name)
        if have is None:
            out.append(f"column {want.name} is missing (expected {want.type})")
            continue
        if have.type != want.type:
            out.append(f"column {want.name} is {have.type}, expected {want.type}")
        if have.not_null and not want.not_null:
            out.append(f"column {want.name} is NOT NULL, expected nullable")
        elif want.not_null and not have.not_null:
            out.append(f"column {want.name} allows NULL, expected NOT NULL")
        if normalize_default(have.default) != normalize_default(want.default):
            if have.default is None:
                out.append(f"column {want.name} has no default, expected DEFAULT {want.default}")
            elif want.default is None:
                out.append(f"column {want.name} has DEFAULT {have.default}, expected no default")
            else:
                out.append(f"column {want.name} has DEFAULT {have.default}, expected DEFAULT {want.default}")
    expected = {c.name for c in COLUMNS}
    for have in observed.columns:
        if have.name not in expected:
            out.append(
                f"column {have.name} ({have.type}) is not expected: the table should have exactly "
                f"the {len(COLUMNS)} columns of the migration"
            )
    return out


def _index_sentences(observed: Observed) -> list[str]:
    out: list[str] = []
    found = {i.name: i for i in observed.indexes}
    for want in INDEXES:
        have = found.get(want.name)
        if have is None:
            out.append(f"index {want.name} is missing (expected {want.definition}{_where(want.where_status)})")
            continue
        body = _index_body(have.indexdef)
        if " ".join(body.split()) != want.definition:
            out.append(f"index {want.name} is {body}, expected {want.definition}")
        if want.primary and not have.primary:
            out.append(f"index {want.name} is not the primary key, expected PRIMARY KEY (id)")
        elif want.unique and not have.unique:
            out.append(f"index {want.name} is not unique, expected unique")
        elif have.unique and not want.unique:
            out.append(f"index {want.name} is unique, expected non-unique")
        if want.where_status is None:
            if have.predicate is not None:
                out.append(f"index {want.name} is partial (WHERE {have.predicate}), expected it to cover every row")
        elif have.predicate is None:
            out.append(f"index {want.name} covers every row, expected it to be partial{_where(want.where_status)}")
        elif status_values(have.predicate) != want.where_status:
            out.append(f"index {want.name} is partial WHERE {have.predicate}, expected{_where(want.where_status)}")
        if not have.valid:
            out.append(
                f"index {want.name} is invalid (left by a failed CREATE INDEX CONCURRENTLY?); "
                f"rebuild it with REINDEX INDEX {want.name}"
            )
    return out


def _where(statuses: frozenset[str] | None) -> str:
    return f" WHERE status IN {_values(statuses)}" if statuses else ""


def _constraint_sentences(observed: Observed) -> list[str]:
    want = STATUS_CONSTRAINT
    expected = f"CHECK ({want.column} IN {_values(want.values)})"
    have = observed.status_constraint()
    if have is None:
        others = [c for c in observed.checks if status_values(_check_body(c.definition)) is not None]
        hint = "".join(f"; found {c.name} {c.definition} instead" for c in others)
        return [f"constraint {want.name} is missing (expected {expected}){hint}"]
    values = status_values(_check_body(have.definition), want.column)
    if values is None:
        return [f"constraint {want.name} is {have.definition}, expected {expected}"]
    if values != set(want.values):
        extra, lacking = values - set(want.values), set(want.values) - values
        parts = []
        if extra:
            parts.append(f"also allows {_values(extra)}")
        if lacking:
            parts.append(f"rejects {_values(lacking)}")
        return [f"constraint {want.name} allows {_values(values)}, expected {_values(want.values)} ({'; '.join(parts)})"]
    return []


def _check_body(definition: str) -> str:
    return re.sub(r"\s+NOT VALID\s*$", "", definition)


def constraint_not_validated(observed: Observed) -> str | None:
    """A sentence when the status constraint exists but was added NOT VALID: rows
    written before it was added were never checked against it."""
    have = observed.status_constraint()
    if have is None or have.validated:
        return None
    return (
        f"constraint {have.name} is NOT VALID: rows written before it was added were never checked; "
        f"run ALTER TABLE {observed.qualified} VALIDATE CONSTRAINT {have.name}"
    )


def table_differences(observed: Observed) -> list[str]:
    """Differences in the table itself: columns, indexes, the status constraint."""
    if observed.relkind is None:
        return [f"table {TABLE} does not exist"]
    if not observed.exists:
        kind = _RELKINDS.get(observed.relkind, f"relation of kind {observed.relkind!r}")
        return [f"{observed.qualified} is a {kind}, expected a table"]
    return _column_sentences(observed) + _index_sentences(observed) + _constraint_sentences(observed)


_RELKINDS = {"v": "view", "m": "materialized view", "f": "foreign table", "S": "sequence", "i": "index", "c": "composite type"}


def function_differences(observed: Observed) -> list[str]:
    """Differences in the three functions: missing, other arguments, other results."""
    out: list[str] = []
    by_name: dict[str, list[FoundFunction]] = {}
    for fn in observed.functions:
        by_name.setdefault(fn.name, []).append(fn)
    where = f" in schema {observed.function_schema}" if observed.function_schema else ""
    for want in FUNCTIONS:
        overloads = by_name.get(want.name, [])
        have = next((f for f in overloads if f.arguments == want.arguments), None)
        if have is None:
            found = "".join(f"; found {f.name}({f.arguments}) instead" for f in overloads)
            out.append(f"function {want.signature} is missing{where}{found}")
            continue
        if have.arguments_declared != want.arguments_declared:
            out.append(
                f"function {want.signature} is declared ({have.arguments_declared}), "
                f"expected ({want.arguments_declared})"
            )
        if want.returns is not None:
            if have.result != want.returns:
                out.append(f"function {want.signature} returns {have.result}, expected {want.returns}")
            continue
        columns = dict(have.columns)
        lacking = [name for name, _ in want.columns if name not in columns]
        if lacking:
            out.append(
                f"function {want.signature} returns {have.result}, which lacks "
                f"{', '.join(lacking)}; expected a table with at least "
                f"{', '.join(name for name, _ in want.columns)}"
            )
        for name, typ in want.columns:
            if name in columns and columns[name] != typ:
                out.append(f"function {want.signature} returns {name} as {columns[name]}, expected {typ}")
    return out


def differences_of(observed: Observed) -> list[str]:
    if observed.relkind is None:
        return [f"table {TABLE} does not exist"]
    return table_differences(observed) + function_differences(observed)


def differences(conn: psycopg.Connection, schema: str | None = None) -> list[str]:
    """Every way the log table and its functions differ from the migration's; [] when they match.

    With ``schema`` the table is looked up there; otherwise where unqualified SQL finds it.
    """
    return differences_of(inspect(conn, schema))


def summary() -> str:
    """The expected shape in one line, for check results."""
    return (
        f"{len(COLUMNS)} columns, {len(INDEXES)} indexes, {STATUS_CONSTRAINT.name} on "
        f"{_values(STATUS_CONSTRAINT.values)}"
    )


def as_data(observed: Observed) -> dict[str, Any]:
    return {
        "schema": observed.schema,
        "columns": len(observed.columns),
        "indexes": sorted(i.name for i in observed.indexes),
        "functions": sorted(f"{f.name}({f.arguments})" for f in observed.functions),
    }
