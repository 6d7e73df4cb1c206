"""The HTTP endpoint: `/` landing page, `/metrics`, `/healthz`.

One thread per connection (ThreadingHTTPServer), so a client that stalls
mid-request only holds its own thread, until `REQUEST_TIMEOUT` closes it.
`/metrics` answers 200 whatever the state of the databases: that state is
in the exposition (`pgbv_up 0`), and a failed scrape would hide every other
series with it.
"""

from __future__ import annotations

import html
import logging
import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import exporter
from exporter.metrics import CONTENT_TYPE, Exposition
from exporter.snapshot import Snapshot

log = logging.getLogger(__name__)

# Prometheus keeps connections alive between scrapes; an idle or stalled
# connection is dropped after this, which bounds how long it holds a thread.
REQUEST_TIMEOUT = 30.0
# How often serve_forever looks at the shutdown flag: stop() returns within this.
POLL_INTERVAL = 0.1

Health = Callable[[], "bool | tuple[bool, str]"]


def parse_listen(listen: str) -> tuple[str, int]:
    """'host:port', '[v6]:port' or ':port' -> (host, port); an empty host means every IPv4 address."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"http.listen: must be host:port with a port 0-65535, got {listen!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"http.listen: an IPv6 address goes in brackets, like [::]:10047, got {listen!r}")
    return host or "0.0.0.0", int(port)


def accepts_gzip(header: str | None) -> bool:
    """True when Accept-Encoding allows gzip (explicitly or through '*'), honouring q=0."""
    if not header:
        return False
    allowed: dict[str, bool] = {}
    for item in header.split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        allowed[coding.lower()] = q > 0
    if "gzip" in allowed:
        return allowed["gzip"]
    return allowed.get("*", False)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stalled client never keeps the process (or stop()) waiting
    # socketserver's default backlog of 5 drops SYNs when a few scrapers connect at
    # once, and the kernel retries only after a second.
    request_queue_size = 128

    def __init__(self, address: tuple, family: int, app: "MetricsServer"):
        self.address_family = family
        self.app = app
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6 and self.server_address[0] == "::":
            # "[::]" means every address, IPv4 included, whatever the host's bindv6only default.
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        # HTTPServer.server_bind would call getfqdn(), a reverse DNS lookup that can
        # hang start-up on a host with a broken resolver; the name is never used.
        socketserver.TCPServer.server_bind(self)
        host, port = self.socket.getsockname()[:2]
        self.server_name = host
        self.server_port = port

    def handle_error(self, request, client_address) -> None:
        # The default prints a traceback to stderr for every client that hangs up early.
        log.debug("connection from %s ended with an error", client_address, exc_info=True)


_VARY = {"Vary": "Accept-Encoding"}  # caches must not serve gzip bytes to a client that did not ask


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = f"pgbv/{exporter.__version__}"
    sys_version = ""  # no Python version in the Server header
    timeout = REQUEST_TIMEOUT

    def do_GET(self) -> None:
        self._respond(head=False)

    def do_HEAD(self) -> None:
        self._respond(head=True)

    def _respond(self, head: bool) -> None:
        path = self.path.split("?", 1)[0]
        app = self.server.app
        try:
            if path == "/metrics":
                rendered = app.exposition.get()
                if accepts_gzip(self.headers.get("Accept-Encoding")):
                    self._send(200, CONTENT_TYPE, rendered.gzipped, head, {"Content-Encoding": "gzip", **_VARY})
                else:
                    self._send(200, CONTENT_TYPE, rendered.plain, head, _VARY)
            elif path == "/healthz":
                ok, reason = app.health()
                if ok:
                    self._send(200, "text/plain; charset=utf-8", b"ok\n", head)
                else:
                    self._send(503, "text/plain; charset=utf-8", f"{reason}\n".encode(), head)
            elif path == "/":
                self._send(200, "text/html; charset=utf-8", _landing_page(), head)
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found; see /metrics\n", head)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client left; nothing to answer
            return
        except Exception:
            # Logged with its traceback for the operator; the client only learns it failed,
            # since an exception text could name a DSN.
            log.exception("error serving %s", path)
            self._send(500, "text/plain; charset=utf-8", b"internal error; see the pgbv log\n", head)

    def _send(self, code: int, content_type: str, body: bytes, head: bool, extra: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        # One line per scrape would bury the daemon's own log; keep it for debugging.
        log.debug("%s %s", self.address_string(), format % args)


def _landing_page() -> bytes:
    version = html.escape(exporter.__version__)
    return f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>pg-backup-verifier</title></head>
<body>
<h1>pg-backup-verifier (pgbv) {version}</h1>
<p>Verifies PostgreSQL backups and exports the verdict for Prometheus.</p>
<ul>
<li><a href="/metrics">/metrics</a>: the Prometheus exposition</li>
<li><a href="/healthz">/healthz</a>: liveness of the exporter</li>
</ul>
</body>
</html>
""".encode()


class MetricsServer:
    """Serves the current Snapshot over HTTP from a background thread.

    `healthy` returns a bool, or (bool, reason) so that /healthz can say why
    it answers 503.
    """

    def __init__(self, listen: str, snapshot_source: Callable[[], Snapshot], healthy: Health):
        self.listen = listen
        self.host, self._requested_port = parse_listen(listen)
        self.exposition = Exposition(snapshot_source)
        self._healthy = healthy
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def health(self) -> tuple[bool, str]:
        try:
            answer = self._healthy()
        except Exception as exc:
            log.exception("health check raised")
            return False, f"unhealthy: the health check raised {type(exc).__name__}"
        if isinstance(answer, tuple):
            ok, reason = answer
            return bool(ok), " ".join(str(reason).split()) or "unhealthy"
        return bool(answer), "unhealthy: the daemon reports a problem; see its log"

    def start(self) -> "MetricsServer":
        if self._server is not None:
            return self
        family, address = self._resolve()
        try:
            self._server = _Server(address, family, self)
        except OSError as exc:
            raise OSError(exc.errno, f"http.listen {self.listen}: {exc.strerror}") from None
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": POLL_INTERVAL}, name="pgbv-http", daemon=True
        )
        self._thread.start()
        log.info("serving metrics on %s", self.url)
        return self

    def _resolve(self) -> tuple[int, tuple]:
        try:
            infos = socket.getaddrinfo(self.host, self._requested_port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise OSError(f"http.listen {self.listen}: cannot resolve {self.host!r} ({exc.strerror})") from None
        family, _, _, _, address = infos[0]
        return family, address

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()  # returns within POLL_INTERVAL; handler threads are daemons
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=1)

    @property
    def port(self) -> int:
        """The port listened on: the one the OS picked when 0 was asked."""
        if self._server is not None:
            return self._server.server_port
        return self._requested_port

    @property
    def url(self) -> str:
        """Base URL, without a trailing slash, to reach the server from this host
        (a wildcard address becomes loopback): `url + "/metrics"`."""
        host = self.host
        if self._server is not None:
            host = self._server.server_name
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def __enter__(self) -> "MetricsServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
