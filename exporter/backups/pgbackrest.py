"""pgBackRest: the newest backup from `pgbackrest info --output=json`, and
`pgbackrest verify` for backup_readable.

What the exit codes do not say (seen on pgBackRest 2.45, see
docs/backup-sources.md):

- `info --output=json` exits 0 for a missing stanza, a missing repository and an
  unreadable one. The answer is in `status.code` and `repo[].status.code`: 0 ok,
  1 missing stanza path, 2 no valid backups, 3 missing stanza data, 4 different
  across repos, 5 database mismatch across repos, 99 other (the real text is in
  `repo[].status.message`). Only an invalid option exits non-zero (32).
- `verify` exits 0 whatever it finds: damage shows as `status: error` in its text
  output, the files it blames only in its log. A backup whose manifest is gone is
  listed as `manifest missing` under a stanza `status: ok`, and a backup whose WAL
  is missing from the archive is listed `valid`; both are caught here.
"""

from __future__ import annotations

import glob
import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from exporter.backups.base import BackupSource, BackupSourceError, BackupUnreadable, NoBackupFound
from exporter.backups.wal import HISTORY, WalArchive, WalNameError, parse_history, parse_segment
from exporter.backups.wal_listing import BackupWal, continuity
from exporter.config import PgBackRestBackup
from exporter.pgtools import ToolError, run_tool
from exporter.redact import scrub
from exporter.result import PREVIOUS_SIZES_KEPT, BackupInfo

# repo[].status.code values that are an answer ("there is nothing here"), not a failure to answer.
_ANSWERED_EMPTY = {1: "missing stanza path", 2: "no valid backups"}
_STATUS_OK = 0
_STATUS_MIXED = 4  # stanza level only: the repos differ, each one says why
_KINDS = ("full", "diff", "incr")
SNIPPET_CHARS = 200
MAX_NAMED_PROBLEMS = 5

# Options pgBackRest itself treats as secure; their values never appear in a message.
_SECRET_OPTION = re.compile(
    r"^repo\d*-(cipher-pass|azure-key|s3-key|s3-key-secret|s3-token|sftp-private-key-passphrase)$"
)
_SECRET_ENV = re.compile(
    r"^PGBACKREST_REPO\d*_(CIPHER_PASS|AZURE_KEY|S3_KEY|S3_KEY_SECRET|S3_TOKEN|SFTP_PRIVATE_KEY_PASSPHRASE)$"
)
_DEFAULT_CONFIGS = ("/etc/pgbackrest/pgbackrest.conf", "/etc/pgbackrest.conf")
_DEFAULT_INCLUDE = "/etc/pgbackrest/conf.d"

# verify's log lines (sent to stderr) with or without timestamp and process id.
_LOG_LINE = re.compile(
    r"^(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? )?(?:P\d+ +)?(ERROR|WARN|INFO|DETAIL|DEBUG|TRACE): (.*)$"
)
_FILE_PROBLEM = re.compile(r"^(file missing|invalid checksum|invalid size|invalid result) '?([^'\s:]+)'?(.*)$")
_WAL_RANGE = re.compile(r"^archiveId: (\S+), wal start: ([0-9A-F]{24}), wal stop: ([0-9A-F]{24})$")
# verify's text output (stdout).
_BACKUP_LINE = re.compile(
    r"^\s+backup: (\S+), status: ([^,]+), total files checked: (\d+), total valid files: (\d+)\s*$"
)
_ARCHIVE_LINE = re.compile(r"^\s+archiveId: (\S+), total WAL checked: (\d+), total valid WAL: (\d+)\s*$")
# An archived segment: 24 hex digits, pgBackRest's "-<sha1>", a compression extension.
_SEGMENT_FILE = re.compile(r"^[0-9A-F]{24}-[0-9a-f]{40}(?:\.(?:gz|lz4|zst|bz2|xz))?$")
_COUNTS_LINE = re.compile(r"^\s+((?:missing|checksum invalid|size invalid|other): \d+(?:, )?)+\s*$")


# --- secrets ------------------------------------------------------------------------------


def _config_files(config_file: Path | None) -> list[str]:
    """The files pgbackrest reads its options from, as it chooses them."""
    if config_file is not None:
        files = [os.fspath(config_file)]
    elif os.environ.get("PGBACKREST_CONFIG"):
        files = [os.environ["PGBACKREST_CONFIG"]]
    else:
        files = list(_DEFAULT_CONFIGS)  # the second is the pre-2.x location, still read
    include = os.environ.get("PGBACKREST_CONFIG_INCLUDE_PATH", _DEFAULT_INCLUDE)
    return files + sorted(glob.glob(os.path.join(include, "*.conf")))


def secrets(config_file: Path | None) -> list[str]:
    """Values of pgBackRest's secure options, from the environment and the config files
    pgbv can read (best effort: the tool may run as a user who reads more than pgbv)."""
    found = [value for name, value in os.environ.items() if _SECRET_ENV.match(name) and value]
    for path in _config_files(config_file):
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    name, sep, value = line.strip().partition("=")
                    if sep and _SECRET_OPTION.match(name.strip()) and value.strip():
                        found.append(value.strip())
        except OSError:
            continue
    return found


# --- info ---------------------------------------------------------------------------------


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SNIPPET_CHARS else text[:SNIPPET_CHARS] + "..."


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}.get(
        type(value), type(value).__name__
    )


_TYPES: dict[str, tuple[str, Any]] = {
    "int": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "number": ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    "str": ("a string", lambda v: isinstance(v, str)),
    "bool": ("a boolean", lambda v: isinstance(v, bool)),
    "list": ("a list", lambda v: isinstance(v, list)),
    "dict": ("an object", lambda v: isinstance(v, dict)),
}


def _field(obj: dict, key: str, kind: str, where: str, optional: bool = False) -> Any:
    """obj[key] checked against kind; a missing or mistyped field is a BackupSourceError
    naming where it was expected (an answer pgbv does not understand is never a pass)."""
    if key not in obj or (optional and obj[key] is None):
        if optional:
            return None
        raise BackupSourceError(f"pgbackrest info: {where} has no {key!r} (unexpected output)")
    value = obj[key]
    label, ok = _TYPES[kind]
    if not ok(value):
        raise BackupSourceError(f"pgbackrest info: {where}.{key} is {_describe(value)}, expected {label}")
    return value


def _utc(seconds: int | float, where: str) -> datetime:
    try:
        return datetime.fromtimestamp(seconds, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        raise BackupSourceError(f"pgbackrest info: {where} is not a usable time: {seconds!r}") from None


@dataclass
class _Backup:
    label: str
    kind: str
    stop: int | float
    start: int | float | None
    failed: bool
    raw: dict
    where: str


def _read_backup(raw: Any, where: str) -> _Backup:
    if not isinstance(raw, dict):
        raise BackupSourceError(f"pgbackrest info: {where} is {_describe(raw)}, expected an object")
    label = _field(raw, "label", "str", where)
    where = f"{where} ({label})"
    kind = _field(raw, "type", "str", where)
    if kind not in _KINDS:
        raise BackupSourceError(f"pgbackrest info: {where}.type is {kind!r}, expected one of {', '.join(_KINDS)}")
    timestamp = _field(raw, "timestamp", "dict", where)
    stop = _field(timestamp, "stop", "number", f"{where}.timestamp")
    start = _field(timestamp, "start", "number", f"{where}.timestamp", optional=True)
    # pgBackRest before 2.36 has no "error" key: those backups were not flagged.
    failed = bool(_field(raw, "error", "bool", where, optional=True))
    return _Backup(label, kind, stop, start, failed, raw, where)


def _repo_statuses(entry: dict, where: str) -> list[tuple[int, int, str]]:
    """(key, code, message) of each repository listed for a stanza."""
    out = []
    for index, repo in enumerate(_field(entry, "repo", "list", where)):
        repo_where = f"{where}.repo[{index}]"
        if not isinstance(repo, dict):
            raise BackupSourceError(f"pgbackrest info: {repo_where} is {_describe(repo)}, expected an object")
        key = _field(repo, "key", "int", repo_where)
        status = _field(repo, "status", "dict", repo_where)
        code = _field(status, "code", "int", f"{repo_where}.status")
        message = _field(status, "message", "str", f"{repo_where}.status")
        out.append((key, code, message))
    return out


def _unanswered(repos: list[tuple[int, int, str]]) -> list[str]:
    return [f"repo{key}: {message}" for key, code, message in repos if code != _STATUS_OK and code not in _ANSWERED_EMPTY]


def _match(items: Any, database: dict | None) -> dict | None:
    """The archive[] or db[] entry of the backup's database id and repository."""
    if not isinstance(items, list) or not database:
        return None
    for item in items:
        if not isinstance(item, dict):
            continue
        db = item.get("database", item)  # archive[] nests it, db[] is flat
        if isinstance(db, dict) and db.get("id") == database.get("id") and db.get("repo-key") == database.get("repo-key"):
            return item
    return None


def _details(entry: dict, chosen: _Backup, stanza_status: dict, repos, good: list[_Backup], failed: list[_Backup]) -> dict[str, Any]:
    raw = chosen.raw
    info = raw["info"]
    repository = info["repository"]
    database = raw.get("database") if isinstance(raw.get("database"), dict) else None
    archive = raw.get("archive") if isinstance(raw.get("archive"), dict) else {}
    lsn = raw.get("lsn") if isinstance(raw.get("lsn"), dict) else {}
    backrest = raw.get("backrest") if isinstance(raw.get("backrest"), dict) else {}
    archive_entry = _match(entry.get("archive"), database) or {}
    db_entry = _match(entry.get("db"), database) or {}
    lock = stanza_status.get("lock")
    backup_lock = lock.get("backup") if isinstance(lock, dict) else None
    details: dict[str, Any] = {
        "stanza": entry["name"],
        "type": chosen.kind,
        "prior": raw.get("prior"),
        "reference": raw.get("reference"),
        "database_size_bytes": info.get("size"),
        "database_delta_bytes": info.get("delta"),
        "repository_size_bytes": repository["size"],
        "repository_delta_bytes": repository.get("delta"),
        "started_at": _utc(chosen.start, f"{chosen.where}.timestamp.start").isoformat() if chosen.start is not None else None,
        "wal_start": archive.get("start"),
        "wal_stop": archive.get("stop"),
        "lsn_start": lsn.get("start"),
        "lsn_stop": lsn.get("stop"),
        "repo_key": database.get("repo-key") if database else None,
        "archive_id": archive_entry.get("id"),
        "archive_min": archive_entry.get("min"),
        "archive_max": archive_entry.get("max"),
        "pg_version": db_entry.get("version"),
        "system_id": db_entry.get("system-id"),
        "backrest_version": backrest.get("version"),
        "stanza_status": {"code": stanza_status["code"], "message": stanza_status["message"]},
        "repos": [{"key": key, "code": code, "message": message} for key, code, message in repos],
        "backup_running": backup_lock.get("held") if isinstance(backup_lock, dict) else None,
    }
    oldest = min((b for b in good if _repo_key(b) == _repo_key(chosen)), key=lambda b: (b.stop, b.label))
    # The recovery window's start: the oldest backup of this repository that pgBackRest
    # does not flag as failed.
    details["oldest_backup"] = {"label": oldest.label, "stopped_at": _utc(oldest.stop, f"{oldest.where}.timestamp.stop").isoformat()}
    # The recovery window (wal_archive): every good backup this archive serves (same
    # repository and database id), with the WAL it starts and stops in.
    details["backups_wal"] = [
        {"label": b.label, "wal_start": _wal_of(b, "start"), "wal_stop": _wal_of(b, "stop"),
         "stopped_at": _utc(b.stop, f"{b.where}.timestamp.stop").isoformat()}
        for b in sorted(good, key=lambda b: (b.stop, b.label))
        if _repo_key(b) == _repo_key(chosen) and _database_id(b) == _database_id(chosen)
    ]
    if failed:
        details["failed_backups"] = [
            {"label": b.label, "type": b.kind, "stopped_at": _utc(b.stop, f"{b.where}.timestamp.stop").isoformat()}
            for b in failed
        ]
    return details


def parse_info(text: str, stanza: str) -> BackupInfo:
    """The newest backup of stanza in `pgbackrest info --output=json` output.

    Raises NoBackupFound (pgBackRest answered: no stanza, no valid backup, only failed
    ones) or BackupSourceError (it could not read a repository, or printed something
    else than the documented shape)."""
    if not text.strip():
        raise BackupSourceError("pgbackrest info printed nothing (expected a JSON list of stanzas)")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise BackupSourceError(f"pgbackrest info did not print JSON ({exc}): {_snippet(text)}") from None
    if not isinstance(data, list):
        raise BackupSourceError(f"pgbackrest info printed {_describe(data)}, expected a list of stanzas")
    if not data:
        # What pgBackRest prints when the repository path does not exist at all.
        raise NoBackupFound(f"pgbackrest info lists no stanza at all (an empty list): no stanza {stanza!r}")

    for index, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise BackupSourceError(f"pgbackrest info: stanza[{index}] is {_describe(entry)}, expected an object")
    entry = next((e for e in data if e.get("name") == stanza), None)
    if entry is None:
        # An unreadable repository is reported under the stanza name "[invalid]".
        problems = []
        for index, other in enumerate(data):
            name = other.get("name")
            problems += [f"{p} (stanza {name})" for p in _unanswered(_repo_statuses(other, f"stanza[{index}]"))]
        if problems:
            raise BackupSourceError(f"pgbackrest info cannot read the repository: {'; '.join(problems)}")
        names = ", ".join(str(e.get("name")) for e in data)
        raise NoBackupFound(f"pgbackrest info has no stanza {stanza!r} (it lists: {names})")

    where = f"stanza {stanza!r}"
    status = _field(entry, "status", "dict", where)
    code = _field(status, "code", "int", f"{where}.status")
    message = _field(status, "message", "str", f"{where}.status")
    repos = _repo_statuses(entry, where)
    unanswered = _unanswered(repos)
    if unanswered:
        # One unreadable repository of several is still "cannot answer": its newest
        # backup may be the one that counts. `repo:` narrows the source to one.
        raise BackupSourceError(f"pgbackrest info cannot read stanza {stanza!r}: {'; '.join(unanswered)}")
    if code not in (_STATUS_OK, _STATUS_MIXED) and code not in _ANSWERED_EMPTY:
        raise BackupSourceError(f"pgbackrest info: stanza {stanza!r} status {code}: {message}")

    backups = [_read_backup(raw, f"{where}.backup[{i}]") for i, raw in enumerate(_field(entry, "backup", "list", where))]
    good = [b for b in backups if not b.failed]
    failed = [b for b in backups if b.failed]
    if not good:
        if failed:
            labels = ", ".join(b.label for b in failed)
            raise NoBackupFound(
                f"pgbackrest lists {len(failed)} backup(s) of stanza {stanza!r}, all marked as failed (error: true): {labels}"
            )
        said = "; ".join(f"repo{key}: {msg}" for key, c, msg in repos if c != _STATUS_OK) or message
        raise NoBackupFound(f"pgbackrest has no backup of stanza {stanza!r}: {said}")

    chosen = max(good, key=lambda b: (b.stop, b.start or 0, b.label))
    info = _field(chosen.raw, "info", "dict", chosen.where)
    repository = _field(info, "repository", "dict", f"{chosen.where}.info")
    size = _field(repository, "size", "int", f"{chosen.where}.info.repository")
    _field(info, "size", "int", f"{chosen.where}.info", optional=True)
    details = _details(entry, chosen, status, repos, good, failed)
    repo_key = details["repo_key"]
    previous = _previous_sizes(good, chosen)
    return BackupInfo(
        id=chosen.label,
        finished_at=_utc(chosen.stop, f"{chosen.where}.timestamp.stop"),
        size_bytes=size,
        kind=f"pgbackrest {chosen.kind}",
        location=f"repo{repo_key}/backup/{stanza}/{chosen.label}" if repo_key else f"backup/{stanza}/{chosen.label}",
        details=details,
        previous_sizes=previous,
    )


def _repo_key(backup: _Backup) -> Any:
    database = backup.raw.get("database")
    return database.get("repo-key") if isinstance(database, dict) else None


def _database_id(backup: _Backup) -> Any:
    database = backup.raw.get("database")
    return database.get("id") if isinstance(database, dict) else None


def _wal_of(backup: _Backup, end: str) -> str | None:
    archive = backup.raw.get("archive")
    value = archive.get(end) if isinstance(archive, dict) else None
    return value if isinstance(value, str) else None


def _previous_sizes(good: list[_Backup], chosen: _Backup) -> tuple[int, ...]:
    """Repository sizes of the good backups before chosen, of its type and in its
    repository, newest first: fulls with fulls, diffs with diffs, incrs with incrs (an
    incremental's repository size counts the whole set it needs, a diff's too, so only
    its own type compares fairly). A size of an odd shape is left out, not an error:
    it concerns an older backup, not the newest."""
    same = sorted(
        (b for b in good if b is not chosen and b.kind == chosen.kind and _repo_key(b) == _repo_key(chosen)
         and (b.stop, b.start or 0, b.label) < (chosen.stop, chosen.start or 0, chosen.label)),
        key=lambda b: (b.stop, b.start or 0, b.label), reverse=True,
    )
    sizes = []
    for backup in same[:PREVIOUS_SIZES_KEPT]:
        info = backup.raw.get("info")
        repository = info.get("repository") if isinstance(info, dict) else None
        size = repository.get("size") if isinstance(repository, dict) else None
        if isinstance(size, int) and not isinstance(size, bool):
            sizes.append(size)
    return tuple(sizes)


# --- verify -------------------------------------------------------------------------------


@dataclass
class VerifyReport:
    """What `pgbackrest verify --output=text --verbose` said, from stdout (the result)
    and stderr (its log at detail level: the files it blames, the WAL ranges it saw)."""

    stanza: str | None = None
    status: str | None = None
    backups: dict[str, dict[str, Any]] = field(default_factory=dict)
    archives: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    file_problems: list[tuple[str, str, str]] = field(default_factory=list)  # (reason, path, rest)
    wal_ranges: list[tuple[str, str, str]] = field(default_factory=list)  # (archive id, start, stop)
    warnings: list[str] = field(default_factory=list)


def parse_verify(stdout: str, stderr: str) -> VerifyReport:
    report = VerifyReport()
    last: dict[str, Any] | None = None
    for line in stdout.splitlines():
        if not line.strip():
            continue
        if line.startswith("stanza: "):
            report.stanza = line[len("stanza: "):].strip()
        elif line.startswith("status: "):
            report.status = line[len("status: "):].strip()
        elif m := _BACKUP_LINE.match(line):
            last = report.backups[m.group(1)] = {
                "status": m.group(2).strip(),
                "checked": int(m.group(3)),
                "valid": int(m.group(4)),
                "counts": "",
            }
        elif m := _ARCHIVE_LINE.match(line):
            last = report.archives[m.group(1)] = {"checked": int(m.group(2)), "valid": int(m.group(3)), "counts": ""}
        elif _COUNTS_LINE.match(line) and last is not None:
            last["counts"] = line.strip()
        else:
            # "No usable backup.info file", "no archives or backups exist in the repo", a history mismatch...
            report.notes.append(line.strip())
    for line in stderr.splitlines():
        m = _LOG_LINE.match(line.strip())
        if m is None:
            continue
        level, message = m.group(1), m.group(2).strip()
        if problem := _FILE_PROBLEM.match(message):
            report.file_problems.append((problem.group(1), problem.group(2), problem.group(3).strip(" :")))
        elif wal := _WAL_RANGE.match(message):
            report.wal_ranges.append((wal.group(1), wal.group(2), wal.group(3)))
        elif level in ("WARN", "ERROR"):
            report.warnings.append(message)
    return report


def _name_files(problems: list[tuple[str, str, str]]) -> str:
    named = [f"{_wal_named(path)}{reason} '{path}'" + (f" ({rest})" if rest else "") for reason, path, rest in problems[:MAX_NAMED_PROBLEMS]]
    more = len(problems) - MAX_NAMED_PROBLEMS
    return "; ".join(named) + (f"; and {more} more" if more > 0 else "")


def _wal_named(path: str) -> str:
    """"WAL segment <name>: " for an archive file verify blames (<archive id>/<timeline+log>/<name>-<sha1>.gz)."""
    base = os.path.basename(path)
    return f"WAL segment {base[:24]}: " if "/" in path and _SEGMENT_FILE.match(base) else ""


def _backup_problem(label: str, result: dict[str, Any]) -> str:
    if result["status"] == "invalid":
        return f"backup {label} is invalid ({result['valid']} of {result['checked']} files valid)"
    return f"backup {label}: {result['status']}"  # "manifest missing"


def _wal_span(start: str, stop: str) -> str:
    return start if start == stop else f"{start}-{stop}"


def _segment(path: str) -> str:
    return os.path.basename(path)[:24]


def judge_verify(report: VerifyReport, info: BackupInfo, stanza: str) -> str:
    """What verify proved about info's backup; raises BackupUnreadable when the backup,
    a backup it depends on or the WAL it needs is damaged or missing (or the repository
    is reported in error), BackupSourceError when the output does not say."""
    if report.status is None:
        raise BackupSourceError("pgbackrest verify printed no result (no 'status:' line)")
    if report.stanza is not None and report.stanza != stanza:
        raise BackupSourceError(f"pgbackrest verify reported stanza {report.stanza!r}, not {stanza!r}")
    label = info.id
    details = info.details or {}
    references = [r for r in (details.get("reference") or []) if isinstance(r, str)]
    chain = [label, *references]
    problems: list[str] = []

    ours = report.backups.get(label)
    if ours is None:
        if report.status == "ok":
            raise BackupSourceError(f"pgbackrest verify did not list backup {label} (expired since info ran?)")
        # "No usable backup.info file" and the like: verify stopped before the backups,
        # so what it did not list says nothing more.
        why = f": {'; '.join(report.notes)}" if report.notes else ""
        raise BackupUnreadable(f"pgbackrest verify: backup {label} was not verified{why} (stanza {stanza} status {report.status})")
    if ours["status"] == "in-progress":
        raise BackupSourceError(f"pgbackrest verify saw backup {label} still in progress")
    if ours["status"] != "valid":
        problems.append(_backup_problem(label, ours))
    for prior in references:
        theirs = report.backups.get(prior)
        if theirs is None:
            problems.append(f"backup {prior}, which {label} depends on, is not in the repository")
        elif theirs["status"] != "valid":
            problems.append(f"backup {prior}, which {label} depends on, is {theirs['status']}")
    ours_files = [p for p in report.file_problems if p[1].split("/", 1)[0] in chain]
    if ours_files:
        problems.append(_name_files(ours_files))

    wal_said = ""
    archive_id, start, stop = details.get("archive_id"), details.get("wal_start"), details.get("wal_stop")
    if isinstance(archive_id, str) and isinstance(start, str) and isinstance(stop, str):
        archive = report.archives.get(archive_id)
        ranges = [(s, e) for a, s, e in report.wal_ranges if a == archive_id]
        # Segment names sort by timeline, then position: a range holds start..stop when
        # it spans them (verify starts a new range at every gap and timeline switch).
        covered = any(s <= start and stop <= e for s, e in ranges)
        held = ", ".join(f"{s}-{e}" for s, e in ranges) or "nothing"
        if archive is None or archive["checked"] == 0:
            problems.append(
                f"archive {archive_id}, which holds the WAL backup {label} needs ({_wal_span(start, stop)}), is empty or missing"
            )
        elif ranges and not covered:
            problems.append(
                f"WAL {_wal_span(start, stop)}, needed to make backup {label} consistent, is missing from archive {archive_id} "
                f"(it holds {held})"
            )
        bad_wal = [p for p in report.file_problems if p[1].startswith(f"{archive_id}/") and start <= _segment(p[1]) <= stop]
        if bad_wal:
            problems.append(_name_files(bad_wal))
        if not problems:
            wal_said = (
                f"; its WAL {_wal_span(start, stop)} is in archive {archive_id} ({archive['valid']} of {archive['checked']} WAL valid)"
                if covered
                else f"; archive {archive_id}: {archive['valid']} of {archive['checked']} WAL valid (WAL ranges not reported)"
            )

    if problems:
        raise BackupUnreadable("pgbackrest verify: " + "; ".join(problems) + f" (stanza {stanza} status {report.status})")
    if report.status != "ok":
        # The newest backup itself checks out, but pgBackRest calls the repository
        # broken (an older backup, WAL elsewhere, an info file): believe it.
        others = [_backup_problem(name, b) for name, b in report.backups.items() if b["status"] not in ("valid", "in-progress")]
        others += [f"archive {a}: {x['counts']}" for a, x in report.archives.items() if x["checked"] != x["valid"]]
        others += report.notes
        if report.file_problems:
            others.append(_name_files(report.file_problems))
        raise BackupUnreadable(
            f"pgbackrest verify reports stanza {stanza} status {report.status} although backup {label} is valid: "
            + ("; ".join(others) or "no reason given")
        )
    refs = f", as are the backups it depends on ({', '.join(references)})" if references else ""
    warned = f"; pgBackRest warned: {'; '.join(report.warnings)}" if report.warnings else ""
    said = (
        f"pgbackrest verify: backup {label} is valid ({ours['valid']} of {ours['checked']} files checked){refs}"
        f"{wal_said}; stanza {stanza} status ok{warned}"
    )
    hole = wal_hole_after(report, archive_id, start) if isinstance(archive_id, str) and isinstance(start, str) else None
    if hole is not None:
        # verify calls the stanza ok with a hole in the WAL after the backup: the backup
        # restores, point-in-time recovery from it stops before the hole.
        missing, held = hole
        return (
            f"warning: WAL {missing} is missing from archive {archive_id} after backup {label} (verify found "
            f"{held}): recovery from the backup stops before it; {said}"
        )
    return said


def wal_hole_after(report: VerifyReport, archive_id: str, start: str) -> tuple[str, str] | None:
    """The first segment missing between two of verify's WAL ranges of archive_id (it
    starts a range after every gap and at every timeline switch), at or after the
    backup's start WAL; with the ranges, for the message. None when there is none."""
    ranges = sorted((s, e) for a, s, e in report.wal_ranges if a == archive_id)
    for (_, end), (begin, _) in zip(ranges, ranges[1:]):
        if end < start or end[:8] != begin[:8]:
            continue  # before the backup, or a timeline switch (not a hole)
        try:
            following = parse_segment(end).next().name
        except WalNameError:
            continue
        if following < begin:
            return following, ", ".join(f"{s}-{e}" for s, e in ranges)
    return None


# --- the WAL archive (wal_continuity, the recovery window) ----------------------------------


def parse_repo_ls(text: str, path: str) -> dict[str, dict[str, Any]]:
    """`repo-ls PATH --recurse --output=json`: {relative path: {"type": "file"|"path"|"link",
    "size": bytes, "time": epoch seconds}}, "." for PATH itself. Files only."""
    what = f"pgbackrest repo-ls {path}"
    if not text.strip():
        raise BackupSourceError(f"{what} printed nothing (expected a JSON object of files)")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise BackupSourceError(f"{what} did not print JSON ({exc}): {_snippet(text)}") from None
    if not isinstance(data, dict):
        raise BackupSourceError(f"{what} printed {_describe(data)}, expected an object of files")
    files = {}
    for name, entry in data.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
            raise BackupSourceError(f"{what}: entry {name!r} is {_describe(entry)} without a type (unexpected output)")
        if entry["type"] == "file":
            files[name] = entry
    return files


def archive_contents(files: dict[str, dict[str, Any]], where: str) -> tuple[dict[str, datetime | None], list[str]]:
    """The segments an archive id's listing holds (name -> archive time) and its history
    files. A segment is stored as <timeline+log>/<name>-<sha1>[.gz|.lz4|.zst|.bz2]; a
    history file as <timeline>.history at the top; .backup and .partial files are not
    segments."""
    held: dict[str, datetime | None] = {}
    histories = []
    for path, entry in files.items():
        base = path.rsplit("/", 1)[-1]
        if HISTORY.match(base):
            histories.append(path)
            continue
        if not _SEGMENT_FILE.match(base):
            continue
        name = base[:24]
        when = entry.get("time")
        stamp = _utc(when, f"{where}: {path}.time") if isinstance(when, (int, float)) and not isinstance(when, bool) else None
        # Two copies of one segment (pgBackRest keeps the first; a second push of
        # different content is refused): the newer time counts.
        if name not in held or (stamp is not None and (held[name] is None or stamp > held[name])):
            held[name] = stamp
    return held, histories


def _backups_wal(details: dict[str, Any], notes: list[str]) -> list[BackupWal] | None:
    """The backups of details["backups_wal"] (parse_info) the recovery window is judged
    from; one without an archive start in `info` cannot be placed in the archive. None
    without a backup: the archive's newest time is then still its end (no start)."""
    if "backups_wal" not in details:
        return None
    backups = []
    for entry in details.get("backups_wal") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("stopped_at"), str):
            continue
        if not isinstance(entry.get("wal_start"), str):
            notes.append(f"pgbackrest info gives no archive start for backup {entry.get('label')}: not in the recovery window")
            continue
        backups.append(BackupWal(str(entry.get("label")), entry["wal_start"], entry.get("wal_stop"),
                                 datetime.fromisoformat(entry["stopped_at"])))
    return backups


# --- the source ---------------------------------------------------------------------------


def _tool_words(exc: ToolError) -> str:
    """The tool's own error lines when its log says which; else run_tool's summary."""
    errors = []
    for line in (exc.stderr or "").splitlines():
        m = _LOG_LINE.match(line.strip())
        if m and m.group(1) == "ERROR":
            errors.append(f"ERROR: {m.group(2).strip()}")
    if errors and not exc.timed_out:
        how = f"exited with code {exc.returncode}" if (exc.returncode or 0) >= 0 else f"was killed by signal {-exc.returncode}"
        return f"{how}: {'; '.join(errors[-3:])}"
    return str(exc)


class PgBackRestSource(BackupSource):
    name = "pgbackrest"

    def __init__(self, config: PgBackRestBackup):
        self.config = config

    def _base_args(self, repo: int | None) -> list[str]:
        args = []
        if self.config.config_file is not None:
            args.append(f"--config={self.config.config_file}")
        args.append(f"--stanza={self.config.stanza}")
        if repo is not None:
            args.append(f"--repo={repo}")
        return args

    def _run(self, command: str, args: list[str]):
        try:
            return run_tool(self.config.binary, args, timeout=self.config.timeout_seconds)
        except ToolError as exc:
            raise BackupSourceError(self._scrub(f"pgbackrest {command}: {_tool_words(exc)}")) from None

    def _scrub(self, text: str) -> str:
        return scrub(text, secrets(self.config.config_file))

    def latest(self) -> BackupInfo:
        done = self._run("info", [*self._base_args(self.config.repo), "info", "--output=json"])
        try:
            return parse_info(done.stdout, self.config.stanza)
        except NoBackupFound as exc:
            raise NoBackupFound(self._scrub(str(exc))) from None
        except BackupSourceError as exc:
            raise BackupSourceError(self._scrub(str(exc))) from None

    def checks_readable(self) -> bool:
        return self.config.verify_every_days > 0

    def full_read_every_days(self) -> float | None:
        # verify reads every file of the repository: on a cadence, not every run.
        return self.config.verify_every_days

    def full_read_on_demand(self) -> bool:
        return True

    def verify_readable(self, info: BackupInfo, server_version_num: int | None, pg_bin_dir=None) -> str:
        # The repository that holds this backup, so a second repo's damage (or slowness)
        # does not decide about the first one's backup.
        repo = (info.details or {}).get("repo_key") or self.config.repo
        args = [
            *self._base_args(repo if isinstance(repo, int) else None),
            "verify",
            "--output=text",
            "--verbose",
            # The log (which files are bad, which WAL ranges exist) to stderr, the result to stdout.
            "--log-level-console=off",
            "--log-level-stderr=detail",
            "--log-timestamp=n",
        ]
        done = self._run("verify", args)
        report = parse_verify(done.stdout, done.stderr)
        try:
            return self._scrub(judge_verify(report, info, self.config.stanza))
        except BackupUnreadable as exc:
            raise BackupUnreadable(self._scrub(str(exc))) from None
        except BackupSourceError as exc:
            said = _snippet(done.stdout + " " + done.stderr)
            raise BackupSourceError(self._scrub(f"{exc}; it said: {said}" if said else str(exc))) from None

    def keeps_wal(self) -> bool:
        # pgBackRest's backups need its WAL archive (archive_command = archive-push):
        # a stanza always has one.
        return True

    def wal_archive(self, info: BackupInfo | None) -> WalArchive:
        """The archive id of the newest backup, listed with `repo-ls --recurse` (names,
        sizes and times; no file is read), checked from the backup's start WAL to the
        newest segment. The newest segment's time is its file's modification time in
        the repository: when archive-push stored it."""
        details = (info.details or {}) if info is not None else {}
        archive_id, repo = details.get("archive_id"), details.get("repo_key") or self.config.repo
        start = details.get("wal_start") if isinstance(details.get("wal_start"), str) else None
        notes: list[str] = []
        if not isinstance(archive_id, str):
            archive_id, repo = self._current_archive()
            if archive_id is None:
                return WalArchive(where=f"pgBackRest stanza {self.config.stanza}", notes=["no WAL archive in the stanza"])
            notes.append("no backup: continuity not checked")
        elif start is None:
            notes.append(f"pgbackrest info gives no archive start for backup {info.id}: continuity not checked")
        repo = repo if isinstance(repo, int) else None
        path = f"archive/{self.config.stanza}/{archive_id}"
        done = self._run("repo-ls", [*self._base_args(repo), "repo-ls", path, "--recurse", "--output=json"])
        where = f"pgBackRest archive {archive_id}" + (f" (repo{repo})" if repo else "")
        try:
            files = parse_repo_ls(done.stdout, path)
            held, histories = archive_contents(files, f"pgbackrest repo-ls {path}")
        except BackupSourceError as exc:
            raise BackupSourceError(self._scrub(str(exc))) from None
        newest = max(held, default=None)
        history = []
        if newest is not None and int(newest[:8], 16) > 1:
            history = self._history(repo, path, int(newest[:8], 16), histories, notes)
        backups = _backups_wal(details, notes)
        archive = continuity(where, held, start, history, backups=backups, notes=notes)
        said_max = details.get("archive_max")
        if isinstance(said_max, str) and archive.last is not None and archive.last < said_max:
            archive.notes.append(f"pgbackrest info said the newest segment was {said_max}; the listing's newest is {archive.last}")
        if archive.last_archived_at is not None:
            archive.notes.append("the recovery window's end is when pgBackRest stored its segment (the file's time in the repository)")
        return archive

    def _history(self, repo: int | None, path: str, timeline: int, histories: list[str], notes: list[str]):
        """The history file of timeline, read with `repo-get` (decrypted by pgBackRest;
        archive-push stores history files uncompressed). A missing or unreadable one is
        a note, and the timeline is followed as if it had no ancestor: recovery across
        the switch needs that file too, so the gap found is then real."""
        name = f"{timeline:08X}.history"
        if name not in histories:
            notes.append(f"{name} is missing from the archive: recovery onto timeline {timeline} cannot follow its history")
            return []
        done = self._run("repo-get", [*self._base_args(repo), "repo-get", f"{path}/{name}"])
        try:
            return parse_history(done.stdout)
        except WalNameError as exc:
            notes.append(f"{name} cannot be read: {exc}")
            return []

    def _current_archive(self) -> tuple[str | None, int | None]:
        """With no backup to start from: the archive id of the stanza's current database
        (the highest database id whose archive holds WAL), from `info`."""
        done = self._run("info", [*self._base_args(self.config.repo), "info", "--output=json"])
        try:
            data = json.loads(done.stdout)
        except ValueError:
            raise BackupSourceError(self._scrub(f"pgbackrest info did not print JSON: {_snippet(done.stdout)}")) from None
        entry = next((e for e in data if isinstance(e, dict) and e.get("name") == self.config.stanza), None) if isinstance(data, list) else None
        archives = [a for a in (entry or {}).get("archive") or [] if isinstance(a, dict) and a.get("max") and isinstance(a.get("id"), str)]
        if not archives:
            return None, None
        best = max(archives, key=lambda a: (a.get("database") or {}).get("id") or 0)
        return best["id"], (best.get("database") or {}).get("repo-key")
