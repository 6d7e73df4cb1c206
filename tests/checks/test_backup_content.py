"""backup_content reads the newest pg_dump archive's table of contents and compares it
with the live database: real dumps of real databases, each fault planted as an
operator would (the wrong database, --schema-only, --exclude-table-data, -T, a policy
missing), each failing with the object named; a healthy dump passes in every format."""

from __future__ import annotations

import gzip
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from exporter.backups import DirectoryBackupSource
from exporter.backups.toc import read_archive_toc
from exporter.checks import ORDER
from exporter.checks.backup_content import CHECK, dsn_database
from exporter.checks.base import CheckContext
from exporter.pgtools import find_tool, run_tool
from exporter.verify import verify_target
from tests.backups.test_toc import assert_matches_pg_restore_list
from tests.checks.helpers import check_once
from tests.conftest import SEED_CHECKS, execute, make_target
from tests.pgcluster import Cluster

PG15_BIN = Path("/usr/lib/postgresql/15/bin")
FLAGS = {"custom": "-Fc", "directory": "-Fd", "tar": "-Ft", "plain": "-Fp"}
NAMES = {"custom": "app.dump", "directory": "app.dir", "tar": "app.tar", "plain": "app.sql"}


def dump(dsn: str, folder: Path, *extra: str, fmt: str = "custom", pg_bin_dir: Path | None = None) -> Path:
    folder.mkdir(exist_ok=True)
    with psycopg.connect(dsn) as conn:
        version = conn.info.server_version
    pg_dump = find_tool("pg_dump", version, pg_bin_dir)
    path = folder / NAMES[fmt]
    run_tool(pg_dump, [FLAGS[fmt], "-f", str(path), *extra, "-d", dsn], timeout=120)
    return path


def target_for(dsn: str, folder: Path, checks: dict | None = None, **backup):
    return make_target(dsn, checks=checks, backup={"source": "directory", "path": str(folder), **backup})


def run(target):
    return check_once(CHECK, target, backup=DirectoryBackupSource(target.backup).lookup())


def run_offline(target):
    """As the outage path runs it: no connection to the target."""
    ctx = CheckContext(
        target=target, conn=None, log_conn=None, backup=DirectoryBackupSource(target.backup).lookup(),
        previous=None, now=datetime.now(timezone.utc),
    )
    return CHECK.run(ctx)


def dbname(dsn: str) -> str:
    return conninfo_to_dict(dsn)["dbname"]


def test_registered_after_backup_readable_and_runs_without_the_database(tmp_path):
    assert ORDER.index("backup_content") == ORDER.index("backup_readable") + 1
    assert CHECK.needs_database is False
    assert CHECK.applies(target_for("dbname=x", tmp_path))
    # Physical backups have no table of contents: the check is not listed for them.
    assert not CHECK.applies(make_target("dbname=x", backup={"source": "pgbackrest", "stanza": "main"}))
    assert not CHECK.applies(make_target("dbname=x"))


@pytest.mark.parametrize("fmt", ["custom", "directory", "tar"])
def test_healthy_demo_dump_passes_in_every_format(demo_db, tmp_path, fmt):
    dump(demo_db, tmp_path / "backups", fmt=fmt)
    result = run(target_for(demo_db, tmp_path / "backups"))
    assert result.outcome == "pass", result.message
    assert "7 critical tables with their data" in result.message
    assert "row-level security and every live policy of 7 tables" in result.message
    assert "2 required indexes" in result.message and "2 required functions" in result.message
    body = result.as_dict()
    assert body["observed"]["database"] == dbname(demo_db) == body["expected"]["database"]
    assert body["observed"]["differences"] == []


def test_index_behind_a_primary_key_is_its_constraint_entry(demo_db, tmp_path):
    dump(demo_db, tmp_path / "backups")
    checks = {**SEED_CHECKS, "required_indexes": [*SEED_CHECKS["required_indexes"], "appointments_pkey"]}
    result = run(target_for(demo_db, tmp_path / "backups", checks))
    assert result.outcome == "pass", result.message
    assert "3 required indexes" in result.message
    assert run_offline(target_for(demo_db, tmp_path / "backups", checks)).outcome == "pass"


def test_with_nothing_to_look_for_it_still_compares_the_name(demo_db, make_db, tmp_path):
    dump(demo_db, tmp_path / "backups")
    result = run(target_for(demo_db, tmp_path / "backups", {}))
    assert result.outcome == "pass", result.message
    assert "is a dump of this database (no critical tables" in result.message
    other = make_db()
    assert run(target_for(other, tmp_path / "backups", {})).outcome == "fail"


def test_dump_of_the_wrong_database_fails_naming_both(demo_db, make_db, tmp_path):
    other = make_db(demo=True)
    dump(other, tmp_path / "backups")
    result = run(target_for(demo_db, tmp_path / "backups"))
    assert result.outcome == "fail"
    assert f"dump of database {dbname(other)!r}, not {dbname(demo_db)!r}" in result.message
    assert result.observed["database"] == dbname(other) and result.expected["database"] == dbname(demo_db)


def test_backup_database_names_a_dump_of_another_name_on_purpose(demo_db, make_db, tmp_path):
    other = make_db(demo=True)
    dump(other, tmp_path / "backups")
    assert run(target_for(demo_db, tmp_path / "backups", database=dbname(other))).outcome == "pass"
    wrong = run(target_for(demo_db, tmp_path / "backups", database="billing"))
    assert wrong.outcome == "fail" and "not 'billing' (backup.database)" in wrong.message


def test_schema_only_dump_fails_naming_the_tables(demo_db, tmp_path):
    dump(demo_db, tmp_path / "backups", "--schema-only")
    result = run(target_for(demo_db, tmp_path / "backups"))
    assert result.outcome == "fail"
    for table in SEED_CHECKS["critical_tables"]:
        assert f"{table}: no TABLE DATA" in result.message
    assert "--schema-only" in result.message


def test_excluded_table_data_fails(demo_db, tmp_path):
    dump(demo_db, tmp_path / "backups", "--exclude-table-data=appointments")
    result = run(target_for(demo_db, tmp_path / "backups"))
    assert result.outcome == "fail"
    assert result.observed["differences"] == [
        "appointments: no TABLE DATA, the rows are not in the backup (a --schema-only dump, or --exclude-table-data)"
    ]


def test_excluded_table_fails(demo_db, tmp_path):
    dump(demo_db, tmp_path / "backups", "-T", "contacts")
    result = run(target_for(demo_db, tmp_path / "backups"))
    assert result.outcome == "fail"
    assert "contacts is not in the backup (left out with -T" in result.message
    assert result.observed["created_after_dump"] == []


def dumped_in_between(dsn: str, folder: Path, before: list[str], after: list[str]):
    """The check's result on a dump made while the statements of before were in force,
    undone by those of after once the dump was written."""
    execute(dsn, *before)
    dump(dsn, folder)
    execute(dsn, *after)
    return run(target_for(dsn, folder))


def test_rls_table_left_out_fails_once_and_a_selective_dump_takes_nothing_as_new(demo_db, tmp_path):
    # A -T dump leaves out tables older than it (notes, contacts): then "later", really
    # created after the dump, cannot be told from one more table left out, and fails too.
    execute(demo_db, "CREATE TABLE notes (id int)", "ALTER TABLE notes ENABLE ROW LEVEL SECURITY",
            "CREATE POLICY notes_all ON notes USING (true)", "CREATE TABLE audit (id int)")
    dump(demo_db, tmp_path / "backups", "-T", "notes", "-T", "contacts")
    execute(demo_db, "CREATE TABLE later (id int)", "ALTER TABLE later ENABLE ROW LEVEL SECURITY")
    checks = {**SEED_CHECKS, "rls_tables": ["notes", "contacts", "later"], "min_policies": {}}
    result = run(target_for(demo_db, tmp_path / "backups", checks))
    assert result.outcome == "fail"
    assert result.observed["differences"] == [
        "contacts is not in the backup (left out with -T or --exclude-table?)",
        "notes is not in the backup (left out with -T or --exclude-table?)",
        "later is not in the backup (left out with -T or --exclude-table?)",
    ]
    assert result.observed["created_after_dump"] == []
    assert ("the dump leaves out tables that existed before it: public.contacts, public.notes, so tables "
            "missing from it are not taken as created after it") in result.message


def test_policy_dropped_before_the_dump_and_recreated_after_fails_naming_it(demo_db, tmp_path):
    result = dumped_in_between(
        demo_db, tmp_path / "backups", ["DROP POLICY appointments_delete ON appointments"],
        ["CREATE POLICY appointments_delete ON appointments FOR DELETE USING (true)"],
    )
    assert result.outcome == "fail"
    assert "appointments has 5 policies live, the backup 4; not in the backup: appointments_delete" in result.message


def test_row_security_missing_from_the_dump_fails(demo_db, tmp_path):
    result = dumped_in_between(
        demo_db, tmp_path / "backups", ["ALTER TABLE call_logs DISABLE ROW LEVEL SECURITY"],
        ["ALTER TABLE call_logs ENABLE ROW LEVEL SECURITY"],
    )
    assert result.outcome == "fail"
    assert result.observed["differences"] == ["call_logs: no ENABLE ROW LEVEL SECURITY in the backup"]


def test_table_created_after_the_dump_passes_and_is_mentioned(demo_db, tmp_path):
    dump(demo_db, tmp_path / "backups")
    execute(demo_db, "CREATE TABLE invoices (id int PRIMARY KEY)", "INSERT INTO invoices VALUES (1)")
    checks = {**SEED_CHECKS, "critical_tables": [*SEED_CHECKS["critical_tables"], "invoices"]}
    execute(demo_db, "ALTER TABLE invoices ENABLE ROW LEVEL SECURITY")
    result = run(target_for(demo_db, tmp_path / "backups", checks))
    assert result.outcome == "pass", result.message
    assert "created after the dump, so not in it (fine): invoices" in result.message
    # Its policies were not compared: the message counts the 7 RLS tables the backup holds.
    assert "every live policy of 7 tables" in result.message
    assert result.observed["created_after_dump"] == ["invoices"]
    # Not critical: still mentioned.
    result = run(target_for(demo_db, tmp_path / "backups"))
    assert result.outcome == "pass" and result.observed["created_after_dump"] == ["public.invoices"]


def test_required_index_and_function_missing_from_the_dump_fail(demo_db, tmp_path):
    result = dumped_in_between(
        demo_db, tmp_path / "backups",
        ["ALTER INDEX idx_appointments_time_range RENAME TO idx_tmp",
         "ALTER FUNCTION cleanup_old_webhook_logs RENAME TO cleanup_tmp"],
        ["ALTER INDEX idx_tmp RENAME TO idx_appointments_time_range",
         "ALTER FUNCTION cleanup_tmp RENAME TO cleanup_old_webhook_logs"],
    )
    assert result.outcome == "fail"
    assert result.observed["differences"] == [
        "index public.idx_appointments_time_range is not in the backup",
        "function public.cleanup_old_webhook_logs is not in the backup",
    ]


PARTITIONED = [
    'CREATE SCHEMA "Billing"',
    'CREATE TABLE "Billing"."Invoices" (id int, at date NOT NULL) PARTITION BY RANGE (at)',
    """CREATE TABLE "Billing"."Invoices 2025" PARTITION OF "Billing"."Invoices"
       FOR VALUES FROM ('2025-01-01') TO ('2026-01-01') PARTITION BY RANGE (at)""",
    """CREATE TABLE "Billing"."Invoices 2025 H1" PARTITION OF "Billing"."Invoices 2025"
       FOR VALUES FROM ('2025-01-01') TO ('2025-07-01')""",
    """CREATE TABLE "Billing"."Invoices 2025 H2" PARTITION OF "Billing"."Invoices 2025"
       FOR VALUES FROM ('2025-07-01') TO ('2026-01-01')""",
    """CREATE TABLE "Billing"."Invoices 2026" PARTITION OF "Billing"."Invoices"
       FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')""",
    """INSERT INTO "Billing"."Invoices" VALUES (1, '2025-02-01'), (2, '2025-08-01'), (3, '2026-02-01')""",
]
BILLING = {"critical_tables": ["Billing.Invoices"]}


@pytest.fixture
def billing(make_db) -> str:
    dsn = make_db()
    execute(dsn, *PARTITIONED)
    return dsn


@pytest.mark.parametrize("spelling", ["Billing.Invoices", '"Billing"."Invoices"'])
def test_partitioned_mixed_case_table_passes_with_its_leaves_data(billing, tmp_path, spelling):
    dsn = billing
    dump(dsn, tmp_path / "backups")
    checks = {"critical_tables": [spelling]}
    result = run(target_for(dsn, tmp_path / "backups", checks))
    assert result.outcome == "pass", result.message
    offline = run_offline(target_for(dsn, tmp_path / "backups", checks))
    assert offline.outcome == "pass", offline.message


def test_partitioned_table_fails_when_a_leafs_data_is_excluded(billing, tmp_path):
    dsn = billing
    dump(dsn, tmp_path / "backups", '--exclude-table-data="Billing"."Invoices 2025 H2"')
    expected = 'Billing.Invoices (partition Billing.Invoices 2025 H2): no TABLE DATA, the rows are not in the backup'
    result = run(target_for(dsn, tmp_path / "backups", BILLING))
    assert result.outcome == "fail" and result.observed["differences"] == [expected]
    # Without the database, the partitions are found through the archive's TABLE ATTACH entries.
    offline = run_offline(target_for(dsn, tmp_path / "backups", BILLING))
    assert offline.outcome == "fail" and offline.observed["differences"] == [expected]


def test_partitioned_pgbench_database_passes(make_db, tmp_path):
    """No false alarm on a pgbench database (pgbench_accounts in 3 range partitions)."""
    dsn = make_db()
    with psycopg.connect(dsn) as conn:
        version = conn.info.server_version
    run_tool(find_tool("pgbench", version), ["-i", "-s", "1", "--partitions=3", "-q", dsn], timeout=300)
    dump(dsn, tmp_path / "backups")
    tables = ["pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"]
    result = run(target_for(dsn, tmp_path / "backups", {"critical_tables": tables, "rls_tables": []}))
    assert result.outcome == "pass", result.message
    dump(dsn, tmp_path / "excluded", "--exclude-table-data=pgbench_accounts_2")
    result = run(target_for(dsn, tmp_path / "excluded", {"critical_tables": tables}))
    assert result.observed["differences"] == [
        "pgbench_accounts (partition public.pgbench_accounts_2): no TABLE DATA, the rows are not in the backup"
    ]


def test_partition_left_out_with_T_fails(billing, tmp_path):
    dsn = billing
    dump(dsn, tmp_path / "backups", '-T', '"Billing"."Invoices 2025 H1"')
    result = run(target_for(dsn, tmp_path / "backups", BILLING))
    assert result.outcome == "fail"
    assert "Billing.Invoices (partition Billing.Invoices 2025 H1) is not in the backup" in result.message


def test_without_the_database_compares_with_the_configuration(demo_db, tmp_path):
    dump(demo_db, tmp_path / "backups")
    result = run_offline(target_for(demo_db, tmp_path / "backups"))
    assert result.outcome == "pass", result.message
    assert "live policy counts and the detection of tables created after the dump were skipped" in result.message
    assert result.expected["database"] == dbname(demo_db)  # from the DSN

    dump(demo_db, tmp_path / "schema-only", "--schema-only")
    result = run_offline(target_for(demo_db, tmp_path / "schema-only"))
    assert result.outcome == "fail" and "appointments: no TABLE DATA" in result.message
    wrong = run_offline(target_for(demo_db, tmp_path / "backups", database="billing"))
    assert wrong.outcome == "fail" and "not 'billing'" in wrong.message


def test_dsn_database_follows_libpq_defaults(monkeypatch):
    monkeypatch.delenv("PGDATABASE", raising=False)
    assert dsn_database("host=h dbname=app user=u") == "app"
    assert dsn_database("postgresql://u@h/") == "u"
    monkeypatch.setenv("PGDATABASE", "fromenv")
    assert dsn_database("host=h user=u") == "fromenv"


def test_a_base_backup_in_the_directory_source_is_not_its_business(demo_db, tmp_path):
    # pg_basebackup folders have no table of contents: the check is not listed, instead
    # of warning on every run of a target that keeps base backups in a folder.
    folder = tmp_path / "backups" / "base-2026-12-01"
    folder.mkdir(parents=True)
    (folder / "backup_label").write_text("START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n")
    (folder / "backup_manifest").write_text("{}")
    target = target_for(demo_db, tmp_path / "backups")
    lookup = DirectoryBackupSource(target.backup).lookup()
    assert lookup.info.kind == "pg_basebackup"
    ctx = CheckContext(target=target, conn=None, log_conn=None, backup=lookup, previous=None,
                       now=datetime.now(timezone.utc))
    assert CHECK.applies(target) and not CHECK.applies_to_run(ctx)
    assert "backup_content" not in [c.name for c in verify_target(target, record_result=False).checks]


def test_not_a_pg_dump_is_not_a_pass(demo_db, tmp_path):
    (tmp_path / "backups").mkdir()
    (tmp_path / "backups" / "app.bin").write_bytes(b"\0" * 100)
    result = run(target_for(demo_db, tmp_path / "backups"))
    assert result.outcome == "warn"
    assert "content not verified" in result.message and "is a file" in result.message


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
def test_plain_sql_dump_is_read_from_its_comments(demo_db, tmp_path, compressed):
    path = dump(demo_db, tmp_path / "backups", fmt="plain")
    if compressed:
        with open(path, "rb") as src, gzip.open(path.with_suffix(".sql.gz"), "wb") as dst:
            shutil.copyfileobj(src, dst)
        path.unlink()
    result = run(target_for(demo_db, tmp_path / "backups"))
    assert result.outcome == "pass", result.message
    assert "7 critical tables with their data" in result.message and "every live policy of 7 tables" in result.message
    assert "does not name its database (dumped without -C)" in result.message


def test_plain_sql_dump_faults_fail(demo_db, tmp_path):
    # A row that reads like pg_dump's comment is data, not an entry.
    execute(demo_db, "DROP POLICY appointments_delete ON appointments", "CREATE TABLE notes (body text)",
            "INSERT INTO notes VALUES ('first'), ('-- Data for Name: contacts; Type: TABLE DATA; Schema: public; "
            "Owner: postgres')")
    dump(demo_db, tmp_path / "backups", "-C", "--exclude-table-data=contacts", fmt="plain")
    execute(demo_db, "CREATE POLICY appointments_delete ON appointments FOR DELETE USING (true)",
            "CREATE TABLE later (id int)")
    checks = {**SEED_CHECKS, "critical_tables": [*SEED_CHECKS["critical_tables"], "later"]}
    result = run(target_for(demo_db, tmp_path / "backups", checks))
    assert result.outcome == "fail"
    assert result.observed["database"] == dbname(demo_db), result.message  # from \connect, written by -C
    assert result.observed["differences"] == [
        "contacts: no TABLE DATA, the rows are not in the backup (a --schema-only dump, or --exclude-table-data)",
        "later is not in the backup (left out with -T or --exclude-table?)",
        "appointments has 5 policies live, the backup 4; not in the backup: appointments_delete",
    ]
    assert "carries no OIDs" in result.message


def test_damaged_table_of_contents_fails(demo_db, tmp_path):
    path = dump(demo_db, tmp_path / "backups")
    path.write_bytes(path.read_bytes()[:3000])
    result = run(target_for(demo_db, tmp_path / "backups"))
    assert result.outcome == "fail" and "cannot be read" in result.message


def test_a_run_with_a_schema_only_dump_fails_naming_backup_content(demo_db, tmp_path):
    dump(demo_db, tmp_path / "backups", "--schema-only")
    result = verify_target(target_for(demo_db, tmp_path / "backups", min_size_mb=0), record_result=False)
    assert result.status == "failure"
    failed = [check.name for check in result.checks if check.failed]
    assert failed == ["backup_content"], [(c.name, c.message) for c in result.checks if c.failed]


@pytest.fixture(scope="module")
def pg15(pg_server):
    if not PG15_BIN.is_dir():
        pytest.skip("Debian's PostgreSQL 15 server is not installed")
    from tests.conftest import DEMO_SCHEMA, MIGRATIONS

    cluster = Cluster(bin_dir=PG15_BIN)
    try:
        cluster.start()
        execute(cluster.dsn(), "CREATE DATABASE app")
        with psycopg.connect(cluster.dsn("app"), autocommit=True) as conn:
            conn.execute(DEMO_SCHEMA.read_text())
            for migration in MIGRATIONS:
                conn.execute(migration.read_text())
        yield cluster
    finally:
        cluster.destroy()


def test_postgresql_15_archive(pg15, tmp_path):
    """Archive version 1.14, written by Debian's pg_dump 15 of a PostgreSQL 15 server."""
    dsn = pg15.dsn("app")
    path = dump(dsn, tmp_path / "backups", pg_bin_dir=PG15_BIN)
    toc = read_archive_toc(path, "pg_dump custom", timeout=30)
    assert toc.version == (1, 14, 0) and toc.database == "app" and toc.dumped_by.startswith("15.")
    assert_matches_pg_restore_list(path, "custom", toc)
    result = run(target_for(dsn, tmp_path / "backups"))
    assert result.outcome == "pass", result.message
    assert "pg_dump 15." in result.message
    dump(dsn, tmp_path / "excluded", "--exclude-table-data=contacts", pg_bin_dir=PG15_BIN)
    result = run(target_for(dsn, tmp_path / "excluded"))
    assert result.outcome == "fail" and "contacts: no TABLE DATA" in result.message


# --- found by a DBA trial: false passes ---------------------------------------------


def test_selective_dump_does_not_take_missing_tables_as_created_after(make_db, tmp_path):
    """pg_dump -t of 2 of 4 critical tables: the 2 left out, made after pgbench's tables,
    have OIDs above every one in the archive, yet they existed before the dump. What
    gives the dump away: pgbench_history and pgbench_tellers, older than its newest
    object, are not in it."""
    dsn = make_db()
    with psycopg.connect(dsn) as conn:
        version = conn.info.server_version
    run_tool(find_tool("pgbench", version), ["-i", "-s", "1", "-q", dsn], timeout=300)
    execute(dsn, "CREATE TABLE events (id int, at date NOT NULL) PARTITION BY RANGE (at)",
            "CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')",
            "CREATE TABLE tenant_docs (id int PRIMARY KEY)", "ALTER TABLE tenant_docs ENABLE ROW LEVEL SECURITY",
            "CREATE POLICY tenant_read ON tenant_docs USING (true)")
    dump(dsn, tmp_path / "backups", "-t", "pgbench_accounts", "-t", "pgbench_branches")
    checks = {"critical_tables": ["pgbench_accounts", "pgbench_branches", "events", "tenant_docs"],
              "rls_tables": ["tenant_docs"]}
    result = run(target_for(dsn, tmp_path / "backups", checks))
    assert result.outcome == "fail", result.message
    assert result.observed["differences"] == [
        "events is not in the backup (left out with -T or --exclude-table?)",
        "tenant_docs is not in the backup (left out with -T or --exclude-table?)",
    ]
    assert result.observed["created_after_dump"] == []
    assert ("the dump leaves out tables that existed before it: public.pgbench_history, public.pgbench_tellers, "
            "so tables missing from it are not taken as created after it") in result.message
    assert run_offline(target_for(dsn, tmp_path / "backups", checks)).outcome == "fail"
    # The whole database dumped: the same configuration passes.
    dump(dsn, tmp_path / "whole")
    result = run(target_for(dsn, tmp_path / "whole", checks))
    assert result.outcome == "pass", result.message
    assert "row-level security and every live policy of 1 table" in result.message


def test_partition_detached_when_the_dump_ran_fails_naming_it(billing, tmp_path):
    execute(billing, 'ALTER TABLE "Billing"."Invoices" DETACH PARTITION "Billing"."Invoices 2026"')
    dump(billing, tmp_path / "backups")
    execute(billing, """ALTER TABLE "Billing"."Invoices" ATTACH PARTITION "Billing"."Invoices 2026"
                        FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')""")
    result = run(target_for(billing, tmp_path / "backups", BILLING))
    assert result.outcome == "fail", result.message
    assert result.observed["differences"] == [
        "Billing.Invoices (partition Billing.Invoices 2026) is in the backup but not attached to Billing.Invoices "
        "there (detached when the dump ran?): a restored Billing.Invoices lacks its rows"
    ]


def test_nested_partition_detached_when_the_dump_ran_fails_naming_it(billing, tmp_path):
    execute(billing, 'ALTER TABLE "Billing"."Invoices 2025" DETACH PARTITION "Billing"."Invoices 2025 H2"')
    dump(billing, tmp_path / "backups", fmt="plain")
    dump(billing, tmp_path / "custom")
    execute(billing, """ALTER TABLE "Billing"."Invoices 2025" ATTACH PARTITION "Billing"."Invoices 2025 H2"
                        FOR VALUES FROM ('2025-07-01') TO ('2026-01-01')""")
    expected = ("Billing.Invoices (partition Billing.Invoices 2025 H2) is in the backup but not attached to "
                "Billing.Invoices 2025 there (detached when the dump ran?): a restored Billing.Invoices lacks its rows")
    for folder in ("custom", "backups"):  # the plain script: by its TABLE ATTACH comments
        result = run(target_for(billing, tmp_path / folder, BILLING))
        assert result.outcome == "fail" and expected in result.observed["differences"], (folder, result.message)


def test_policy_swapped_at_dump_time_fails_whatever_the_counts(demo_db, tmp_path):
    result = dumped_in_between(
        demo_db, tmp_path / "backups",
        ["DROP POLICY appointments_delete ON appointments",
         "CREATE POLICY appointments_tmp ON appointments FOR DELETE USING (true)"],
        ["DROP POLICY appointments_tmp ON appointments",
         "CREATE POLICY appointments_delete ON appointments FOR DELETE USING (true)"],
    )
    assert result.outcome == "fail", result.message
    assert result.observed["differences"] == [
        "appointments has 5 policies live, the backup 5; not in the backup: appointments_delete; "
        "in the backup only: appointments_tmp"
    ]


def test_dump_of_another_database_calls_nothing_created_after(make_db, tmp_path):
    other = make_db()
    execute(other, "CREATE TABLE appointments (id int)")
    dump(other, tmp_path / "backups")
    target = make_db(demo=True)  # younger: every table's OID is above the archive's
    result = run(target_for(target, tmp_path / "backups"))
    assert result.outcome == "fail"
    assert result.observed["created_after_dump"] == [] and "created after" not in result.message
    assert "contacts is not in the backup" in result.observed["differences"]


def test_materialized_view_in_critical_tables_is_found_with_its_data(demo_db, tmp_path):
    execute(demo_db, "CREATE MATERIALIZED VIEW busy_days AS SELECT 1 AS n")
    checks = {**SEED_CHECKS, "critical_tables": [*SEED_CHECKS["critical_tables"], "busy_days"]}
    dump(demo_db, tmp_path / "backups")
    result = run(target_for(demo_db, tmp_path / "backups", checks))
    assert result.outcome == "pass", result.message
    assert "busy_days is a materialized view, not a table: it is in the backup with its data" in result.message
    assert run_offline(target_for(demo_db, tmp_path / "backups", checks)).outcome == "pass"
    dump(demo_db, tmp_path / "no-data", "--exclude-table-data=busy_days")
    result = run(target_for(demo_db, tmp_path / "no-data", checks))
    assert result.outcome == "fail", result.message
    assert result.observed["differences"] == [
        "busy_days (materialized view): no MATERIALIZED VIEW DATA, it is restored empty until refreshed"
    ]


def test_table_pgbv_counted_before_the_dump_is_not_taken_as_created_after(demo_db, tmp_path):
    """The one case OIDs cannot tell: a table left out with -T that is also the newest
    object of all. pgbv's own record of its rows, days before the dump, can."""
    execute(demo_db, "CREATE TABLE ledger (id int)")
    dump(demo_db, tmp_path / "backups", "-T", "ledger")
    checks = {**SEED_CHECKS, "critical_tables": [*SEED_CHECKS["critical_tables"], "ledger"]}
    target = target_for(demo_db, tmp_path / "backups", checks)
    lookup = DirectoryBackupSource(target.backup).lookup()
    started = datetime.fromisoformat(lookup.info.details["archive_started_local"]).date()

    def seen(days_before: int, key: str = "public.ledger"):
        day = (started - timedelta(days=days_before)).isoformat()
        # As row_counts keys it now (the table itself); runs recorded before keyed it "ledger".
        previous = {"row_baseline": {"window_days": 7, "tables": {key: [[day, 10]]}}}
        return check_once(CHECK, target, previous=previous, backup=lookup), day

    result = check_once(CHECK, target, backup=lookup)
    assert result.outcome == "pass" and result.observed["created_after_dump"] == ["ledger"]  # the known blind spot
    assert seen(2, key="ledger")[0].outcome == "fail"
    result, day = seen(2)
    assert result.outcome == "fail", result.message
    assert result.observed["differences"] == [
        f"ledger is not in the backup, yet pgbv counted its rows on {day}, before the dump was made"
    ]
    # The day before: the dump's host may be 14 hours ahead of UTC, so no evidence.
    result, _ = seen(1)
    assert result.outcome == "pass" and result.observed["created_after_dump"] == ["ledger"]
