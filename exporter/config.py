"""Configuration: a YAML file plus ``PGBV_`` environment keys, validated by pydantic.

Every field carries a description; ``docs/configuration.md`` is generated from
these models (``python -m exporter.config_docs``), so the docs never drift.

Environment keys use ``__`` as the nesting delimiter and accept list indices,
so ``PGBV_TARGETS__0__PASSWORD`` sets the password of the first target and
``PGBV_SCHEDULE__DAILY_AT`` the daily slot. They override the file.
"""

from __future__ import annotations

import json
import types
import typing
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from exporter.catalog import valid_name

ENV_PREFIX = "PGBV_"
ENV_DELIMITER = "__"
CONFIG_ENV = "PGBV_CONFIG"


class ConfigError(Exception):
    """A configuration problem, already phrased as one line naming the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Every number is finite and bounded, so that no value the file can hold makes the
# code overflow (timedelta, int32 milliseconds in SET statement_timeout, the log
# functions' integer arguments) or silently disables a check (max_age_hours: .inf).
# The bounds are generous: far beyond any sensible setting, far below any overflow.
def Bounded(
    default: Any, *, ge: float | None = None, gt: float | None = None, le: float, description: str, why: str = ""
) -> Any:
    """A pydantic Field for a numeric key: finite, with a lower bound and an upper one;
    ``why`` explains the bounds in the reference's range column."""
    extra = {"range_reason": why} if why else None
    return Field(default, ge=ge, gt=gt, le=le, allow_inf_nan=False, description=description, json_schema_extra=extra)


HOURS_MAX = 366 * 24
HOURS_WHY = "366 days: an older backup is not a freshness question"
MB_MAX = 2**30  # 1 PiB in MB
MINUTES_MAX = 31 * 24 * 60  # a month: the longest period a schedule or a WAL archive may stay silent
SECONDS_MAX = 24 * 3600  # a day: the longest wait on one command or statement
DAYS_MAX = 36500  # a century: fits the log functions' integer argument with room to spare

# A table, index or function as a DBA writes it: raw (Billing.Invoices) or quoted
# ("Billing"."Invoices"); catalog.split_name holds the rules (docs/checks.md, "Names").
ObjectName = Annotated[str, AfterValidator(valid_name)]


# --- backup sources --------------------------------------------------------------


class _BackupCommon(_Strict):
    timeout_seconds: float = Bounded(
        60, gt=0, le=SECONDS_MAX, description="Time limit for every external command or file scan of the source.",
        why="a day: a tool silent for longer has hung"
    )
    warn_age_hours: float = Bounded(
        26, gt=0, le=HOURS_MAX, description="`backup_age` warns when the newest backup is older than this.",
        why=HOURS_WHY
    )
    max_age_hours: float = Bounded(
        49, gt=0, le=HOURS_MAX, description="`backup_age` fails when the newest backup is older than this.",
        why=HOURS_WHY
    )
    min_size_mb: float = Bounded(
        1, ge=0, le=MB_MAX, description="`backup_size` fails when the newest backup is smaller than this.",
        why="1 PiB"
    )
    database: str | None = Field(
        None, min_length=1,
        description="The database name the backup must be a dump of (`backup_content`); default: the target's "
        "own database. Set it when the dump is of another name on purpose.",
    )
    max_size_drop_percent: float = Bounded(
        50, gt=0, le=100,
        description="`backup_size` fails when the newest backup is more than this many percent smaller than the "
        "median of the previous ones (of the same kind), and warns above half of it; 100 turns the failure off.",
        why="a share of the median",
    )

    @model_validator(mode="after")
    def _ages_ordered(self):
        if self.warn_age_hours > self.max_age_hours:
            raise ValueError(
                f"warn_age_hours ({self.warn_age_hours:g}) must not exceed max_age_hours ({self.max_age_hours:g})"
            )
        return self


class DirectoryBackup(_BackupCommon):
    """Backups are files or folders in a directory (pg_dump archives, base backups)."""

    source: Literal["directory"]
    path: Path = Field(description="Folder holding the backups.")
    pattern: str = Field(
        "*", description="Shell pattern the backup's file or folder name must match (not recursive)."
    )
    wal_path: Path | None = Field(
        None,
        description="Folder the server's archive_command copies WAL segments into, for base backups in `path` "
        "(plain or compressed segments, `.history` and `.backup` files): `wal_continuity` checks it and physical "
        "drills replay it. Unset: the backups are taken as having no WAL archive.",
    )


class PgBackRestBackup(_BackupCommon):
    """pgBackRest: `pgbackrest --stanza=S [--config=F] [--repo=N] info --output=json`."""

    source: Literal["pgbackrest"]
    stanza: str = Field(description="The stanza to read.")
    config_file: Path | None = Field(None, description="pgbackrest.conf to use (--config); default: pgBackRest's own.")
    binary: str = Field(
        "pgbackrest",
        description="The pgbackrest program, or a wrapper that runs it as the repository's owner "
        "(e.g. a script doing `exec runuser -u postgres -- pgbackrest \"$@\"`).",
    )
    repo: int | None = Bounded(None, ge=1, le=256, description="Only this repository (--repo); default: all.",
        why="pgBackRest's own range")
    verify_every_days: float = Bounded(
        7, ge=0, le=366,
        description="`backup_readable` runs `pgbackrest verify` (reads every file of the repository: can be slow) "
        "when the last full read is older than this; 1: every daily run, 0: never (`pgbv verify --full-read` still "
        "reads). A corruption found keeps it reading every run until a full read passes.",
        why="a year",
    )

    @model_validator(mode="before")
    @classmethod
    def _verify_was_renamed(cls, data: Any) -> Any:
        # Refused, not aliased: `verify: false` was the default and our own example, so an
        # alias would keep the unsafe setting for everyone who copied it.
        if isinstance(data, dict) and "verify" in data:
            raise ValueError(
                "verify: this key was replaced by verify_every_days (default 7: a full read every 7 days; "
                "1: every daily run, what verify: true did; 0: never, what verify: false did)"
            )
        return data


class WalgBackup(_BackupCommon):
    """WAL-G: `wal-g backup-list --detail --json`."""

    source: Literal["walg"]
    binary: str = Field("wal-g", description="The wal-g program, or a wrapper.")
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Environment for wal-g (WALG_S3_PREFIX, AWS_..., PGHOST...); values are treated as secrets in output.",
    )
    wal_verify: bool = Field(
        False, description="`backup_readable` also runs `wal-g wal-verify integrity --json` and fails on a WAL gap."
    )


class BarmanBackup(_BackupCommon):
    """Barman: `barman -f json show-backup SERVER latest` and `list-backups`."""

    source: Literal["barman"]
    server: str = Field(description="The Barman server name.")
    binary: str = Field("barman", description="The barman program, or a wrapper that runs it as the barman user.")
    config_file: Path | None = Field(None, description="barman.conf to use (-c); default: Barman's own.")


class CommandBackup(_BackupCommon):
    """Any program that prints `{"id": ..., "finished_at": ..., "size_bytes": ...}` as JSON."""

    source: Literal["command"]
    command: list[str] = Field(
        min_length=1,
        description="argv of the program (no shell). It prints one JSON object: id, finished_at "
        "(ISO 8601 with a zone), size_bytes; `{}` or `null` means there is no backup.",
    )
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment for the program; values are secrets.")


class NoBackup(_Strict):
    """No backup source: the backup checks are not run."""

    source: Literal["none"] = "none"


BackupConfig = Annotated[
    Union[DirectoryBackup, PgBackRestBackup, WalgBackup, BarmanBackup, CommandBackup, NoBackup],
    Field(discriminator="source"),
]
BACKUP_SOURCES = ("directory", "pgbackrest", "walg", "barman", "command", "none")
# Sources whose backups exporter.restore.drill() can restore (it picks the drill by the
# backup's kind): pg_dump archives and pg_basebackup folders of a directory, pgBackRest
# and Barman physical backups, and a command's backups when it reports a pg_dump kind
# and a location. WAL-G has no drill; `none` has no backup. The one list of them.
DRILLABLE_SOURCES = ("directory", "pgbackrest", "barman", "command")


# --- checks ----------------------------------------------------------------------------


class ChecksConfig(_Strict):
    critical_tables: list[ObjectName] = Field(
        default_factory=list,
        description="Tables that must exist and hold rows; they drive `critical_tables`, `row_counts`, "
        "`index_coverage`, `constraints_valid` and (by default) `rls_policies`. Name or schema.name, raw or "
        "quoted as in SQL (docs/checks.md, \"Names\").",
    )
    required_tables: list[ObjectName] = Field(
        default_factory=list,
        description="Tables that must exist (they may be empty); partitioned tables and materialized views count.",
    )
    rls_tables: list[ObjectName] = Field(
        default_factory=list,
        description="Tables that must have row-level security enabled; empty means `critical_tables`.",
    )
    min_policies: dict[ObjectName, Annotated[int, Field(ge=0, le=10_000)]] = Field(
        default_factory=dict,
        description="Minimum number of RLS policies per table; tables not listed need at least 1. When rls_tables "
        "is empty (every critical table), 0 exempts a table that has no row-level security by design.",
    )
    required_indexes: list[ObjectName] = Field(default_factory=list, description="Indexes that must exist and be valid.")
    required_functions: list[ObjectName] = Field(default_factory=list, description="Functions that must exist.")
    min_database_size_mb: float | None = Bounded(
        None, ge=0, le=MB_MAX, description="`database_size` fails below this; unset, the check does not run.",
        why="1 PiB"
    )
    allow_empty_tables: list[ObjectName] = Field(
        default_factory=list, description="Critical tables that may legitimately hold zero rows."
    )
    index_coverage_exempt: list[ObjectName] = Field(
        default_factory=list,
        description="Critical or required tables that have no index by design (a small lookup table, an "
        "append-only staging table): `index_coverage` does not ask them for one. A name here matches the "
        "table it names, however it is spelled in the other lists.",
    )
    max_row_drop_percent: float = Bounded(
        10, ge=0, le=100,
        description="`row_counts` fails when a critical table holds fewer rows than its highest count over "
        "`row_drop_window_days` by more than this share.",
    )
    row_drop_window_days: int = Bounded(
        7, ge=1, le=366, why="a year",
        description="`row_counts` compares each critical table with its highest count over this many days (today "
        "included), so a drop keeps failing and a slow leak adds up; the baseline moves only with `pgbv accept-rows`.",
    )
    exact_count_max_rows: int = Bounded(
        1_000_000, ge=0, le=10**12, why="a trillion rows: beyond any table a count(*) could finish",
        description="`row_counts` counts a critical table exactly (count(*)) when its estimate is below this many "
        "rows (at most 100 tables a run; 0: only tables whose statistics are stale or empty); larger tables use the "
        "statistics PostgreSQL updates at each commit.",
    )
    min_success_ratio: float = Bounded(
        0.9, ge=0, le=1,
        description="`success_rate` warns (never fails) when the share of runs over 7 days whose other checks did not "
        "fail is below this; runs that could not reach the database or the backups are left out.",
    )
    wal_archiving_max_age_minutes: float | None = Bounded(
        None, gt=0, le=MINUTES_MAX, why="31 days",
        description="`wal_archiving` (from pg_stat_archiver) fails when the last archived WAL is older than this, "
        "or when archiving is failing; unset, the check does not run. `wal_continuity` warns when the newest "
        "segment in the backup source's WAL archive is older than this (unset: no age judged).",
    )


class RestoreConfig(_Strict):
    enabled: bool = Field(False, description="Run restore drills for this target.")
    interval_days: float = Bounded(
        7, gt=0, le=366, description="A run drills when the last successful drill is older than this; `pgbv restore-drill` drills now.",
        why="a year"
    )
    scratch_dsn: str | None = Field(
        None,
        description="A server where pgbv may CREATE and DROP its pgbv_restore_* databases; default: the target's own server.",
    )
    scratch_password: SecretStr | None = Field(None, description="Password for scratch_dsn; default: the target's.")
    jobs: int = Bounded(2, ge=1, le=64, description="pg_restore --jobs.",
        why="beyond what a scratch server can use")
    timeout_minutes: float = Bounded(
        60, gt=0, le=7 * 24 * 60, description="A drill is stopped and cleaned up after this (at most a week).",
        why="a week"
    )
    rto_minutes: float = Bounded(
        60, gt=0, le=7 * 24 * 60, description="A drill slower than this warns (the recovery time objective).",
        why="a week"
    )
    pg_bin_dir: Path | None = Field(
        None, description="PostgreSQL binaries for physical restores (same major version as the backup); default: as for the target."
    )
    amcheck: bool = Field(False, description="Verify the restored copy's B-tree indexes with pg_amcheck, when amcheck is available.")
    scratch_dir: Path | None = Field(
        None, description="Where physical drills put their pgbv_restore_* folders; default: the system's temporary folder."
    )
    rpo_hours: float = Bounded(
        24, gt=0, le=8784, why="a year",
        description="The recovery point objective: `rpo` fails when a replaying drill recovers to a point older than "
        "this before the drill started, and warns past half of it.",
    )
    target: Literal["latest", "random"] = Field(
        "latest",
        description="Where a physical drill recovers to: `latest`, the end of the WAL archive (measures the RPO); "
        "`random`, a random time inside the recovery window (a point-in-time drill: the copy's log must hold every "
        "run up to that time and none after it).",
    )
    os_user: str | None = Field(
        None,
        description="When pgbv runs as root, the user that owns the restored files and runs the private PostgreSQL "
        "(PostgreSQL refuses root); default: postgres. For pgBackRest it must be the repository's owner.",
    )

    @model_validator(mode="before")
    @classmethod
    def _move_scratch_password(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("scratch_dsn"), str):
            data = dict(data)
            data["scratch_dsn"], password = split_password(data["scratch_dsn"])
            if password is not None and data.get("scratch_password") is None:
                data["scratch_password"] = password
        return data


# --- targets ---------------------------------------------------------------------------

_TARGET_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$")


def split_password(dsn: str) -> tuple[str, SecretStr | None]:
    """Take a password out of a DSN so that the DSN can be shown and logged safely."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        params = conninfo_to_dict(dsn)
    except Exception as exc:  # psycopg.ProgrammingError: text names the problem, not the password
        raise ValueError(f"not a valid libpq connection string or URI ({_scrub(str(exc), dsn)})") from None
    password = params.pop("password", None)
    if password is None:
        return dsn, None
    return make_conninfo(**{k: v for k, v in params.items() if v is not None}), SecretStr(str(password))


def _scrub(text: str, dsn: str) -> str:
    # The parser's message may quote the input; never echo a DSN that may hold a password.
    return text.replace(dsn, "<dsn>")


class TargetConfig(_Strict):
    name: str = Field(description="Unique name; becomes the `target` label of every metric.")
    dsn: str = Field(description="libpq connection string or URI of the database to verify.")
    password: SecretStr | None = Field(
        None, description="Password; better set as PGBV_TARGETS__N__PASSWORD, a password_file or .pgpass."
    )
    password_file: Path | None = Field(None, description="File whose first line is the password.")
    log_dsn: str | None = Field(
        None, description="Where backup_verification_log lives; default: the target itself."
    )
    log_password: SecretStr | None = Field(None, description="Password for log_dsn, when it needs another one.")
    pg_bin_dir: Path | None = Field(
        None, description="Folder of client tools (pg_dump, pg_restore...); default: the newest found, never older than the server."
    )
    connect_timeout_seconds: int = Bounded(5, ge=1, le=600, description="libpq connect_timeout.",
        why="10 minutes: a server that has not answered by then will not")
    statement_timeout_seconds: float = Bounded(
        30, ge=0.001, le=SECONDS_MAX, why="PostgreSQL counts whole milliseconds, 0 would mean no limit; a day",
        # PostgreSQL counts whole milliseconds, and 0 would mean no limit at all.
        description="Every statement pgbv sends to this target is cancelled after this (at least 1 ms).",
    )
    backup: BackupConfig = Field(default_factory=NoBackup, description="Where the backups are and their limits.")
    checks: ChecksConfig = Field(default_factory=ChecksConfig, description="What the database must hold.")
    restore: RestoreConfig = Field(default_factory=RestoreConfig, description="Restore drills (later version).")

    @model_validator(mode="after")
    def _restore_has_a_drill(self):
        # Refused here, not at the first drill: a run would only ever say "no restore drill".
        if self.restore.enabled and self.backup.source not in DRILLABLE_SOURCES:
            raise ValueError(
                f"restore.enabled is true for target {self.name!r}, but the {self.backup.source} backup source has no restore drill "
                f"(drills exist for: {', '.join(DRILLABLE_SOURCES)}); set restore.enabled: false"
            )
        return self

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _TARGET_NAME.match(value):
            raise ValueError(
                "must be 1-63 letters, digits, '_', '.' or '-', starting with a letter, digit or '_'"
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _move_dsn_passwords(cls, data: Any) -> Any:
        # A password typed into a DSN is accepted, then kept only as a SecretStr.
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for dsn_key, password_key in (("dsn", "password"), ("log_dsn", "log_password")):
            dsn = data.get(dsn_key)
            if isinstance(dsn, str):
                clean, password = split_password(dsn)
                data[dsn_key] = clean
                if password is not None and data.get(password_key) is None:
                    data[password_key] = password
        return data

    def scratch_dsn_and_password(self) -> tuple[str, str | None]:
        """Where drills create their scratch databases, and with which password."""
        if self.restore.scratch_dsn is None:
            return self.dsn, self.resolved_password()
        if self.restore.scratch_password is not None:
            return self.restore.scratch_dsn, self.restore.scratch_password.get_secret_value()
        return self.restore.scratch_dsn, self.resolved_password()

    def resolved_password(self) -> str | None:
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            try:
                return self.password_file.read_text().splitlines()[0] if self.password_file.stat().st_size else ""
            except OSError as exc:
                raise ConfigError(f"targets.{self.name}.password_file: cannot read {self.password_file}: {exc.strerror}")
        return None

    def resolved_log_password(self) -> str | None:
        if self.log_dsn is None:
            return self.resolved_password()
        if self.log_password is not None:
            return self.log_password.get_secret_value()
        return None

    def secrets(self) -> list[str]:
        """Every secret of this target, so that output can be scrubbed of them."""
        found = []
        for secret in (self.password, self.log_password, self.restore.scratch_password):
            if secret is not None and secret.get_secret_value():
                found.append(secret.get_secret_value())
        for value in getattr(self.backup, "env", {}).values():
            if value:
                found.append(value)
        if self.password_file is not None:
            try:
                value = self.resolved_password()
            except ConfigError:
                value = None
            if value:
                found.append(value)
        return found


# --- the rest --------------------------------------------------------------------------

_HHMM = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")


class ScheduleConfig(_Strict):
    daily_at: str = Field("05:00", description="Daily run time, HH:MM in UTC.")
    interval_minutes: int | None = Bounded(
        None, ge=1, le=MINUTES_MAX, description="When set, runs every N minutes instead of daily_at.", why="31 days"
    )
    run_on_start: bool = Field(True, description="Also run at start when the last run is older than one period.")
    refresh_seconds: float = Bounded(
        30, gt=0, le=3600, description="How often the metrics snapshot is re-read from the log table.",
        why="an hour: the metrics must stay fresher than the alerts expect"
    )
    max_concurrent_targets: int = Bounded(
        4, ge=1, le=256, why="each holds a thread and a session",
        description="Targets verified at the same time. A run holds one session on its target (and one on the log "
        "database with log_dsn) and the refresh thread one more: at most this + 1 sessions per server, plus a "
        "restore drill's own (docs/daemon.md).",
    )

    total_shards: int = Bounded(
        1, ge=1, le=1024, why="beyond any fleet of replicas; each one only adds a session per target it tries",
        description="How many shards the targets are divided among (the replicas' count: the same on every replica).",
    )
    shard: int | Literal["auto"] | None = Field(
        None, validate_default=True,
        description="This replica's shard, 0 to total_shards - 1; `auto`: the ordinal of a StatefulSet pod's name "
        "in HOSTNAME (`pgbv-2` -> 2). Unset: 0, and required when total_shards > 1. A replica runs the targets its "
        "shard owns (sha256 of the target's name, docs/daemon.md \"Replicas\") and takes over the others' after "
        "takeover_after_seconds.",
    )
    takeover_after_seconds: float | None = Bounded(
        None, gt=0, le=SECONDS_MAX, why="a day: the longest a dead replica's targets may wait",
        description="How long after a period's start a replica tries the targets of other shards that have no row "
        "in that period yet (the next shard round the ring first, the one after it after twice this, ...). Unset: "
        "a tenth of the period. At most the period (equal to it: no takeover).",
    )

    @field_validator("daily_at")
    @classmethod
    def _valid_time(cls, value: str) -> str:
        if not _HHMM.match(value):
            raise ValueError(f"must be a time HH:MM between 00:00 and 23:59, got {value!r}")
        return value

    @field_validator("shard", mode="before")
    @classmethod
    def _shard_number(cls, value: Any, info: ValidationInfo) -> Any:
        from exporter.shards import resolve_shard

        # Checked at load time, so that a pod that cannot tell its shard stops with the reason
        # before it runs anything (auto reads HOSTNAME here, and again when the daemon starts).
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)  # from the environment a number comes as a string
        if value is not None and value != "auto" and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"must be a shard number (0 to total_shards - 1) or auto, got {value!r}")
        total = info.data.get("total_shards")
        if total is not None:  # else total_shards has its own error
            resolve_shard(value, total, os.environ)
        elif isinstance(value, int) and value < 0:
            raise ValueError(f"must be 0 or more, got {value}")
        return value

    @field_validator("takeover_after_seconds")
    @classmethod
    def _takeover_within_period(cls, value: float | None, info: ValidationInfo) -> float | None:
        period = (info.data.get("interval_minutes") or 1440) * 60
        if value is not None and value > period:
            raise ValueError(f"must not exceed the period ({period} s), got {value:g}")
        return value

    @property
    def takeover_seconds(self) -> float:
        from exporter.shards import TAKEOVER_SHARE

        period = (self.interval_minutes or 1440) * 60
        return self.takeover_after_seconds if self.takeover_after_seconds is not None else period * TAKEOVER_SHARE


class DrillLimits(_Strict):
    max_concurrent_drills: int = Bounded(
        1, ge=1, le=64, why="each drill holds a scratch copy of a database",
        description="Restore drills one daemon runs at once, whatever its targets (each target's own drills are set "
        "under targets[].restore). A run whose drill is due while this many run verifies without it and logs that "
        "the drill waits; the target's next run with a free slot drills.",
    )


class HttpConfig(_Strict):
    listen: str = Field("0.0.0.0:10047", description="host:port of /metrics; port 0 picks a free port.")
    web_config_file: Path | None = Field(
        None,
        description="An exporter-toolkit style web config (tls_server_config, basic_auth_users with bcrypt hashes); "
        "`/` and `/metrics` then need TLS and/or a password, `/healthz` stays open. See docs/deploy.md.",
    )

    @field_validator("listen")
    @classmethod
    def _valid_listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"must be host:port with a port 0-65535, got {value!r}")
        return value


class _YamlAndEnvSource(PydanticBaseSettingsSource):
    """The YAML file's data with PGBV_ environment keys laid over it (list indices included)."""

    def __init__(self, settings_cls, data: dict[str, Any]):
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field, field_name):  # pragma: no cover - __call__ does the work
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return self._data


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="forbid", frozen=True)

    targets: list[TargetConfig] = Field(description="One or more databases to verify.")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig, description="When the daemon verifies.")
    http: HttpConfig = Field(default_factory=HttpConfig, description="The metrics endpoint.")
    restore: DrillLimits = Field(default_factory=DrillLimits, description="Limits on the daemon's restore drills.")
    spool_dir: Path = Field(Path("/var/lib/pgbv/spool"), description="Results that could not be written yet wait here.")
    retention_days: int = Bounded(
        90, ge=1, le=DAYS_MAX, description="Log rows older than this are deleted by `pgbv cleanup` and daily by the daemon.",
        why="a century; the log functions take an integer"
    )
    log_format: Literal["text", "json"] = Field("text", description="Format of pgbv's own log lines.")

    @field_validator("targets")
    @classmethod
    def _targets(cls, value: list[TargetConfig]) -> list[TargetConfig]:
        if not value:
            raise ValueError("at least one target is required")
        seen: set[str] = set()
        for target in value:
            if target.name in seen:
                raise ValueError(f"target name {target.name!r} is used twice")
            seen.add(target.name)
        return value

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, *args, **kwargs):
        return (init_settings,)

    def target(self, name: str) -> TargetConfig:
        for target in self.targets:
            if target.name == name:
                return target
        raise ConfigError(f"--target: no target named {name!r} (known: {', '.join(t.name for t in self.targets)})")

    def secrets(self) -> list[str]:
        return [secret for target in self.targets for secret in target.secrets()]


# --- loading ---------------------------------------------------------------------------


def _env_value(raw: str) -> Any:
    # Lists and mappings come as JSON; scalars stay strings and pydantic converts them,
    # so a password of digits stays a string.
    stripped = raw.strip()
    if stripped[:1] in "[{":
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            return raw
    if stripped in ("null", "~"):
        return None
    return raw


def _overlay_env(data: dict[str, Any], environ: dict[str, str]) -> dict[str, Any]:
    for key in sorted(environ):
        if not key.startswith(ENV_PREFIX) or key == CONFIG_ENV or key.startswith("PGBV_TEST_"):
            continue
        raw_parts = key[len(ENV_PREFIX):].split(ENV_DELIMITER)
        # Keys are case-insensitive, except the names inside a tool's `env` mapping
        # (AWS_SECRET_ACCESS_KEY must reach wal-g as it is written).
        path = [part if depth and raw_parts[depth - 1].lower() == "env" else part.lower()
                for depth, part in enumerate(raw_parts)]
        if not all(path):
            raise ConfigError(f"{key}: empty name part between '{ENV_DELIMITER}' delimiters")
        node: Any = data
        for depth, part in enumerate(path):
            last = depth == len(path) - 1
            if isinstance(node, list):
                if not part.isdigit():
                    raise ConfigError(f"{key}: {'.'.join(path[:depth])} is a list; expected an index, got {part!r}")
                index = int(part)
                if index > len(node):
                    raise ConfigError(f"{key}: index {index} leaves a gap ({'.'.join(path[:depth])} has {len(node)} items)")
                if index == len(node):
                    node.append({})
                if last:
                    node[index] = _env_value(environ[key])
                else:
                    if not isinstance(node[index], (dict, list)):
                        node[index] = {}
                    node = node[index]
            elif isinstance(node, dict):
                if last:
                    node[part] = _env_value(environ[key])
                else:
                    child = node.get(part)
                    if not isinstance(child, (dict, list)):
                        child = [] if part == "targets" else {}
                        node[part] = child
                    node = child
            else:
                raise ConfigError(f"{key}: {'.'.join(path[:depth])} is not a section")
    return data


# One problem's line stays readable whatever the input: an echoed value is cut.
MAX_MESSAGE_CHARS = 200


def _describe(error: dict[str, Any]) -> str:
    parts = [p for p in error["loc"] if not (isinstance(p, str) and p in BACKUP_SOURCES)]
    # A mapping's key that is wrong (min_policies) is named by the message, not twice.
    is_key = parts[-1:] == ["[key]"]
    loc = ".".join(str(p) for p in (parts[:-2] if is_key else parts)) + (" (a key)" if is_key else "")
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    elif error["type"] == "missing":
        message = "required key is missing"
    elif error["type"] == "union_tag_invalid":
        message = f"unknown backup source {error['input'].get('source')!r}; known: {', '.join(BACKUP_SOURCES)}" if isinstance(error.get("input"), dict) else message
    message = message.removeprefix("Value error, ")
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS - 1] + "…"
    return f"{loc}: {message}" if loc else message


# libyaml's loader reads a large configuration (10,000 table names) about 5x faster
# than the pure-Python one; both are the safe loader.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_yaml(file: Path, label: str) -> Any:
    """A YAML file's data; ConfigError with one line naming label and the file otherwise."""
    try:
        text = file.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{label}: {file}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{label}: {file}: cannot read: {exc.strerror}") from None
    try:
        return yaml.load(text, Loader=_SAFE_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{label}: {file}:{where} not valid YAML ({problem})") from None


def _options(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return typing.get_args(annotation)
    if typing.get_origin(annotation) is Annotated:
        return _options(typing.get_args(annotation)[0])
    return (annotation,)


def _booleans_for_numbers(model: type[BaseModel], data: Any, loc: str = "") -> None:
    """Refuse a boolean where the model wants a number, naming the key. YAML reads
    yes/no/true/false as booleans and pydantic would take them as 1 and 0:
    `retention_days: yes` would keep one day of history."""
    if not isinstance(data, dict):
        return
    for name, value in data.items():
        field = model.model_fields.get(name)
        if field is None:
            continue
        options = _options(field.annotation)
        key = f"{loc}{name}"
        if isinstance(value, bool) and any(option in (int, float) for option in options):
            raise ConfigError(f"{key}: expected a number, got the boolean {str(value).lower()}")
        for option in options:
            origin = typing.get_origin(option)
            if isinstance(option, type) and issubclass(option, BaseModel):
                if "source" not in option.model_fields or (
                    isinstance(value, dict) and value.get("source", option.model_fields["source"].default) in typing.get_args(option.model_fields["source"].annotation)
                ):
                    _booleans_for_numbers(option, value, f"{key}.")
            elif origin is list and isinstance(value, list):
                (item,) = typing.get_args(option) or (None,)
                if isinstance(item, type) and issubclass(item, BaseModel):
                    for index, element in enumerate(value):
                        _booleans_for_numbers(item, element, f"{key}.{index}.")
            elif origin is dict and isinstance(value, dict):
                wanted = _options(typing.get_args(option)[1])
                for entry, number in value.items():
                    if isinstance(number, bool) and any(o in (int, float) for o in wanted):
                        raise ConfigError(f"{key}.{entry}: expected a number, got the boolean {str(number).lower()}")


def load_settings(path: str | os.PathLike | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Read, merge and validate the configuration; raise ConfigError with one line per problem."""
    environ = dict(os.environ if environ is None else environ)
    if path is None:
        path = environ.get(CONFIG_ENV)
    data: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        loaded = read_yaml(file, "--config")
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"--config: {file}: the top level must be a mapping of keys, got {type(loaded).__name__}")
        data = loaded
    data = _overlay_env(data, environ)
    if "targets" not in data:
        where = f"{path}" if path is not None else "the environment (no --config given and PGBV_CONFIG unset)"
        raise ConfigError(f"targets: required key is missing in {where}")
    _booleans_for_numbers(Settings, data)
    try:
        return Settings(**data)
    except ValidationError as exc:
        lines = [_describe(error) for error in exc.errors(include_url=False)]
        raise ConfigError("; ".join(lines)) from None
    except ConfigError:
        raise


def masked(settings: Settings) -> dict[str, Any]:
    """The effective configuration as plain data, every secret replaced by '********'."""
    data = settings.model_dump(mode="json")
    for target in data["targets"]:
        for key in ("password", "log_password"):
            if target.get(key) is not None:
                target[key] = "********"
        # A backup tool's environment carries its credentials (AWS keys, passwords).
        env = target["backup"].get("env")
        if env:
            target["backup"]["env"] = {name: "********" for name in env}
    return data
