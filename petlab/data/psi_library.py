"""The PSI library's own process: a fresh interpreter that loads SecretFlow's PSI and runs
one party's side of one PSI (``python -m petlab.data.psi_library FD PARTY_PID``).

A party starts it with :func:`petlab.data.psi.start_library` (as soon as it knows it will
align by PSI, so that it is loaded by the time the party is ready) and talks to it over
the inherited file descriptor ``FD``: one JSON message per frame
(:class:`multiprocessing.connection.Connection` byte frames, never pickles). What it says,
in order:

- ``["ready", null]`` once the library is loaded, or ``["error", text]``;
- after the party's one job (``{"me", "ends", "tls", "protocol", "n", "paths",
  "timeout_s"}``): ``["linked", null]``, ``["sizes", other_size]``, ``["progress", [percent,
  finished, running]]`` every second, then ``["done", report]`` or ``["error", text]``.

It is *executed*, not forked from the party: it inherits no memory of a process that has
imported torch or run OpenMP threads (the library uses OpenMP; a fork of a process whose
torch had computed on two threads crashed it), and nothing of another party. So it loads
only the library's two extension modules (``spu.psi``, ``spu.libspu.link``; 0.1 s), not
the ``spu`` package's ``__init__``, which imports jax for nothing the PSI uses. Before it
loads the library it makes itself private (umask 077, no core dump, not dumpable): it
holds the ids and, during the protocol, the pair's keys; it ends, with whatever it
started, when the party that started it ends (:func:`_end_with`). Its standard output and error
(the library's log) are the party's ``psi.log``, opened for it by the party; it imports
nothing of petlab's but :mod:`petlab.parties`.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import time

from petlab.parties import Party

__all__ = ["load", "main", "serve"]

#: Longest pause between two of the library's attempts to reach the peer (ms). The
#: library's own defaults (1 s, then 3 s, 5 s ... per attempt) can keep a party waiting
#: for seconds after its peer has come up.
RETRY_MS = 200


def load():
    """``(spu.psi, spu.libspu.link)``, the package's ``__init__`` not run (see the module's
    docstring); ``ImportError`` where SecretFlow's ``spu`` is not installed."""
    import importlib
    import importlib.util

    if "spu" in sys.modules:  # loaded already (whole or bare): use it
        return importlib.import_module("spu.psi"), importlib.import_module("spu.libspu.link")
    spec = importlib.util.find_spec("spu")
    if spec is None:
        raise ImportError("No module named 'spu'")
    sys.modules["spu"] = importlib.util.module_from_spec(spec)  # the package without its code
    libspu = importlib.import_module("spu.libspu")
    libspu._check_cpu_features()  # what the package's __init__ checks: a clear error, not SIGILL
    return importlib.import_module("spu.psi"), importlib.import_module("spu.libspu.link")


def _send(conn, kind: str, value=None) -> None:
    conn.send_bytes(json.dumps([kind, value]).encode())


def _private_process() -> None:
    """Keep what this process holds (the ids, the pair's keys) to this user: the files it
    writes are readable by this user only and it leaves no core dump (``RuntimeError``
    where Linux refuses to mark it not dumpable)."""
    import ctypes
    import resource

    os.umask(0o077)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if not sys.platform.startswith("linux"):
        return  # the core limit still holds
    pr_set_dumpable = 4
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_dumpable, 0, 0, 0, 0) != 0:
        raise RuntimeError(f"cannot mark the PSI library's process not dumpable: {os.strerror(ctypes.get_errno())}")


#: How often the process checks that the party that started it is still there (s).
WATCH_S = 0.1


def _end_with(party_pid: int) -> None:
    """End this process and everything it started (the library runs ``sort`` and ``sh``:
    its process group, of which the party made it the leader) once the party that started
    it has gone, whatever way it went (a thread: the library releases the GIL while it
    works, measured)."""
    import signal
    import threading

    def end() -> None:
        if os.getpgid(0) == os.getpid():  # the leader of its own group, as the party starts it
            os.killpg(os.getpid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)

    def watch() -> None:
        while os.getppid() == party_pid:
            time.sleep(WATCH_S)
        end()

    if os.getppid() != party_pid:  # gone already
        end()
    threading.Thread(target=watch, name="party-watch", daemon=True).start()


def _vm_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _link_bytes(*, peer: tuple[str, int]) -> tuple[int, int]:
    """(sent, received) TCP payload bytes on this process's connections to the peer's PSI
    port (Linux TCP_INFO); the peer's connections to this party pass its doorway, which
    counts them."""
    try:
        peer_ip = socket.gethostbyname(peer[0])
    except OSError:
        peer_ip = peer[0]
    sent = received = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        with sock:
            try:
                if sock.type != socket.SOCK_STREAM or sock.family != socket.AF_INET:
                    continue
                remote = sock.getpeername()
            except OSError:  # a listening socket, or one already closed
                continue
            if (remote[0], remote[1]) != (peer_ip, peer[1]):
                continue
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232)
            if len(info) >= 136:
                acked, got = struct.unpack_from("QQ", info, 120)  # tcpi_bytes_acked, tcpi_bytes_received
                sent, received = sent + acked, received + got
    return sent, received


def _desc(*, link_lib, me: Party, ends: dict, inner: str, tls: dict | None, timeout_s: float):
    desc = link_lib.Desc()
    desc.id = "petlab-psi"
    for party in sorted(Party, key=lambda p: p.rank):  # this party's own server: behind its doorway
        desc.add_party(str(party), f"unix:{inner}" if party == me else "{}:{}".format(*ends[str(party)]))
    timeout_ms = int(timeout_s * 1000)
    desc.recv_timeout_ms = timeout_ms  # the bound on every wait for a message
    desc.http_timeout_ms = min(timeout_ms, 60_000)  # one message's delivery
    desc.connect_retry_interval_ms = RETRY_MS
    desc.connect_retry_times = max(10, int(timeout_s * 1000 / RETRY_MS))  # the party stops it at timeout_s
    desc.retry_opts.retry_interval_ms = RETRY_MS
    desc.retry_opts.retry_interval_incr_ms = RETRY_MS
    desc.retry_opts.max_retry_interval_ms = 5 * RETRY_MS
    if tls is not None:
        desc.enable_ssl = True
        for options in (desc.client_ssl_opts, desc.server_ssl_opts):
            options.cert.certificate_path = tls["cert"]
            options.cert.private_key_path = tls["key"]
            options.verify.ca_file_path = tls["peer_cert"]  # the one certificate trusted
            options.verify.verify_depth = 1  # > 0: the peer must present a certificate, and it is checked
    return desc


def serve(conn, *, psi, link_lib) -> None:
    """Take the party's job from ``conn`` and run it: the link, the size exchange, the
    protocol, the byte counts, each step reported on ``conn``."""
    job = json.loads(conn.recv_bytes())
    paths = job["paths"]
    os.environ["TMPDIR"] = paths["tmp"]  # its temporary folders, and sort's
    me = Party.parse(job["me"])
    peer = next(p for p in Party if p != me)
    start_kb = _vm_kb("VmRSS")
    desc = _desc(link_lib=link_lib, me=me, ends=job["ends"], inner=paths["inner"], tls=job["tls"],
                 timeout_s=job["timeout_s"])
    t_start = time.perf_counter()
    lctx = link_lib.create_brpc(desc, me.rank)
    t_linked = time.perf_counter()
    _send(conn, "linked")
    sizes = [int(s) for s in lctx.all_gather(str(job["n"]))]  # revealed by the protocol anyway
    other = sizes[1 - me.rank]
    _send(conn, "sizes", other)
    config = psi.PsiExecuteConfig(
        protocol_conf=psi.PsiProtocolConfig(
            protocol=psi.PsiProtocol.PROTOCOL_RR22 if job["protocol"] == "rr22" else psi.PsiProtocol.PROTOCOL_ECDH,
            receiver_rank=Party.GATEWAY.rank, broadcast_result=True,
            ecdh_params=psi.EcdhParams(curve=psi.EllipticCurveType.CURVE_25519)),
        input_params=psi.InputParams(path=paths["input"], selected_keys=["id"], keys_unique=True),
        output_params=psi.OutputParams(path=paths["output"], disable_alignment=False))

    def hook(data) -> None:
        _send(conn, "progress", [int(data.percentage), int(data.finished), int(data.running)])

    report = psi.psi_execute(config, lctx, psi.ProgressParams(hook=hook, interval_ms=1000))
    t_done = time.perf_counter()
    sent, received = _link_bytes(peer=tuple(job["ends"][str(peer)]))
    lctx.all_gather("done")  # both have their result: from here on neither needs the other
    _send(conn, "done", {"other_size": other, "intersection": int(report.intersection_count),
                         "bytes_sent": sent, "bytes_received": received,
                         "link_seconds": t_linked - t_start, "protocol_seconds": t_done - t_linked,
                         "peak_rss_mb": max(0, _vm_kb("VmHWM") - start_kb) / 1024})
    try:  # the peer may already be gone: the last acknowledgement can fail, harmlessly
        lctx.stop_link()
    except Exception:  # noqa: BLE001
        pass


def main(argv=None, *, loader=load, server=serve) -> int:
    """The process (``argv``: the report descriptor, the party's pid): private first, then
    the library, ``ready``, the one job. ``loader`` and ``server`` are what it loads and
    runs (a test passes its own)."""
    from multiprocessing.connection import Connection

    argv = sys.argv[1:] if argv is None else argv
    fd = int(argv[0])
    os.set_inheritable(fd, False)  # not to the library's own children (``sort``, ``sh``)
    conn = Connection(fd)
    code = 1
    try:
        _end_with(int(argv[1]))
        _private_process()
        try:
            psi, link_lib = loader()
        except ImportError as err:
            _send(conn, "error", f"petlab: SecretFlow's PSI is not installed ({err}): `make venv` installs spu 0.9.5")
            return 1
        _send(conn, "ready")
        server(conn, psi=psi, link_lib=link_lib)
        code = 0
    except EOFError:  # the party went away before it sent a job
        pass
    except BaseException as err:  # noqa: BLE001 - reported to the party, which raises PsiError
        try:
            _send(conn, "error", f"{type(err).__name__}: {err}")
        except OSError:
            pass
    finally:
        conn.close()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
    return code


if __name__ == "__main__":
    os._exit(main())  # not the interpreter's teardown while the library's threads may still run
