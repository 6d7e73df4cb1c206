"""The HTTP endpoint, through a real server on a free port and urllib."""

from __future__ import annotations

import gzip
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

import exporter
from exporter.metrics import render
from exporter.server import MetricsServer, accepts_gzip, parse_listen
from tests.test_metrics import empty_snapshot, failure_snapshot, full_snapshot, parse, promtool_check

METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class State:
    """What the daemon would hand the server: the current snapshot and its health."""

    def __init__(self, snapshot):
        self.snapshot = snapshot
        self.healthy: object = True

    def health(self):
        if isinstance(self.healthy, Exception):
            raise self.healthy
        return self.healthy


@pytest.fixture
def state():
    return State(full_snapshot())


@pytest.fixture
def server(state):
    srv = MetricsServer("127.0.0.1:0", lambda: state.snapshot, state.health).start()
    yield srv
    srv.stop()


def get(url: str, headers: dict | None = None, method: str = "GET", timeout: float = 5):
    """(status, headers, body) without raising on 4xx/5xx."""
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers, error.read()


def test_port_zero_gets_a_real_port(server):
    assert server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}"


def test_landing_page_names_the_exporter_and_links(server):
    status, headers, body = get(server.url + "/")
    page = body.decode()
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert "pg-backup-verifier" in page and exporter.__version__ in page
    assert 'href="/metrics"' in page and 'href="/healthz"' in page
    # The server is never handed a DSN or a password; keep it that way.
    for secret in ("Sup3r-s3cret-pw", "host=", "dbname", "postgresql://"):
        assert secret not in page
    assert "Python" not in headers["Server"]


def test_metrics_is_the_rendered_snapshot(server, state):
    status, headers, body = get(server.url + "/metrics")
    assert status == 200
    assert headers["Content-Type"] == METRICS_TYPE
    assert headers.get("Content-Encoding") is None
    assert headers["Vary"] == "Accept-Encoding"
    assert int(headers["Content-Length"]) == len(body)
    assert body == render(state.snapshot)


def test_metrics_ignores_a_query_string(server, state):
    assert get(server.url + "/metrics?debug=1")[2] == render(state.snapshot)


@pytest.mark.parametrize("accept", ["gzip", "deflate, gzip;q=0.5", "br, *", "GZIP"])
def test_metrics_gzip_decodes_to_the_plain_bytes(server, accept):
    plain = get(server.url + "/metrics")[2]
    status, headers, body = get(server.url + "/metrics", {"Accept-Encoding": accept})
    assert status == 200
    assert headers["Content-Encoding"] == "gzip"
    assert headers["Content-Type"] == METRICS_TYPE
    assert len(body) < len(plain)
    assert gzip.decompress(body) == plain


@pytest.mark.parametrize("accept", ["identity", "gzip;q=0", "br", "*, gzip;q=0"])
def test_metrics_plain_when_gzip_is_not_accepted(server, state, accept):
    status, headers, body = get(server.url + "/metrics", {"Accept-Encoding": accept})
    assert headers.get("Content-Encoding") is None
    assert body == render(state.snapshot)


def test_head_answers_headers_only(server, state):
    status, headers, body = get(server.url + "/metrics", method="HEAD")
    assert (status, body) == (200, b"")
    assert headers["Content-Type"] == METRICS_TYPE
    assert int(headers["Content-Length"]) == len(render(state.snapshot))
    assert get(server.url + "/healthz", method="HEAD")[:3:2] == (200, b"")
    assert get(server.url + "/", method="HEAD")[0] == 200


def test_metrics_stay_200_when_every_database_is_down(server, state):
    state.snapshot = failure_snapshot()
    status, _, body = get(server.url + "/metrics")
    assert status == 200
    assert parse(body)["pgbv_up"][(("target", "reporting"),)] == 0.0


def test_a_new_snapshot_is_served_and_each_snapshot_rendered_once(server, state):
    for _ in range(5):
        get(server.url + "/metrics")
        get(server.url + "/metrics", {"Accept-Encoding": "gzip"})
    assert server.exposition.renders == 1
    state.snapshot = empty_snapshot()
    assert get(server.url + "/metrics")[2] == render(state.snapshot)
    get(server.url + "/metrics")
    assert server.exposition.renders == 2


def test_healthz(server, state):
    assert get(server.url + "/healthz")[::2] == (200, b"ok\n")
    state.healthy = False
    status, headers, body = get(server.url + "/healthz")
    assert status == 503 and headers["Content-Type"] == "text/plain; charset=utf-8"
    assert body.count(b"\n") == 1 and body.startswith(b"unhealthy")
    state.healthy = (False, "scheduler loop silent for 300 s\nsecond line")
    assert get(server.url + "/healthz")[::2] == (503, b"scheduler loop silent for 300 s second line\n")
    state.healthy = RuntimeError("password=Sup3r-s3cret-pw")
    status, _, body = get(server.url + "/healthz")
    assert status == 503 and b"RuntimeError" in body and b"Sup3r" not in body
    state.healthy = True
    assert get(server.url + "/healthz")[0] == 200


@pytest.mark.parametrize("path", ["/nope", "/metrics/", "/healthz/x", "/favicon.ico"])
def test_anything_else_is_404(server, path):
    assert get(server.url + path)[0] == 404


def test_a_broken_snapshot_source_is_a_500_not_a_dead_server(state):
    calls = []

    def source():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return state.snapshot

    with MetricsServer("127.0.0.1:0", source, lambda: True) as srv:
        status, _, body = get(srv.url + "/metrics")
        assert status == 500 and b"boom" not in body
        assert get(srv.url + "/metrics")[0] == 200


def test_concurrent_scrapes_get_identical_bodies(server):
    def scrape(_):
        started = time.monotonic()
        status, _, body = get(server.url + "/metrics")
        return status, body, time.monotonic() - started

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(scrape, range(50)))
    assert {status for status, _, _ in results} == {200}
    assert len({body for _, body, _ in results}) == 1
    assert server.exposition.renders == 1
    # A listen backlog too short for simultaneous connects shows as a 1 s SYN retry.
    slowest = max(elapsed for _, _, elapsed in results)
    assert slowest < 0.9, f"slowest scrape {slowest:.2f} s"


def test_a_stalled_client_does_not_delay_another_scrape(server):
    stalled = []
    try:
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept-")  # and then nothing
            stalled.append(sock)
        time.sleep(0.1)  # let the server take them in
        started = time.monotonic()
        status, _, _ = get(server.url + "/metrics", timeout=5)
        elapsed = time.monotonic() - started
        assert status == 200
        assert elapsed < 1.0, f"scrape took {elapsed:.2f} s behind a stalled client"
    finally:
        for sock in stalled:
            sock.close()


def test_stop_is_quick_even_with_a_stalled_client(state):
    srv = MetricsServer("127.0.0.1:0", lambda: state.snapshot, lambda: True).start()
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    try:
        sock.sendall(b"GET /metr")
        time.sleep(0.1)
        started = time.monotonic()
        srv.stop()
        assert time.monotonic() - started < 1.0
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", srv.port), timeout=1).close()
    finally:
        sock.close()


def test_requests_write_nothing_to_stderr(server, capfd):
    get(server.url + "/metrics")
    get(server.url + "/nope")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n")  # answered 501, quietly
        assert sock.recv(100).startswith(b"HTTP/1.1 501")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"garbage\r\n\r\n")  # malformed: an error page, quietly
        assert sock.recv(100)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")  # and leave before the answer
    time.sleep(0.2)
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


def test_a_busy_port_is_a_clear_error(server, state):
    other = MetricsServer(f"127.0.0.1:{server.port}", lambda: state.snapshot, lambda: True)
    with pytest.raises(OSError, match=rf"http.listen 127.0.0.1:{server.port}: "):
        other.start()


def test_ipv6_listen(state):
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("this host has no IPv6 loopback")
    with MetricsServer("[::1]:0", lambda: state.snapshot, lambda: True) as srv:
        assert srv.url == f"http://[::1]:{srv.port}"
        assert get(srv.url + "/metrics")[2] == render(state.snapshot)


@pytest.mark.parametrize(
    "listen, expected",
    [
        ("0.0.0.0:10047", ("0.0.0.0", 10047)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("[::]:10047", ("::", 10047)),
        (":9187", ("0.0.0.0", 9187)),
        ("localhost:80", ("localhost", 80)),
    ],
)
def test_parse_listen(listen, expected):
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["10047", "::1:80", "host:port", "host:70000"])
def test_parse_listen_rejects(listen):
    with pytest.raises(ValueError, match="http.listen"):
        parse_listen(listen)


def test_accepts_gzip():
    assert accepts_gzip("gzip, deflate, br")
    assert not accepts_gzip(None) and not accepts_gzip("")
    assert not accepts_gzip("gzip;q=0.0")
    assert not accepts_gzip("gzip;q=oops")


def test_promtool_check_metrics_on_a_real_scrape(server, state):
    for snapshot in (empty_snapshot(), full_snapshot(), failure_snapshot()):
        state.snapshot = snapshot
        status, _, body = get(server.url + "/metrics", {"Accept-Encoding": "gzip"})
        assert status == 200
        promtool_check(gzip.decompress(body))


def test_accepted_connections_disable_nagle(state, monkeypatch):
    # Without TCP_NODELAY each keep-alive scrape waits ~40 ms for a delayed ACK (bench/RESULTS.md).
    import socket as socket_module

    import exporter.server as server_module

    seen = []

    class Probe(server_module._Server):
        def get_request(self):
            request, address = super().get_request()
            seen.append(request.getsockopt(socket_module.IPPROTO_TCP, socket_module.TCP_NODELAY))
            return request, address

    monkeypatch.setattr(server_module, "_Server", Probe)
    with MetricsServer("127.0.0.1:0", lambda: state.snapshot, state.health) as srv:
        urllib.request.urlopen(srv.url + "/metrics", timeout=5).read()
    assert seen and all(value != 0 for value in seen)
