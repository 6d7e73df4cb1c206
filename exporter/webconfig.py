"""`http.web_config_file`: TLS and basic auth for the endpoint, in the exporter-toolkit format.

The same file node_exporter and Prometheus read with `--web.config.file`, so a
host keeps one, and `promtool check web-config` checks it::

    tls_server_config:
      cert_file: tls.crt            # relative paths: relative to this file's folder
      key_file: tls.key
      min_version: TLS12            # TLS10, TLS11, TLS12 (default), TLS13
      max_version: TLS13
      client_auth_type: RequireAndVerifyClientCert   # or VerifyClientCertIfGiven, NoClientCert (default)
      client_ca_file: ca.crt
      client_allowed_sans: [prometheus.monitoring.svc]
      cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]   # Go names; TLS 1.2 and older only, as in Go
      prefer_server_cipher_suites: true
    http_server_config:
      headers: {Strict-Transport-Security: max-age=31536000}
    basic_auth_users:
      prometheus: $2y$10$...        # bcrypt hash, e.g. `htpasswd -nBC 10 "" | tr -d ':\\n'`

Where Python's `ssl` cannot do what Go does, the key is refused with one clear
line rather than half honoured: `client_auth_type` RequestClientCert and
RequireAnyClientCert (both accept a certificate nobody verified; Python cannot
ask for one without verifying it), `curve_preferences` (Python sets a single
curve), and the inline `cert`/`key` of newer toolkit versions.

The file and the files it names are watched: a change (a certificate renewed by
cert-manager, a new password hash) takes effect for new connections within
`RELOAD_CHECK_SECONDS`, without a restart. A change that breaks the file is
logged and the last good configuration stays in force, because dropping TLS or
the passwords on a typo would open the endpoint.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import re
import secrets
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt

from exporter.config import ConfigError, read_yaml

log = logging.getLogger("pgbv.webconfig")

KEY = "http.web_config_file"
# stat() of a handful of files at most once a second: invisible next to a scrape.
RELOAD_CHECK_SECONDS = 1.0

TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_CLIENT_AUTH_UNSUPPORTED = ("RequestClientCert", "RequireAnyClientCert")

# Go's names (crypto/tls) -> OpenSSL's. Go applies cipher_suites to TLS 1.2 and older
# only; its TLS 1.3 names are accepted and, as in Go, change nothing.
GO_CIPHERS = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256": "AES128-SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "ECDHE-ECDSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
GO_TLS13_CIPHERS = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}

# The response headers exporter-toolkit lets a web config set.
ALLOWED_HEADERS = {
    "strict-transport-security": "Strict-Transport-Security",
    "x-content-type-options": "X-Content-Type-Options",
    "x-frame-options": "X-Frame-Options",
    "x-xss-protection": "X-XSS-Protection",
    "content-security-policy": "Content-Security-Policy",
}

_TOP_KEYS = {"tls_server_config", "http_server_config", "basic_auth_users"}
_TLS_KEYS = {
    "cert_file", "key_file", "client_auth_type", "client_ca_file", "client_allowed_sans",
    "min_version", "max_version", "cipher_suites", "prefer_server_cipher_suites", "curve_preferences",
    "cert", "key",
}
_HTTP_KEYS = {"http2", "headers"}
_BCRYPT_HASH = re.compile(r"^\$2[abxy]?\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")
# bcrypt reads at most 72 bytes of a password; the bcrypt package (5.x) raises on more,
# where Go's bcrypt (and so every other exporter) compares the first 72.
BCRYPT_MAX_PASSWORD_BYTES = 72


class _Invalid(Exception):
    """A problem in the web config, phrased as 'key: reason'."""


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Invalid(f"{where}: must be a mapping, got {type(value).__name__}")
    return value


def _unknown(section: dict, allowed: set[str], where: str) -> None:
    for key in section:
        if key not in allowed:
            raise _Invalid(f"{where}{key}: unknown key")


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise _Invalid(f"{where}: must be a non-empty string")
    return value


def _string_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _Invalid(f"{where}: must be a list of strings")
    return value


# --- TLS ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TLSSettings:
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None
    client_auth_type: str
    client_allowed_sans: tuple[str, ...]
    context: ssl.SSLContext = field(compare=False, repr=False)

    def files(self) -> list[Path]:
        return [p for p in (self.cert_file, self.key_file, self.client_ca_file) if p is not None]

    def peer_allowed(self, peer: dict | None) -> bool:
        """client_allowed_sans: a verified client certificate must name one of them."""
        if not self.client_allowed_sans or not peer:
            return True
        names = {value for _, value in peer.get("subjectAltName", ())}
        return any(san in names for san in self.client_allowed_sans)


def _refuse_key_password() -> bytes:
    # Called only for an encrypted key: never prompt on a terminal, fail with a reason.
    raise _Invalid("tls_server_config.key_file: the key is encrypted; give an unencrypted key")


def _tls(section: dict, base: Path) -> TLSSettings | None:
    where = "tls_server_config."
    _unknown(section, _TLS_KEYS, where)
    if not section:
        return None
    for key in ("cert", "key"):
        if key in section:
            raise _Invalid(f"{where}{key}: inline certificates are not supported by pgbv; use cert_file and key_file")
    if section.get("curve_preferences"):
        raise _Invalid(f"{where}curve_preferences: not supported by pgbv (Python's ssl sets a single curve); remove it")
    cert = section.get("cert_file")
    key = section.get("key_file")
    if not cert and not key:
        if any(section.get(k) for k in ("client_ca_file", "client_auth_type", "client_allowed_sans")):
            raise _Invalid(f"{where}cert_file: required when TLS settings are given")
        return None  # as in exporter-toolkit: no certificate, no TLS
    if not cert:
        raise _Invalid(f"{where}cert_file: required with key_file")
    if not key:
        raise _Invalid(f"{where}key_file: required with cert_file")
    cert_file = base / _string(cert, where + "cert_file")
    key_file = base / _string(key, where + "key_file")

    versions = {}
    for key_name, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        name = section.get(key_name) or default
        if name not in TLS_VERSIONS:
            raise _Invalid(f"{where}{key_name}: must be one of {', '.join(TLS_VERSIONS)}, got {name!r}")
        versions[key_name] = TLS_VERSIONS[name]
    if versions["min_version"] > versions["max_version"]:
        raise _Invalid(f"{where}min_version: is above max_version")

    auth = section.get("client_auth_type") or "NoClientCert"
    if auth in _CLIENT_AUTH_UNSUPPORTED:
        raise _Invalid(
            f"{where}client_auth_type: {auth} is not supported by pgbv (it accepts a certificate nobody verified); "
            "use VerifyClientCertIfGiven or RequireAndVerifyClientCert with client_ca_file"
        )
    if auth not in CLIENT_AUTH:
        known = ", ".join([*CLIENT_AUTH, *_CLIENT_AUTH_UNSUPPORTED])
        raise _Invalid(f"{where}client_auth_type: must be one of {known}, got {auth!r}")
    ca = section.get("client_ca_file")
    client_ca_file = base / _string(ca, where + "client_ca_file") if ca else None
    if client_ca_file is not None and auth == "NoClientCert":
        # exporter-toolkit refuses this too: a CA that verifies nobody is a mistake, not a setting.
        raise _Invalid(f"{where}client_ca_file: given without a client_auth_type that verifies client certificates")
    if client_ca_file is None and auth != "NoClientCert":
        raise _Invalid(f"{where}client_ca_file: required with client_auth_type {auth}")
    sans = tuple(_string_list(section.get("client_allowed_sans"), where + "client_allowed_sans"))
    if sans and client_ca_file is None:
        raise _Invalid(f"{where}client_allowed_sans: needs client certificates (client_auth_type and client_ca_file)")

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = versions["min_version"]
    context.maximum_version = versions["max_version"]
    try:
        context.load_cert_chain(cert_file, key_file, password=_refuse_key_password)
    except _Invalid:
        raise
    except FileNotFoundError as exc:
        missing = "cert_file" if not cert_file.exists() else "key_file"
        raise _Invalid(f"{where}{missing}: file not found: {exc.filename or (cert_file if missing == 'cert_file' else key_file)}") from None
    except OSError as exc:  # ssl.SSLError is an OSError
        raise _Invalid(f"{where}cert_file/key_file: cannot load {cert_file} and {key_file}: {_ssl_reason(exc)}") from None
    if client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=client_ca_file)
        except FileNotFoundError:
            raise _Invalid(f"{where}client_ca_file: file not found: {client_ca_file}") from None
        except OSError as exc:
            raise _Invalid(f"{where}client_ca_file: cannot load {client_ca_file}: {_ssl_reason(exc)}") from None
    context.verify_mode = CLIENT_AUTH[auth]

    suites = _string_list(section.get("cipher_suites"), where + "cipher_suites")
    if suites:
        unknown = [s for s in suites if s not in GO_CIPHERS and s not in GO_TLS13_CIPHERS]
        if unknown:
            raise _Invalid(f"{where}cipher_suites: unknown or insecure cipher suite {unknown[0]!r}")
        names = [GO_CIPHERS[s] for s in suites if s in GO_CIPHERS]
        if names:
            try:
                context.set_ciphers(":".join(names))
            except ssl.SSLError:
                raise _Invalid(f"{where}cipher_suites: none of them is available in this OpenSSL") from None
    prefer = section.get("prefer_server_cipher_suites", True)
    if not isinstance(prefer, bool):
        raise _Invalid(f"{where}prefer_server_cipher_suites: must be true or false")
    if prefer:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    return TLSSettings(cert_file, key_file, client_ca_file, auth, sans, context)


def _ssl_reason(exc: OSError) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason or exc.strerror or exc).lower().replace("_", " ")


# --- basic auth ------------------------------------------------------------------------


class BasicAuth:
    """Checks `Authorization: Basic` against bcrypt hashes, caching successes.

    bcrypt costs tens of milliseconds on purpose; Prometheus sends the same
    credentials every scrape, so a success is remembered under an HMAC of the
    user and password with a key made at start (not a bare hash: a memory dump
    must not hold something cheaper to brute-force than the bcrypt hash itself).
    Failures are never cached, so each wrong guess costs a full bcrypt.
    """

    def __init__(self, users: dict[str, bytes]):
        self.users = users
        self._key = secrets.token_bytes(32)
        self._ok: dict[bytes, bytes] = {}  # HMAC(user, password) -> the hash it matched
        self._lock = threading.Lock()
        self._dummy: bytes | None = None

    def _dummy_hash(self) -> bytes:
        # An unknown user costs one bcrypt too, so timing does not tell which users exist.
        if self._dummy is None:
            self._dummy = bcrypt.hashpw(b"pgbv-no-such-user", bcrypt.gensalt(10))
        return self._dummy

    def check(self, header: str | None) -> str | None:
        """The user name when the header carries valid credentials, else None."""
        credentials = parse_basic(header)
        if credentials is None:
            return None
        user, password = credentials
        stored = self.users.get(user)
        mac = hmac.new(self._key, user.encode() + b"\0" + password, hashlib.sha256).digest()
        with self._lock:
            cached = self._ok.get(mac)
        if cached is not None and stored is not None and hmac.compare_digest(cached, stored):
            return user
        try:
            ok = bcrypt.checkpw(password[:BCRYPT_MAX_PASSWORD_BYTES], stored or self._dummy_hash())
        except ValueError:
            ok = False
        if not ok or stored is None:
            return None
        with self._lock:
            if len(self._ok) > 1024:  # only successes land here, but never let it grow without bound
                self._ok.clear()
            self._ok[mac] = stored
        return user


def parse_basic(header: str | None) -> tuple[str, bytes] | None:
    """(user, password bytes) from an `Authorization: Basic ...` header, or None."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic" or not value.strip():
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None


def _users(section: Any) -> dict[str, bytes]:
    users = _mapping(section, "basic_auth_users")
    found: dict[str, bytes] = {}
    for user, hashed in users.items():
        where = f"basic_auth_users.{user}"
        if not isinstance(user, str) or not user or ":" in user:
            raise _Invalid(f"basic_auth_users: user name {user!r} must be a non-empty string without ':'")
        if not isinstance(hashed, str) or not _BCRYPT_HASH.match(hashed.strip()):
            # Never echo the value: it might be a password pasted where its hash belongs.
            raise _Invalid(f"{where}: must be a bcrypt hash ($2y$10$ followed by 53 characters), e.g. from `htpasswd -nBC 10 \"\" | tr -d ':\\n'`")
        found[user] = hashed.strip().encode()
    return found


# --- the whole file --------------------------------------------------------------------


@dataclass(frozen=True)
class WebConfig:
    path: Path
    tls: TLSSettings | None = None
    auth: BasicAuth | None = field(default=None, compare=False)
    headers: dict[str, str] = field(default_factory=dict)

    def files(self) -> list[Path]:
        return [self.path, *(self.tls.files() if self.tls else [])]


def _headers(section: dict) -> dict[str, str]:
    where = "http_server_config."
    _unknown(section, _HTTP_KEYS, where)
    http2 = section.get("http2", True)
    if not isinstance(http2, bool):
        raise _Invalid(f"{where}http2: must be true or false")  # accepted either way: pgbv speaks HTTP/1.1
    headers = {}
    for name, value in _mapping(section.get("headers"), where + "headers").items():
        canonical = ALLOWED_HEADERS.get(str(name).lower())
        if canonical is None:
            raise _Invalid(f"{where}headers.{name}: not a header a web config may set ({', '.join(ALLOWED_HEADERS.values())})")
        if not isinstance(value, str) or "\n" in value or "\r" in value:
            raise _Invalid(f"{where}headers.{name}: must be a one-line string")
        headers[canonical] = value
    return headers


def load_web_config(path: str | os.PathLike) -> WebConfig:
    """Read and check a web config; raises ConfigError with one line naming the key."""
    path = Path(path)
    prefix = f"{KEY}: {path}"
    data = read_yaml(path, KEY)
    try:
        data = _mapping(data, "the top level")
        _unknown(data, _TOP_KEYS, "")
        base = path.resolve().parent
        tls = _tls(_mapping(data.get("tls_server_config"), "tls_server_config"), base)
        headers = _headers(_mapping(data.get("http_server_config"), "http_server_config"))
        users = _users(data.get("basic_auth_users"))
    except _Invalid as exc:
        raise ConfigError(f"{prefix}: {exc}") from None
    return WebConfig(path=path, tls=tls, auth=BasicAuth(users) if users else None, headers=headers)


def _fingerprint(files: list[Path]) -> tuple:
    stamps = []
    for file in files:
        try:
            st = file.stat()  # follows symlinks: a Kubernetes secret update swaps a symlink
            stamps.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            stamps.append(None)
    return tuple(stamps)


class WebConfigSource:
    """The web config in force, re-read when the file or a file it names changes."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._config = load_web_config(self.path)  # a bad file at start stops the daemon
        self._stamp = _fingerprint(self._config.files())
        self._checked = time.monotonic()
        self._lock = threading.Lock()
        self._reported: str | None = None

    def current(self) -> WebConfig:
        if time.monotonic() - self._checked < RELOAD_CHECK_SECONDS:
            return self._config
        with self._lock:
            if time.monotonic() - self._checked >= RELOAD_CHECK_SECONDS:
                self._checked = time.monotonic()
                stamp = _fingerprint(self._config.files())
                if stamp != self._stamp:
                    self._reload(stamp)
        return self._config

    def _reload(self, stamp: tuple) -> None:
        try:
            config = load_web_config(self.path)
        except ConfigError as exc:
            if str(exc) != self._reported:
                self._reported = str(exc)
                log.error("web config not reloaded, the previous one stays in force: %s", exc)
            return  # stamp kept: retried at the next check, so a fix is picked up
        self._config = config
        self._stamp = _fingerprint(config.files())
        self._reported = None
        log.info("web config reloaded from %s", self.path)
