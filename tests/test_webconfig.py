"""Endpoint security: `http.web_config_file` (exporter-toolkit format) with TLS,
client certificates and bcrypt basic auth; a real Prometheus 2.42 scraping a real
`pgbv run` over it; idle clients that must not block scrapes; promtool on the
shipped example."""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from exporter import webconfig
from exporter.config import ConfigError
from exporter.server import MetricsServer
from exporter.webconfig import load_web_config, parse_basic
from tests.test_daemon import RunningDaemon, write_config
from tests.test_metrics import full_snapshot, render
from tests.tlsutil import Pki, bcrypt_hash, make_pki

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "deploy" / "web-config.example.yml"
PASSWORD = "scrape-Pa55-w0rd"
USER = "prometheus"

needs_prometheus = pytest.mark.skipif(shutil.which("prometheus") is None,
                                      reason="prometheus not installed (Debian package prometheus)")
needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                    reason="promtool not installed (Debian package prometheus)")


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def password_hash() -> str:
    return bcrypt_hash(PASSWORD)


def write_web_config(folder: Path, data: dict, name: str = "web-config.yml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def tls_section(pki: Pki, **extra) -> dict:
    return {"cert_file": str(pki.path("server.crt")), "key_file": str(pki.path("server.key")), **extra}


def client_context(ca: Path | None, cert: str | None = None, pki: Pki | None = None, **versions) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca) if ca else None)
    if cert is not None:
        context.load_cert_chain(pki.path(f"{cert}.crt"), pki.path(f"{cert}.key"))
    for key, value in versions.items():
        setattr(context, key, value)
    return context


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def fetch(url: str, context: ssl.SSLContext | None = None, auth: str | None = None, timeout: float = 5):
    """(status, headers, body) without raising on 4xx/5xx; TLS errors do raise."""
    request = urllib.request.Request(url, headers={"Authorization": auth} if auth else {})
    try:
        with urllib.request.urlopen(request, context=context, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers, error.read()


@pytest.fixture
def serve(tmp_path):
    """serve(web_config_dict) -> a started MetricsServer (https URL on 'localhost')."""
    servers = []
    snapshot = full_snapshot()

    def start(data: dict) -> MetricsServer:
        server = MetricsServer("127.0.0.1:0", lambda: snapshot, lambda: True,
                               web_config_file=write_web_config(tmp_path, data, f"web-{len(servers)}.yml"))
        servers.append(server.start())
        return server

    yield start
    for server in servers:
        server.stop()


def local(server: MetricsServer, path: str = "/metrics") -> str:
    # The server certificate names localhost and 127.0.0.1; use the name, as Prometheus would.
    return server.url.replace("127.0.0.1", "localhost") + path


# --- loading: an invalid file is one clear line ----------------------------------------------


def _bad_configs(pki: Pki, tmp: Path) -> list[tuple[str, str, str]]:
    """(name, file text, expected fragment of the error)."""
    encrypted = tmp / "encrypted.key"
    subprocess.run(["openssl", "ec", "-in", pki.path("server.key"), "-out", encrypted, "-aes256", "-passout", "pass:x"],
                   check=True, capture_output=True)
    crt, key, ca = pki.path("server.crt"), pki.path("server.key"), pki.ca
    return [
        ("not yaml", "tls_server_config: [\n", "not valid YAML"),
        ("not a mapping", "- a\n- b\n", "the top level: must be a mapping"),
        ("unknown top key", "tls_config: {}\n", "tls_config: unknown key"),
        ("unknown tls key", f"tls_server_config: {{cert_file: {crt}, key_file: {key}, min_versoin: TLS12}}\n",
         "tls_server_config.min_versoin: unknown key"),
        ("cert without key", f"tls_server_config: {{cert_file: {crt}}}\n", "tls_server_config.key_file: required"),
        ("key without cert", f"tls_server_config: {{key_file: {key}}}\n", "tls_server_config.cert_file: required"),
        ("missing cert", f"tls_server_config: {{cert_file: {tmp}/none.crt, key_file: {key}}}\n",
         "tls_server_config.cert_file: file not found"),
        ("key does not match", f"tls_server_config: {{cert_file: {crt}, key_file: {pki.path('client.key')}}}\n",
         "tls_server_config.cert_file/key_file: cannot load"),
        ("encrypted key", f"tls_server_config: {{cert_file: {crt}, key_file: {encrypted}}}\n", "the key is encrypted"),
        ("bad min version", f"tls_server_config: {{cert_file: {crt}, key_file: {key}, min_version: TLS14}}\n",
         "tls_server_config.min_version: must be one of TLS10, TLS11, TLS12, TLS13, got 'TLS14'"),
        ("min above max", f"tls_server_config: {{cert_file: {crt}, key_file: {key}, min_version: TLS13, max_version: TLS12}}\n",
         "min_version: is above max_version"),
        ("unverified client certs", f"tls_server_config: {{cert_file: {crt}, key_file: {key}, client_ca_file: {ca}, "
         "client_auth_type: RequireAnyClientCert}\n", "RequireAnyClientCert is not supported by pgbv"),
        ("client auth without CA", f"tls_server_config: {{cert_file: {crt}, key_file: {key}, "
         "client_auth_type: RequireAndVerifyClientCert}\n", "client_ca_file: required with client_auth_type"),
        ("CA without client auth", f"tls_server_config: {{cert_file: {crt}, key_file: {key}, client_ca_file: {ca}}}\n",
         "client_ca_file: given without a client_auth_type"),
        ("unknown client auth", f"tls_server_config: {{cert_file: {crt}, key_file: {key}, client_auth_type: Always}}\n",
         "client_auth_type: must be one of"),
        ("bad cipher", f"tls_server_config: {{cert_file: {crt}, key_file: {key}, cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]}}\n",
         "cipher_suites: unknown or insecure cipher suite 'TLS_RSA_WITH_RC4_128_SHA'"),
        ("curves", f"tls_server_config: {{cert_file: {crt}, key_file: {key}, curve_preferences: [CurveP256]}}\n",
         "curve_preferences: not supported by pgbv"),
        ("password instead of hash", "basic_auth_users:\n  prometheus: Plain-Text-Pa55\n",
         "basic_auth_users.prometheus: must be a bcrypt hash"),
        ("user with colon", "basic_auth_users:\n  'a:b': '$2y$10$X0h1gDsPszWURQaxFh.zoubFi6DXncSjhoQNJgRrnGs7EsimhC7zG'\n",
         "without ':'"),
        ("header not allowed", "http_server_config:\n  headers: {Set-Cookie: a=b}\n",
         "http_server_config.headers.Set-Cookie: not a header a web config may set"),
    ]


def test_every_invalid_file_is_one_line_naming_the_key(pki, tmp_path):
    for name, text, expected in _bad_configs(pki, tmp_path):
        path = tmp_path / "web.yml"
        path.write_text(text)
        with pytest.raises(ConfigError) as info:
            load_web_config(path)
        message = str(info.value)
        assert message.startswith(f"http.web_config_file: {path}: "), (name, message)
        assert expected in message, (name, message)
        assert "\n" not in message, (name, message)
        assert "Plain-Text-Pa55" not in message  # a password pasted where its hash belongs is never echoed


def test_missing_file_and_empty_file(tmp_path):
    with pytest.raises(ConfigError, match=r"^http.web_config_file: .*none.yml: file not found$"):
        load_web_config(tmp_path / "none.yml")
    (tmp_path / "empty.yml").write_text("")
    empty = load_web_config(tmp_path / "empty.yml")
    assert empty.tls is None and empty.auth is None  # as in exporter-toolkit: plain HTTP, no auth


def test_relative_paths_are_relative_to_the_web_config(pki, tmp_path):
    folder = tmp_path / "etc"
    folder.mkdir()
    for name in ("server.crt", "server.key", "ca.crt"):
        shutil.copy(pki.path(name), folder / name)
    path = write_web_config(folder, {"tls_server_config": {
        "cert_file": "server.crt", "key_file": "server.key",
        "client_auth_type": "RequireAndVerifyClientCert", "client_ca_file": "ca.crt"}})
    config = load_web_config(path)
    assert config.tls.cert_file == folder.resolve() / "server.crt"
    assert config.tls.context.verify_mode == ssl.CERT_REQUIRED


def test_pgbv_run_with_an_invalid_web_config_refuses_to_start_with_one_line(tmp_path):
    bad = tmp_path / "web.yml"
    bad.write_text("basic_auth_users:\n  prometheus: not-a-hash\n")
    # An unreachable database: the refusal must come before any connection attempt.
    config = write_config(tmp_path, "host=/nonexistent dbname=x connect_timeout=30", http={
        "listen": "127.0.0.1:0", "web_config_file": str(bad)})
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGBV_")}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "exporter", "run", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 3, proc.stderr
    assert time.monotonic() - started < 10
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"pgbv: configuration error: http.web_config_file: {bad}: basic_auth_users.prometheus: "
                     "must be a bcrypt hash ($2y$10$ followed by 53 characters), e.g. from "
                     "`htpasswd -nBC 10 \"\" | tr -d ':\\n'`"], proc.stderr


def test_check_config_validates_the_web_config_too(tmp_path):
    bad = tmp_path / "web.yml"
    bad.write_text("tls_server_config: {cert_file: /nonexistent.crt, key_file: /nonexistent.key}\n")
    config = write_config(tmp_path, "host=/nonexistent dbname=x", http={"listen": "127.0.0.1:0", "web_config_file": str(bad)})
    proc = subprocess.run([sys.executable, "-m", "exporter", "check-config", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3
    assert "tls_server_config.cert_file: file not found" in proc.stderr


# --- basic auth ------------------------------------------------------------------------------


@pytest.mark.parametrize("header", [
    None, "", "Bearer abc", "Basic", "Basic !!!notbase64", "Basic " + base64.b64encode(b"no-colon").decode(),
    "Basic " + base64.b64encode(b"\xff\xfe:pw").decode(),
])
def test_parse_basic_rejects_malformed_headers(header):
    assert parse_basic(header) is None


def test_parse_basic():
    assert parse_basic(basic("u", "p:w with colon")) == ("u", b"p:w with colon")
    assert parse_basic("basic " + base64.b64encode(b"u:").decode()) == ("u", b"")


def test_successful_checks_are_cached_and_failures_are_not(password_hash, monkeypatch):
    auth = webconfig.BasicAuth({USER: password_hash.encode()})
    calls = []
    real = webconfig.bcrypt.checkpw
    monkeypatch.setattr(webconfig.bcrypt, "checkpw", lambda pw, h: calls.append(1) or real(pw, h))
    for _ in range(5):
        assert auth.check(basic(USER, PASSWORD)) == USER
    assert len(calls) == 1
    for _ in range(3):
        assert auth.check(basic(USER, "wrong")) is None
    assert len(calls) == 4
    # An unknown user costs a bcrypt too (no timing oracle for which users exist).
    assert auth.check(basic("nobody", PASSWORD)) is None
    assert len(calls) == 5
    # The cache remembers a keyed MAC, never the password.
    assert all(PASSWORD.encode() not in key for key in auth._ok)


def test_a_password_longer_than_bcrypt_reads_is_compared_on_its_first_72_bytes():
    long = "x" * 80
    auth = webconfig.BasicAuth({USER: bcrypt_hash(long[:72], rounds=4).encode()})
    assert auth.check(basic(USER, long)) == USER


def test_htpasswd_style_2y_hashes_work():
    hashed = bcrypt_hash(PASSWORD, rounds=4).replace("$2b$", "$2y$", 1)
    assert webconfig.BasicAuth({USER: hashed.encode()}).check(basic(USER, PASSWORD)) == USER


# --- a served endpoint ----------------------------------------------------------------------------


def test_tls_and_basic_auth(serve, pki, password_hash):
    server = serve({"tls_server_config": tls_section(pki), "basic_auth_users": {USER: password_hash},
                    "http_server_config": {"headers": {"Strict-Transport-Security": "max-age=31536000"}}})
    assert server.url.startswith("https://")
    trust = client_context(pki.ca)

    status, headers, body = fetch(local(server), trust, basic(USER, PASSWORD))
    assert status == 200 and body == render(full_snapshot())
    assert headers["Strict-Transport-Security"] == "max-age=31536000"

    for auth in (None, basic(USER, "wrong"), basic("nobody", PASSWORD), "Bearer x"):
        status, headers, body = fetch(local(server), trust, auth)
        assert status == 401, auth
        assert headers["WWW-Authenticate"].startswith("Basic realm=")
        assert b"pgbv_" not in body
    assert fetch(local(server, "/"), trust)[0] == 401
    assert fetch(local(server, "/nope"), trust)[0] == 401  # nothing about the server without credentials
    assert fetch(local(server, "/"), trust, basic(USER, PASSWORD))[0] == 200
    # Probes reach /healthz without credentials; it tells nothing else.
    assert fetch(local(server, "/healthz"), trust)[::2] == (200, b"ok\n")


def test_a_client_that_does_not_trust_the_server_fails_the_handshake(serve, pki, password_hash):
    server = serve({"tls_server_config": tls_section(pki), "basic_auth_users": {USER: password_hash}})
    with pytest.raises(urllib.error.URLError) as info:
        fetch(local(server), client_context(pki.wrong_ca), basic(USER, PASSWORD))
    assert isinstance(info.value.reason, ssl.SSLCertVerificationError)
    # And the server goes on serving the others.
    assert fetch(local(server), client_context(pki.ca), basic(USER, PASSWORD))[0] == 200


def test_plain_http_to_the_tls_port_is_told_so(serve, pki):
    server = serve({"tls_server_config": tls_section(pki)})
    status, _, body = fetch(server.url.replace("https://", "http://") + "/metrics")
    assert status == 400 and b"HTTP request to an HTTPS server" in body


def _fails(url: str, context: ssl.SSLContext) -> bool:
    # With TLS 1.3 a refused client certificate surfaces at the first read, not in connect.
    try:
        fetch(url, context)
    except (urllib.error.URLError, ssl.SSLError, ConnectionError, OSError):
        return True
    return False


def test_client_certificates(serve, pki):
    server = serve({"tls_server_config": tls_section(
        pki, client_auth_type="RequireAndVerifyClientCert", client_ca_file=str(pki.ca),
        client_allowed_sans=["prometheus"])})
    url = local(server)
    assert fetch(url, client_context(pki.ca, "client", pki))[0] == 200
    assert _fails(url, client_context(pki.ca))  # no certificate
    assert _fails(url, client_context(pki.ca, "wrong-client", pki))  # signed by another CA
    assert _fails(url, client_context(pki.ca, "other-client", pki))  # right CA, name not allowed
    # Even /healthz needs the certificate here: the handshake comes before the path.
    assert _fails(local(server, "/healthz"), client_context(pki.ca))


def test_verify_client_cert_if_given(serve, pki):
    server = serve({"tls_server_config": tls_section(
        pki, client_auth_type="VerifyClientCertIfGiven", client_ca_file=str(pki.ca))})
    assert fetch(local(server), client_context(pki.ca))[0] == 200
    assert fetch(local(server), client_context(pki.ca, "client", pki))[0] == 200
    assert _fails(local(server), client_context(pki.ca, "wrong-client", pki))


def test_min_version_tls13_refuses_tls12(serve, pki):
    server = serve({"tls_server_config": tls_section(pki, min_version="TLS13")})
    assert fetch(local(server), client_context(pki.ca))[0] == 200
    assert _fails(local(server), client_context(pki.ca, maximum_version=ssl.TLSVersion.TLSv1_2))


def test_max_version_and_cipher_suites(serve, pki):
    server = serve({"tls_server_config": tls_section(
        pki, max_version="TLS12", cipher_suites=["TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"])})
    context = client_context(pki.ca)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() == "TLSv1.2"
            assert tls.cipher()[0] == "ECDHE-ECDSA-AES256-GCM-SHA384"


def test_idle_connections_do_not_block_scrapes(serve, pki, password_hash):
    """Clients that connect and send nothing (no ClientHello), and one that stops
    half-way through a handshake: every scrape meanwhile answers within 1 s."""
    server = serve({"tls_server_config": tls_section(pki), "basic_auth_users": {USER: password_hash}})
    trust = client_context(pki.ca)
    held = []
    try:
        for _ in range(5):
            held.append(socket.create_connection(("127.0.0.1", server.port), timeout=30))
        half = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        half.sendall(bytes([0x16, 0x03, 0x01, 0x02, 0x00, 0x01]))  # the start of a ClientHello, then silence
        held.append(half)
        time.sleep(0.2)
        slowest = 0.0
        for _ in range(20):
            started = time.monotonic()
            status, _, _ = fetch(local(server), trust, basic(USER, PASSWORD), timeout=5)
            slowest = max(slowest, time.monotonic() - started)
            assert status == 200
        assert slowest < 1.0, f"a scrape took {slowest:.2f} s behind idle connections"
    finally:
        for sock in held:
            sock.close()


def test_an_idle_connection_is_dropped_after_the_handshake_timeout(serve, pki, monkeypatch):
    monkeypatch.setattr("exporter.server.HANDSHAKE_TIMEOUT", 0.5)
    server = serve({"tls_server_config": tls_section(pki)})
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as idle:
        started = time.monotonic()
        assert idle.recv(1) == b""  # closed by the server
        assert time.monotonic() - started < 3


def test_changes_are_picked_up_and_a_broken_change_keeps_the_last_good_one(tmp_path, pki, password_hash, caplog):
    path = write_web_config(tmp_path, {"tls_server_config": tls_section(pki), "basic_auth_users": {USER: password_hash}})
    snapshot = full_snapshot()
    with MetricsServer("127.0.0.1:0", lambda: snapshot, lambda: True, web_config_file=path) as server:
        trust = client_context(pki.ca)
        assert fetch(local(server), trust, basic(USER, PASSWORD))[0] == 200
        new_password = "rotated-Pa55"
        write_web_config(tmp_path, {"tls_server_config": tls_section(pki),
                                    "basic_auth_users": {USER: bcrypt_hash(new_password, rounds=4)}})
        deadline = time.monotonic() + 5
        while fetch(local(server), trust, basic(USER, new_password))[0] != 200:
            assert time.monotonic() < deadline, "the new password was never accepted"
            time.sleep(0.2)
        assert fetch(local(server), trust, basic(USER, PASSWORD))[0] == 401

        with caplog.at_level(logging.ERROR, logger="pgbv.webconfig"):
            path.write_text("basic_auth_users:\n  prometheus: oops\n")
            time.sleep(webconfig.RELOAD_CHECK_SECONDS + 0.3)
            for _ in range(3):
                # Still TLS, still the rotated password: a typo never opens the endpoint.
                assert fetch(local(server), trust)[0] == 401
                assert fetch(local(server), trust, basic(USER, new_password))[0] == 200
        errors = [r.getMessage() for r in caplog.records if r.name == "pgbv.webconfig"]
        assert len(errors) == 1 and "previous one stays in force" in errors[0]


# --- promtool and a real Prometheus ---------------------------------------------------------------


@needs_promtool
def test_promtool_accepts_the_shipped_example(pki, tmp_path):
    # The example names tls.crt, tls.key and ca.crt next to it (as a Kubernetes TLS
    # secret mounts them): put real ones there, and run promtool from elsewhere.
    folder = tmp_path / "web"
    folder.mkdir()
    shutil.copy(EXAMPLE, folder / "web-config.yml")
    shutil.copy(pki.path("server.crt"), folder / "tls.crt")
    shutil.copy(pki.path("server.key"), folder / "tls.key")
    shutil.copy(pki.ca, folder / "ca.crt")
    proc = subprocess.run(["promtool", "check", "web-config", str(folder / "web-config.yml")],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # ... and pgbv reads the same file the same way.
    config = load_web_config(folder / "web-config.yml")
    assert config.tls is not None and config.auth is not None
    assert config.tls.client_auth_type == "VerifyClientCertIfGiven"


def test_the_example_documents_its_password():
    # The example's hash is of a password written beside it, so that a reader can try it (and must change it).
    text = EXAMPLE.read_text()
    match = re.search(r"password \"([^\"]+)\"", text)
    assert match, "the example should say which password its hash is of"
    hashed = yaml.safe_load(text)["basic_auth_users"]["prometheus"]
    assert webconfig.BasicAuth({"prometheus": hashed.encode()}).check(basic("prometheus", match.group(1))) == "prometheus"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Prometheus:
    """A real Prometheus server on a free port, with its own TSDB in a temporary folder."""

    def __init__(self, folder: Path, config: dict):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        self.port = free_port()
        self.log = open(folder / "prometheus.log", "w")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={folder / 'prometheus.yml'}", f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        self.folder = folder
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2).read()
                break
            except (urllib.error.URLError, ConnectionError):
                assert self.proc.poll() is None, "prometheus exited:\n" + (folder / "prometheus.log").read_text()
                assert time.monotonic() < deadline, "prometheus never became ready"
                time.sleep(0.2)

    def api(self, path: str, **params) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        answer = json.loads(urllib.request.urlopen(url, timeout=5).read())
        assert answer["status"] == "success", answer
        return answer["data"]

    def targets(self) -> dict[str, dict]:
        return {t["labels"]["job"]: t for t in self.api("targets")["activeTargets"]}

    def wait_scraped(self, jobs: set[str], timeout: float = 60) -> dict[str, dict]:
        deadline = time.monotonic() + timeout
        while True:
            targets = self.targets()
            if jobs <= set(targets) and all(targets[j]["health"] != "unknown" for j in jobs):
                return targets
            assert time.monotonic() < deadline, f"not all scraped: {targets}"
            time.sleep(0.3)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@needs_prometheus
@pytest.mark.slow
def test_prometheus_scrapes_pgbv_run_over_tls_with_basic_auth(demo_db, tmp_path, pki, password_hash):
    web = write_web_config(tmp_path, {
        "tls_server_config": tls_section(pki, client_auth_type="RequireAndVerifyClientCert", client_ca_file=str(pki.ca)),
        "basic_auth_users": {USER: password_hash},
    })
    config = write_config(tmp_path, demo_db, http={"listen": "127.0.0.1:0", "web_config_file": str(web)})
    daemon = RunningDaemon(config)
    prometheus = None
    try:
        port = urllib.parse.urlsplit(daemon.url).port
        good_tls = {"ca_file": str(pki.ca), "cert_file": str(pki.path("client.crt")),
                    "key_file": str(pki.path("client.key")), "server_name": "localhost"}
        password_file = tmp_path / "scrape-password"
        password_file.write_text(PASSWORD)

        def job(name: str, tls: dict, auth: dict | None, scheme: str = "https") -> dict:
            entry = {"job_name": name, "scheme": scheme, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
            if scheme == "https":
                entry["tls_config"] = tls
            if auth is not None:
                entry["basic_auth"] = auth
            return entry

        prometheus = Prometheus(tmp_path / "prometheus", {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [
                job("pgbv", good_tls, {"username": USER, "password_file": str(password_file)}),
                job("wrong-password", good_tls, {"username": USER, "password": "wrong"}),
                job("no-password", good_tls, None),
                job("wrong-ca", {**good_tls, "ca_file": str(pki.wrong_ca)}, {"username": USER, "password": PASSWORD}),
                job("no-client-cert", {"ca_file": str(pki.ca), "server_name": "localhost"},
                    {"username": USER, "password": PASSWORD}),
                job("plain-http", {}, {"username": USER, "password": PASSWORD}, scheme="http"),
            ],
        })
        jobs = {"pgbv", "wrong-password", "no-password", "wrong-ca", "no-client-cert", "plain-http"}
        targets = prometheus.wait_scraped(jobs)
        assert targets["pgbv"]["health"] == "up", targets["pgbv"]
        for name in jobs - {"pgbv"}:
            assert targets[name]["health"] == "down", (name, targets[name])
        assert "401" in targets["wrong-password"]["lastError"]
        assert "401" in targets["no-password"]["lastError"]
        assert "certificate" in targets["wrong-ca"]["lastError"]
        assert "400" in targets["plain-http"]["lastError"]

        deadline = time.monotonic() + 60
        while True:
            up = {r["metric"]["job"]: r["value"][1] for r in prometheus.api("query", query="up")["result"]}
            ours = prometheus.api("query", query='pgbv_up{job="pgbv",target="app"}')["result"]
            if up.get("pgbv") == "1" and ours and ours[0]["value"][1] == "1":
                break
            assert time.monotonic() < deadline, (up, ours)
            time.sleep(0.5)
        assert all(up[name] == "0" for name in jobs - {"pgbv"}), up
    finally:
        if prometheus is not None:
            prometheus.stop()
        assert daemon.terminate()[0] == 0
    assert not any(PASSWORD in line for line in daemon.lines)
