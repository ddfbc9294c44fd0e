"""Meeting the other parties: start-up checks, bounded waits, and naming a lost peer.

Before any data leaves a party, the two data parties greet each other over TCP
(:func:`greet_peer`, on the PSI port of the gateway's host, over mutually authenticated
TLS when the parties have key pairs: :mod:`petlab.mpc.tls`): each sends its role, petlab
version and the *shared* part of its configuration, and each compares. A peer that never
comes, a port already taken, two parties claiming the same role, or configurations that
differ (model, rows, seed ...) all end there, within the connect timeout, with a message
that says which. Then torch.distributed (gloo) is set up with the same bound on every
wait (:func:`bounded_waits`), so a peer that dies mid-training cannot leave the other
blocked for gloo's default 30 minutes.

>>> diff_shared({"model": "logreg", "seed": 0}, {"model": "mlp", "seed": 0})
["model: 'logreg' here, 'mlp' at the peer"]
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import socket
import struct
import time

from petlab.mpc.tls import TlsIdentity, secure_socket

__all__ = ["RendezvousError", "check_port_free", "greet_peer", "diff_shared", "bounded_waits",
           "lost_peer", "interface_towards", "use_interface_towards", "watchdog"]


class RendezvousError(RuntimeError):
    """The parties could not meet, or met and disagree (the message says which)."""


def _listen_error(err: OSError, *, address: str, port: int, what: str) -> RendezvousError:
    if err.errno == errno.EADDRINUSE:
        return RendezvousError(f"{what} port {port} on {address} is already in use "
                               "(another run, or another program): choose another port")
    return RendezvousError(f"cannot listen on {address}:{port} for the {what} ({err.strerror})")


def check_port_free(*, address: str, port: int, what: str) -> None:
    """Raise :class:`RendezvousError` when ``port`` cannot be bound at ``address``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError as err:
            raise _listen_error(err, address=address, port=port, what=what) from None


def diff_shared(mine: dict, theirs: dict, prefix: str = "") -> list[str]:
    """Human-readable differences between two nested shared configurations."""
    out = []
    for key in sorted(set(mine) | set(theirs)):
        a, b = mine.get(key, "<absent>"), theirs.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += diff_shared(a, b, prefix=f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} here, {b!r} at the peer")
    return out


def _send(sock: socket.socket, payload: dict) -> None:
    data = json.dumps(payload, sort_keys=True).encode()
    sock.sendall(struct.pack("!I", len(data)) + data)


def _recv(sock: socket.socket) -> dict:
    def exact(n):
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise RendezvousError("the peer closed the connection during the greeting")
            buf += chunk
        return buf

    (n,) = struct.unpack("!I", exact(4))
    if n > 1 << 20:
        raise RendezvousError("the peer's greeting is not a petlab greeting")
    return json.loads(exact(n))


def greet_peer(*, role: str, peer: str, listen: bool, address: str, port: int, timeout_s: float,
               shared: dict, tls: TlsIdentity | None, key_share: bytes | None = None) -> dict:
    """Exchange role, version and shared configuration with the peer; check them.

    Args:
        role: this party's role; ``peer``: the role expected at the other end.
        listen: ``True`` at the party that accepts (the gateway, whose host is ``address``).
        address, port: where the listening party accepts.
        timeout_s: how long to wait for the peer to appear and answer.
        shared: this party's shared configuration (compared key by key).
        tls: this party's TLS identity (mutual TLS 1.3, the peer's certificate pinned,
            see :mod:`petlab.mpc.tls`); ``None`` for plain TCP.
        key_share: this party's X25519 public key for the key the two data parties
            agree (:mod:`petlab.mpc.secret_random`); it travels inside the greeting, so
            under TLS the exchange is authenticated by both certificates.

    Returns:
        The peer's greeting.
    """
    from petlab import __version__

    mine = {"petlab": "greeting", "role": role, "version": __version__, "shared": shared}
    if key_share is not None:
        mine["key_share"] = key_share.hex()
    deadline = time.monotonic() + timeout_s
    if listen:
        try:
            server = socket.create_server((address, port))
        except OSError as err:
            raise _listen_error(err, address=address, port=port, what="greeting/PSI") from None
        with server:
            server.settimeout(timeout_s)
            try:
                sock, _ = server.accept()
            except socket.timeout:
                raise RendezvousError(f"the {peer} did not connect to {address}:{port} within "
                                      f"{timeout_s:g} s (is it started, with this address and port?)") from None
    else:
        while True:
            try:
                sock = socket.create_connection((address, port), timeout=max(0.5, deadline - time.monotonic()))
                break
            except OSError as err:
                if time.monotonic() > deadline:
                    raise RendezvousError(f"the {peer} at {address}:{port} did not answer within "
                                          f"{timeout_s:g} s ({err.strerror or err})") from None
                time.sleep(0.2)
    sock = secure_socket(sock=sock, tls=tls, server_side=listen, timeout_s=max(1.0, deadline - time.monotonic()),
                         error=RendezvousError, where=f"greeting with the {peer} at {address}:{port}")
    with sock:
        sock.settimeout(max(1.0, deadline - time.monotonic()))
        try:
            _send(sock, mine)
            theirs = _recv(sock)
        except (socket.timeout, TimeoutError):
            raise RendezvousError(f"the {peer} at {address}:{port} connected but did not greet "
                                  f"within {timeout_s:g} s") from None
        except (ValueError, UnicodeDecodeError):
            raise RendezvousError(f"something at {address}:{port} answered that is not a petlab party") from None
        except OSError as err:  # reset: e.g. a peer that speaks TLS met one that does not
            hint = " (does it run TLS? this party runs without: tls: off)" if tls is None else ""
            raise RendezvousError(f"the {peer} at {address}:{port} closed the connection during the greeting "
                                  f"({err.strerror or err}){hint}") from None
    if theirs.get("petlab") != "greeting":
        raise RendezvousError(f"something at {address}:{port} answered that is not a petlab party")
    if theirs["role"] == role:
        raise RendezvousError(f"both parties were started with role {role!r}: one of them must be the {peer}")
    if theirs["role"] != peer:
        raise RendezvousError(f"expected the {peer} at {address}:{port}, met role {theirs['role']!r}")
    if theirs["version"] != __version__:
        raise RendezvousError(f"petlab {__version__} here, {theirs['version']} at the {peer}: "
                              "both parties must run the same version")
    differences = diff_shared(shared, theirs["shared"])
    if differences:
        raise RendezvousError(f"the {peer} runs with a different configuration: " + "; ".join(differences))
    return theirs


@contextlib.contextmanager
def bounded_waits(seconds: float):
    """Make every torch.distributed process group created inside this block (CrypTen's
    included) wait at most ``seconds`` for a rendezvous or a message, instead of gloo's
    default 30 minutes. Outside the block nothing changes."""
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=seconds)
    originals = {name: getattr(dist, name) for name in ("init_process_group", "new_group")}

    def with_timeout(fn):
        def call(*args, **kwargs):
            kwargs.setdefault("timeout", timeout)
            if kwargs["timeout"] is None:
                kwargs["timeout"] = timeout
            return fn(*args, **kwargs)

        return call

    for name, fn in originals.items():
        setattr(dist, name, with_timeout(fn))
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)


def lost_peer(*, error: BaseException, me: str, provider: str) -> str:
    """Which role a communication failure of ``me`` points at.

    A failure inside CrypTen's TTP client code is a lost dealer; any other at a data
    party is a lost data party (two-party runs: the only other one).

    >>> lost_peer(error=RuntimeError("x"), me="wallet", provider="TFP")
    'gateway'
    """
    import traceback

    if provider == "TTP" and me == "gateway":
        frames = traceback.extract_tb(error.__traceback__)
        if any("ttp_provider" in f.filename for f in frames):
            return "dealer"
    return "wallet" if me == "gateway" else "gateway"


def interface_towards(address: str) -> tuple[str, str] | None:
    """(interface name, local IPv4 address) this host uses to reach ``address``;
    ``None`` for loopback or when it cannot be told.

    gloo advertises the address its host name resolves to, often 127.0.0.1, which the
    other hosts cannot reach; pointing it at this interface (``GLOO_SOCKET_IFNAME``) makes
    multi-host runs work without any network configuration by the user.

    >>> interface_towards("127.0.0.1") is None
    True
    """
    import fcntl

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((address, 9))  # no packet is sent: this only picks the route
            local = probe.getsockname()[0]
    except OSError:
        return None
    if local.startswith("127."):
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                raw = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))  # SIOCGIFADDR
            except OSError:
                continue
            if socket.inet_ntoa(raw[20:24]) == local:
                return name, local
    return None


def use_interface_towards(address: str) -> str | None:
    """Set ``GLOO_SOCKET_IFNAME`` to the interface towards ``address`` (unless the user
    set it); returns the interface used, or ``None``."""
    import os

    if os.environ.get("GLOO_SOCKET_IFNAME"):
        return os.environ["GLOO_SOCKET_IFNAME"]
    found = interface_towards(address)
    if found:
        os.environ["GLOO_SOCKET_IFNAME"] = found[0]
        return found[0]
    return None


@contextlib.contextmanager
def watchdog(*, seconds: float, on_expiry):
    """Call ``on_expiry()`` (which should end the process) if the block has not finished
    within ``seconds``: the last line of defence for waits inside native code that no
    Python timeout reaches."""
    import threading

    timer = threading.Timer(seconds, on_expiry)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
