# syntax=docker/dockerfile:1
# pg-backup-verifier (pgbv): the exporter, its SQL and PostgreSQL's client tools.
#
#   docker build -t pgbv .
#   docker run --rm -p 10047:10047 -v "$PWD/pgbv.yml:/etc/pgbv/pgbv.yml:ro" pgbv
#
# Debian bookworm ships PostgreSQL 15 client tools, and pg_dump refuses a server
# newer than itself. For newer servers, take the tools from the PostgreSQL
# project's own repository (PGDG), e.g. for 17:
#
#   docker build --build-arg PGDG=1 --build-arg PG_MAJOR=17 -t pgbv:pg17 .
#
# Pinned by version; pin by digest too where your policy asks for it:
#   docker build --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:... .
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# --- build: install pgbv and its dependencies into a virtual environment -------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python -m venv /opt/pgbv
COPY pyproject.toml README.md ./
COPY sql ./sql
COPY exporter ./exporter
# Every dependency has a manylinux wheel (psycopg[binary], bcrypt, PyYAML, pydantic-core),
# so no compiler is needed. pip byte-compiles what it installs, here, because the
# runtime's root filesystem may be read-only.
RUN /opt/pgbv/bin/pip install --compile .

# --- runtime ------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ARG PG_MAJOR=15
ARG PGDG=0
LABEL org.opencontainers.image.title="pg-backup-verifier" \
      org.opencontainers.image.description="Verifies PostgreSQL backups every day and exports the verdict for Prometheus" \
      org.opencontainers.image.licenses="Apache-2.0"

# Versions of Debian packages are not pinned: bookworm's security updates must reach
# the next build, and a pinned version disappears from the archive when one lands.
# hadolint ignore=DL3008
RUN set -eux; \
    apt-get update; \
    if [ "$PGDG" = 1 ]; then \
        apt-get install -y --no-install-recommends ca-certificates postgresql-common; \
        /usr/share/postgresql-common/pgdg/apt.postgresql.org.sh -y; \
    fi; \
    apt-get install -y --no-install-recommends "postgresql-client-${PG_MAJOR}"; \
    rm -rf /var/lib/apt/lists/*

# A fixed UID/GID (the port number, easy to recognise), so that volume ownership,
# Kubernetes' runAsUser and file permissions on the host all agree.
RUN groupadd --system --gid 10047 pgbv \
 && useradd --system --uid 10047 --gid 10047 --home-dir /var/lib/pgbv --no-create-home \
            --shell /usr/sbin/nologin pgbv \
 && install -d -o 10047 -g 10047 -m 0750 /var/lib/pgbv /var/lib/pgbv/spool \
 && install -d -m 0755 /etc/pgbv

COPY --from=build /opt/pgbv /opt/pgbv
# The SQL for a DBA (the least-privilege role; the migrations pgbv applies itself)
# and the web config example, so that `docker run ... cat` can hand them out.
COPY sql /usr/share/pgbv/sql
COPY deploy/web-config.example.yml /usr/share/pgbv/web-config.example.yml

ENV PATH=/opt/pgbv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PGBV_CONFIG=/etc/pgbv/pgbv.yml

USER 10047:10047
WORKDIR /var/lib/pgbv
EXPOSE 10047

# /healthz answers 200 while the scheduler loop is alive. Plain HTTP first, then
# TLS (unverified: this only asks the process in this container whether it is alive);
# the port comes from PGBV_HTTP__LISTEN when that is set, else 10047. With
# client_auth_type RequireAndVerifyClientCert no handshake without a certificate
# succeeds: override this check (docker run --no-healthcheck, or your own).
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, ssl, sys, urllib.request\nport = os.environ.get('PGBV_HTTP__LISTEN', '').rpartition(':')[2] or '10047'\ncontext = ssl.create_default_context()\ncontext.check_hostname = False\ncontext.verify_mode = ssl.CERT_NONE\nfor scheme in ('http', 'https'):\n    try:\n        urllib.request.urlopen(f'{scheme}://127.0.0.1:{port}/healthz', timeout=4, context=context)\n        sys.exit(0)\n    except Exception:\n        pass\nsys.exit(1)\n"]

ENTRYPOINT ["pgbv"]
CMD ["run"]
