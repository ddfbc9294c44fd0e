"""Private set intersection between the two party processes, with SecretFlow's PSI.

The protocol is SecretFlow's (the PSI library shipped in the ``spu`` 0.9.5 wheel,
``spu.psi.psi_execute``): **RR22** (OPRF from VOLE, Raghuraman and Rindal 2022) by default,
**ECDH** on Curve25519 on request. Each party runs it over the library's own link
(brpc), on which *each* party listens on its own address and port and connects to the
other's; with a :class:`petlab.mpc.tls.TlsIdentity` the link runs mutually authenticated
TLS 1.3 with the peer's certificate as the only trusted one (the certificates petlab
uses on its other sockets). The gateway is the protocol's receiver and sends the result
to the wallet (``broadcast_result``), so **both** learn the intersection.

What each party learns: the intersection and the size of the other's set (the
protocol's messages reveal it; petlab also sends it, to report it). Every message that
crosses the link is listed in ``docs/security.md`` ("The PSI link"); no id crosses it in
the clear. Each party then keeps its rows in the
intersection in ascending order of its *own* copy of the id: the same order at both,
and no id is sent for it.

Each party's PSI port is open from the start and relays to the library's own server, a
unix socket only this user can reach (:class:`_Doorway`; with TLS on it drops any
connection that does not open with a TLS handshake). The library runs in its own fresh
interpreter, a child of the party (:mod:`petlab.data.psi_library`; executed, not forked,
so that it shares no memory with the party or with another party; umask 077, no core
dump), which a party starts as soon as it knows it will align (:func:`start_library`),
so that the library is loaded by the time the peer is met. Its waits are bounded there
and by the party (a peer that never connects, dies, or stalls the linked PSI ends the
run within ``timeout_s`` with a message naming it; see :func:`_run_library`), its log
goes to ``psi.log`` in the party's work folder, its temporary files stay in that folder,
and the trace file it always writes to ``/tmp`` is moved there.

>>> import tempfile, threading
>>> work = tempfile.mkdtemp()
>>> ends = {"gateway": ("127.0.0.1", free_port()), "wallet": ("127.0.0.1", free_port())}
>>> out = {}
>>> t = threading.Thread(target=lambda: out.update(g=private_intersection(
...     ids=["a", "b", "c"], role="gateway", endpoints=ends, tls=None, work_dir=f"{work}/g")))
>>> t.start()
>>> w = private_intersection(ids=["c", "x", "a"], role="wallet", endpoints=ends, tls=None, work_dir=f"{work}/w")
>>> t.join()
>>> w.ids, out["g"].ids, w.other_set_size, w.rows.tolist(), out["g"].rows.tolist(), w.protocol
(['a', 'c'], ['a', 'c'], 3, [2, 0], [0, 2], 'rr22')
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import shutil
import socket
import stat
import tempfile
import threading
import sys
import time
from pathlib import Path

import numpy as np

from petlab.mpc.tls import TlsIdentity
from petlab.net import free_port
from petlab.parties import Party

__all__ = ["PsiResult", "PsiError", "private_intersection", "free_port", "PROTOCOLS", "SECURITY_MODEL",
           "LibraryProcess", "start_library", "warm_up"]

#: The protocols offered (``data.psi``): RR22 by default, ECDH on Curve25519 on request.
PROTOCOLS = ("rr22", "ecdh")

#: What the report says about the protocols' security.
SECURITY_MODEL = {
    "rr22": "RR22 (OPRF from VOLE), semi-honest: each party learns the intersection and the other's set size",
    "ecdh": "ECDH on Curve25519, semi-honest: each party learns the intersection and the other's set size",
}

class PsiError(RuntimeError):
    """The PSI peer could not be reached or was lost, or the ids cannot be aligned (one line)."""


@dataclasses.dataclass(frozen=True)
class PsiResult:
    """What one party learned from the PSI, and what it cost there."""

    ids: list  # this party's ids in the intersection, in the shared order (ascending id)
    own_set_size: int
    other_set_size: int
    seconds: float  # from the ids to the aligned row order, at this party
    bytes_sent: int  # TCP payload on the PSI link (TLS and the link's framing included)
    bytes_received: int
    protocol: str = "rr22"
    rows: np.ndarray | None = None  # positions in ``ids`` given of the intersection, in the shared order
    peak_rss_mb: float = 0.0  # of the library's process, above what it shared with the party at its start
    phases: dict = dataclasses.field(default_factory=dict)  # seconds: ids, link, protocol, result


def warm_up() -> None:
    """What the party's side of the PSI uses (pyarrow's text kernels, petlab's generator
    module), imported and initialised: public code, no secret and no generator state, so
    the zygote (:mod:`petlab.mpc.zygote`) does it once for all roles. The library itself
    runs in its own interpreter (:func:`start_library`)."""
    import pyarrow.compute  # noqa: F401 - so that the clock measures the alignment, not imports
    import pyarrow.csv  # noqa: F401

    import petlab.mpc.secret_random  # noqa: F401

    _as_strings(["warm-up"])  # pyarrow's kernels initialise on first use (0.3 s)


# ---------------------------------------------------------------------------------------
# the party's side: check the ids, write them, start the library, read the result


class LibraryProcess:
    """SecretFlow's PSI library in its own fresh interpreter, for one PSI
    (:mod:`petlab.data.psi_library`): a child of this process, which starts loading the
    library at once. Its standard output and error are ``psi.log`` in ``work_dir``.

    Args:
        work_dir: the party's PSI work folder (made if missing): the PSI that uses this
            process must be given the same.
        argv: the program to run (default ``python -m petlab.data.psi_library``); the file
            descriptor it reports on and this process's pid are appended.
    """

    def __init__(self, *, work_dir, argv=None):
        import subprocess
        from multiprocessing.connection import Connection

        import petlab

        self.work_dir = Path(work_dir)
        self.log = self.work_dir / "psi.log"
        self.started = None  # when it was given its job: the trace file it writes is younger
        self.log_offset = 0  # where the job's lines begin in psi.log (it is appended across runs)
        self.ready = False
        ours, theirs = socket.socketpair()
        log_fd = None
        try:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            log_fd = _open_log(self.log)
            program = list(argv or [sys.executable, "-m", "petlab.data.psi_library"])
            # its folder is its working directory (first on its path); petlab found where
            # this process found it
            root = str(Path(petlab.__file__).resolve().parents[1])
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(
                [root, *filter(None, [os.environ.get("PYTHONPATH")])])}
            self.process = subprocess.Popen([*program, str(theirs.fileno()), str(os.getpid())],
                                            pass_fds=(theirs.fileno(),), cwd=self.work_dir, env=env,
                                            start_new_session=True,  # its group: it, and what it starts
                                            stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd)
        except OSError as err:
            ours.close()
            raise PsiError(f"cannot start the PSI library's process in {self.work_dir}: {err}") from None
        finally:
            if log_fd is not None:
                os.close(log_fd)
            theirs.close()
        self._conn = Connection(ours.detach())

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def exitcode(self):
        return self.process.poll()

    def is_alive(self) -> bool:
        return self.process.poll() is None

    def poll(self, timeout_s: float) -> bool:
        """Whether a message (or the end of the process's messages) is waiting."""
        try:
            return self._conn.poll(timeout_s)
        except OSError:
            return True  # the end: recv says so

    def recv(self) -> tuple:
        """The next message, ``(kind, value)``; ``EOFError`` once the process has closed its
        end, or sent what is not a message."""
        try:
            kind, value = json.loads(self._conn.recv_bytes())
        except (OSError, ValueError, TypeError):
            raise EOFError from None
        return str(kind), value

    def send_job(self, job: dict) -> None:
        """The one job; ``EOFError`` where the process has gone."""
        try:
            self.log_offset = self.log.stat().st_size
        except OSError:
            self.log_offset = 0
        self.started = time.time()
        try:
            self._conn.send_bytes(json.dumps(job).encode())
        except OSError:
            raise EOFError from None

    def wait_ready(self, *, timeout_s: float) -> None:
        """Until the library is loaded; ``PsiError`` (one line) if it cannot be."""
        deadline = time.monotonic() + timeout_s
        while not self.ready:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PsiError(f"SecretFlow's PSI library did not load within {timeout_s:g} s; see {self.log}")
            if not self.poll(min(left, 1.0)):
                continue
            try:
                kind, value = self.recv()
            except EOFError:
                self.join(5)
                raise PsiError(f"the PSI library's process ended while loading (exit code {self.exitcode}); "
                               f"see {self.log}") from None
            if kind == "error":
                value = str(value)
                raise PsiError(_own_message(value) or f"the PSI library failed to load: "
                                                      f"{(value.splitlines() or [''])[0][:300]} (see {self.log})")
            self.ready = kind == "ready"

    def kill(self) -> None:
        """SIGKILL to the process and whatever it started (its own process group)."""
        import signal

        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def join(self, timeout_s: float) -> None:
        import subprocess

        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pass

    def close(self) -> None:
        """Stop the process if it still runs (its one job done or never given) and reap it."""
        self._conn.close()
        self.join(_GOODBYE_S)
        self.kill()  # also what it started, if anything of it is left
        self.join(5)


def _open_log(path: Path) -> int:
    """``psi.log`` for appending: a regular file of this user's, 0600, never through a link
    (the library writes what the peer sends into it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
        os.close(fd)
        raise OSError(errno.EPERM, f"{path} is not a regular file of this user's")
    os.fchmod(fd, 0o600)
    return fd


def start_library(*, work_dir) -> LibraryProcess:
    """Start SecretFlow's PSI library in its own process for a PSI to come in ``work_dir``
    (:class:`LibraryProcess`): a party starts it as soon as it knows it will align, and
    passes it to :func:`private_intersection`."""
    return LibraryProcess(work_dir=work_dir)


def _as_strings(ids):
    """The ids as a pyarrow string array, with a clear error for missing, empty or
    duplicate ones."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        arr = ids if isinstance(ids, (pa.Array, pa.ChunkedArray)) else pa.array(
            ids.to_numpy(dtype=object) if hasattr(ids, "to_numpy") else list(ids), from_pandas=True)
        arr = arr.cast(pa.string()) if arr.type != pa.string() else arr
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as err:
        raise PsiError(f"the ids cannot be read as text ({str(err).splitlines()[0]})") from None
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if len(arr) == 0:
        raise PsiError("there are no ids to intersect (the table is empty)")
    if arr.null_count:
        raise PsiError(f"{arr.null_count:,} ids are missing (every row needs a customer id)")
    empty = pc.sum(pc.equal(pc.binary_length(arr), 0)).as_py() or 0
    if empty:
        raise PsiError(f"{empty:,} ids are empty strings (every row needs a customer id)")
    awkward = sum(pc.sum(pc.match_substring(arr, c)).as_py() or 0 for c in ('"', "\n", "\r"))
    if awkward:
        raise PsiError(f"{awkward:,} ids hold a line break or a double quote, which the PSI library's CSV "
                       "input cannot carry: use plain ids")
    unique = len(pc.unique(arr))
    if unique != len(arr):
        raise PsiError(f"the ids hold {len(arr) - unique:,} duplicates ({unique:,} distinct of {len(arr):,}): "
                       "each customer must appear once")
    return arr


#: The first two bytes of every TLS connection: a handshake record (0x16), version 3.x.
_TLS_HANDSHAKE = b"\x16\x03"


#: The most connections a party's PSI port holds at once.
DOORWAY_CONNECTIONS = 16


class _Doorway:
    """This party's PSI port, open from the start: it accepts the peer's connections and
    relays each, byte for byte, to the library's own server once that is up.

    The library (brpc) marks a peer it could not reach and tries it again only every
    3 s; with the port open before either library starts, no first attempt fails and
    the link is up in milliseconds. TLS runs end to end between the two libraries: the
    relay sees only its records. brpc's server, though, takes plaintext too on a TLS port
    (it decides per connection from the first byte, and the library does not ask it to
    insist), so with ``tls`` on the doorway relays only connections that open with a TLS
    handshake record and drops every other one unread. The library's own server listens
    on a unix socket in a folder only this user can enter (``inner``), not on a port.
    It counts the bytes it relays (``sent``: to the peer, ``received``: from it). It holds
    at most :data:`DOORWAY_CONNECTIONS` connections at once (the peer's library opens a
    few); one more is closed unread and counted in ``refused``, so that whoever reaches
    the port cannot make it start threads without bound.
    """

    def __init__(self, *, host: str, port: int, inner: str, tls: bool, timeout_s: float):
        try:
            self._server = socket.create_server((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise PsiError(f"PSI port {port} on {host} is already in use (another run, or another "
                               "program): choose another port") from None
            raise PsiError(f"cannot listen on {host}:{port} for the PSI ({err.strerror})") from None
        self._server.settimeout(0.2)
        self._inner, self._tls, self._timeout_s = inner, tls, timeout_s
        self.sent = self.received = self.refused = 0
        self.open = 0  # connections held now
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name="psi-doorway", daemon=True)
        self._thread.start()

    def _keep(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)

    def _count(self, field: str, n: int) -> None:
        with self._lock:
            setattr(self, field, getattr(self, field) + n)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                full = self.open >= DOORWAY_CONNECTIONS
                if full:
                    self.refused += 1
                else:
                    self.open += 1
            if full:
                conn.close()
                continue
            self._keep(conn)
            threading.Thread(target=self._held, args=(conn,), name="psi-relay", daemon=True).start()

    def _held(self, conn: socket.socket) -> None:
        try:
            self._relay(conn)
        finally:
            self._count("open", -1)

    def _speaks_tls(self, conn: socket.socket, deadline: float) -> bool:
        """Whether the connection's first bytes are a TLS handshake record (read without
        taking them); False for anything else, and for one that closes or stays silent."""
        import select

        while not self._stop.is_set() and time.monotonic() < deadline:
            readable, _, _ = select.select([conn], [], [], 0.2)
            if not readable:
                continue
            try:
                head = conn.recv(len(_TLS_HANDSHAKE), socket.MSG_PEEK)
            except OSError:
                return False
            if not head:  # closed before it said anything
                return False
            if len(head) == len(_TLS_HANDSHAKE) or not head.startswith(_TLS_HANDSHAKE[:len(head)]):
                return head == _TLS_HANDSHAKE
            time.sleep(0.01)  # one byte so far
        return False

    def _relay(self, conn: socket.socket) -> None:
        deadline = time.monotonic() + self._timeout_s
        if self._tls and not self._speaks_tls(conn, deadline):
            self._count("refused", 1)
            conn.close()
            return
        inner = None
        while inner is None:
            if self._stop.is_set() or time.monotonic() > deadline or _closed(conn):
                conn.close()
                return
            try:
                inner = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                inner.settimeout(1)
                inner.connect(self._inner)
            except OSError:
                inner.close()
                inner = None
                time.sleep(0.01)
        self._keep(inner)
        for sock in (conn, inner):
            sock.settimeout(None)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        back = threading.Thread(target=_pump, args=(inner, conn, lambda n: self._count("sent", n)),
                                name="psi-relay-back", daemon=True)
        back.start()
        _pump(conn, inner, lambda n: self._count("received", n))
        back.join()

    def close(self) -> None:
        self._stop.set()
        try:
            self._server.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        except OSError:
            pass
        self._server.close()
        with self._lock:
            for sock in self._sockets:
                sock.close()
        self._thread.join(1)


def _closed(conn: socket.socket) -> bool:
    """Whether the connecting side has gone (a probe that only checked the port is open)."""
    import select

    readable, _, _ = select.select([conn], [], [], 0)
    if not readable:
        return False
    try:
        return conn.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def _pump(src: socket.socket, dst: socket.socket, count) -> None:
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    try:
        while True:
            n = src.recv_into(buf)
            if not n:
                break
            dst.sendall(view[:n])
            count(n)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _wait_for_peer(*, host: str, port: int, deadline: float, where: str, timeout_s: float) -> None:
    """Return once the peer's PSI port accepts a connection; PsiError at the deadline."""
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError as err:
            if time.monotonic() > deadline:
                raise PsiError(f"{where} did not open its PSI port within {timeout_s:g} s "
                               f"({err.strerror or err}; is it started, with this address and port?)") from None
            time.sleep(0.05)


def _write_ids(arr, path: Path) -> None:
    """One column ``id``: a salt row first (see below), then the ids.

    The library sends the peer a SHA-256 digest of its whole input (to stop early when
    both inputs are equal). A first row of 256 random bits from the operating system
    makes that digest useless for testing a guess of this party's id list; the row
    itself is in no one else's set (the chance that it is: 2^-256 per id).
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from petlab.mpc.secret_random import fresh_key

    salt = pa.array([fresh_key().hex()], type=pa.string())
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as fh:  # this user's only
        pacsv.write_csv(pa.table({"id": pa.concat_arrays([salt, arr])}), fh)


def _read_intersection(path: Path):
    import pyarrow as pa
    import pyarrow.csv as pacsv

    table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
        column_types={"id": pa.string()}, strings_can_be_null=False, quoted_strings_can_be_null=False))
    return table.column("id").combine_chunks()


def _aligned(own, shared):
    """(ids in the shared order, their positions in ``own``): ascending id, byte order."""
    import pyarrow.compute as pc

    ascending = len(shared) < 2 or pc.all(pc.less(shared[:-1], shared[1:])).as_py()
    if not ascending:  # the library writes them sorted already; this party does not rely on it
        shared = pc.take(shared, pc.sort_indices(shared))
    rows = pc.index_in(shared, value_set=own).to_numpy(zero_copy_only=False)
    if (rows < 0).any():
        raise PsiError("the PSI library returned an id this party does not hold")
    return shared, rows.astype(np.int64)


def _endpoint(value) -> tuple[str, int]:
    host, port = value
    return str(host), int(port)


def private_intersection(*, ids, role: str, endpoints: dict, tls: TlsIdentity | None, work_dir,
                         protocol: str = "rr22", timeout_s: float = 120.0, progress: bool = False,
                         library: LibraryProcess | None = None) -> PsiResult:
    """Run PSI with the peer; return this party's intersecting ids in the shared order.

    Args:
        ids: this party's customer ids (anything pyarrow reads as text: a list, a pandas
            Series, an Arrow array); unique, none missing or empty.
        role: "gateway" (the protocol's receiver, which sends the result on) or "wallet".
        endpoints: ``{"gateway": (host, port), "wallet": (host, port)}``: where each party
            listens for the PSI link (this party binds its own entry; the peer reaches it there).
        tls: this party's TLS identity (mutual TLS 1.3 on the link, the peer's certificate the
            only one trusted); ``None`` runs the link in the clear.
        work_dir: this party's folder for the library's files (its input and output are
            deleted at the end; ``psi.log`` and ``psi.trace`` stay).
        protocol: "rr22" or "ecdh" (:data:`PROTOCOLS`).
        timeout_s: the bound on waiting for the peer: to connect, for each message, and
            for the linked PSI to move; a linked PSI ends at the latest after
            10 x ``timeout_s`` plus 120 s a million ids of the larger set.
        progress: show the library's progress as a bar (tqdm).
        library: the library's process, started ahead for ``work_dir``
            (:func:`start_library`); by default one is started here. It serves this PSI
            only and has ended when this returns.

    Raises:
        PsiError: bad ids, a port in use, a peer that never connects or is lost, a
            refused certificate, no library (one line each).
    """
    import pyarrow as pa

    work = Path(work_dir)
    try:
        if protocol not in PROTOCOLS:
            raise PsiError(f"unknown PSI protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
        if library is not None and library.work_dir.resolve() != work.resolve():
            raise ValueError(f"the PSI library was started for {library.work_dir}, not for {work}")
        me = Party.parse(role)
        peer = next(p for p in Party if p != me)
        try:
            ends = {p: _endpoint(endpoints[str(p)]) for p in Party}
        except (KeyError, TypeError, ValueError):
            raise PsiError("endpoints must give (host, port) for the gateway and the wallet") from None
        warm_up()  # once per process (pyarrow's kernels), before the clock: not part of the PSI
        own = _as_strings(ids)
        library = library or LibraryProcess(work_dir=work)
        t_load = time.perf_counter()
        library.wait_ready(timeout_s=max(timeout_s, 60.0))  # started ahead, it is loaded by now
        t0 = time.perf_counter()
        paths = {"input": work / "psi_input.csv", "output": work / "psi_output.csv", "log": library.log,
                 "tmp": work / "psi_tmp", "trace": work / "psi.trace"}
        _sweep(paths)  # what a run that crashed here may have left: the ids, the intersection
        paths["tmp"].mkdir(mode=0o700)  # the library's temporary files, and the unix socket of its server
        paths["inner"] = _inner_socket(paths["tmp"])
        doorway = _Doorway(host=ends[me][0], port=ends[me][1], inner=str(paths["inner"]), tls=tls is not None,
                           timeout_s=timeout_s)
        deadline = time.monotonic() + timeout_s
        try:
            _write_ids(own, paths["input"])
            t_ids = time.perf_counter()
            where = f"the {peer} at {ends[peer][0]}:{ends[peer][1]}"
            _wait_for_peer(host=ends[peer][0], port=ends[peer][1], deadline=deadline, where=where,
                           timeout_s=timeout_s)
            report = _run_library(library=library, me=me, peer=peer, ends=ends, tls=tls, protocol=protocol,
                                  n=len(own), paths=paths, timeout_s=timeout_s, progress=progress,
                                  deadline=deadline)
            report["bytes_sent"] += doorway.sent  # the peer's connection to this party's port
            report["bytes_received"] += doorway.received
            t_library = time.perf_counter()
            shared = _read_intersection(paths["output"]) if report["intersection"] else pa.array([], pa.string())
            if len(shared) != report["intersection"]:
                raise PsiError(f"the PSI library wrote {len(shared):,} ids but reported {report['intersection']:,}")
            shared, rows = _aligned(own, shared)
            found = shared.to_pylist()
        finally:
            doorway.close()
            _tidy(paths)
    finally:
        # after its report the library only says goodbye on the link, at once where the
        # peer is still there; where the peer has already gone it would retry for seconds:
        # it is stopped instead (both have their result by then)
        if library is not None:
            library.close()
    t_end = time.perf_counter()
    phases = {"load": t0 - t_load, "ids": t_ids - t0, "link": report["link_seconds"],
              "protocol": report["protocol_seconds"], "library": t_library - t_ids, "result": t_end - t_library}
    return PsiResult(ids=found, own_set_size=len(own), other_set_size=report["other_size"],
                     seconds=t_end - t0, bytes_sent=report["bytes_sent"],
                     bytes_received=report["bytes_received"], protocol=protocol, rows=rows,
                     peak_rss_mb=report["peak_rss_mb"], phases=phases)


def _sweep(paths: dict) -> None:
    """Delete the library's input, output and temporary folder (the ids)."""
    for key in ("input", "output"):
        paths[key].unlink(missing_ok=True)
    paths["input"].with_name(paths["input"].name + ".meta").unlink(missing_ok=True)  # the library's digest
    shutil.rmtree(paths["tmp"], ignore_errors=True)
    if paths["tmp"].is_symlink() or paths["tmp"].exists():
        paths["tmp"].unlink()


def _inner_socket(folder: Path) -> Path:
    """Where the library's own server listens: a unix socket in ``folder`` (0700), or in
    a private temporary folder when that path is too long for a socket address."""
    path = folder / "link.sock"
    if len(os.fsencode(path)) < 100:  # sun_path holds 108 bytes
        return path
    return Path(tempfile.mkdtemp(prefix="petlab-psi-")) / "link.sock"


#: Where the library writes its trace file, whatever ``TMPDIR`` says.
_TRACE_FOLDER = Path("/tmp")

#: The library's own line when it has written its trace file (``[launch.cc:92]``); the
#: path it names is only a hint: the file is taken only if it is this user's own regular
#: file, directly in the temporary folder, written since the library's process started.
_TRACE_LINE = re.compile(r"^\[[0-9 :.-]+\] \[info\] \[launch\.cc:\d+\] Trace has been written to "
                         r"(/\S*/psi_[A-Za-z0-9_-]+\.trace)\.$", flags=re.M)


def _tidy(paths: dict) -> None:
    """Delete the library's files that hold ids, and move its trace file into the work folder.

    The trace is found by the library's own log line, but its path is checked as if an
    attacker had chosen it (the library logs messages from the peer verbatim): only a file
    named ``psi_*.trace`` in the system's temporary folder, regular (not a link), owned by
    this user and modified since the library's process started, is moved.
    """
    _sweep(paths)
    if paths["inner"].parent != paths["tmp"]:
        shutil.rmtree(paths["inner"].parent, ignore_errors=True)
    started = paths.get("started")
    if started is None:
        return
    for trace in _TRACE_LINE.findall(_log_text(paths)):
        trace = Path(trace)
        try:
            info = os.lstat(trace)
        except OSError:
            continue
        if (trace.parent == _TRACE_FOLDER and stat.S_ISREG(info.st_mode) and info.st_uid == os.getuid()
                and info.st_mtime >= started - 1):
            paths["trace"].unlink(missing_ok=True)  # a link planted there is not followed
            shutil.move(trace, paths["trace"])
            os.chmod(paths["trace"], 0o600)


# ---------------------------------------------------------------------------------------
# the library's process


def _run_library(*, library: LibraryProcess, me: Party, peer: Party, ends: dict, tls, protocol: str, n: int,
                 paths: dict, timeout_s: float, progress: bool, deadline: float) -> dict:
    """Give the library's process its job, watch it, and return its report (or raise PsiError).

    Once linked, the library's own bound on each wait (``recv_timeout_ms``) starts again
    whenever *any* message arrives, so a peer that keeps sending junk could hold it
    forever. The party therefore ends the run itself when the library has not moved for
    ``timeout_s`` (moving: its progress report changed, or its process used CPU time, at
    least :data:`_WORK_SHARE` of ``timeout_s``, which a library waiting for its peer does
    not), and in any
    case at :func:`_hard_cap_s` after the link is up.
    """
    job = {"me": str(me), "ends": {str(p): list(ends[p]) for p in Party},
           "tls": None if tls is None else {"cert": str(tls.cert), "key": str(tls.key),
                                            "peer_cert": str(tls.peer_cert)},
           "protocol": protocol, "n": n, "timeout_s": timeout_s,
           "paths": {k: str(paths[k]) for k in ("input", "output", "tmp", "inner")}}
    peer_host, peer_port = ends[peer]
    where = f"the {peer} at {peer_host}:{peer_port}"
    linked, report, failure = False, None, None
    linked_at = moved = cap_s = last = worked = None  # once linked: when, when it last moved, the cap
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=100, desc=f"PSI {protocol} ({me})", unit="%")
    try:
        try:
            library.send_job(job)
        except EOFError:
            library.join(5)
            failure = _died(library, paths, where)
        paths["started"], paths["log_offset"] = library.started, library.log_offset  # this job's trace and lines
        while report is None and failure is None:
            if library.poll(0.2):
                try:
                    kind, value = library.recv()
                except EOFError:
                    library.join(5)
                    failure = _died(library, paths, where)
                    break
                if kind == "linked":
                    linked, linked_at, moved, worked = True, time.monotonic(), time.monotonic(), _cpu_s(library.pid)
                    cap_s = _hard_cap_s(timeout_s=timeout_s, n=n)
                elif kind == "sizes":
                    moved, cap_s = time.monotonic(), _hard_cap_s(timeout_s=timeout_s, n=max(n, value))
                elif kind == "progress":
                    value = tuple(value)
                    if value != last:
                        last, moved = value, time.monotonic()
                    if bar is not None:
                        bar.update(max(0, value[0] - bar.n))
                elif kind == "done":
                    report = value
                elif kind == "error":
                    failure = _explain(value, paths=paths, where=where, peer=peer, timeout_s=timeout_s)
            elif not library.is_alive():
                failure = _died(library, paths, where)
            if report is not None or failure is not None:
                break
            now = time.monotonic()
            if linked and _cpu_s(library.pid) - worked >= _WORK_SHARE * timeout_s:
                moved, worked = now, _cpu_s(library.pid)
            if linked and now - moved > timeout_s:
                failure = f"lost {where} during the PSI: no progress within {timeout_s:g} s"
            elif linked and now - linked_at > cap_s:
                failure = (f"the PSI with {where} did not end within {cap_s:.0f} s (the bound: 10 x timeout_s, "
                           f"plus {_CAP_S_PER_MILLION:g} s a million ids)")
            elif not linked and now > deadline:
                failure = _not_linked(paths=paths, where=where, peer=peer, timeout_s=timeout_s, tls=tls)
            elif not linked:  # a refused certificate: the library would try again until the deadline
                refusal = _tls_refusal(_log_text(paths), peer=peer, tls=tls)
                if refusal:
                    failure = f"PSI with {where}: {refusal}"
        if bar is not None and report is not None:
            bar.update(100 - bar.n)
    finally:
        if bar is not None:
            bar.close()
        if failure is not None:
            library.kill()  # the caller closes it
    if failure is not None:
        raise PsiError(failure)
    return report


#: How long the library's process may take to close the link after its report.
_GOODBYE_S = 0.5

#: CPU time of the library's process that counts as moving, as a share of ``timeout_s``:
#: a library at work keeps a core busy; one that only waits for its peer, taking the odd
#: message, uses far less.
_WORK_SHARE = 0.02


def _cpu_s(pid: int) -> float:
    """User and system CPU seconds of process ``pid`` so far (0 once it has gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


#: The hard cap on a PSI once linked, per million ids of the larger set, on top of
#: 10 x ``timeout_s`` (measured here: ECDH takes about 28 s a million, RR22 about 7 s).
_CAP_S_PER_MILLION = 120.0


def _hard_cap_s(*, timeout_s: float, n: int) -> float:
    """The longest a linked PSI may run, however steadily it seems to progress."""
    return 10 * timeout_s + _CAP_S_PER_MILLION * n / 1e6


def _log_text(paths: dict) -> str:
    """The library's lines for this job (``psi.log`` holds earlier runs' too)."""
    try:
        with open(paths["log"], "rb") as fh:
            fh.seek(paths.get("log_offset", 0))
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


def _died(child, paths: dict, where: str) -> str:
    return (f"the PSI library's process ended without a result (exit code {child.exitcode}) while aligning "
            f"with {where}; see {paths['log']}")


def _tls_refusal(text: str, *, peer: Party, tls) -> str | None:
    if tls is None:
        if re.search(r"wrong version number|http request|unexpected eof|ssl", text, flags=re.I):
            return f"the {peer} speaks TLS on the PSI link and this party does not (tls: off here?)"
        return None
    if "certificate verify failed" in text:
        return f"the {peer}'s certificate does not match the pinned one ({tls.peer_cert})"
    if re.search(r"alert (unknown ca|bad certificate|certificate required|decrypt error)|"
                 r"peer did not return a certificate", text):
        return (f"the {peer} did not accept this party's certificate ({tls.cert}): it does not match the "
                f"certificate pinned there for the {tls.role}")
    if re.search(r"wrong version number|packet length too long|record layer failure", text, flags=re.I):
        return f"the {peer} does not speak TLS on the PSI link (is TLS off in its run file?)"
    return None


def _not_linked(*, paths: dict, where: str, peer: Party, timeout_s: float, tls) -> str:
    refusal = _tls_refusal(_log_text(paths), peer=peer, tls=tls)
    if refusal:
        return f"PSI with {where}: {refusal}"
    return f"{where} did not connect for the PSI within {timeout_s:g} s (is it started, with this address and port?)"


def _own_message(message: str) -> str | None:
    """The one line the library's process wrote itself (``petlab: ...``), if it is one."""
    return message[len("petlab:"):].strip() if message.startswith("petlab:") else None


def _explain(message: str, *, paths: dict, where: str, peer: Party, timeout_s: float) -> str:
    """One line for an error the library raised."""
    first = message.strip().splitlines()[0] if message.strip() else "no message"
    if _own_message(message):
        return _own_message(message)
    if re.search(r"timeout|timed out", message, flags=re.I):
        return f"lost {where} during the PSI: no message from it within {timeout_s:g} s"
    if re.search(r"connect|refused|reset|closed|host is down|EOF|\[E\d+\]|ErrorCode", message, flags=re.I):
        return f"lost {where} during the PSI (the link failed: {first[:200]})"
    return f"the PSI with {where} failed: {first[:300]} (details in {paths['log']})"
