"""The user-space link emulator really delays and throttles traffic between namespaces."""

from __future__ import annotations

import subprocess
import sys

import pytest

from petlab.wan import emulated_network, unavailable_reason

REASON = unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"cannot emulate links here: {REASON}")

_SERVER = ("import socket; s = socket.create_server(('0.0.0.0', 6000)); c, _ = s.accept(); n = 0\n"
           "while True:\n    d = c.recv(1 << 20)\n    if not d: break\n    n += len(d)\n"
           "c.sendall(str(n).encode())")
_CLIENT = ("import socket, time\nfor i in range(200):\n    try:\n"
           "        t = time.perf_counter(); s = socket.create_connection(('{ip}', 6000)); break\n"
           "    except OSError: time.sleep(0.05)\n"
           "connect = time.perf_counter() - t; t = time.perf_counter()\n"
           "s.sendall(b'x' * {n}); s.shutdown(socket.SHUT_WR); got = int(s.recv(100))\n"
           "print(connect, time.perf_counter() - t, got)")


def _transfer(hosts, n):
    g, w = hosts["gateway"], hosts["wallet"]
    server = subprocess.Popen(["ip", "netns", "exec", g["ns"], sys.executable, "-c", _SERVER])
    try:
        out = subprocess.run(["ip", "netns", "exec", w["ns"], sys.executable, "-c",
                              _CLIENT.format(ip=g["ip"], n=n)], capture_output=True, text=True, timeout=60)
        connect, seconds, got = out.stdout.split()
        return float(connect), float(seconds), int(got)
    finally:
        server.kill()
        server.wait()


def test_round_trip_time_and_rate_are_what_was_asked():
    with emulated_network(roles=["gateway", "wallet"], rtt_ms=100, rate_mbit=20) as hosts:
        connect, seconds, got = _transfer(hosts, n=5_000_000)
    assert got == 5_000_000
    assert 0.1 <= connect < 0.4  # a TCP connect takes one round trip
    # 5 MB at 20 Mbit/s is 2 s on the wire, plus slow start over a 100 ms RTT
    assert 2.0 <= seconds < 8.0


def test_a_fast_link_is_fast():
    with emulated_network(roles=["gateway", "wallet"], rtt_ms=1, rate_mbit=1000) as hosts:
        connect, seconds, got = _transfer(hosts, n=5_000_000)
    assert got == 5_000_000 and connect < 0.1 and seconds < 2.0
