"""Certificates for the TLS tests, made with the `openssl` command line (Debian's
openssl package) rather than a Python dependency the project would not need:
a CA, a server certificate for localhost/127.0.0.1, a client certificate, and a
second, unrelated CA with its own client certificate (the "wrong CA")."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import bcrypt


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {proc.stderr}")


def _ca(folder: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN=pgbv test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=folder)


def _leaf(folder: Path, name: str, ca: str, cn: str, san: str, usage: str) -> None:
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=folder)
    (folder / f"{name}.ext").write_text(
        f"subjectAltName={san}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage={usage}\n"
    )
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=folder)


@dataclass(frozen=True)
class Pki:
    folder: Path

    def path(self, name: str) -> Path:
        return self.folder / name

    @property
    def ca(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def wrong_ca(self) -> Path:
        return self.folder / "wrong-ca.crt"


def make_pki(folder: Path) -> Pki:
    if shutil.which("openssl") is None:
        raise RuntimeError("the openssl command is needed for the TLS tests (Debian package openssl)")
    folder.mkdir(parents=True, exist_ok=True)
    _ca(folder, "ca")
    _ca(folder, "wrong-ca")
    _leaf(folder, "server", "ca", "localhost", "DNS:localhost,IP:127.0.0.1", "serverAuth")
    _leaf(folder, "client", "ca", "prometheus", "DNS:prometheus", "clientAuth")
    _leaf(folder, "other-client", "ca", "intruder", "DNS:intruder", "clientAuth")
    _leaf(folder, "wrong-client", "wrong-ca", "prometheus", "DNS:prometheus", "clientAuth")
    return Pki(folder)


def bcrypt_hash(password: str, rounds: int = 10) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()
