"""The HTTP endpoint: `/` landing page, `/metrics`, `/healthz`.

One thread per connection (ThreadingHTTPServer), so a client that stalls
mid-request only holds its own thread, until `REQUEST_TIMEOUT` closes it.
`/metrics` answers 200 whatever the state of the databases: that state is
in the exposition (`pgbv_up 0`), and a failed scrape would hide every other
series with it.

With `http.web_config_file` (exporter/webconfig.py) the server speaks TLS and
asks for a password on every path but `/healthz`, which probes and health
checks must reach without credentials and which tells nothing but "ok". The
TLS handshake happens in the connection's own thread, under
`HANDSHAKE_TIMEOUT`, never in the accept loop: one client that connects and
sends nothing (or a slow one) holds only its own thread, while every other
scrape goes on. (prometheus_client's own TLS server handshakes in the accept
loop, and one idle connection stops every scrape behind it.)
"""

from __future__ import annotations

import html
import logging
import os
import socket
import socketserver
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import exporter
from exporter.metrics import CONTENT_TYPE, Exposition
from exporter.snapshot import Snapshot
from exporter.webconfig import WebConfig, WebConfigSource

log = logging.getLogger(__name__)

# Prometheus keeps connections alive between scrapes; an idle or stalled
# connection is dropped after this, which bounds how long it holds a thread.
REQUEST_TIMEOUT = 30.0
# How often serve_forever looks at the shutdown flag: stop() returns within this.
POLL_INTERVAL = 0.1
# A TLS client gets this long to finish its handshake; Prometheus needs milliseconds.
HANDSHAKE_TIMEOUT = 10.0
# The first byte of a TLS connection: a handshake record. Anything else is plain HTTP.
_TLS_HANDSHAKE_RECORD = 0x16
_PLAIN_HTTP_ON_TLS = (b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
                      b"Connection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
REALM = 'Basic realm="pgbv", charset="UTF-8"'

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

    def get_request(self):
        request, client_address = super().get_request()
        # Headers and body leave in separate writes: with Nagle's algorithm the second
        # waits for the client's delayed ACK, about 40 ms per scrape (measured in bench/).
        try:
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not TCP (a Unix socket in a test): nothing to tune
        return request, client_address

    def handle_error(self, request, client_address) -> None:
        # The default prints a traceback to stderr for every client that hangs up early.
        log.debug("connection from %s ended with an error", client_address, exc_info=True)

    def finish_request(self, request, client_address) -> None:
        # Runs in the connection's own thread (ThreadingMixIn), so the handshake below
        # never holds up accept() and the other scrapes.
        web = self.app.web_config()
        if web is None or web.tls is None:
            return super().finish_request(request, client_address)
        request.settimeout(HANDSHAKE_TIMEOUT)
        try:
            first = request.recv(1, socket.MSG_PEEK)
        except OSError:
            return
        if not first:
            return
        if first[0] != _TLS_HANDSHAKE_RECORD:
            # The usual mistake is scheme: http in a scrape config; say so, as Go servers do.
            try:
                request.recv(65536)  # unread input would turn our close into a reset that eats the answer
                request.sendall(_PLAIN_HTTP_ON_TLS)
            except OSError:
                pass
            return
        tls = web.tls.context.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
        try:
            tls.settimeout(HANDSHAKE_TIMEOUT)
            try:
                tls.do_handshake()
            except (ssl.SSLError, OSError) as exc:  # socket.timeout is an OSError
                log.debug("TLS handshake with %s failed: %s", client_address, exc)
                return
            if not web.tls.peer_allowed(tls.getpeercert()):
                log.warning("client certificate of %s names none of client_allowed_sans; connection closed",
                            client_address[0])
                return
            super().finish_request(tls, client_address)
        finally:
            self.shutdown_request(tls)


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
        self._web = app.web_config()
        if path != "/healthz" and self._web is not None and self._web.auth is not None:
            if self._web.auth.check(self.headers.get("Authorization")) is None:
                self._send(401, "text/plain; charset=utf-8", b"Unauthorized\n", head, {"WWW-Authenticate": REALM})
                return
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
        web: WebConfig | None = getattr(self, "_web", None)
        for key, value in {**(web.headers if web else {}), **(extra or {})}.items():
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
    it answers 503. `web_config_file` (exporter-toolkit format) turns on TLS
    and basic auth; it is read here, so a bad file raises ConfigError before
    anything listens.
    """

    def __init__(self, listen: str, snapshot_source: Callable[[], Snapshot], healthy: Health,
                 web_config_file: str | os.PathLike | None = None):
        self.listen = listen
        self.host, self._requested_port = parse_listen(listen)
        self.exposition = Exposition(snapshot_source)
        self._healthy = healthy
        self._web = WebConfigSource(web_config_file) if web_config_file is not None else None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def web_config(self) -> WebConfig | None:
        return self._web.current() if self._web is not None else None

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
        web = self.web_config()
        scheme = "https" if web is not None and web.tls is not None else "http"
        return f"{scheme}://{host}:{self.port}"

    def __enter__(self) -> "MetricsServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
