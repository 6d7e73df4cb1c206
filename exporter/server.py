"""The HTTP endpoint: `/` landing page, `/metrics`, `/healthz`.

One thread per connection (ThreadingHTTPServer), so a client that stalls
mid-request only holds its own thread, until `REQUEST_TIMEOUT` closes it.
`/metrics` answers 200 whatever the state of the databases: that state is
in the exposition (`pgbv_up 0`), and a failed scrape would hide every other
series with it.

A scrape costs little Python: the answer to GET or HEAD /metrics (status line,
headers, body) is built once per snapshot, encoding and second and sent in one
write (`MetricsResponses`), and a plain request (`GET /metrics HTTP/1.1` with
`Name: value` header lines) is parsed without the email parser; anything less
plain goes through BaseHTTPRequestHandler as before.

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

import email.parser
import email.utils
import html
import http.client
import logging
import os
import re
import socket
import socketserver
import ssl
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import exporter
from exporter.metrics import CONTENT_TYPE, Exposition, Rendered
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
        # With Nagle's algorithm a response that leaves in two writes (send_error's pages
        # do: headers, then body) waits for the client's delayed ACK, about 40 ms per
        # scrape (measured in bench/); ours leave in one, but the tail segment of a
        # large one can be held the same way.
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
_GZIP = {"Content-Encoding": "gzip", **_VARY}
_NO_HEADERS: dict[str, str] = {}

# The requests a scraper sends, which parse_request takes a shortcut for: `METHOD /path
# HTTP/1.x` with a visible-ASCII path, and header lines `Name: value` of visible ASCII,
# spaces and tabs (no folding, no bare CR). Anything else goes the standard library's way.
_PLAIN_REQUEST_LINE = re.compile(rb"([A-Z]+) (/[!-~]*) HTTP/1\.([01])\r?\n")
_PLAIN_HEADERS = re.compile(rb"(?:[!-9;-~]+:[\t -~]*\r?\n)*\r?\n")


def read_headers(rfile, message_class: type[http.client.HTTPMessage] = http.client.HTTPMessage) -> http.client.HTTPMessage:
    """http.client.parse_headers with the same limits and errors (LineTooLong past _MAXLINE
    bytes a line, HTTPException past _MAXHEADERS lines) and the same result, but a block
    of plain `Name: value` lines is split here rather than by the email parser, which
    costs about 15 us a request (most of the handler's time).

    For such a block the email parser (policy compat32) keeps each name as written and
    each value after the colon with leading spaces and tabs removed, so this does too.
    """
    lines = []
    while True:
        line = rfile.readline(http.client._MAXLINE + 1)
        if len(line) > http.client._MAXLINE:
            raise http.client.LineTooLong("header line")
        lines.append(line)
        if len(lines) > http.client._MAXHEADERS:
            raise http.client.HTTPException("got more than %d headers" % http.client._MAXHEADERS)
        if line in (b"\r\n", b"\n", b""):
            break
    block = b"".join(lines)
    if _PLAIN_HEADERS.fullmatch(block) is None:  # folded, 8-bit, cut short...: the email parser
        return email.parser.Parser(_class=message_class).parsestr(block.decode("iso-8859-1"))
    headers = message_class()
    for field in block.decode("ascii").splitlines()[:-1]:
        name, _, value = field.partition(":")
        headers.set_raw(name, value.lstrip(" \t"))
    return headers


_date_now: tuple[int, str] = (0, "")


def http_date() -> str:
    """The Date header for now, formatted once per second (as BaseHTTPRequestHandler would)."""
    global _date_now
    now = int(time.time())
    second, text = _date_now
    if second != now:
        text = email.utils.formatdate(now, usegmt=True)
        _date_now = (now, text)
    return text


def response_head(protocol: str, code: int, server: str, date: str, content_type: str, length: int,
                  headers: dict[str, str]) -> bytes:
    """Status line and headers, in the order and spelling BaseHTTPRequestHandler.send_response
    and send_header give them: Server, Date, Content-Type, Content-Length, then `headers`."""
    reason = BaseHTTPRequestHandler.responses[code][0] if code in BaseHTTPRequestHandler.responses else ""
    lines = [f"{protocol} {code} {reason}", f"Server: {server}", f"Date: {date}",
             f"Content-Type: {content_type}", f"Content-Length: {length}"]
    lines += [f"{key}: {value}" for key, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "strict")


class MetricsResponses:
    """Whole responses to GET and HEAD /metrics (status line, headers, body) as one bytes
    object each, so that a scrape is one sendall of bytes built beforehand.

    Built for one exposition (Rendered, by identity), one Date (so at most once a second
    while scrapes come) and one set of web-config headers, lazily per encoding and method;
    anything else starts a new table. Two threads racing on a change both build, and
    one table wins: the answers are the same bytes.
    """

    def __init__(self, protocol: str, server: str):
        self._protocol = protocol
        self._server = server
        self._current: tuple[Rendered | None, str, dict, dict[tuple[bool, bool], bytes]] = (None, "", _NO_HEADERS, {})
        self.builds = 0

    def get(self, rendered: Rendered, gzipped: bool, head: bool, date: str, headers: dict[str, str]) -> bytes:
        built_for, built_date, built_headers, table = self._current
        if built_for is not rendered or built_date != date or built_headers is not headers:
            table = {}
            self._current = (rendered, date, headers, table)
        key = (gzipped, head)
        response = table.get(key)
        if response is None:
            body = rendered.gzipped if gzipped else rendered.plain
            extra = _GZIP if gzipped else _VARY
            response = response_head(self._protocol, 200, self._server, date, CONTENT_TYPE, len(body),
                                     {**headers, **extra})
            if not head:
                response += body
            table[key] = response
            self.builds += 1
        return response


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = f"pgbv/{exporter.__version__}"
    sys_version = ""  # no Python version in the Server header
    timeout = REQUEST_TIMEOUT

    def parse_request(self) -> bool:
        """BaseHTTPRequestHandler.parse_request, with a shortcut for a plain HTTP/1.0 or 1.1
        request line (read_headers has one for the headers): the same attributes, the
        same keep-alive rules, the same 431 answers. Any other request line (HTTP/0.9,
        a bad version, stray whitespace) is the standard library's to parse or refuse."""
        match = _PLAIN_REQUEST_LINE.fullmatch(self.raw_requestline)
        if match is None:
            return super().parse_request()
        method, path, minor = match.groups()
        self.requestline = self.raw_requestline.rstrip(b"\r\n").decode("ascii")
        self.command = method.decode("ascii")
        self.path = path.decode("ascii")
        if self.path.startswith("//"):  # gh-87389, as the standard library does
            self.path = "/" + self.path.lstrip("/")
        self.request_version = "HTTP/1.1" if minor == b"1" else "HTTP/1.0"
        self.close_connection = not (minor == b"1" and self.protocol_version >= "HTTP/1.1")
        try:
            self.headers = read_headers(self.rfile, self.MessageClass)
        except http.client.LineTooLong as err:
            self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Line too long", str(err))
            return False
        except http.client.HTTPException as err:
            self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Too many headers", str(err))
            return False
        conntype = self.headers.get("Connection", "").lower()
        if conntype == "close":
            self.close_connection = True
        elif conntype == "keep-alive" and self.protocol_version >= "HTTP/1.1":
            self.close_connection = False
        expect = self.headers.get("Expect", "")
        if (expect.lower() == "100-continue" and self.protocol_version >= "HTTP/1.1"
                and self.request_version >= "HTTP/1.1"):
            return self.handle_expect_100()
        return True

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
                gzipped = accepts_gzip(self.headers.get("Accept-Encoding"))
                if self.request_version == "HTTP/0.9":  # a body and nothing else
                    self._send(200, CONTENT_TYPE, rendered.gzipped if gzipped else rendered.plain, head)
                    return
                self.log_request(200)
                headers = self._web.headers if self._web is not None else _NO_HEADERS
                self.wfile.write(app.responses.get(rendered, gzipped, head, http_date(), headers))
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
        # One write for headers and body: two would cost a second syscall (and, with
        # Nagle's algorithm on, a delayed ACK).
        self.log_request(code)
        if self.request_version == "HTTP/0.9":  # as send_response does: no status line, no headers
            if not head:
                self.wfile.write(body)
            return
        web: WebConfig | None = getattr(self, "_web", None)
        response = response_head(self.protocol_version, code, self.version_string(), self.date_time_string(),
                                 content_type, len(body), {**(web.headers if web else {}), **(extra or {})})
        self.wfile.write(response if head else response + body)

    def date_time_string(self, timestamp: float | None = None) -> str:
        return http_date() if timestamp is None else super().date_time_string(timestamp)

    def log_request(self, code="-", size="-") -> None:
        if log.isEnabledFor(logging.DEBUG):  # formatting the line costs more than answering
            super().log_request(code, size)

    def log_message(self, format: str, *args) -> None:
        # One line per scrape would bury the daemon's own log; keep it for debugging.
        if log.isEnabledFor(logging.DEBUG):
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
        self.responses = MetricsResponses(_Handler.protocol_version, _Handler.server_version + " " + _Handler.sys_version)
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
