"""A direct link between the two data parties for CrypTen's openings.

Every opening in a two-party CrypTen run (Beaver products, comparisons, reveals) is an
``all_reduce`` between the parties: each sends its share and adds the other's. gloo does
that through its own background threads, and on this kind of machine a gloo round trip
costs 1-2 ms even on loopback (measured: 1-element ``all_reduce`` 2.1 ms, send/recv
ping-pong 1.0 ms; a plain TCP ping-pong 0.49 ms blocking, 0.07 ms when the receiver
polls). A training step makes about 30 such rounds, so the wait dominates.

:class:`PeerLink` is one TCP connection between the parties (``TCP_NODELAY``), sending
and receiving at once (full duplex, so large openings cannot deadlock) and polling for a
short while before it blocks. :func:`install_peer_link` routes the communicator's
``all_reduce``, ``reduce`` and ``broadcast`` between the two parties through it; every
other call (the dealer's group, objects, barriers) still goes through gloo. What crosses
the wire is exactly what gloo would carry (the same shares), CrypTen's own counters
count it the same way, and the privacy audit, installed after it, records it the same.
It also gives the communicator ``petlab_open``: petlab's own protocol
(:mod:`petlab.mpc.lean`) opens numpy arrays there, XOR- and sum-openings in one message,
without CrypTen's per-call bookkeeping (a 1,024-word opening: 130 us instead of 461 us
here), counted and recorded the same way.

Given a :class:`petlab.mpc.tls.TlsIdentity`, :func:`open_peer_link` runs the link over
mutually authenticated TLS 1.3 (the peer's certificate pinned); the handshake is done
blocking, then the link polls the TLS socket as it polls a plain one (a TLS read or
write may need the other direction first, and bytes already decrypted wait in the TLS
buffer where ``select`` cannot see them).
"""

from __future__ import annotations

import select
import socket
import ssl
import time

import numpy as np
import torch

from petlab.mpc.tls import TlsIdentity, secure_socket

__all__ = ["PeerLink", "PeerLinkError", "open_peer_link", "install_peer_link", "restore"]

#: How long a receiver polls before it sleeps in ``select`` (seconds). Measured here
#: (two parties and a dealer on 2 cores): 0.5 ms beat 0.2, 2 and 5 ms; a longer poll
#: takes the CPU from the dealer.
SPIN_S = 0.0005
_CHUNK = 1 << 20


class PeerLinkError(RuntimeError):
    """The peer closed the link, or sent nothing for ``timeout_s``."""


class PeerLink:
    """Tensors to and from the one peer over a TCP socket (plain, or a TLS socket whose
    handshake is done).

    >>> a, b = socket.socketpair()
    >>> left, right = PeerLink(a, timeout_s=5), PeerLink(b, timeout_s=5)
    >>> right.send(torch.arange(3))
    >>> left.recv_like(torch.empty(3, dtype=torch.long)).tolist()
    [0, 1, 2]
    """

    def __init__(self, sock: socket.socket, *, timeout_s: float, spin_s: float = SPIN_S):
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.originals: dict = {}  # the communicator methods this link replaced
        self.timeout_s = timeout_s
        self.spin_s = spin_s

    def close(self) -> None:
        self.sock.close()

    def _transfer(self, out: memoryview | None, into: memoryview | None) -> None:
        """Send all of ``out`` and fill all of ``into`` at the same time."""
        sent, got = 0, 0
        n_out = len(out) if out is not None else 0
        n_in = len(into) if into is not None else 0
        idle_since = time.monotonic()
        pending = getattr(self.sock, "pending", None)  # TLS: decrypted bytes not yet read
        while sent < n_out or got < n_in:
            progress = False
            send_waits = recv_waits = None  # the direction each waits for ("r" or "w")
            if sent < n_out:
                try:  # TLS: after a want-error, the same bytes are offered again (as OpenSSL asks)
                    sent += self.sock.send(out[sent: sent + _CHUNK])
                    progress = True
                except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError):
                    send_waits = "w"
                except ssl.SSLWantReadError:
                    send_waits = "r"
                except OSError as err:  # reset, broken pipe: the peer is gone
                    raise PeerLinkError(f"Connection to the peer lost (direct link): {err}") from None
            if got < n_in:
                try:
                    k = self.sock.recv_into(into[got:], min(n_in - got, _CHUNK))
                except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
                    k, recv_waits = None, "r"
                except ssl.SSLWantWriteError:
                    k, recv_waits = None, "w"
                except OSError as err:
                    raise PeerLinkError(f"Connection to the peer lost (direct link): {err}") from None
                if k == 0:
                    raise PeerLinkError("Connection closed by peer (direct link)")
                if k:
                    got += k
                    progress = True
            now = time.monotonic()
            if progress:
                idle_since = now
                continue
            waited = now - idle_since
            if waited > self.timeout_s:
                raise PeerLinkError(f"no data from the peer for {self.timeout_s:g} s (direct link timed out)")
            if waited > self.spin_s:  # stop polling: sleep until the socket is ready
                if got < n_in and pending is not None and pending():
                    continue  # decrypted bytes are waiting: select would not see them
                waits = {send_waits, recv_waits}
                readable = [self.sock] if "r" in waits else []
                writable = [self.sock] if "w" in waits else []
                select.select(readable, writable, [], min(0.5, self.timeout_s))

    @staticmethod
    def _bytes(tensor: torch.Tensor) -> memoryview:
        return memoryview(tensor.numpy()).cast("B")

    def send(self, tensor: torch.Tensor) -> None:
        self._transfer(self._bytes(tensor.contiguous()), None)

    def recv_like(self, tensor: torch.Tensor) -> torch.Tensor:
        result = torch.empty_like(tensor, memory_format=torch.contiguous_format)
        self._transfer(None, self._bytes(result))
        return result

    def exchange_arrays(self, arrays: list, ops: list) -> list:
        """Send numpy int64 ``arrays`` in one message and combine each with the peer's
        (``ops``: ``"sum"`` or ``"xor"`` per array), without torch in between.

        >>> a, b = socket.socketpair()
        >>> left, right = PeerLink(a, timeout_s=5), PeerLink(b, timeout_s=5)
        >>> import threading
        >>> t = threading.Thread(target=lambda: right.exchange_arrays([np.array([5]), np.array([6])], ["sum", "xor"]))
        >>> t.start(); out = left.exchange_arrays([np.array([1]), np.array([3])], ["sum", "xor"]); t.join()
        >>> [x.tolist() for x in out]
        [[6], [5]]
        """
        mine = (np.ascontiguousarray(arrays[0], dtype=np.int64).reshape(-1) if len(arrays) == 1
                else np.concatenate([a.reshape(-1) for a in arrays]).astype(np.int64, copy=False))
        theirs = np.empty_like(mine)
        self._transfer(memoryview(mine).cast("B"), memoryview(theirs).cast("B"))
        out, at = [], 0
        for a, op in zip(arrays, ops):
            part = theirs[at: at + a.size].reshape(a.shape)
            if op == "xor":
                np.bitwise_xor(part, a, out=part)
            elif op == "sum":
                np.add(part, a, out=part)
            else:
                raise ValueError(f"direct link: unknown reduction {op!r} (sum or xor)")
            out.append(part)
            at += a.size
        return out

    def exchange(self, tensor: torch.Tensor) -> torch.Tensor:
        """Send ``tensor``, receive the peer's tensor of the same shape and type."""
        mine = tensor.contiguous()
        theirs = torch.empty_like(mine)
        self._transfer(self._bytes(mine), self._bytes(theirs))
        return theirs


def open_peer_link(*, listen: bool, address: str, port: int, timeout_s: float,
                   tls: TlsIdentity | None) -> PeerLink:
    """Connect the two parties: the gateway (``listen``) accepts at ``address:port``.

    Args:
        listen: ``True`` at the party that accepts (the gateway).
        address, port: where it accepts.
        timeout_s: how long to wait for the peer (and, on the link, for each message).
        tls: this party's TLS identity (mutual TLS 1.3, the peer's certificate pinned,
            see :mod:`petlab.mpc.tls`); ``None`` for plain TCP.

    >>> import threading
    >>> from petlab.net import free_port
    >>> port, out = free_port(), {}
    >>> t = threading.Thread(target=lambda: out.update(g=open_peer_link(
    ...     listen=True, address="127.0.0.1", port=port, timeout_s=5, tls=None)))
    >>> t.start(); w = open_peer_link(listen=False, address="127.0.0.1", port=port, timeout_s=5, tls=None); t.join()
    >>> w.send(torch.arange(2)); out["g"].recv_like(torch.empty(2, dtype=torch.long)).tolist()
    [0, 1]
    """
    deadline = time.monotonic() + timeout_s
    if listen:
        with socket.create_server((address, port)) as server:
            server.settimeout(timeout_s)
            try:
                sock, _ = server.accept()
            except socket.timeout:
                raise PeerLinkError(f"the peer did not open the direct link to {address}:{port} "
                                    f"within {timeout_s:g} s") from None
    else:
        while True:
            try:
                sock = socket.create_connection((address, port), timeout=timeout_s)
                break
            except OSError as err:
                if time.monotonic() > deadline:
                    raise PeerLinkError(f"could not open the direct link to {address}:{port} within "
                                        f"{timeout_s:g} s ({err})") from None
                time.sleep(0.05)
    sock = secure_socket(sock=sock, tls=tls, server_side=listen, timeout_s=max(1.0, deadline - time.monotonic()),
                         error=PeerLinkError, where=f"direct link at {address}:{port}")
    return PeerLink(sock, timeout_s=timeout_s)


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    if len(tensors) == 1:
        return tensors[0].reshape(-1)  # no copy when contiguous
    return torch.cat([t.reshape(-1) for t in tensors])


def _unflat(flat: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    out, at = [], 0
    for t in like:
        out.append(flat[at: at + t.numel()].view(t.shape))
        at += t.numel()
    return out


def _combine(mine: torch.Tensor, theirs: torch.Tensor, op) -> torch.Tensor:
    """``mine (op) theirs``, written into ``theirs`` (a fresh buffer: no third copy)."""
    from torch.distributed import ReduceOp

    if op == ReduceOp.SUM:
        return theirs.add_(mine)
    if op == ReduceOp.BXOR:
        return theirs.bitwise_xor_(mine)
    raise NotImplementedError(f"direct link: reduction {op} is not used by CrypTen's two-party protocols")


def install_peer_link(communicator_cls, *, link: PeerLink) -> dict:
    """Route ``communicator_cls``'s two-party ``all_reduce``, ``reduce`` and ``broadcast``
    (CPU tensors, main group) through ``link``. Returns the original methods (to restore).

    The replacements keep CrypTen's own byte and round counting (its ``_logging``
    decorator, applied by function name, exactly as on the originals).
    """
    from crypten.communicator.communicator import _logging
    from torch.distributed import ReduceOp

    originals = {name: getattr(communicator_cls, name) for name in ("all_reduce", "reduce", "broadcast")}

    def usable(self, tensors, group=None) -> bool:
        return (self.get_world_size() == 2 and (group is None or group is self.main_group)
                and all(t.device.type == "cpu" for t in tensors))

    def all_reduce(self, input, op=ReduceOp.SUM, batched=False):
        tensors = list(input) if batched else [input]
        if not usable(self, tensors):
            return originals["all_reduce"].__wrapped__(self, input, op=op, batched=batched)
        mine = _flat(tensors) if batched else input.contiguous()
        result = _combine(mine, link.exchange(mine), op)
        return _unflat(result, tensors) if batched else result.view(input.shape)

    def reduce(self, input, dst, op=ReduceOp.SUM, batched=False):
        tensors = list(input) if batched else [input]
        if not usable(self, tensors):
            return originals["reduce"].__wrapped__(self, input, dst, op=op, batched=batched)
        mine = _flat(tensors) if batched else input.contiguous()
        if dst != self.get_rank():
            link.send(mine)
            return None
        result = _combine(mine, link.recv_like(mine), op)
        return _unflat(result, tensors) if batched else result.view(input.shape)

    def broadcast(self, input, src, group=None, batched=False):
        tensors = list(input) if batched else [input]
        if not usable(self, tensors, group):
            return originals["broadcast"].__wrapped__(self, input, src, group=group, batched=batched)
        if src == self.get_rank():
            link.send(_flat(tensors))
        else:
            flat = link.recv_like(_flat(tensors))
            for t, value in zip(tensors, _unflat(flat, tensors)):
                t.data.copy_(value)
        return input

    def petlab_open(self, arrays, ops):
        """petlab's protocol opens numpy arrays here (one message, no torch in between),
        counted as CrypTen's ``_logging`` counts a batched ``all_reduce`` (petlab always
        turns its counting on): one round, each element sent and received."""
        self.comm_rounds += 1
        self.comm_bytes += 2 * sum(a.size for a in arrays) * self.BYTES_PER_ELEMENT
        tic = time.perf_counter()
        out = link.exchange_arrays(arrays, ops)
        self._log_communication_time(time.perf_counter() - tic)
        return out

    for fn in (all_reduce, reduce, broadcast):
        setattr(communicator_cls, fn.__name__, _logging(fn))
    communicator_cls.petlab_open = petlab_open
    link.originals = originals
    return originals


def restore(communicator_cls, originals: dict) -> None:
    """Undo :func:`install_peer_link`."""
    for name, fn in originals.items():
        setattr(communicator_cls, name, fn)
    if "petlab_open" in vars(communicator_cls):
        delattr(communicator_cls, "petlab_open")

