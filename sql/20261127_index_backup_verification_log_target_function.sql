-- The target indexes of the previous migration indexed verification_details->>'target'
-- directly. The planner prices that expression as one cheap operator, though each
-- row's document (several KB, TOASTed) must be fetched and decompressed to
-- evaluate it: from about 300,000 rows it preferred walking the verified_at index
-- over the 30-day window and filtering every run of every target, 0.5-1 s per
-- target for the success ratio (bench/RESULTS.md, section 4). The same expression
-- behind a function declared costly keeps the planner on the target index,
-- where the expression is never evaluated at read time: 465 ms -> 23 ms at
-- 300,000 rows, and flat as the table grows.
--
-- plpgsql, not SQL: a SQL function would be inlined back into the cheap operator.
-- OPERATOR(pg_catalog.->>): the body must mean the same whatever the search_path.
CREATE OR REPLACE FUNCTION backup_verification_log_target(details jsonb)
    RETURNS text
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE COST 10000
AS $$
BEGIN
    RETURN details OPERATOR(pg_catalog.->>) 'target';
END
$$;

COMMENT ON FUNCTION backup_verification_log_target(jsonb) IS
    'The pgbv target a backup_verification_log row belongs to (NULL: written before pgbv, belongs to every target). Filter on backup_verification_log_target(verification_details) to use the target indexes.';

-- Same names, same columns, now on the function.
DROP INDEX IF EXISTS idx_backup_verification_log_target_verified_at;
CREATE INDEX idx_backup_verification_log_target_verified_at
    ON backup_verification_log (backup_verification_log_target(verification_details), verified_at DESC);

DROP INDEX IF EXISTS idx_backup_verification_log_target_drills;
CREATE INDEX idx_backup_verification_log_target_drills
    ON backup_verification_log (backup_verification_log_target(verification_details), verified_at DESC)
    WHERE verification_details ? 'restore';
