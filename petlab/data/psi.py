"""Private set intersection between two party processes, over a TCP connection.

Uses OpenMined's ECDH-based PSI (``openmined-psi``): the server's items and the client's
request are blinded with each side's secret elliptic-curve key, and the client learns
which of *its own* items are in the intersection; neither side sees an id of the other
outside it. petlab runs the protocol in both directions so that **both** parties learn
the intersection of their own rows. What each party learns beyond that: the size of the
other's set (from the size of the setup message and the request) and, of course, the
intersection itself. The two results are compared by digest (a false positive of the
server's compressed set would make them differ), then each party keeps its rows in the
intersection and sorts them by its own copy of the id: the same order at both, and no
raw id ever crosses the wire. Given a :class:`petlab.mpc.tls.TlsIdentity`, both
connections run mutually authenticated TLS 1.3 with the peer's certificate pinned.

>>> import threading
>>> out = {}
>>> port = free_port()
>>> t = threading.Thread(target=lambda: out.update(g=private_intersection(
...     ids=["a", "b", "c"], listen=True, address="127.0.0.1", port=port, tls=None)))
>>> t.start()
>>> w = private_intersection(ids=["c", "x", "a"], listen=False, address="127.0.0.1", port=port, tls=None)
>>> t.join()
>>> sorted(w.ids), sorted(out["g"].ids), w.other_set_size
(['a', 'c'], ['a', 'c'], 3)
"""

from __future__ import annotations

import dataclasses
import hashlib
import socket
import struct
import time

from petlab.mpc.tls import TlsIdentity, secure_socket
from petlab.net import free_port

__all__ = ["PsiResult", "PsiError", "private_intersection", "free_port", "FALSE_POSITIVE_RATE"]

#: False-positive rate of the server's compressed set (Golomb-compressed set).
FALSE_POSITIVE_RATE = 1e-9


class PsiError(RuntimeError):
    """The PSI peer could not be reached, or the two parties' results disagree."""


@dataclasses.dataclass(frozen=True)
class PsiResult:
    ids: list  # this party's ids in the intersection
    own_set_size: int
    other_set_size: int
    seconds: float
    bytes_sent: int
    bytes_received: int


class _Channel:
    def __init__(self, sock: socket.socket, keep: list | None = None):
        self.sock, self.sent, self.received, self.keep = sock, 0, 0, keep

    def send(self, data: bytes) -> None:
        self.sock.sendall(struct.pack("!Q", len(data)) + data)
        self.sent += 8 + len(data)

    def _exact(self, n: int) -> bytes:
        chunks, left = [], n
        while left:
            chunk = self.sock.recv(min(left, 1 << 20))
            if not chunk:
                raise PsiError("PSI peer closed the connection")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def recv(self) -> bytes:
        (n,) = struct.unpack("!Q", self._exact(8))
        data = self._exact(n)
        self.received += 8 + n
        if self.keep is not None:
            self.keep.append(data)
        return data


def _serve(psi, channel: _Channel, items: list[str], n_client: int) -> None:
    server = psi.server.CreateWithNewKey(True)
    setup = server.CreateSetupMessage(FALSE_POSITIVE_RATE, n_client, items, psi.DataStructure.GCS)
    request = psi.Request()
    channel.send(setup.SerializeToString())
    request.ParseFromString(channel.recv())
    channel.send(server.ProcessRequest(request).SerializeToString())


def _ask(psi, channel: _Channel, items: list[str]) -> list[int]:
    client = psi.client.CreateWithNewKey(True)
    setup = psi.ServerSetup()
    setup.ParseFromString(channel.recv())
    channel.send(client.CreateRequest(items).SerializeToString())
    response = psi.Response()
    response.ParseFromString(channel.recv())
    return list(client.GetIntersection(setup, response))


def _digest(ids) -> bytes:
    h = hashlib.sha256()
    for v in sorted(ids):
        h.update(v.encode())
        h.update(b"\0")
    return h.digest()


def _connect(address: str, port: int, timeout_s: float) -> socket.socket:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return socket.create_connection((address, port), timeout=timeout_s)
        except OSError as err:
            if time.monotonic() > deadline:
                raise PsiError(f"PSI peer at {address}:{port} did not answer within {timeout_s:g} s ({err})") from None
            time.sleep(0.2)


#: The first byte the connecting party sends on each of its two connections: which
#: direction of the protocol runs there (the connector serves, or the connector asks).
_CONNECTOR_SERVES, _CONNECTOR_ASKS = b"S", b"A"


def _secured(sock, *, tls, server_side: bool, timeout_s: float, channels: dict, where: str):
    """``sock`` under TLS (or as it is, ``tls=None``); on a refusal the channels already
    open are closed too."""
    try:
        return secure_socket(sock=sock, tls=tls, server_side=server_side, timeout_s=timeout_s, error=PsiError,
                             where=where)
    except PsiError:
        for ch in channels.values():
            ch.sock.close()
        raise


def _open_channels(*, listen: bool, address: str, port: int, timeout_s: float,
                   keep: list | None, tls: TlsIdentity | None) -> dict[str, _Channel]:
    """Two connections to the peer, one per direction: {"serve": ..., "ask": ...}."""
    channels: dict[str, _Channel] = {}
    if listen:
        with socket.create_server((address, port), reuse_port=False) as server_sock:
            server_sock.settimeout(timeout_s)
            for _ in range(2):
                try:
                    sock, _ = server_sock.accept()
                except socket.timeout:
                    for ch in channels.values():
                        ch.sock.close()
                    raise PsiError(f"no PSI peer connected to {address}:{port} within {timeout_s:g} s") from None
                sock = _secured(sock, tls=tls, server_side=True, timeout_s=timeout_s, channels=channels,
                                where=f"PSI at {address}:{port}")
                sock.settimeout(timeout_s)
                tag = sock.recv(1)
                if tag not in (_CONNECTOR_SERVES, _CONNECTOR_ASKS):
                    sock.close()
                    raise PsiError(f"unexpected PSI greeting {tag!r} from {address}:{port}")
                channels["ask" if tag == _CONNECTOR_SERVES else "serve"] = _Channel(sock, keep=keep)
            if len(channels) != 2:
                raise PsiError("PSI peer opened the same direction twice")
    else:
        for tag, role in ((_CONNECTOR_SERVES, "serve"), (_CONNECTOR_ASKS, "ask")):
            sock = _connect(address, port, timeout_s)
            sock = _secured(sock, tls=tls, server_side=False, timeout_s=timeout_s, channels=channels,
                            where=f"PSI with {address}:{port}")
            sock.settimeout(timeout_s)
            sock.sendall(tag)
            channels[role] = _Channel(sock, keep=keep)
    return channels


def private_intersection(*, ids, listen: bool, address: str, port: int, tls: TlsIdentity | None,
                         timeout_s: float = 120.0, keep_received: list | None = None) -> PsiResult:
    """Run PSI in both directions with the peer; return this party's intersecting ids.

    The two directions run at the same time, on two connections (the library releases
    the GIL, so serving and asking overlap): about half the time of running them in turn.

    Args:
        ids: this party's customer ids (strings, unique).
        listen: ``True`` for the party that listens, ``False`` for the one that connects.
        address, port: where the listening party accepts the connections.
        timeout_s: how long to wait for the peer (and for each message).
        tls: this party's TLS identity (both connections: mutual TLS 1.3, the peer's
            certificate pinned, see :mod:`petlab.mpc.tls`); ``None`` for plain TCP.
        keep_received: if a list, every message received is appended to it (audits, tests).
    """
    import threading

    import private_set_intersection.python as psi

    items = [str(v) for v in ids]
    t0 = time.perf_counter()
    channels = _open_channels(listen=listen, address=address, port=port, timeout_s=timeout_s,
                              keep=keep_received, tls=tls)
    try:
        sizes = {}
        for role, channel in channels.items():  # set sizes: revealed by the protocol anyway
            channel.send(struct.pack("!Q", len(items)))
            (sizes[role],) = struct.unpack("!Q", channel.recv())
        other_size = sizes["serve"]
        errors: list[BaseException] = []

        def serve() -> None:
            try:
                _serve(psi, channels["serve"], items, other_size)
            except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
                errors.append(err)

        server_thread = threading.Thread(target=serve, name="psi-serve", daemon=True)
        server_thread.start()
        mine = _ask(psi, channels["ask"], items)
        server_thread.join()
        if errors:
            raise errors[0]
        found = [items[i] for i in mine]
        channels["ask"].send(_digest(found))  # the peer reads it on its "serve" connection
        if channels["serve"].recv() != _digest(found):
            raise PsiError("the two parties' PSI results differ (a false positive): rerun the alignment")
    except (socket.timeout, TimeoutError):
        raise PsiError(f"PSI peer at {address}:{port} stopped answering (timeout {timeout_s:g} s)") from None
    finally:
        for channel in channels.values():
            channel.sock.close()
    return PsiResult(ids=found, own_set_size=len(items), other_set_size=other_size,
                     seconds=time.perf_counter() - t0,
                     bytes_sent=sum(c.sent for c in channels.values()),
                     bytes_received=sum(c.received for c in channels.values()))
