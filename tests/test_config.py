"""Configuration: every bad input is one line naming the key, exit 3; secrets stay masked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from exporter.config import ConfigError, load_settings, masked

GOOD = {
    "targets": [
        {
            "name": "app",
            "dsn": "postgresql://pgbv:s3cr3t-pw@db.internal:5432/app",
            "backup": {"source": "directory", "path": "/backups/app", "pattern": "*.dump"},
            "checks": {"critical_tables": ["organizations"]},
        }
    ]
}


def write(tmp_path: Path, data) -> Path:
    path = tmp_path / "pgbv.yml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def pgbv(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PGBV_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True, text=True, env=full_env, timeout=60)


def test_good_config_loads_with_defaults(tmp_path):
    settings = load_settings(write(tmp_path, GOOD), environ={})
    target = settings.targets[0]
    assert target.backup.source == "directory"
    assert target.backup.warn_age_hours == 26 and target.backup.max_age_hours == 49
    assert settings.schedule.daily_at == "05:00"
    assert settings.http.listen == "0.0.0.0:10047"
    assert "s3cr3t-pw" not in target.dsn
    assert target.resolved_password() == "s3cr3t-pw"


def bad_configs():
    def with_target(**changes):
        target = dict(GOOD["targets"][0], **changes)
        return {"targets": [target]}

    yield "unknown key", with_target(colour="blue"), "targets.0.colour: unknown key"
    yield "bad time", dict(GOOD, schedule={"daily_at": "25:99"}), "schedule.daily_at: must be a time HH:MM"
    yield "unknown source", with_target(backup={"source": "tape"}), "targets.0.backup: unknown backup source 'tape'"
    yield "empty targets", {"targets": []}, "targets: at least one target is required"
    yield "no targets", {"retention_days": 5}, "targets: required key is missing"
    yield "duplicate names", {"targets": [GOOD["targets"][0], GOOD["targets"][0]]}, "used twice"
    yield "bad listen", dict(GOOD, http={"listen": "localhost"}), "http.listen: must be host:port"
    yield "negative ratio", with_target(checks={"min_success_ratio": 2}), "targets.0.checks.min_success_ratio"
    yield "ages reversed", with_target(backup={"source": "directory", "path": "/b", "warn_age_hours": 50, "max_age_hours": 49}), "warn_age_hours (50) must not exceed max_age_hours (49)"
    yield "bad name", with_target(name="my target!"), "targets.0.name: must be"
    yield "restore jobs", with_target(restore={"enabled": True, "jobs": 0}), "targets.0.restore.jobs"
    yield "directory without path", with_target(backup={"source": "directory"}), "targets.0.backup.path: required key is missing"


@pytest.mark.parametrize("label,data,expected", list(bad_configs()), ids=[c[0] for c in bad_configs()])
def test_bad_config_names_the_key(tmp_path, label, data, expected):
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, data), environ={})
    assert expected in str(info.value)
    assert "\n" not in str(info.value)
    assert "s3cr3t-pw" not in str(info.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="nope.yml: file not found"):
        load_settings(tmp_path / "nope.yml", environ={})
    with pytest.raises(ConfigError, match=r"line \d+, column \d+: not valid YAML"):
        load_settings(write(tmp_path, "targets:\n  - name: [unclosed\n"), environ={})
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_settings(write(tmp_path, "- just\n- a list\n"), environ={})


def test_environment_overrides_file_including_list_items(tmp_path):
    env = {
        "PGBV_TARGETS__0__PASSWORD": "0123",  # digits stay a string
        "PGBV_SCHEDULE__DAILY_AT": "04:30",
        "PGBV_TARGETS__0__CHECKS__CRITICAL_TABLES": '["a", "b"]',
        "PGBV_RETENTION_DAYS": "30",
    }
    settings = load_settings(write(tmp_path, GOOD), environ=env)
    assert settings.targets[0].resolved_password() == "0123"
    assert settings.schedule.daily_at == "04:30"
    assert settings.targets[0].checks.critical_tables == ["a", "b"]
    assert settings.retention_days == 30


def test_environment_alone_is_a_configuration():
    settings = load_settings(None, environ={"PGBV_TARGETS__0__NAME": "db", "PGBV_TARGETS__0__DSN": "dbname=x"})
    assert settings.targets[0].name == "db"


def test_unknown_environment_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match="targets.0.colour: unknown key"):
        load_settings(write(tmp_path, GOOD), environ={"PGBV_TARGETS__0__COLOUR": "blue"})
    with pytest.raises(ConfigError, match="PGBV_TARGETS__X__NAME: targets is a list; expected an index"):
        load_settings(write(tmp_path, GOOD), environ={"PGBV_TARGETS__X__NAME": "b"})


def test_password_file(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    data = {"targets": [dict(GOOD["targets"][0], dsn="host=db dbname=app", password_file=str(secret))]}
    target = load_settings(write(tmp_path, data), environ={}).targets[0]
    assert target.resolved_password() == "from-file"
    assert "from-file" in target.secrets()


def test_masked_hides_every_secret(tmp_path):
    settings = load_settings(write(tmp_path, GOOD), environ={"PGBV_TARGETS__0__LOG_DSN": "postgresql://l:logpw@central/log"})
    text = yaml.safe_dump(masked(settings))
    assert "s3cr3t-pw" not in text and "logpw" not in text
    assert text.count("********") == 2


def test_check_config_command(tmp_path):
    ok = pgbv("check-config", "--config", str(write(tmp_path, GOOD)))
    assert ok.returncode == 0, ok.stderr
    assert "s3cr3t-pw" not in ok.stdout + ok.stderr
    assert "daily_at: 05:00" in ok.stdout or "daily_at: '05:00'" in ok.stdout
    bad = pgbv("check-config", "--config", str(write(tmp_path, dict(GOOD, schedule={"daily_at": "25:99"}))))
    assert bad.returncode == 3
    assert bad.stderr.strip().count("\n") == 0, bad.stderr
    assert "schedule.daily_at" in bad.stderr and "Traceback" not in bad.stderr
    missing = pgbv("check-config", "--config", str(tmp_path / "absent.yml"))
    assert missing.returncode == 3 and "file not found" in missing.stderr


def test_bad_arguments_exit_3_and_every_command_has_help():
    assert pgbv("verify", "--format", "xml").returncode == 3
    assert pgbv("no-such-command").returncode == 3
    for command in ("verify", "migrate", "history", "cleanup", "check-config", "demo"):
        helped = pgbv(command, "--help")
        assert helped.returncode == 0 and "usage: pgbv" in helped.stdout, command
    version = pgbv("--version")
    assert version.returncode == 0 and version.stdout.startswith("pgbv ")


def test_configuration_docs_are_generated_from_the_models():
    from exporter.config_docs import render

    docs = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
    assert docs.read_text() == render(), "docs/configuration.md is stale: run `make docs`"


def test_environment_keys_inside_a_tool_env_keep_their_case(tmp_path):
    data = {"targets": [{"name": "app", "dsn": "dbname=app", "backup": {"source": "walg", "env": {"WALG_S3_PREFIX": "s3://b/app"}}}]}
    settings = load_settings(write(tmp_path, data), environ={"PGBV_TARGETS__0__BACKUP__ENV__AWS_SECRET_ACCESS_KEY": "k3y"})
    env = settings.targets[0].backup.env
    assert env == {"WALG_S3_PREFIX": "s3://b/app", "AWS_SECRET_ACCESS_KEY": "k3y"}
    assert "k3y" in settings.targets[0].secrets()
    assert "k3y" not in yaml.safe_dump(masked(settings))
