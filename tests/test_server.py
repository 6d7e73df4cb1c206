"""The HTTP endpoint, through a real server on a free port and urllib."""

from __future__ import annotations

import email.utils
import gzip
import http.client
import io
import logging
import re
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler

import pytest

import exporter
import exporter.server as server_module
import exporter.webconfig
from exporter.metrics import render
from exporter.server import MetricsServer, accepts_gzip, parse_listen, read_headers
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



# --- the raw bytes on the wire: /metrics is one prebuilt response ---------------------------------


SERVER = f"pgbv/{exporter.__version__} "  # BaseHTTPRequestHandler.version_string(): "name sys_version"


def expected_metrics_response(body: bytes, date: bytes, gzipped: bool = False, head: bool = False) -> bytes:
    """What the server sent for /metrics before it prebuilt its answers, byte for byte:
    send_response (status, Server, Date), then Content-Type, Content-Length, the extras."""
    head_bytes = (
        b"HTTP/1.1 200 OK\r\n"
        + f"Server: {SERVER}\r\n".encode()
        + b"Date: " + date + b"\r\n"
        + f"Content-Type: {METRICS_TYPE}\r\nContent-Length: {len(body)}\r\n".encode()
        + (b"Content-Encoding: gzip\r\n" if gzipped else b"")
        + b"Vary: Accept-Encoding\r\n\r\n"
    )
    return head_bytes if head else head_bytes + body


class Wire:
    """A raw HTTP/1.x client on one socket: send bytes, read whole responses back."""

    def __init__(self, port: int, timeout: float = 5):
        self.timeout = timeout
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buffer += chunk
        return bool(chunk)

    def readline(self) -> bytes:
        while b"\n" not in self.buffer and self._fill():
            pass
        end = self.buffer.find(b"\n") + 1 or len(self.buffer)
        line, self.buffer = self.buffer[:end], self.buffer[end:]
        return line

    def read(self, n: int | None = None) -> bytes:
        """n bytes, or everything until the server closes."""
        while (n is None or len(self.buffer) < n) and self._fill():
            pass
        n = len(self.buffer) if n is None else n
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def response(self, head: bool = False) -> tuple[bytes, dict[str, str], bytes]:
        """(status line and headers as sent, headers, body); a HEAD answer has no body to read."""
        lines = [self.readline()]
        assert lines[0].startswith(b"HTTP/"), lines[0]
        while lines[-1] not in (b"\r\n", b""):
            lines.append(self.readline())
        raw = b"".join(lines)
        headers = {}
        for line in lines[1:-1]:
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.lower()] = value.strip()
        length = 0 if head else int(headers.get("content-length", 0))
        body = self.read(length)
        assert len(body) == length
        return raw, headers, body

    def date(self, raw: bytes) -> bytes:
        return re.search(rb"\r\nDate: ([^\r]*)\r\n", raw).group(1)

    def closed(self, within: float = 2.0) -> bool:
        """True when the server closes the connection (EOF) with nothing more sent."""
        if self.buffer:
            return False
        self.sock.settimeout(within)
        try:
            return not self._fill()
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(self.timeout)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def wire(server):
    opened = []

    def connect(port: int | None = None) -> Wire:
        opened.append(Wire(port or server.port))
        return opened[-1]

    yield connect
    for w in opened:
        w.close()


def test_metrics_arrive_byte_for_byte_as_before(server, state, wire):
    plain = render(state.snapshot)
    gzipped = get(server.url + "/metrics", {"Accept-Encoding": "gzip"})[2]
    w = wire()
    for request, body, gz, head in [
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", plain, False, False),
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n", gzipped, True, False),
        (b"HEAD /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n", gzipped, True, True),
        (b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n", plain, False, True),
        (b"GET /metrics?x=1 HTTP/1.1\r\nAccept-Encoding: deflate, gzip;q=0.5\r\n\r\n", gzipped, True, False),
    ]:
        started = time.time()
        w.send(request)
        raw, _, got = w.response(head=head)
        date = w.date(raw)
        assert abs(email.utils.parsedate_to_datetime(date.decode()).timestamp() - started) < 2
        assert raw + got == expected_metrics_response(body, date, gz, head), request
    assert gzip.decompress(gzipped) == plain


def test_a_metrics_response_leaves_in_one_write(state, monkeypatch):
    writes = []

    class Counting:
        def __init__(self, inner):
            self.inner = inner

        def write(self, data):
            writes.append(len(data))
            return self.inner.write(data)

        def flush(self):
            self.inner.flush()

    class Probe(server_module._Handler):
        def setup(self):
            super().setup()
            self.wfile = Counting(self.wfile)

    monkeypatch.setattr(server_module, "_Handler", Probe)
    with MetricsServer("127.0.0.1:0", lambda: state.snapshot, state.health) as srv:
        for headers in ({}, {"Accept-Encoding": "gzip"}):
            writes.clear()
            status, _, body = get(srv.url + "/metrics", headers)
            assert status == 200
            assert len(writes) == 1 and writes[0] > len(body), writes
        for path in ("/healthz", "/", "/nope"):
            writes.clear()
            get(srv.url + path)
            assert len(writes) == 1, (path, writes)


def test_keep_alive_serves_many_requests_on_one_socket(server, state, wire):
    plain = render(state.snapshot)
    w = wire()
    for _ in range(3):  # one after the other
        w.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert w.response()[2] == plain
    # Pipelined: all sent at once, answered in order.
    w.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n"
           b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
           b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
           b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
           b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    raw, headers, body = w.response()
    assert headers["content-encoding"] == "gzip" and gzip.decompress(body) == plain
    raw, headers, body = w.response(head=True)
    assert raw.startswith(b"HTTP/1.1 200 ") and int(headers["content-length"]) == len(plain)
    assert w.response()[2] == b"ok\n"
    assert w.response()[0].startswith(b"HTTP/1.1 404 ")
    assert w.response()[2] == plain  # the HEAD above sent no body: this parses from the right place
    assert not w.closed(within=0.3)  # HTTP/1.1: still open
    w.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert w.response()[2] == plain
    assert w.closed()


@pytest.mark.parametrize("request_bytes, stays_open", [
    (b"GET /metrics HTTP/1.0\r\n\r\n", False),
    (b"GET /metrics HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True),
    (b"GET /metrics HTTP/1.1\r\nConnection: Close\r\n\r\n", False),
    (b"GET /metrics HTTP/1.1\r\n\r\n", True),
    (b"GET /metrics HTTP/1.1\n\n", True),  # bare LF line ends, as the standard library accepts
    (b"HEAD /metrics HTTP/1.0\r\n\r\n", False),
])
def test_keep_alive_follows_the_version_and_the_connection_header(server, state, wire, request_bytes, stays_open):
    w = wire()
    w.send(request_bytes)
    raw, headers, body = w.response(head=request_bytes.startswith(b"HEAD"))
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert int(headers["content-length"]) == len(render(state.snapshot))
    assert w.closed(within=0.5 if stays_open else 2.0) is not stays_open


def test_http_0_9_gets_the_body_alone(server, state, wire):
    w = wire()
    w.send(b"GET /metrics\r\n\r\n")
    assert w.read() == render(state.snapshot)


def test_head_sends_the_length_of_the_body_it_leaves_out(server, state, wire):
    plain = render(state.snapshot)
    w = wire()
    w.send(b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    raw, headers, body = w.response(head=True)
    assert int(headers["content-length"]) == len(plain) and "content-encoding" not in headers
    # The very next bytes are the next answer's status line, not a body.
    assert w.readline() == b"HTTP/1.1 200 OK\r\n"


def test_gzip_negotiation_per_request_on_the_prebuilt_answers(server, state, wire):
    plain = render(state.snapshot)
    w = wire()
    for accept, gzipped in [("gzip", True), ("gzip;q=0", False), ("*", True), ("*, gzip;q=0", False),
                            ("gzip;q=0.001", True), ("identity", False), ("GZip", True), (None, False)]:
        w.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
               + (f"Accept-Encoding: {accept}\r\n".encode() if accept is not None else b"") + b"\r\n")
        _, headers, body = w.response()
        assert (headers.get("content-encoding") == "gzip") is gzipped, accept
        assert (gzip.decompress(body) if gzipped else body) == plain, accept


def test_a_new_snapshot_replaces_the_prebuilt_answers(server, state, wire):
    w = wire()
    for snapshot in (full_snapshot(), empty_snapshot(), failure_snapshot(), full_snapshot()):
        state.snapshot = snapshot
        expected = render(snapshot)
        w.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert w.response()[2] == expected
        w.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n")
        assert gzip.decompress(w.response()[2]) == expected
        w.send(b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert int(w.response(head=True)[1]["content-length"]) == len(expected)
    assert server.exposition.renders == 4


def test_prebuilt_answers_are_reused_and_the_date_moves_on(server, state, wire):
    w = wire()
    dates = []
    for _ in range(2):
        builds = server.responses.builds
        for _ in range(20):
            w.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            raw, _, body = w.response()
            assert body == render(state.snapshot)
            dates.append(w.date(raw))
        # Built once for this second, at most twice if the second turned meanwhile.
        assert server.responses.builds - builds <= 2
        time.sleep(1.1)
    assert dates[0] != dates[-1]
    assert email.utils.parsedate_to_datetime(dates[-1].decode()) > email.utils.parsedate_to_datetime(dates[0].decode())


def test_http_date_matches_the_standard_library():
    for _ in range(3):
        before = BaseHTTPRequestHandler.date_time_string(None)
        ours = server_module.http_date()
        after = BaseHTTPRequestHandler.date_time_string(None)
        if before == after:  # not across a second boundary
            assert ours == before
            return
    pytest.fail("the second kept turning")


def test_web_config_headers_follow_a_reload_on_metrics(tmp_path, state, monkeypatch):
    monkeypatch.setattr(exporter.webconfig, "RELOAD_CHECK_SECONDS", 0.0)
    path = tmp_path / "web.yml"
    path.write_text("http_server_config:\n  headers:\n    X-Frame-Options: deny\n")
    with MetricsServer("127.0.0.1:0", lambda: state.snapshot, state.health, web_config_file=path) as srv:
        w = Wire(srv.port)
        try:
            w.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            raw, headers, _ = w.response()
            assert headers["x-frame-options"] == "deny"
            # The web config's headers come after Content-Length and before Vary, as send_header put them.
            assert raw.index(b"Content-Length:") < raw.index(b"X-Frame-Options: deny") < raw.index(b"Vary:")
            path.write_text("http_server_config:\n  headers:\n    X-Frame-Options: sameorigin\n"
                            "    X-Content-Type-Options: nosniff\n")
            # RELOAD_CHECK_SECONDS = 0: the next request re-reads the file, and its answer,
            # though built in the same second for the same snapshot, carries the new headers.
            for _ in range(3):
                w.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                _, headers, body = w.response()
                assert headers["x-frame-options"] == "sameorigin"
                assert headers["x-content-type-options"] == "nosniff" and body == render(state.snapshot)
        finally:
            w.close()


# --- malformed and oversized requests, timeouts -------------------------------------------------


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET /metrics HTTP/1.1 extra\r\n\r\n", 400),
    (b"GET /metrics HTTP/x.y\r\n\r\n", 400),
    (b"GET /metrics FTP/1.1\r\n\r\n", 400),
    (b"POST /metrics\r\n\r\n", 400),
    (b"GET /metrics HTTP/2.0\r\n\r\n", 505),
    (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n", 431),
    (b"GET /metrics HTTP/1.1\r\n" + b"X-Many: a\r\n" * 101 + b"\r\n", 431),
    (b"PUT /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 501),
    (b"G" * 70000 + b"\r\n", 414),
])
def test_malformed_requests_get_an_error_and_a_closed_connection(server, wire, request_bytes, status):
    w = wire()
    w.send(request_bytes)
    answer = w.read()  # everything, until the server closes
    # Before a request line yields a version, BaseHTTPRequestHandler answers as to HTTP/0.9:
    # the error page without a status line. After, with one.
    assert f"Error code: {status}".encode() in answer, answer[:200]
    if answer.startswith(b"HTTP/"):
        assert answer.startswith(f"HTTP/1.1 {status} ".encode()) and b"\r\nConnection: close\r\n" in answer


def test_100_headers_are_still_fine(server, state, wire):
    w = wire()
    # 100 lines with the blank one, http.client's limit (_MAXHEADERS); one more is a 431, above.
    w.send(b"GET /metrics HTTP/1.1\r\n" + b"X-Many: a\r\n" * 98 + b"Accept-Encoding: gzip\r\n\r\n")
    assert gzip.decompress(w.response()[2]) == render(state.snapshot)


def test_a_client_that_stops_mid_headers_is_dropped_after_the_timeout(state, monkeypatch):
    monkeypatch.setattr(server_module._Handler, "timeout", 0.3)
    with MetricsServer("127.0.0.1:0", lambda: state.snapshot, state.health) as srv:
        w = Wire(srv.port)
        try:
            w.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # and no blank line
            started = time.monotonic()
            assert w.closed(within=3)
            assert time.monotonic() - started < 2
        finally:
            w.close()
        assert get(srv.url + "/metrics")[0] == 200


# --- the request parsing shortcut against the standard library ----------------------------------


HEADER_BLOCKS = [
    b"\r\n",
    b"\n",
    b"Host: x\r\nAccept-Encoding: gzip\r\n\r\n",
    b"Host: x\nAccept-Encoding:gzip\n\n",
    b"Host:    x  \r\nX-Empty:\r\nX-Tab:\tv\t\r\n\r\n",
    b"A: 1\r\na: 2\r\nA: 3\r\n\r\n",  # repeated: get() gives the first
    b"Host: x\r\nX-Folded: one\r\n  two\r\n\r\n",  # obsolete folding
    b" Leading: continuation\r\nHost: x\r\n\r\n",
    b"Host: x\r\nX-8bit: caf\xe9\r\n\r\n",
    b"Host: x\r\nX-CR: a\rb\r\n\r\n",
    b"Host: x\r\nno colon here\r\nAccept-Encoding: gzip\r\n\r\n",  # the email parser stops at it
    b"Host: x\r\n: no name\r\n\r\n",
    b"Host: x\r\nFrom nobody\r\n\r\n",
    b"Bad Name: x\r\nHost: y\r\n\r\n",
    b"Host: x\r\nX: \x0bv\r\n\r\n",
    b"Host: x\r\nAccept-Encoding: gzip\r\n",  # cut short: the connection ended
    b"",
    b"Host: x\r\n\r\nGET /next HTTP/1.1\r\n\r\n",  # the next request stays unread
]


@pytest.mark.parametrize("block", HEADER_BLOCKS)
def test_read_headers_matches_http_client(block):
    ours_file, theirs_file = io.BufferedReader(io.BytesIO(block)), io.BufferedReader(io.BytesIO(block))
    ours, theirs = read_headers(ours_file), http.client.parse_headers(theirs_file)
    assert type(ours) is type(theirs)
    assert ours.items() == theirs.items()
    for name in ("Host", "accept-encoding", "A", "X-Folded", "X-Empty", "Connection", "Expect"):
        assert ours.get(name) == theirs.get(name)
        assert ours.get_all(name) == theirs.get_all(name)
    assert ours_file.read() == theirs_file.read()  # consumed exactly as much


@pytest.mark.parametrize("block, error", [
    (b"X: " + b"a" * 65537 + b"\r\n\r\n", http.client.LineTooLong),
    (b"X: a\r\n" * 101 + b"\r\n", http.client.HTTPException),
])
def test_read_headers_keeps_the_limits(block, error):
    with pytest.raises(error) as ours:
        read_headers(io.BufferedReader(io.BytesIO(block)))
    with pytest.raises(error) as theirs:
        http.client.parse_headers(io.BufferedReader(io.BytesIO(block)))
    assert str(ours.value) == str(theirs.value)


REQUESTS = [
    b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /metrics HTTP/1.0\r\n\r\n",
    b"GET /metrics HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nConnection: close, foo\r\n\r\n",
    b"HEAD //metrics?x=1 HTTP/1.1\r\n\r\n",
    b"GET ///a//b HTTP/1.1\n\n",
    b"GET /metrics HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
    b"GET /metrics HTTP/1.0\r\nExpect: 100-continue\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\r\n\r\n",
    b"GET  /metrics  HTTP/1.1\r\n\r\n",
    b"GET /m\xe9trics HTTP/1.1\r\n\r\n",
    b"get /metrics HTTP/1.1\r\n\r\n",
    b"GET /metrics HTTP/01.01\r\n\r\n",
    b"GET /metrics HTTP/1.2\r\n\r\n",
    b"GET /metrics HTTP/2.0\r\n\r\n",
    b"GET /metrics\r\n\r\n",
    b"GET metrics HTTP/1.1\r\n\r\n",
    b"GET /metrics HTTP/1.1 x\r\n\r\n",
    b"\r\n",
    b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\n" + b"X: a\r\n" * 101 + b"\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n",
]


def _parse_with(parse, request: bytes) -> dict:
    handler = server_module._Handler.__new__(server_module._Handler)
    handler.client_address = ("127.0.0.1", 1)
    handler.rfile = io.BufferedReader(io.BytesIO(request))
    handler.raw_requestline = handler.rfile.readline(65537)
    handler.wfile = io.BytesIO()
    ok = parse(handler)
    headers = getattr(handler, "headers", None)
    return {
        "ok": ok,
        "command": handler.command, "path": getattr(handler, "path", None),
        "request_version": handler.request_version, "requestline": getattr(handler, "requestline", None),
        "close_connection": handler.close_connection,
        "headers": headers.items() if headers is not None else None,
        "answer": re.sub(rb"Date: [^\r]*", b"Date: -", handler.wfile.getvalue()),
        "unread": handler.rfile.read(),
    }


@pytest.mark.parametrize("request_bytes", REQUESTS)
def test_parse_request_matches_the_standard_library(request_bytes):
    ours = _parse_with(server_module._Handler.parse_request, request_bytes)
    theirs = _parse_with(BaseHTTPRequestHandler.parse_request, request_bytes)
    assert ours == theirs


# --- logging ---------------------------------------------------------------------------------------


def test_request_lines_are_logged_at_debug_only(server, caplog, monkeypatch):
    calls = []
    original = server_module._Handler.address_string
    monkeypatch.setattr(server_module._Handler, "address_string", lambda self: calls.append(1) or original(self))
    caplog.set_level(logging.INFO, logger="exporter.server")
    get(server.url + "/metrics")
    get(server.url + "/nope")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\n" + b"X: a\r\n" * 101 + b"\r\n")  # send_error logs too
        assert sock.recv(100).startswith(b"HTTP/1.1 431")
    assert calls == []  # not even formatted
    assert not [r for r in caplog.records if r.name == "exporter.server"]
    caplog.set_level(logging.DEBUG, logger="exporter.server")
    get(server.url + "/metrics")
    get(server.url + "/nope")
    lines = [r.getMessage() for r in caplog.records if r.name == "exporter.server"]
    assert any('"GET /metrics HTTP/1.1" 200' in line for line in lines), lines
    assert any('"GET /nope HTTP/1.1" 404' in line for line in lines), lines
