"""TLS between the two data parties: one key pair per organisation, the peer's certificate pinned.

Each organisation makes its own key pair and a self-signed certificate naming its role
(:func:`write_key_pair`, or ``petlab keygen --role gateway --out DIR``), keeps the key
and sends the certificate to the other organisation. A party then trusts exactly one
certificate: the peer's. Every petlab-owned socket between the parties (the greeting,
the direct link for openings; and SecretFlow's PSI link, through the library's own TLS
settings, see :mod:`petlab.data.psi`) runs TLS 1.3 with both sides
authenticated: the listening party presents its certificate and demands the
connector's, and each checks that what it got is, byte for byte, the certificate it
pinned and names the role it expects. The private key never leaves its host.

After the handshake each side sends one byte and reads the peer's (:func:`secure_socket`),
so that a party whose certificate the peer refused learns it there, with a message that
says so, rather than at its first read of application data (in TLS 1.3 the listener
checks the connector's certificate after the connector's handshake has completed).

torch.distributed's gloo traffic (CrypTen's messages, the dealer's) does not pass
through here: petlab neither encrypts nor authenticates it.

>>> import pathlib, tempfile
>>> ids = throwaway_pair(folder=pathlib.Path(tempfile.mkdtemp()))
>>> ids["wallet"].peer_role, pathlib.Path(ids["wallet"].peer_cert).name
('gateway', 'gateway.crt')
>>> oct(pathlib.Path(ids["gateway"].key).stat().st_mode & 0o777)
'0o600'
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import os
import socket
import ssl
import tempfile
from pathlib import Path

__all__ = ["TlsIdentity", "TlsError", "KeyPair", "write_key_pair", "throwaway_pair", "fingerprint",
           "server_context", "client_context", "secure_socket", "VALID_DAYS"]

#: How long a certificate made here is valid (days): ten years.
VALID_DAYS = 3650

#: The byte each side sends once its checks of the peer's certificate have passed.
_ACCEPTED = b"\x01"


class TlsError(ValueError):
    """A key or certificate file is missing, unreadable, or not the one expected."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class TlsIdentity:
    """This party's certificate and key, and the one peer certificate it accepts (paths).

    Args:
        role: this party's role (the CN of ``cert``).
        peer_role: the role the peer's certificate must name.
        cert, key: this organisation's certificate and private key (PEM).
        peer_cert: the other organisation's certificate (PEM), the only one accepted.
    """

    role: str
    peer_role: str
    cert: str
    key: str
    peer_cert: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TlsIdentity":
        return cls(**{f.name: str(d[f.name]) for f in dataclasses.fields(cls)})

    def check(self) -> "TlsIdentity":
        """Raise :class:`TlsError` unless the files exist, the key fits the certificate
        and both certificates name the expected roles; returns ``self``."""
        for what, path in (("certificate", self.cert), ("key", self.key), ("peer certificate", self.peer_cert)):
            if not Path(path).is_file():
                raise TlsError(f"TLS {what} not found: {path}")
        for what, path, role in (("certificate", self.cert, self.role),
                                 ("peer certificate", self.peer_cert, self.peer_role)):
            named = _common_name(path)
            if named != role:
                raise TlsError(f"TLS {what} {path} names {named!r}, expected the {role}'s")
        try:
            server_context(identity=self)
        except ssl.SSLError as err:
            raise TlsError(f"TLS key {self.key} does not fit the certificate {self.cert} ({err.reason})") from None
        return self


@dataclasses.dataclass(frozen=True)
class KeyPair:
    """What :func:`write_key_pair` wrote."""

    cert: Path
    key: Path
    fingerprint: str  # SHA-256 of the certificate (DER), colon-separated hex


def _load_cert(path):
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError) as err:
        raise TlsError(f"cannot read the certificate {path}: {err}") from None


def _common_name(path) -> str:
    from cryptography.x509.oid import NameOID

    names = _load_cert(path).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def fingerprint(*, cert: str | os.PathLike) -> str:
    """SHA-256 fingerprint of a PEM certificate, as ``openssl x509 -fingerprint -sha256``
    prints it (compare it with the peer by telephone before pinning its certificate).

    >>> import pathlib, tempfile
    >>> pair = write_key_pair(role="gateway", folder=pathlib.Path(tempfile.mkdtemp()))
    >>> fingerprint(cert=pair.cert) == pair.fingerprint, len(pair.fingerprint)
    (True, 95)
    """
    from cryptography.hazmat.primitives import serialization

    der = _load_cert(cert).public_bytes(serialization.Encoding.DER)
    return _format_digest(der)


def _format_digest(der: bytes) -> str:
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def _write_new(path: Path, data: bytes, *, mode: int) -> None:
    """Write ``path`` atomically (a temporary file in the same folder, then a rename),
    created with ``mode``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_key_pair(*, role: str, folder: str | os.PathLike) -> KeyPair:
    """Make an ECDSA P-256 key and a self-signed certificate with ``CN=role``, valid
    :data:`VALID_DAYS` days; write ``folder/<role>.key`` (mode 0600) and
    ``folder/<role>.crt``.

    Args:
        role: the organisation's role ("gateway" or "wallet").
        folder: where to write; created if missing (mode 0700).

    Raises:
        FileExistsError: when ``<role>.key`` or ``<role>.crt`` is there already (a key
            is never overwritten).

    >>> import pathlib, tempfile
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> pair = write_key_pair(role="wallet", folder=folder)
    >>> pair.key.name, pair.cert.name, oct(pair.key.stat().st_mode & 0o777)
    ('wallet.key', 'wallet.crt', '0o600')
    >>> write_key_pair(role="wallet", folder=folder)
    Traceback (most recent call last):
    ...
    FileExistsError: ... holds a key already (wallet.key): keys are never overwritten
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_path, cert_path = folder / f"{role}.key", folder / f"{role}.crt"
    for path in (key_path, cert_path):
        if path.exists():
            raise FileExistsError(f"{folder} holds a key already ({path.name}): keys are never overwritten")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, role),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "petlab party")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))  # the two hosts' clocks may differ
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         key_cert_sign=False, crl_sign=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(key, hashes.SHA256()))
    _write_new(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()), mode=0o600)
    _write_new(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return KeyPair(cert=cert_path, key=key_path,
                   fingerprint=_format_digest(cert.public_bytes(serialization.Encoding.DER)))


def throwaway_pair(*, folder: str | os.PathLike) -> dict[str, TlsIdentity]:
    """Fresh key pairs for the gateway and the wallet in ``folder``, each identity
    pinned to the other's certificate: for runs whose parties are all on this machine.

    Returns:
        {"gateway": TlsIdentity, "wallet": TlsIdentity}.

    >>> import pathlib, tempfile
    >>> ids = throwaway_pair(folder=pathlib.Path(tempfile.mkdtemp()))
    >>> ids["gateway"].peer_cert == ids["wallet"].cert
    True
    """
    roles = ("gateway", "wallet")
    pairs = {role: write_key_pair(role=role, folder=folder) for role in roles}
    return {role: TlsIdentity(role=role, peer_role=peer, cert=str(pairs[role].cert), key=str(pairs[role].key),
                              peer_cert=str(pairs[peer].cert))
            for role, peer in zip(roles, reversed(roles))}


def _context(protocol, identity: TlsIdentity) -> ssl.SSLContext:
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # the pinned certificate is the trust anchor, not a host name
    ctx.verify_mode = ssl.CERT_REQUIRED  # both sides: mutual authentication
    ctx.load_cert_chain(certfile=identity.cert, keyfile=identity.key)
    ctx.load_verify_locations(cafile=identity.peer_cert)  # the one certificate accepted
    return ctx


def server_context(*, identity: TlsIdentity) -> ssl.SSLContext:
    """TLS 1.3 context for the listening party: presents ``identity.cert`` and requires
    the connector's certificate, accepting only ``identity.peer_cert``.

    >>> import pathlib, tempfile
    >>> ids = throwaway_pair(folder=pathlib.Path(tempfile.mkdtemp()))
    >>> ctx = server_context(identity=ids["gateway"])
    >>> ctx.verify_mode == ssl.CERT_REQUIRED, ctx.minimum_version == ssl.TLSVersion.TLSv1_3
    (True, True)
    """
    ctx = _context(ssl.PROTOCOL_TLS_SERVER, identity)
    ctx.num_tickets = 0  # no session resumption: every connection authenticates in full
    return ctx


def client_context(*, identity: TlsIdentity) -> ssl.SSLContext:
    """TLS 1.3 context for the connecting party: presents ``identity.cert`` and accepts
    only ``identity.peer_cert`` from the listener.

    >>> import pathlib, tempfile
    >>> ids = throwaway_pair(folder=pathlib.Path(tempfile.mkdtemp()))
    >>> client_context(identity=ids["wallet"]).check_hostname
    False
    """
    return _context(ssl.PROTOCOL_TLS_CLIENT, identity)


#: OpenSSL verification results that mean "not the pinned certificate" (as opposed to
#: a pinned certificate that expired or is not valid yet).
_NOT_PINNED = {2, 7, 18, 19, 20, 21}
_EXPIRED, _NOT_YET_VALID = 10, 9


def _refused_locally(err: ssl.SSLCertVerificationError, identity: TlsIdentity) -> str:
    if err.verify_code == _EXPIRED:
        return f"the {identity.peer_role}'s certificate has expired (pinned: {identity.peer_cert})"
    if err.verify_code == _NOT_YET_VALID:
        return (f"the {identity.peer_role}'s certificate is not valid yet (pinned: {identity.peer_cert}; "
                "are the two hosts' clocks right?)")
    if err.verify_code in _NOT_PINNED:
        return f"the {identity.peer_role}'s certificate does not match the pinned one ({identity.peer_cert})"
    return f"the {identity.peer_role}'s certificate was refused ({err.verify_message}; pinned: {identity.peer_cert})"


def _refused_by_peer(identity: TlsIdentity) -> str:
    return (f"the {identity.peer_role} did not accept this party's certificate ({identity.cert}): "
            f"it does not match the certificate pinned there for the {identity.role}")


def _check_presented(tls: ssl.SSLSocket, identity: TlsIdentity) -> str | None:
    """Why the certificate the peer presented is not the pinned one, or ``None``."""
    from cryptography.hazmat.primitives import serialization

    presented = tls.getpeercert(binary_form=True)
    pinned = _load_cert(identity.peer_cert).public_bytes(serialization.Encoding.DER)
    if presented != pinned:  # same key, another certificate: still not the one pinned
        return f"the {identity.peer_role}'s certificate does not match the pinned one ({identity.peer_cert})"
    subject = dict(item for rdn in tls.getpeercert().get("subject", ()) for item in rdn)
    if subject.get("commonName") != identity.peer_role:
        return (f"the pinned certificate {identity.peer_cert} names {subject.get('commonName')!r}, "
                f"not the {identity.peer_role}")
    return None


def secure_socket(*, sock: socket.socket, tls: TlsIdentity | None, server_side: bool, timeout_s: float,
                  error: type[Exception], where: str) -> socket.socket:
    """Run the TLS handshake on a connected ``sock`` and check the peer's certificate.

    Both sides then send one byte and read the peer's, so each learns within
    ``timeout_s`` whether the other accepted it. Returns the TLS socket (blocking, with
    ``timeout_s`` as its timeout), or ``sock`` itself when ``tls`` is ``None``.

    Args:
        sock: a connected TCP socket (accepted, at the listening party).
        tls: this party's identity; ``None`` leaves the connection plain TCP.
        server_side: ``True`` at the party that accepted the connection.
        timeout_s: the bound on the handshake and the confirmation.
        error: the exception class raised on failure (one line, prefixed by ``where``).
        where: what the connection is for, for messages ("greeting with the wallet at ...").

    >>> import pathlib, tempfile, threading
    >>> ids = throwaway_pair(folder=pathlib.Path(tempfile.mkdtemp()))
    >>> a, b = socket.socketpair()
    >>> out = {}
    >>> t = threading.Thread(target=lambda: out.update(g=secure_socket(
    ...     sock=a, tls=ids["gateway"], server_side=True, timeout_s=5, error=RuntimeError, where="test")))
    >>> t.start(); w = secure_socket(sock=b, tls=ids["wallet"], server_side=False, timeout_s=5,
    ...                              error=RuntimeError, where="test"); t.join()
    >>> w.sendall(b"hello"); out["g"].recv(5), w.version()
    (b'hello', 'TLSv1.3')
    """
    if tls is None:
        return sock
    sock.settimeout(timeout_s)
    try:
        ctx = server_context(identity=tls) if server_side else client_context(identity=tls)
    except (OSError, ssl.SSLError) as err:
        sock.close()
        raise error(f"{where}: cannot load this party's TLS files ({err})") from None
    reason = None
    wrapped = None
    try:
        wrapped = ctx.wrap_socket(sock, server_side=server_side, server_hostname=None)
        reason = _check_presented(wrapped, tls)
        if reason is None:
            wrapped.sendall(_ACCEPTED)
            got = wrapped.recv(1)
            if got != _ACCEPTED:
                reason = _refused_by_peer(tls)
    except ssl.SSLCertVerificationError as err:
        reason = _refused_locally(err, tls)
    except (socket.timeout, TimeoutError):
        reason = (f"the {tls.peer_role} did not complete the TLS handshake within {timeout_s:g} s "
                  "(is TLS off at the peer?)")
    except ssl.SSLError as err:
        if "ALERT" in (err.reason or ""):  # the peer aborted: it refused this party's certificate
            reason = _refused_by_peer(tls)
        elif err.reason in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"):
            reason = f"the {tls.peer_role} does not speak TLS here (is TLS off in its run file?)"
        elif isinstance(err, ssl.SSLEOFError) or err.reason == "UNEXPECTED_EOF_WHILE_READING":
            reason = _refused_by_peer(tls) + " (or TLS is off there)"
        else:
            reason = f"TLS with the {tls.peer_role} failed ({err.reason or err})"
    except (ConnectionError, OSError):  # reset or closed while we waited for the peer's answer
        reason = _refused_by_peer(tls) + " (or TLS is off there)"
    if reason is not None:
        (wrapped or sock).close()
        raise error(f"{where}: {reason}")
    return wrapped
