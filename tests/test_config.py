"""Configuration: every bad input is one line naming the key, exit 3; secrets stay masked."""

from __future__ import annotations

import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from exporter import config_docs
from exporter.config import ChecksConfig, ConfigError, Settings, load_settings, masked

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


# --- numbers bounded at the door (issue 13, item 6) ---------------------------------------
# The keys are found by walking the models, so a key added later is covered without
# touching this file.

SAMPLE_VALUES = {"name": "app", "dsn": "dbname=app"}  # required strings that must parse


def _options(annotation) -> list:
    """The types a field accepts: Optional[X] and X | Y unpacked, Annotated[X, ...] to X."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _options(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [option for arg in typing.get_args(annotation) for option in _options(arg)]
    return [] if annotation is type(None) else [annotation]


def _is_number(annotation) -> bool:
    return annotation in (int, float)


def _is_model(annotation) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _minimal(model: type[BaseModel]) -> dict:
    """The required keys of a model, each with a value it accepts."""
    data = {}
    for name, field in model.model_fields.items():
        if name == "source":  # the discriminator of the backup sources, even where it has a default
            data[name] = typing.get_args(field.annotation)[0]
        if not field.is_required():
            continue
        (option, *_) = _options(field.annotation)
        if name in SAMPLE_VALUES:
            data[name] = SAMPLE_VALUES[name]
        elif typing.get_origin(option) is typing.Literal:
            data[name] = typing.get_args(option)[0]
        elif typing.get_origin(option) is list:
            (inner,) = typing.get_args(option)
            data[name] = [_minimal(inner) if _is_model(inner) else "x"]
        elif _is_model(option):
            data[name] = _minimal(option)
        elif option in (str, Path):
            data[name] = "/tmp/pgbv-test"
        else:
            raise AssertionError(f"{model.__name__}.{name}: teach _minimal a value for {option}")
    return data


def numeric_keys(model=None, place=None, loc=""):
    """(key as an error names it, test id, function placing a value there in a whole configuration, field)."""
    if model is None:
        model, place = Settings, lambda data: data
    for name, field in model.model_fields.items():
        for option in _options(field.annotation):
            def at(value, name=name, place=place, model=model):
                return place({**_minimal(model), name: value})

            origin = typing.get_origin(option)
            if _is_number(option):
                yield f"{loc}{name}", f"{loc}{name}", at, field
            elif origin is dict and any(_is_number(o) for o in _options(typing.get_args(option)[1])):
                yield f"{loc}{name}.t", f"{loc}{name}.t", lambda value, at=at: at({"t": value}), field
            elif _is_model(option):
                tag = f"[{_minimal(option)['source']}]" if "source" in option.model_fields else ""
                sub = lambda data, at=at: at(data)  # noqa: E731
                for key, test_id, place_value, leaf in numeric_keys(option, sub, f"{loc}{name}."):
                    yield key, test_id.replace(f"{loc}{name}.", f"{loc}{name}{tag}.", 1), place_value, leaf
            elif origin is list and _is_model(typing.get_args(option)[0]):
                sub = lambda data, at=at: at([data])  # noqa: E731
                yield from numeric_keys(typing.get_args(option)[0], sub, f"{loc}{name}.0.")


NUMERIC_KEYS = list(numeric_keys())
BAD_NUMBERS = {
    "inf": float("inf"), "nan": float("nan"), "negative": -1, "30 digits": 123456789012345678901234567890,
    "boolean": True,  # YAML yes/true: pydantic alone would read 1
}


def test_the_walk_finds_the_numeric_keys():
    keys = {key for key, *_ in NUMERIC_KEYS}
    assert {"retention_days", "schedule.interval_minutes", "targets.0.statement_timeout_seconds",
            "targets.0.backup.max_age_hours", "targets.0.checks.min_policies.t", "targets.0.restore.jobs",
            "targets.0.backup.repo"} <= keys
    assert len(NUMERIC_KEYS) >= 25
    # A float key says so itself (config.Bounded), not only through its upper bound.
    for key, _, _, field in NUMERIC_KEYS:
        if float in _options(field.annotation):
            assert any(getattr(meta, "allow_inf_nan", True) is False for meta in field.metadata), key


@pytest.mark.parametrize("bad", BAD_NUMBERS, ids=list(BAD_NUMBERS))
@pytest.mark.parametrize("key,place", [(k, p) for k, _, p, _ in NUMERIC_KEYS], ids=[i for _, i, *_ in NUMERIC_KEYS])
def test_every_numeric_key_refuses_bad_numbers_at_check_config(tmp_path, capsys, key, place, bad):
    from exporter.cli import main

    config = write(tmp_path, place(BAD_NUMBERS[bad]))
    assert main(["check-config", "--config", str(config)]) == 3
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"pgbv: configuration error: {key}: "), error
    assert "\n" not in error and len(error) < 300, error


def test_every_numeric_key_accepts_its_bounds(tmp_path):
    # The range column of the reference is inclusive: its bounds are usable values.
    tried = 0
    for key, _, place, field in NUMERIC_KEYS:
        metadata = list(field.metadata)
        if typing.get_origin(field.annotation) is dict:
            value_type = typing.get_args(field.annotation)[1]
            metadata = [m for meta in value_type.__metadata__ for m in getattr(meta, "metadata", [meta])]
        for meta in metadata:
            for bound in ("ge", "le"):
                if hasattr(meta, bound):
                    value = getattr(meta, bound)
                    data = place(value)
                    if key.endswith("warn_age_hours"):  # must not exceed max_age_hours
                        data["targets"][0]["backup"]["max_age_hours"] = value
                    if key == "schedule.total_shards":  # more than one shard: each replica must say which
                        data["schedule"]["shard"] = 0
                    load_settings(write(tmp_path, data), environ={})
                    tried += 1
    assert tried >= len(NUMERIC_KEYS)


@pytest.mark.parametrize("key,value,expected", [
    ("interval_minutes", "99999999999999999999", "schedule.interval_minutes: Input should be less than or equal to 44640"),
    ("statement_timeout_seconds", "1e300", "targets.0.statement_timeout_seconds: Input should be less than or equal to 86400"),
    ("max_age_hours", ".inf", "targets.0.backup.max_age_hours: Input should be a finite number"),
])
def test_the_reported_numbers_are_refused_in_one_short_line(tmp_path, key, value, expected):
    text = {
        "interval_minutes": f"targets: [{{name: app, dsn: 'dbname=app'}}]\nschedule: {{interval_minutes: {value}}}\n",
        "statement_timeout_seconds": f"targets: [{{name: app, dsn: 'dbname=app', statement_timeout_seconds: {value}}}]\n",
        "max_age_hours": f"targets: [{{name: app, dsn: 'dbname=app', backup: {{source: directory, path: /b, max_age_hours: {value}}}}}]\n",
    }[key]
    proc = pgbv("check-config", "--config", str(write(tmp_path, text)))
    assert proc.returncode == 3
    assert proc.stderr == f"pgbv: configuration error: {expected}\n"


def test_an_echoed_value_is_cut(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, dict(GOOD, schedule={"daily_at": "9" * 5000})), environ={})
    assert len(str(info.value)) < 300 and str(info.value).endswith("…")


def test_the_reference_shows_each_range():
    from exporter.config_docs import render

    text = render()
    assert "| `schedule.interval_minutes` | int or None | `null` | 1 to 44,640 (31 days) |" in text
    assert "| `targets[].backup.max_age_hours` | float | `49` | more than 0, at most 8,784 (366 days: " in text
    assert "| `targets[].checks.min_policies` | dict[name, int] | `{}` | each value 0 to 10,000 |" in text
    assert "| `targets[].checks.max_row_drop_percent` | float | `10` | 0 to 100 |" in text


# --- names (issue 13, item 5): a malformed name is a configuration error -----------------

NAME_KEYS = [
    name for name, field in ChecksConfig.model_fields.items()
    if "name" in config_docs._type_name(field.annotation)
]


def _with_name(key: str, name: str) -> dict:
    checks = {key: {name: 1}} if key == "min_policies" else {key: [name]}
    return {"targets": [dict(GOOD["targets"][0], checks=checks)]}


@pytest.mark.parametrize("name,problem", [
    ('"Billing.Invoices', "unbalanced double quote"),
    ('"Billing"x.Invoices', "a quoted part must be followed by '.'"),
    ("billing.", "an empty part"),
    ('"".invoices', "an empty part"),
    ("a.b.c", "3 dot-separated parts"),
    ("x" * 64, "63-byte limit"),
])
@pytest.mark.parametrize("key", NAME_KEYS)
def test_a_malformed_name_is_a_configuration_error(tmp_path, capsys, key, name, problem):
    from exporter.cli import main

    assert main(["check-config", "--config", str(write(tmp_path, _with_name(key, name)))]) == 3
    error = capsys.readouterr().err.strip()
    where = f"targets.0.checks.{key}" + (" (a key):" if key == "min_policies" else ".0:")
    assert where in error and problem in error, error
    assert "\n" not in error


def test_every_name_list_is_validated():
    assert set(NAME_KEYS) >= {"critical_tables", "required_tables", "rls_tables", "min_policies", "required_indexes",
                              "required_functions", "allow_empty_tables", "index_coverage_exempt"}


@pytest.mark.parametrize("name", ["Billing.Invoices", '"Billing"."Invoices"', '"my.schema"."a table"', '"has""quote"',
                                  'Sales Ops.Leads "2026"', 'x"; DROP TABLE t; --', "Ärger"])
def test_well_formed_names_are_accepted(tmp_path, name):
    settings = load_settings(write(tmp_path, _with_name("critical_tables", name)), environ={})
    assert settings.targets[0].checks.critical_tables == [name]
