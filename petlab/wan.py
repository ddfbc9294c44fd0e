"""Cross-border links, emulated: each role in its own network namespace, joined through
a user-space link emulator that adds a one-way delay and a bandwidth limit.

``tc netem`` is the usual tool, but many kernels (this machine's included:
``CONFIG_NET_SCH_NETEM`` is not set) do not ship it, so petlab emulates the link itself:
every role's namespace gets a TUN interface whose other end is held by
:class:`LinkEmulator`, which forwards each IP packet to the namespace of its destination
after ``rtt/2`` plus its serialisation time at the link rate (packets queue behind each
other per direction, like on a real link). The parties' traffic therefore crosses real
interfaces and real kernel TCP stacks; only the wire is emulated.

Needs root and ``ip`` (iproute2); :func:`unavailable_reason` says why not otherwise.

:func:`measure_wan` runs the proof of concept's training over such links, one command per
role (``petlab party --config``), and records time, rounds and bytes, so that the time
can be compared with the model ``time ≈ time at ~0 RTT + rounds × RTT``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import heapq
import json
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from petlab.mpc import TRAINING_PHASES

__all__ = ["LinkEmulator", "emulated_network", "unavailable_reason", "netns_unavailable_reason", "measure_wan", "WanPoint"]

_TUNSETIFF, _IFF_TUN, _IFF_NO_PI = 0x400454CA, 0x0001, 0x1000
MTU = 65000  # large packets: fewer of them for the emulator to move


def netns_unavailable_reason() -> str | None:
    """Why network namespaces cannot be made here, or ``None`` when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not shutil.which("ip"):
        return "the `ip` command (iproute2) is not installed"
    name = f"plprobe{uuid.uuid4().hex[:6]}"
    probe = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create a network namespace here: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


def unavailable_reason() -> str | None:
    """Why namespaces joined by emulated links cannot be made here, or ``None``."""
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing (no TUN support)"
    return netns_unavailable_reason()


def _open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TUN | _IFF_NO_PI))
    return fd


class LinkEmulator:
    """Forwards IPv4 packets between TUN devices with a delay and a rate limit.

    Args:
        fds: IPv4 address -> TUN file descriptor of the namespace holding that address.
        rtt_ms: round-trip time between any two of them (each packet waits ``rtt/2``).
        rate_mbit: bandwidth of each direction of each link, in Mbit/s.
    """

    def __init__(self, *, fds: dict[str, int], rtt_ms: float, rate_mbit: float):
        self.fds = fds
        self.one_way = rtt_ms / 2000.0
        self.bytes_per_s = rate_mbit * 1e6 / 8
        self._by_fd = {fd: ip for ip, fd in fds.items()}
        self._busy_until: dict[tuple[int, int], float] = {}
        self._queue: list = []
        self._seq = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="link-emulator", daemon=True)
        self.packets = 0
        self.bytes = 0

    def start(self) -> "LinkEmulator":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _accept(self, src_fd: int, packet: bytes, now: float) -> None:
        if len(packet) < 20 or packet[0] >> 4 != 4:
            return  # IPv6 noise (router solicitations): not part of the runs
        dst_fd = self.fds.get(socket.inet_ntoa(packet[16:20]))
        if dst_fd is None:
            return
        link = (src_fd, dst_fd)
        start = max(now, self._busy_until.get(link, 0.0))
        done = start + len(packet) / self.bytes_per_s
        self._busy_until[link] = done
        self._seq += 1
        heapq.heappush(self._queue, (done + self.one_way, self._seq, dst_fd, packet))

    def _loop(self) -> None:
        readers = list(self._by_fd)
        while not self._stop.is_set():
            now = time.monotonic()
            while self._queue and self._queue[0][0] <= now:
                _, _, dst_fd, packet = heapq.heappop(self._queue)
                try:
                    os.write(dst_fd, packet)
                    self.packets += 1
                    self.bytes += len(packet)
                except OSError:
                    pass  # the namespace is going away
            wait = min(0.05, max(0.0, self._queue[0][0] - now)) if self._queue else 0.05
            ready, _, _ = select.select(readers, [], [], wait)
            now = time.monotonic()
            for fd in ready:
                for _ in range(64):  # drain what is there
                    try:
                        packet = os.read(fd, MTU + 100)
                    except BlockingIOError:
                        break
                    except OSError:
                        return
                    self._accept(fd, packet, now)


@contextlib.contextmanager
def emulated_network(*, roles: list[str], rtt_ms: float, rate_mbit: float):
    """One network namespace per role, joined by the link emulator.

    Yields:
        role -> {"ns": namespace name, "ip": its address, "dev": its interface}.
    """
    reason = unavailable_reason()
    if reason:
        raise RuntimeError(f"cannot emulate a network here: {reason}")
    tag = uuid.uuid4().hex[:5]
    hosts = {role: {"ns": f"pl{role[:2]}{tag}", "ip": f"10.214.{int(tag[:2], 16) % 250}.{i + 1}",
                    "dev": f"tn{role[:2]}{tag}"} for i, role in enumerate(roles)}
    fds: dict[str, int] = {}
    emulator = None

    def sh(*cmd):
        subprocess.run(cmd, check=True, capture_output=True)

    try:
        for role, h in hosts.items():
            fds[h["ip"]] = _open_tun(h["dev"])
            sh("ip", "netns", "add", h["ns"])
            sh("ip", "link", "set", h["dev"], "netns", h["ns"])
            sh("ip", "-n", h["ns"], "link", "set", "lo", "up")
            sh("ip", "-n", h["ns"], "addr", "add", f"{h['ip']}/24", "dev", h["dev"])
            sh("ip", "-n", h["ns"], "link", "set", h["dev"], "mtu", str(MTU), "up")
        emulator = LinkEmulator(fds=fds, rtt_ms=rtt_ms, rate_mbit=rate_mbit).start()
        yield hosts
    finally:
        if emulator is not None:
            emulator.stop()
        for fd in fds.values():
            os.close(fd)
        for h in hosts.values():
            subprocess.run(["ip", "netns", "del", h["ns"]], capture_output=True)


@dataclasses.dataclass(frozen=True)
class WanPoint:
    """One measured configuration."""

    rtt_ms: float
    rate_mbit: float
    provider: str
    model: str
    rows: int
    epochs: int
    seconds: float  # gateway: secret-sharing the inputs + training
    rounds: int  # gateway's communication rounds in those phases
    bytes: int  # gateway's bytes (sent + received, CrypTen's count) in those phases
    auc: float
    ping_ms: float  # measured TCP connect time across the emulated link (one RTT)


def _tcp_rtt_ms(hosts: dict) -> float:
    """Time of a TCP connect from the wallet's namespace to the gateway's: one RTT."""
    g, w = hosts["gateway"], hosts["wallet"]
    server = subprocess.Popen(["ip", "netns", "exec", g["ns"], sys.executable, "-c",
                               "import socket; s = socket.create_server(('0.0.0.0', 5999)); "
                               "c, _ = s.accept(); c.recv(1)"])
    try:
        code = ("import socket, time\nfor i in range(100):\n    try:\n"
                f"        t = time.perf_counter(); s = socket.create_connection(('{g['ip']}', 5999), timeout=5)\n"
                "        print((time.perf_counter() - t) * 1000); s.close(); break\n"
                "    except OSError:\n        time.sleep(0.05)\n")
        out = subprocess.run(["ip", "netns", "exec", w["ns"], sys.executable, "-c", code],
                             capture_output=True, text=True, timeout=30).stdout.split()
        return float(out[-1]) if out else float("nan")
    finally:
        server.kill()
        server.wait()


def measure_wan(*, rtts_ms, rates_mbit, providers, models, rows: int, epochs: int, out_dir,
                batch_size: int = 1024, progress: bool = True) -> list[WanPoint]:
    """Train over emulated links for every (rtt, rate, provider, model); one command per role.

    Args:
        rtts_ms, rates_mbit: the link settings to measure.
        providers, models: the MPC configurations.
        rows, epochs, batch_size: the run's size (synthetic data, each host generates it).
        out_dir: where each configuration's run file, records and data go.
        progress: a progress bar over the configurations.
    """
    import yaml
    from tqdm.auto import tqdm

    from petlab.mpc.tls import throwaway_pair

    out_dir = Path(out_dir)
    combos = [(r, b, p, m) for m in models for p in providers for b in rates_mbit for r in rtts_ms]
    points = []
    bar = tqdm(combos, desc="WAN configurations", unit="run", disable=not progress)
    for rtt, rate, provider, model in bar:
        bar.set_postfix_str(f"{model} {provider} {rtt:g} ms {rate:g} Mbit/s")
        roles = ["gateway", "wallet"] + (["dealer"] if provider == "TTP" else [])
        name = f"{model}-{provider}-rtt{rtt:g}-bw{rate:g}"
        with emulated_network(roles=roles, rtt_ms=rtt, rate_mbit=rate) as hosts:
            ping = _tcp_rtt_ms(hosts)
            run_file = out_dir / f"{name}.yaml"
            run_file.parent.mkdir(parents=True, exist_ok=True)
            keys = out_dir / name / "tls"  # throw-away key pairs: every role runs on this machine
            throwaway_pair(folder=keys)
            run_file.write_text(yaml.safe_dump({
                "rendezvous": {"address": hosts["gateway"]["ip"], "port": 29500, "psi_port": 29501,
                               "gateway_psi_port": 29502, "wallet_address": hosts["wallet"]["ip"],
                               "wallet_psi_port": 29503},
                "tls": {"cert": f"{keys}/{{role}}.crt", "key": f"{keys}/{{role}}.key",
                        "peer_cert": f"{keys}/{{peer}}.crt"},
                "out": str(out_dir / name),
                "params": {"rows": rows, "epochs": epochs, "batch_size": batch_size, "model": model,
                           "provider": provider, "track_loss": False, "root": str(out_dir / "data"),
                           "peer_timeout_s": 600},
            }))
            procs = {}
            for role in roles:
                log = open(out_dir / f"{name}-{role}.log", "w")
                procs[role] = subprocess.Popen(
                    ["ip", "netns", "exec", hosts[role]["ns"], sys.executable, "-m", "petlab", "party",
                     "--role", role, "--config", str(run_file)],
                    stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1"))
            codes = {role: p.wait(timeout=3600) for role, p in procs.items()}
        if any(codes.values()):
            raise RuntimeError(f"{name}: roles exited with {codes}; logs in {out_dir}")
        record = json.loads((out_dir / name / "gateway" / "result.json").read_text())
        phases = record["phases"]
        points.append(WanPoint(
            rtt_ms=rtt, rate_mbit=rate, provider=provider, model=model, rows=rows, epochs=epochs,
            seconds=sum(phases.get(p, {}).get("seconds", 0) for p in TRAINING_PHASES),
            rounds=sum(phases.get(p, {}).get("rounds", 0) for p in TRAINING_PHASES),
            bytes=sum(phases.get(p, {}).get("bytes", 0) for p in TRAINING_PHASES),
            auc=record["metrics"]["auc"], ping_ms=ping))
    return points
