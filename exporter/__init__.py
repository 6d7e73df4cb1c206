"""pg-backup-verifier: verifies PostgreSQL backups and exports the verdict to Prometheus."""

__version__ = "0.1.0"
