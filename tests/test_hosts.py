"""One command per party (``petlab party --role R --config run.yaml``), each role its own
OS process: they meet over TCP, and every failure ends cleanly within a stated bound.

Every process is started with a hard wall-clock limit, so a regression fails instead of
hanging CI. ``STARTUP_S`` covers a party's interpreter start (importing torch and CrypTen
takes ~10 s on the 2-core CI machine, more when several start at once).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from petlab.mpc.tls import throwaway_pair
from petlab.net import free_port

pytestmark = pytest.mark.mpc

STARTUP_S = 60  # interpreter + torch + CrypTen start-up, generous for a loaded CI machine
PEER_TIMEOUT_S = 20  # the runs' peer_timeout_s: the bound on every wait for a peer
ALONE_TIMEOUT_S = 4  # peer_timeout_s of the runs whose peer never comes: the wait itself is the test


def _run_file(tmp_path, *, name="run.yaml", address="127.0.0.1", wallet_address=None, ports=None, out=None,
              **params):
    """A run file; ``ports``: (rendezvous, greeting and direct link, each party's end of the PSI link)."""
    ports = list(ports or ())
    while len(ports) < 4:
        candidate = free_port()
        if candidate not in ports:
            ports.append(candidate)
    port, psi_port, gateway_psi_port, wallet_psi_port = ports
    base = {"rows": 1500, "epochs": 2, "batch_size": 256, "provider": "TFP", "seed": 1,
            "root": str(tmp_path / "data"), "peer_timeout_s": PEER_TIMEOUT_S}
    base.update(params)
    keys = tmp_path / "keys"  # each organisation's key pair; one file serves both ({role}, {peer})
    if not keys.exists():
        throwaway_pair(folder=keys)
    doc = {"rendezvous": {"address": address, "port": port, "psi_port": psi_port,
                          "gateway_psi_port": gateway_psi_port, "wallet_address": wallet_address or address,
                          "wallet_psi_port": wallet_psi_port},
           "tls": {"cert": f"{keys}/{{role}}.crt", "key": f"{keys}/{{role}}.key", "peer_cert": f"{keys}/{{peer}}.crt"},
           "out": str(out or tmp_path / "hosts"), "params": base}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return path, doc


def _start(role, run_file, *extra, prefix=()):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([*prefix, sys.executable, "-m", "petlab", "party", "--role", role,
                             "--config", str(run_file), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=Path(__file__).resolve().parent.parent)


def _finish(proc, limit):
    try:
        out, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"process did not end within {limit} s:\n{err[-2000:]}")
    return proc.returncode, out, err


def _status(doc, role):
    return json.loads((Path(doc["out"]) / role / "status.json").read_text())


def test_parties_and_dealer_as_separate_commands_train_together(tmp_path):
    run_file, doc = _run_file(tmp_path, provider="TTP", peer_timeout_s=120)
    procs = {role: _start(role, run_file) for role in ("gateway", "wallet", "dealer")}
    results = {role: _finish(p, 600) for role, p in procs.items()}
    for role, (code, _, err) in results.items():
        assert code == 0, f"{role}: {err[-3000:]}"
        assert _status(doc, role)["status"] == "complete"
    out = Path(doc["out"])
    gateway = json.loads((out / "gateway" / "result.json").read_text())
    wallet = json.loads((out / "wallet" / "result.json").read_text())
    assert gateway["metrics"]["auc"] > 0.7 and "metrics" not in wallet  # the label holder's record
    assert gateway["provider"] == "TTP" and gateway["meta"]["config_digest"] == wallet["meta"]["config_digest"]
    assert (out / "dealer" / "result.json").is_file()
    assert "finished; record in" in results["gateway"][1]


def test_a_peer_that_never_comes_up_ends_the_other_within_the_timeout(tmp_path):
    run_files = {role: _run_file(tmp_path, name=f"{role}.yaml", peer_timeout_s=ALONE_TIMEOUT_S)[0]
                 for role in ("gateway", "wallet")}  # each alone, on ports of its own: both at once
    procs = {role: (_start(role, run_files[role], "--out", str(tmp_path / f"alone-{role}")), time.monotonic())
             for role in run_files}
    for role, message in (("gateway", "the wallet did not connect to"),
                          ("wallet", "the gateway at")):
        out = tmp_path / f"alone-{role}"
        proc, t0 = procs[role]
        code, _, err = _finish(proc, STARTUP_S + ALONE_TIMEOUT_S)
        assert code == 1 and message in err and f"within {ALONE_TIMEOUT_S} s" in err, err
        assert len(err.strip().splitlines()) == 1 and f"(log: {out / role / 'party.log'})" in err, err
        assert time.monotonic() - t0 < STARTUP_S + ALONE_TIMEOUT_S
        assert json.loads((out / role / "status.json").read_text())["status"] == "failed"


def test_the_dealer_never_coming_up_is_named(tmp_path):
    run_file, doc = _run_file(tmp_path, provider="TTP", peer_timeout_s=ALONE_TIMEOUT_S)
    procs = {role: _start(role, run_file) for role in ("gateway", "wallet")}
    code, _, err = _finish(procs["gateway"], STARTUP_S + 3 * ALONE_TIMEOUT_S)
    _finish(procs["wallet"], STARTUP_S + 3 * ALONE_TIMEOUT_S)
    assert code == 1 and "could not set up MPC with the wallet and the dealer" in err, err
    assert _status(doc, "gateway")["status"] == "failed"


def test_ports_already_in_use_are_reported_at_start_up(tmp_path):
    for which, role in (("port", "gateway"), ("psi_port", "gateway"), ("gateway_psi_port", "gateway"),
                        ("wallet_psi_port", "wallet")):
        run_file, doc = _run_file(tmp_path, name=f"{which}.yaml", out=tmp_path / which)
        taken = doc["rendezvous"][which]
        with socket.create_server(("127.0.0.1", taken)):
            code, _, err = _finish(_start(role, run_file), STARTUP_S)
        assert code == 1 and f"port {taken} on 127.0.0.1 is already in use" in err, err
        assert len(err.strip().splitlines()) == 1 and "(log: " in err, err


def test_wrong_roles_are_refused(tmp_path):
    run_file, doc = _run_file(tmp_path)  # TFP: there is no dealer
    code, _, err = _finish(_start("dealer", run_file), STARTUP_S)
    assert code == 1 and "the dealer role only exists under the TTP provider" in err, err
    code, _, err = _finish(_start("bank", run_file), STARTUP_S)
    assert code == 2 and "invalid choice: 'bank'" in err


@pytest.mark.parametrize("param,mine,theirs", [("model", "logreg", "mlp"), ("rows", 1500, 1400),
                                                ("seed", 1, 2)])
def test_mismatched_configurations_are_named_by_both_parties(tmp_path, param, mine, theirs):
    ports = []
    while len(ports) < 4:
        ports += [p for p in [free_port()] if p not in ports]
    g_file, doc = _run_file(tmp_path, name="g.yaml", ports=ports, **{param: mine})
    w_file, _ = _run_file(tmp_path, name="w.yaml", ports=ports, **{param: theirs})
    procs = {"gateway": _start("gateway", g_file), "wallet": _start("wallet", w_file)}
    results = {role: _finish(p, STARTUP_S + 2 * PEER_TIMEOUT_S) for role, p in procs.items()}
    section = "train" if param == "model" else "data"
    expected = {"gateway": f"{section}.{param}: {mine!r} here, {theirs!r} at the peer",
                "wallet": f"{section}.{param}: {theirs!r} here, {mine!r} at the peer"}
    if param == "seed":  # the seed is in both sections
        expected = {k: v.replace("data.seed", "data.seed") for k, v in expected.items()}
    for role, (code, _, err) in results.items():
        assert code == 1 and "runs with a different configuration" in err and expected[role] in err, err
    assert not (Path(doc["out"]) / "gateway" / "result.json").exists()


@pytest.mark.parametrize("victim,provider", [("wallet", "TFP"), ("dealer", "TTP")])
def test_a_peer_killed_mid_training_fails_the_survivor_within_the_bound(tmp_path, victim, provider):
    run_file, doc = _run_file(tmp_path, provider=provider, rows=4000, epochs=200, track_loss=True)
    roles = ["gateway", "wallet"] + (["dealer"] if provider == "TTP" else [])
    procs = {role: _start(role, run_file) for role in roles}
    progress = Path(doc["out"]) / "gateway" / "progress.json"
    deadline = time.monotonic() + 4 * STARTUP_S
    while not (progress.is_file() and json.loads(progress.read_text())["epoch"] >= 1):
        assert time.monotonic() < deadline, "training did not start"
        assert all(p.poll() is None for p in procs.values()), {r: p.poll() for r, p in procs.items()}
        time.sleep(0.2)
    procs[victim].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    code, _, err = _finish(procs["gateway"], PEER_TIMEOUT_S + 30)
    elapsed = time.monotonic() - killed_at
    for role, p in procs.items():
        if p.poll() is None:
            p.kill()
    assert code == 1, err
    # training steps are short with petlab's protocol: the loss of the peer may be noticed
    # in the per-epoch loss check, also a training-time phase
    assert re.search(rf"lost the {victim} during (train|loss_monitor)", err), err
    assert elapsed < PEER_TIMEOUT_S + 30
    status = _status(doc, "gateway")
    assert status["status"] == "failed" and victim in status["error"]
    assert not (Path(doc["out"]) / "gateway" / "result.json").exists()


@pytest.fixture
def two_namespaces():
    """Namespaces gw and wl joined by a veth pair: 10.213.0.1 (gateway) and 10.213.0.2."""
    from petlab.wan import netns_unavailable_reason

    reason = netns_unavailable_reason()
    if reason:
        pytest.skip(reason)
    tag = uuid.uuid4().hex[:5]
    ns = {"gateway": f"plgw{tag}", "wallet": f"plwl{tag}"}
    dev = {"gateway": f"vgw{tag}", "wallet": f"vwl{tag}"}
    ips = {"gateway": "10.213.0.1", "wallet": "10.213.0.2"}

    def sh(*cmd):
        subprocess.run(cmd, check=True, capture_output=True)

    try:
        for role in ns:
            sh("ip", "netns", "add", ns[role])
        sh("ip", "link", "add", dev["gateway"], "type", "veth", "peer", "name", dev["wallet"])
        for role in ns:
            sh("ip", "link", "set", dev[role], "netns", ns[role])
            sh("ip", "-n", ns[role], "addr", "add", f"{ips[role]}/24", "dev", dev[role])
            sh("ip", "-n", ns[role], "link", "set", dev[role], "up")
            sh("ip", "-n", ns[role], "link", "set", "lo", "up")
        yield {"ns": ns, "dev": dev, "ips": ips}
    finally:
        for role in ns:
            subprocess.run(["ip", "netns", "del", ns[role]], capture_output=True)


def test_parties_in_separate_network_namespaces_train_over_a_veth_link(tmp_path, two_namespaces):
    net = two_namespaces
    run_file, doc = _run_file(tmp_path, address=net["ips"]["gateway"], wallet_address=net["ips"]["wallet"],
                              ports=(29500, 29501, 29502, 29503), peer_timeout_s=120)

    def rx_bytes(role):
        return int(subprocess.run(["ip", "netns", "exec", net["ns"][role], "cat",
                                   f"/sys/class/net/{net['dev'][role]}/statistics/rx_bytes"],
                                  capture_output=True, text=True, check=True).stdout)

    before = {role: rx_bytes(role) for role in ("gateway", "wallet")}
    procs = {role: _start(role, run_file, prefix=("ip", "netns", "exec", net["ns"][role]))
             for role in ("gateway", "wallet")}
    results = {role: _finish(p, 600) for role, p in procs.items()}
    for role, (code, _, err) in results.items():
        assert code == 0, f"{role}: {err[-3000:]}"
    gateway = json.loads((Path(doc["out"]) / "gateway" / "result.json").read_text())
    wallet = json.loads((Path(doc["out"]) / "wallet" / "result.json").read_text())
    # the traffic really crossed the veth link: each side received at least what CrypTen
    # counts as the other's payload (its count is sent + received, so half of it at least)
    for role, record in (("gateway", gateway), ("wallet", wallet)):
        received = rx_bytes(role) - before[role]
        assert received > record["comm_total"]["bytes"] / 4, (role, received, record["comm_total"])
    # the PSI link ran between the two hosts, each listening on its own address: each received
    # over the veth at least what the other sent on it, and both found the same customers
    for role, other in (("gateway", wallet), ("wallet", gateway)):
        assert rx_bytes(role) - before[role] > other["psi"]["bytes_sent"] > 0
    assert gateway["psi"]["intersection_size"] == wallet["psi"]["intersection_size"] == 1050
    assert gateway["metrics"]["auc"] > 0.7
