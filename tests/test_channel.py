"""The parties' direct link (``petlab.mpc.channel``) on a local socket pair."""

from __future__ import annotations

import socket
import threading

import pytest
import torch

from petlab.mpc.channel import PeerLink, PeerLinkError


def _pair(timeout_s=10.0):
    a, b = socket.socketpair()
    return PeerLink(a, timeout_s=timeout_s), PeerLink(b, timeout_s=timeout_s)


def test_large_exchanges_in_both_directions_at_once_do_not_deadlock():
    """Both sides send 40 MB before either reads: only a full-duplex link survives this
    (socket buffers hold far less)."""
    left, right = _pair()
    mine, theirs = torch.arange(5_000_000), -torch.arange(5_000_000)
    got = {}
    t = threading.Thread(target=lambda: got.__setitem__("right", right.exchange(theirs)))
    t.start()
    got["left"] = left.exchange(mine)
    t.join(30)
    assert torch.equal(got["left"], theirs) and torch.equal(got["right"], mine)


def test_a_closed_peer_and_a_silent_peer_are_reported():
    left, right = _pair(timeout_s=0.3)
    with pytest.raises(PeerLinkError, match="timed out"):
        left.recv_like(torch.empty(4, dtype=torch.long))
    right.close()
    with pytest.raises(PeerLinkError, match="closed by peer"):
        left.recv_like(torch.empty(4, dtype=torch.long))
