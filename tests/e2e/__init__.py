"""End-to-end tests: pgbv, a real Prometheus and a real Alertmanager on loopback."""
