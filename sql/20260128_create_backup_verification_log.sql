-- backup_verification_log: one row per verification run, as listed in the
-- deployment report of 2026-01-28 (11 columns, 5 indexes, 1 status
-- constraint, 3 helper functions). Never edit this file once applied: later
-- changes are new files in sql/.

CREATE TABLE backup_verification_log (
    id                   uuid                     NOT NULL DEFAULT gen_random_uuid(),
    verified_at          timestamp with time zone NOT NULL DEFAULT now(),
    backup_id            text,
    backup_age_hours     integer,
    backup_size_mb       integer,
    status               text                     NOT NULL,
    checks_passed        integer                  NOT NULL DEFAULT 0,
    checks_failed        integer                  NOT NULL DEFAULT 0,
    error_details        jsonb,
    verification_details jsonb,
    created_at           timestamp with time zone NOT NULL DEFAULT now(),
    CONSTRAINT backup_verification_log_pkey PRIMARY KEY (id),
    CONSTRAINT backup_verification_log_status_check
        CHECK (status IN ('success', 'warning', 'failure'))
);

CREATE INDEX idx_backup_verification_log_verified_at
    ON backup_verification_log (verified_at DESC);
CREATE INDEX idx_backup_verification_log_status
    ON backup_verification_log (status);
CREATE INDEX idx_backup_verification_log_created_at
    ON backup_verification_log (created_at DESC);
-- Partial: alerting and dashboards look for the few bad runs among many good ones.
CREATE INDEX idx_backup_verification_log_failures
    ON backup_verification_log (verified_at DESC)
    WHERE status IN ('warning', 'failure');

-- The newest verification. Goes by verified_at (when the run happened), not
-- created_at (when a spooled result finally reached the table).
CREATE FUNCTION get_latest_backup_verification()
RETURNS TABLE (
    id                   uuid,
    verified_at          timestamp with time zone,
    status               text,
    backup_id            text,
    backup_age_hours     integer,
    backup_size_mb       integer,
    checks_passed        integer,
    checks_failed        integer,
    error_details        jsonb,
    verification_details jsonb
)
LANGUAGE sql STABLE
AS $$
    SELECT l.id, l.verified_at, l.status, l.backup_id, l.backup_age_hours,
           l.backup_size_mb, l.checks_passed, l.checks_failed,
           l.error_details, l.verification_details
      FROM backup_verification_log AS l
     ORDER BY l.verified_at DESC
     LIMIT 1
$$;

-- Rows of the last `days` days, newest first.
CREATE FUNCTION get_backup_verification_history(days integer)
RETURNS TABLE (
    id                   uuid,
    verified_at          timestamp with time zone,
    status               text,
    backup_id            text,
    backup_age_hours     integer,
    backup_size_mb       integer,
    checks_passed        integer,
    checks_failed        integer,
    error_details        jsonb,
    verification_details jsonb
)
LANGUAGE sql STABLE
AS $$
    SELECT l.id, l.verified_at, l.status, l.backup_id, l.backup_age_hours,
           l.backup_size_mb, l.checks_passed, l.checks_failed,
           l.error_details, l.verification_details
      FROM backup_verification_log AS l
     WHERE l.verified_at >= now() - make_interval(days => days)
     ORDER BY l.verified_at DESC
$$;

-- Deletes rows older than `retention_days` days and returns how many.
CREATE FUNCTION cleanup_old_backup_verification_logs(retention_days integer DEFAULT 90)
RETURNS integer
LANGUAGE sql VOLATILE
AS $$
    WITH deleted AS (
        DELETE FROM backup_verification_log AS l
         WHERE l.verified_at < now() - make_interval(days => retention_days)
        RETURNING 1
    )
    SELECT count(*)::integer FROM deleted
$$;
