"""TLS of the local stack: its own certificate authority and the broker's certificate.

Standard library and the ``openssl`` command only (imported by ``stack.py``). The broker
serves a second client listener, ``SASL_SSL`` on ``[kafka] tls_port``, beside the
``SASL_PLAINTEXT`` one: the same principals, passwords and ACLs, over TLS, so that what
a real cluster runs (docs/security.md) is tested here too. ``stack.py env --tls`` prints
the settings that reach it (``CONSENT_STREAM_SSL_CA_LOCATION`` is ``ca.pem`` below).

Files under ``<state_dir>/tls`` (kept by ``reset``; the keys owner-only):

    ca.pem, ca.key          the stack's CA (10 years), trusted by the clients
    broker.pem              the broker's key (PKCS#8) and certificate, then the CA's: the
                            PEM keystore Kafka reads (``ssl.keystore.type=PEM``)

The broker's certificate names the stack's host (an IP address or DNS name) and
``localhost``; clients check the name (librdkafka's ``ssl.endpoint.identification.algorithm``
is ``https``, Python's default context checks it too). It is issued again when it is
missing, names another host, or ends within 30 days.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["TlsError", "TlsFiles", "ensure_tls", "listener_properties", "subject_alt_names"]

CA_DAYS: Final = 3650
BROKER_DAYS: Final = 825
RENEW_BEFORE_S: Final = 30 * 86400
KEY: Final = ["-newkey", "rsa:2048", "-noenc"]


class TlsError(Exception):
    """The certificates could not be made (message for the person)."""


@dataclass(frozen=True)
class TlsFiles:
    base: Path

    @property
    def ca(self) -> Path:
        return self.base / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.base / "ca.key"

    @property
    def keystore(self) -> Path:
        return self.base / "broker.pem"

    @property
    def names(self) -> Path:
        return self.base / "broker.names"


def _openssl(*args: str, cwd: Path) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise TlsError("openssl is not installed (`stack.py install` installs it)")
    result = subprocess.run(
        [exe, *args], cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise TlsError(f"openssl {args[0]} failed: {result.stderr.strip()[-400:]}")


def _valid(cert: Path, cwd: Path) -> bool:
    try:
        _openssl("x509", "-in", str(cert), "-noout", "-checkend", str(RENEW_BEFORE_S), cwd=cwd)
    except TlsError:
        return False
    return True


def subject_alt_names(host: str) -> str:
    """``host`` (an IP address or a DNS name) and ``localhost``, as openssl writes them."""
    try:
        ipaddress.ip_address(host)
        first = f"IP:{host}"
    except ValueError:
        first = f"DNS:{host}"
    return ",".join(dict.fromkeys([first, "DNS:localhost"]))


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    path.chmod(0o600)


def _issue_ca(files: TlsFiles) -> None:
    _openssl(
        "req", "-x509", *KEY, "-keyout", str(files.ca_key), "-out", str(files.ca),
        "-days", str(CA_DAYS), "-subj", "/CN=Consent Stream local stack CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=files.base,
    )  # fmt: skip
    files.ca_key.chmod(0o600)


def _issue_broker(files: TlsFiles, host: str) -> None:
    names = subject_alt_names(host)
    with tempfile.TemporaryDirectory(dir=files.base) as tmp:
        work = Path(tmp)
        (work / "ext.cnf").write_text(
            f"subjectAltName={names}\nbasicConstraints=CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        )
        _openssl("req", *KEY, "-keyout", "broker.key", "-out", "broker.csr",
                 "-subj", f"/CN={host}", cwd=work)  # fmt: skip
        _openssl(
            "x509", "-req", "-in", "broker.csr", "-CA", str(files.ca), "-CAkey",
            str(files.ca_key), "-set_serial", str(int.from_bytes(os.urandom(8), "big")),
            "-days", str(BROKER_DAYS), "-extfile", "ext.cnf", "-out", "broker.crt",
            cwd=work,
        )  # fmt: skip
        pem = b"".join(p.read_bytes() for p in (work / "broker.key", work / "broker.crt", files.ca))
        _write_private(files.keystore, pem)
    files.names.write_text(names + "\n")


def ensure_tls(base: Path, host: str) -> TlsFiles:
    """The CA and the broker's keystore under ``base``, issued when missing or due."""
    files = TlsFiles(base)
    base.mkdir(parents=True, exist_ok=True)
    renewed_ca = False
    if not (files.ca.is_file() and files.ca_key.is_file() and _valid(files.ca, base)):
        _issue_ca(files)
        renewed_ca = True
    current = files.names.read_text().strip() if files.names.is_file() else ""
    if (
        renewed_ca
        or current != subject_alt_names(host)
        or not files.keystore.is_file()
        or not _valid(files.keystore, base)
    ):
        _issue_broker(files, host)
    return files


def listener_properties(listener: str, files: TlsFiles) -> dict[str, str]:
    """The TLS settings of ``listener`` (server.properties); its SASL ones are
    ``stack_auth``'s."""
    prefix = f"listener.name.{listener.lower()}"
    return {
        f"{prefix}.ssl.keystore.type": "PEM",
        f"{prefix}.ssl.keystore.location": str(files.keystore),
        f"{prefix}.ssl.client.auth": "none",
        f"{prefix}.ssl.enabled.protocols": "TLSv1.3,TLSv1.2",
    }
