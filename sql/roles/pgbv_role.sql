-- The least-privileged login role pgbv runs as: it can run every check, write
-- only its own log table, and cannot read or change one application row.
--
-- Not a migration (`pgbv migrate` applies sql/*.sql only, never this folder):
-- roles are cluster-wide and granting is the DBA's call, so a person runs it,
-- with psql, as a superuser or the database's owner, after `pgbv migrate`:
--
--   psql "host=db dbname=app user=postgres" -v ON_ERROR_STOP=1 -f sql/roles/pgbv_role.sql
--   psql ... -v role=pgbv_app -v password="$PGBV_PASSWORD" -f sql/roles/pgbv_role.sql
--   psql "host=scratch ..." -v scratch=on -f sql/roles/pgbv_role.sql   # restore drills' scratch server
--
-- Variables: role (default pgbv); password (sets it; omit it to keep the current
-- one, or to use certificate/peer authentication); scratch (on: also CREATEDB,
-- for restore drills; only on the scratch server). Safe to run again.
--
-- What each check needs, and why nothing more:
--   catalog checks (critical_tables, required_*, rls_policies, index_coverage,
--   constraints_valid, row_counts estimates): pg_class, pg_policy, pg_index,
--   pg_proc, pg_stat_all_tables are readable by every role;
--   database_size: pg_database_size() needs CONNECT on the database;
--   wal_archiving: pg_stat_archiver is readable by every role;
--   log_table, log_functions, success_rate, recording a run: SELECT and INSERT
--   on backup_verification_log, EXECUTE on its three functions;
--   the daemon's daily cleanup_old_backup_verification_logs(): DELETE on the
--   log table (the function runs with the caller's rights);
--   the one-writer lock between replicas: pg_try_advisory_lock(), open to all.
-- pg_read_all_stats is not needed: no check reads other sessions' activity.

\set ON_ERROR_STOP on
\if :{?role}
\else
\set role pgbv
\endif

SELECT to_regclass('backup_verification_log') IS NOT NULL AS pgbv_has_log \gset
\if :pgbv_has_log
\else
\echo 'backup_verification_log not found in this database (search_path): run `pgbv migrate` first, as its owner'
DO $$ BEGIN RAISE EXCEPTION 'backup_verification_log not found: run pgbv migrate first'; END $$;
\endif

-- Roles are cluster-wide: created once, left as they are when they exist (an
-- operator may have given it more on purpose; see the optional part below).
SELECT format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS', :'role')
 WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = :'role') \gexec

\if :{?password}
ALTER ROLE :"role" PASSWORD :'password';
\endif

SELECT format('GRANT CONNECT ON DATABASE %I TO %I', pg_catalog.current_database(), :'role') \gexec
SELECT format('GRANT USAGE ON SCHEMA %I TO %I', n.nspname, :'role')
  FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
 WHERE c.oid = 'backup_verification_log'::regclass \gexec
-- No UPDATE: a recorded verification is never changed, only added or, past the retention, deleted.
SELECT format('GRANT SELECT, INSERT, DELETE ON %s TO %I', 'backup_verification_log'::regclass, :'role') \gexec
SELECT format('GRANT EXECUTE ON FUNCTION %s TO %I', p.oid::regprocedure, :'role')
  FROM pg_catalog.pg_proc AS p
 WHERE p.proname IN ('get_latest_backup_verification', 'get_backup_verification_history',
                     'cleanup_old_backup_verification_logs', 'backup_verification_log_target')
   AND p.pronamespace = (SELECT relnamespace FROM pg_catalog.pg_class WHERE oid = 'backup_verification_log'::regclass) \gexec

-- Restore drills create and drop pgbv_restore_* databases on the scratch server.
-- The role is cluster-wide, so only ever on a server that holds nothing else of value.
\if :{?scratch}
ALTER ROLE :"role" CREATEDB;
\endif

-- Optional: exact row counts. row_counts takes its figures from the catalog; it
-- counts a critical table exactly only when the catalog has no estimate (a table
-- never vacuumed or analyzed) or says it is empty, so that an "empty table" alarm
-- never rests on a stale estimate. Counting reads the table, and pgbv counts with
-- row_security = off so that row-level security refuses rather than miscounts:
-- that takes SELECT on the table and, for a table with RLS, BYPASSRLS. Without
-- them such a table's row_counts is an error ("permission denied"), never a wrong
-- number: an ANALYZE of the table fixes it too. Granting them lets the role read
-- those tables' rows, which is what this script otherwise avoids:
--
--   GRANT SELECT ON organizations, profiles, agents, appointments, contacts, call_logs, knowledge_base_chunks TO pgbv;
--   ALTER ROLE pgbv BYPASSRLS;
