-- pgbv's own reads go by target (verification_details->>'target') and time. At a
-- million rows, "the newest row of this target" filtered a scan of the whole table
-- (seconds, measured in bench/); these indexes make each read a short index scan.
-- Rows written before pgbv have no target: they are NULL in the index, found by
-- the same index, and read as belonging to every target.

CREATE INDEX IF NOT EXISTS idx_backup_verification_log_target_verified_at
    ON backup_verification_log ((verification_details->>'target'), verified_at DESC);

-- Restore drills are rare among runs: "the last drill" must not walk every run.
CREATE INDEX IF NOT EXISTS idx_backup_verification_log_target_drills
    ON backup_verification_log ((verification_details->>'target'), verified_at DESC)
    WHERE verification_details ? 'restore';
