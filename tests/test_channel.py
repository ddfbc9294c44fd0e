"""The parties' direct link (``petlab.mpc.channel``) on a local socket pair."""

from __future__ import annotations

import socket
import threading

import pytest
import numpy as np
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


def test_petlab_openings_travel_in_one_message_and_are_counted_as_crypten_counts():
    """petlab's protocol opens numpy arrays of XOR- and additively shared words in one
    message over the link; CrypTen's counters see one round and every element twice
    (sent and received), as for its own all_reduce; ``restore`` removes the method."""
    from petlab.crypten_compat import import_crypten

    import_crypten()
    from crypten.communicator.communicator import Communicator

    from petlab.mpc.channel import install_peer_link, restore

    left, right = _pair()
    # one communicator class per side: each installs its own end of the link
    sides = {}
    for rank, link in ((0, left), (1, right)):
        cls = type(f"Comm{rank}", (Communicator,), {
            "BYTES_PER_ELEMENT": 8, "main_group": None, "get_world_size": lambda self: 2,
            "get_rank": lambda self, r=rank: r, "all_reduce": lambda self, *a, **k: None,
            "reduce": lambda self, *a, **k: None, "broadcast": lambda self, *a, **k: None})
        originals = install_peer_link(cls, link=link)
        comm = cls()
        comm.reset_communication_stats()
        sides[rank] = (cls, comm, originals)
    xs = {0: [np.array([0b1100, 7]), np.array([[5], [-3], [10]])],
          1: [np.array([0b1010, 7]), np.array([[1], [3], [-4]])]}
    ops = ["xor", "sum"]
    got = {}
    t = threading.Thread(target=lambda: got.__setitem__(1, sides[1][1].petlab_open(xs[1], ops)))
    t.start()
    got[0] = sides[0][1].petlab_open(xs[0], ops)
    t.join(30)
    for rank in (0, 1):
        assert got[rank][0].tolist() == [0b0110, 0] and got[rank][1].tolist() == [[6], [0], [6]]
        assert sides[rank][1].get_communication_stats()["rounds"] == 1
        assert sides[rank][1].get_communication_stats()["bytes"] == 8 * 2 * 5
    with pytest.raises(ValueError, match="unknown reduction 'max'"):  # checked after the exchange: both sides send
        t = threading.Thread(target=lambda: sides[1][1].petlab_open([np.array([1])], ["sum"]))
        t.start()
        try:
            sides[0][1].petlab_open([np.array([1])], ["max"])
        finally:
            t.join(30)
    for rank in (0, 1):
        restore(sides[rank][0], sides[rank][2])
        assert not hasattr(sides[rank][0], "petlab_open")


def test_a_peer_that_never_opens_the_link_is_reported_on_both_sides():
    """The gateway waits for the wallet's connection, the wallet retries until the
    gateway listens: each gives up with a one-line reason after its timeout."""
    from petlab.mpc.channel import open_peer_link
    from petlab.net import free_port

    port = free_port()
    with pytest.raises(PeerLinkError, match=f"the peer did not open the direct link to 127.0.0.1:{port} within 0.3 s"):
        open_peer_link(listen=True, address="127.0.0.1", port=port, timeout_s=0.3, tls=None)
    with pytest.raises(PeerLinkError, match=f"could not open the direct link to 127.0.0.1:{port} within 0.3 s"):
        open_peer_link(listen=False, address="127.0.0.1", port=port, timeout_s=0.3, tls=None)
