"""TLS on petlab's own sockets between the organisations (``petlab.mpc.tls``): key pairs
made by ``petlab keygen``, the greeting, the PSI and the direct link over mutually
authenticated TLS 1.3 with pinned certificates, a wrong certificate refused on both sides,
and an eavesdropper on the wire who reads nothing. Everything runs on loopback, the two
sides in threads."""

from __future__ import annotations

import logging
import socket
import stat
import threading
import time

import numpy as np
import pytest
from recording_relay import RecordingRelay
import torch
import yaml

from petlab.cli import main
from petlab.config import ConfigError
from petlab.data.psi import PsiError, private_intersection
from petlab.mpc.channel import PeerLinkError, open_peer_link
from petlab.mpc.hosts import host_job
from petlab.mpc.rendezvous import RendezvousError, greet_peer
from petlab.mpc.tls import TlsIdentity, fingerprint, throwaway_pair
from petlab.net import free_port

TIMEOUT_S = 5.0


@pytest.fixture
def pair(tmp_path):
    """The gateway's and the wallet's identities, each pinned to the other's certificate."""
    return throwaway_pair(folder=tmp_path / "keys")


@pytest.fixture
def impostor(tmp_path, pair):
    """Identities holding a key pair of their own (not the pinned one) that trust the
    genuine peer: what a third party that reached the port could present at best."""
    other = throwaway_pair(folder=tmp_path / "impostor")
    return {role: TlsIdentity(role=role, peer_role=pair[role].peer_role, cert=other[role].cert,
                              key=other[role].key, peer_cert=pair[role].peer_cert)
            for role in ("gateway", "wallet")}


def _both(gateway, wallet, limit=3 * TIMEOUT_S):
    """Run ``gateway()`` in a thread and ``wallet()`` here: {role: result or exception}."""
    out = {}

    def run(role, fn):
        try:
            out[role] = fn()
        except Exception as err:  # noqa: BLE001 - the test inspects it
            out[role] = err

    thread = threading.Thread(target=run, args=("gateway", gateway), daemon=True)
    thread.start()
    run("wallet", wallet)
    thread.join(limit)
    assert not thread.is_alive(), "the gateway's side did not end"
    return out


def _greet(role, *, port, tls, shared=None):
    return greet_peer(role=role, peer="wallet" if role == "gateway" else "gateway", listen=role == "gateway",
                      address="127.0.0.1", port=port, timeout_s=TIMEOUT_S, shared=shared or {"model": "logreg"},
                      tls=tls)


_WALLET_PSI_PORTS: dict = {}  # the gateway's PSI port -> the wallet's, for one run of both sides


def _psi(role, ids, *, port, tls):
    import tempfile

    wallet_port = _WALLET_PSI_PORTS.setdefault(port, free_port())
    return private_intersection(ids=ids, role=role, endpoints={"gateway": ("127.0.0.1", port),
                                                               "wallet": ("127.0.0.1", wallet_port)},
                                timeout_s=TIMEOUT_S, tls=tls, work_dir=tempfile.mkdtemp(prefix=f"psi-{role}-"))


def _link(role, *, port, tls, connect_port=None):
    listen = role == "gateway"
    return open_peer_link(listen=listen, address="127.0.0.1", port=port if listen else (connect_port or port),
                          timeout_s=TIMEOUT_S, tls=tls)


# -- keys ------------------------------------------------------------------------------

def test_keygen_writes_a_private_key_and_a_certificate_and_never_overwrites(tmp_path, capsys):
    out = tmp_path / "keys"
    assert main(["keygen", "--role", "wallet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    key, cert = out / "wallet.key", out / "wallet.crt"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert cert.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert f"SHA-256 fingerprint: {fingerprint(cert=cert)}" in printed
    before = key.read_bytes()
    assert main(["keygen", "--role", "wallet", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "keys are never overwritten" in err, err
    assert key.read_bytes() == before
    assert main(["keygen", "--role", "gateway", "--out", str(out)]) == 0  # the other role: another file
    assert not list(out.glob(".*"))  # no temporary file left behind


def test_a_certificate_naming_another_role_is_refused_before_any_connection(pair):
    crossed = TlsIdentity(role="wallet", peer_role="gateway", cert=pair["wallet"].cert, key=pair["wallet"].key,
                          peer_cert=pair["wallet"].cert)  # its own certificate pinned as the gateway's
    with pytest.raises(ValueError, match="names 'wallet', expected the gateway's"):
        crossed.check()
    pair["wallet"].check()


# -- the three sockets over TLS ------------------------------------------------------------

def test_the_greeting_runs_over_tls_with_pinned_certificates(pair):
    port = free_port()
    out = _both(lambda: _greet("gateway", port=port, tls=pair["gateway"]),
                lambda: _greet("wallet", port=port, tls=pair["wallet"]))
    assert out["gateway"]["role"] == "wallet" and out["wallet"]["role"] == "gateway", out


def test_the_psi_runs_over_tls(pair):
    port = free_port()
    out = _both(lambda: _psi("gateway", ["a", "b", "c", "d"], port=port, tls=pair["gateway"]),
                lambda: _psi("wallet", ["c", "x", "a"], port=port, tls=pair["wallet"]))
    assert sorted(out["gateway"].ids) == sorted(out["wallet"].ids) == ["a", "c"], out
    assert out["wallet"].other_set_size == 4


def test_the_direct_link_runs_over_tls_full_duplex(pair):
    """Both sides send 16 MB before either reads (non-blocking TLS: want-read/want-write
    and buffered records), then a small opening, then the peer closes."""
    port = free_port()
    links = _both(lambda: _link("gateway", port=port, tls=pair["gateway"]),
                  lambda: _link("wallet", port=port, tls=pair["wallet"]))
    gateway, wallet = links["gateway"], links["wallet"]
    assert gateway.sock.version() == "TLSv1.3"
    mine, theirs = torch.arange(2_000_000), -torch.arange(2_000_000)
    got = _both(lambda: gateway.exchange(mine), lambda: wallet.exchange(theirs))
    assert torch.equal(got["gateway"], theirs) and torch.equal(got["wallet"], mine)
    opened = _both(lambda: gateway.exchange_arrays([np.array([5, 1]), np.array([6])], ["sum", "xor"]),
                   lambda: wallet.exchange_arrays([np.array([1, 1]), np.array([3])], ["sum", "xor"]))
    assert [a.tolist() for a in opened["gateway"]] == [[6, 2], [5]]
    wallet.close()
    with pytest.raises(PeerLinkError, match="closed by peer"):
        gateway.recv_like(torch.empty(4, dtype=torch.long))
    gateway.close()


# -- a certificate that is not the pinned one ---------------------------------------------

_SOCKETS = {
    "greeting": (RendezvousError, lambda role, port, tls: _greet(role, port=port, tls=tls)),
    "psi": (PsiError, lambda role, port, tls: _psi(role, ["a", "b"], port=port, tls=tls)),
    "direct link": (PeerLinkError, lambda role, port, tls: _link(role, port=port, tls=tls)),
}


@pytest.mark.parametrize("which", list(_SOCKETS))
@pytest.mark.parametrize("fake", ["wallet", "gateway"])
def test_a_wrong_certificate_is_refused_on_both_sides_in_one_line(pair, impostor, which, fake):
    error, start = _SOCKETS[which]
    port = free_port()
    ids = {role: impostor[role] if role == fake else pair[role] for role in ("gateway", "wallet")}
    t0 = time.monotonic()
    out = _both(lambda: start("gateway", port, ids["gateway"]), lambda: start("wallet", port, ids["wallet"]))
    assert time.monotonic() - t0 < TIMEOUT_S
    genuine = "gateway" if fake == "wallet" else "wallet"
    for role in ("gateway", "wallet"):
        assert isinstance(out[role], error), (role, out[role])
        assert len(str(out[role]).splitlines()) == 1, out[role]
    # the genuine party names the file it pinned; the impostor learns that its certificate was refused
    assert (f"the {fake}'s certificate does not match the pinned one ({pair[genuine].peer_cert})"
            in str(out[genuine])), out[genuine]
    assert (f"the {genuine} did not accept this party's certificate ({impostor[fake].cert}): it does not "
            "match the certificate pinned there" in str(out[fake])), out[fake]


def test_a_party_without_tls_is_told_apart_from_a_wrong_certificate(pair):
    port = free_port()
    out = _both(lambda: _greet("gateway", port=port, tls=pair["gateway"]),
                lambda: _greet("wallet", port=port, tls=None))
    assert isinstance(out["gateway"], RendezvousError) and "does not speak TLS" in str(out["gateway"])
    assert isinstance(out["wallet"], RendezvousError), out["wallet"]


# -- what an eavesdropper on the wire sees ------------------------------------------------

def _Relay(target_port: int):
    return RecordingRelay(("127.0.0.1", target_port), timeout_s=TIMEOUT_S)


@pytest.mark.parametrize("encrypted", [True, False])
def test_an_eavesdropper_reads_neither_the_greeting_nor_the_shares(pair, encrypted):
    """The same greeting and opening through a recording relay: their plaintext is on the
    wire without TLS (so the check can fail), and nowhere in it with TLS."""
    marker = "model-trained-on-customer-table-7f3a"
    share = np.frombuffer(b"SECRET-SHARE-ON-THE-DIRECT-LINK!", dtype=np.int64).copy()
    tls = pair if encrypted else {"gateway": None, "wallet": None}
    port, link_port = free_port(), free_port()
    relays = [_Relay(port), _Relay(link_port)]
    try:
        met = _both(lambda: _greet("gateway", port=port, tls=tls["gateway"], shared={"marker": marker}),
                    lambda: greet_peer(role="wallet", peer="gateway", listen=False, address="127.0.0.1",
                                       port=relays[0].port, timeout_s=TIMEOUT_S, shared={"marker": marker},
                                       tls=tls["wallet"]))
        assert met["gateway"]["shared"] == {"marker": marker}, met
        links = _both(lambda: _link("gateway", port=link_port, tls=tls["gateway"]),
                      lambda: _link("wallet", port=link_port, tls=tls["wallet"], connect_port=relays[1].port))
        opened = _both(lambda: links["gateway"].exchange_arrays([share], ["xor"]),
                       lambda: links["wallet"].exchange_arrays([np.zeros_like(share)], ["xor"]))
        assert np.array_equal(opened["gateway"][0], share)
        for link in links.values():
            link.close()
    finally:
        for relay in relays:
            relay.close()
    wire = bytes(relays[0].recorded + relays[1].recorded)
    assert len(wire) > 100
    for plain in (marker.encode(), b'"role": "wallet"', share.tobytes()):
        assert (plain in wire) is not encrypted, plain


# -- the run file's tls section -------------------------------------------------------------

RV = {"address": "127.0.0.1", "port": 29500, "psi_port": 29501, "gateway_psi_port": 29502,
      "wallet_address": "127.0.0.1", "wallet_psi_port": 29503}


def _run_file(tmp_path, **sections):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"rendezvous": RV, "out": str(tmp_path / "out"),
                                    "params": {"rows": 1000, "root": str(tmp_path / "data")}, **sections}))
    return path


def test_a_data_party_needs_a_tls_section_naming_keygen(tmp_path, capsys):
    path = _run_file(tmp_path)
    for role in ("gateway", "wallet"):
        with pytest.raises(ConfigError, match=f"no tls section: `petlab keygen --role {role} --out DIR`"):
            host_job(config_path=path, role=role)
    assert main(["party", "--role", "wallet", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "petlab keygen" in err, err
    assert host_job(config_path=path, role="dealer").tls == {}  # the dealer speaks only gloo


def test_the_tls_section_resolves_role_and_peer_and_checks_the_files(tmp_path, pair):
    keys = tmp_path / "keys"
    path = _run_file(tmp_path, tls={"cert": f"{keys}/{{role}}.crt", "key": f"{keys}/{{role}}.key",
                                    "peer_cert": f"{keys}/{{peer}}.crt"})
    job = host_job(config_path=path, role="gateway")
    assert job.tls_identity(role="gateway") == pair["gateway"]
    missing = _run_file(tmp_path, tls={"cert": f"{keys}/gateway.crt", "key": f"{keys}/gateway.key",
                                       "peer_cert": f"{tmp_path}/nowhere.crt"})
    with pytest.raises(ConfigError, match="TLS peer certificate not found: .*nowhere.crt"):
        host_job(config_path=missing, role="gateway")


def test_tls_off_runs_in_the_clear_with_a_warning(tmp_path, caplog):
    path = _run_file(tmp_path, tls="off")
    with caplog.at_level(logging.WARNING, logger="petlab.hosts"):
        job = host_job(config_path=path, role="wallet")
    assert job.tls_identity(role="wallet") is None
    assert "unauthenticated and in the clear" in caplog.text
