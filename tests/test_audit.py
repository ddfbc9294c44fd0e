"""The privacy audit: transcripts, the checks and their thresholds, the trust demonstration."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from petlab.audit import checks
from petlab.audit.classification import OWN, PROTECTED, REVEALED, classification_table
from petlab.audit.run import AuditFailed, AuditResult, declared_reveals_only, require_passed, run_audit
from petlab.audit.transcript import Transcript, wrap_communicator

RNG = np.random.default_rng(0)


def _uniform(n):
    return RNG.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, size=n, dtype=np.int64)


class _FakeComm:
    """Two-party reductions as a peer would answer them: the peer contributes 5."""

    def get_rank(self):
        return 0

    def all_reduce(self, input, op=None, batched=False):
        if isinstance(input, list):
            return [t + 5 for t in input]
        return input + 5

    def reduce(self, input, dst, op=None, batched=False):
        return input + 7 if dst == 0 else None


def test_recording_returns_exactly_what_the_call_returns_and_keeps_what_arrived():
    transcript = Transcript(keep_words=True)

    class Comm(_FakeComm):
        pass

    wrap_communicator(Comm, transcript=transcript)
    x = torch.arange(6, dtype=torch.long).reshape(2, 3)
    assert torch.equal(Comm().all_reduce(x), _FakeComm().all_reduce(x))
    batched = Comm().all_reduce([x, x + 1], batched=True)
    assert all(torch.equal(a, b) for a, b in zip(batched, _FakeComm().all_reduce([x, x + 1])))
    assert torch.equal(Comm().reduce(x, 0), x + 7) and Comm().reduce(x, 1) is None
    assert [e["numel"] for e in transcript.entries] == [6, 12, 6]  # the reduce to rank 1 arrived nowhere here
    kept = np.concatenate([w for _, w in transcript.words])
    assert set(kept[:18].tolist()) == {5} and set(kept[18:].tolist()) == {7}
    by_call = {row["call"]: row for row in transcript.summary()}
    assert by_call["all_reduce"]["bytes"] == 18 * 8 and by_call["all_reduce"]["messages"] == 2
    assert by_call["reduce"]["bytes"] == 6 * 8


def test_uniform_words_pass_and_leaks_fail():
    secrets = RNG.standard_normal(500)
    clean = _uniform(200_000)
    assert checks.raw_value_matches(words=clean, secrets=secrets, label="x").passed
    assert checks.bit_balance(words=clean, label="x").passed
    assert checks.byte_chi_square(words=clean, label="x").passed
    assert checks.ks_uniform(words=clean, label="x").passed
    leaky = clean.copy()
    leaky[:100] = checks.encode_fixed_point(secrets[:100])
    assert not checks.raw_value_matches(words=leaky, secrets=secrets, label="x").passed
    signed = checks.encode_fixed_point(RNG.standard_normal(200_000))  # raw values, unmasked
    assert not checks.ks_uniform(words=signed, label="x").passed
    assert not checks.byte_chi_square(words=signed, label="x").passed
    positive = np.abs(signed)
    assert not checks.bit_balance(words=positive, label="x").passed
    values = RNG.standard_normal(5000)
    assert checks.correlation_with_secret(opened=_uniform(5000), secret=values, label="x").passed
    weak_mask = checks.encode_fixed_point(values) * 2**40  # "masked" by a scaling only
    assert not checks.correlation_with_secret(opened=weak_mask, secret=values, label="x").passed
    bits = RNG.integers(0, 2, size=10_000)
    assert checks.single_bit_balance(bits=bits, label="b").passed
    assert not checks.single_bit_balance(bits=bits + 2, label="b").passed


def test_undeclared_decryptions_fail_the_audit():
    ok = [{"call": "reduce", "op": "disclosure.reveal[test_scores]"},
          {"call": "all_reduce", "op": "beaver.matmul"}]
    assert declared_reveals_only(messages=ok, allowed={"test_scores"}).passed
    assert not declared_reveals_only(messages=ok, allowed={"final_weights"}).passed
    sneaky = ok + [{"call": "reduce", "op": "party._run_data_party"}]
    assert not declared_reveals_only(messages=sneaky, allowed={"test_scores"}).passed
    broken = ok + [{"call": "recv", "op": "record-error"}]
    assert not declared_reveals_only(messages=broken, allowed={"test_scores"}).passed
    failed = AuditResult(folder=None, checks=[{"provider": "TTP", "party": "wallet", "name": "n",
                                               "detail": "d", "passed": False}],
                         reconstruction={}, classification={}, passed=False)
    with pytest.raises(AuditFailed, match="TTP/wallet"):
        require_passed(failed)


def test_classification_depends_on_the_provider_and_the_reveals():
    tfp = classification_table(provider="TFP", reveal_weights=True, track_loss=True)
    ttp = classification_table(provider="TTP", reveal_weights=False, track_loss=False)
    shares = {(r["party"], r["provider"] if "provider" in r else p): r["classification"]
              for p, rows in (("TFP", tfp), ("TTP", ttp)) for r in rows if r["item"].startswith("shares")}
    assert "NOT protected" in shares[("gateway", "TFP")]
    assert shares[("wallet", "TFP")] == shares[("gateway", "TTP")] == shares[("wallet", "TTP")] == PROTECTED
    assert any(r["party"] == "dealer" for r in ttp) and not any(r["party"] == "dealer" for r in tfp)
    assert any("weights" in r["item"] and r["classification"] == REVEALED for r in tfp)
    assert not any("weights" in r["item"] for r in ttp)
    assert {r["classification"] for r in ttp if "own table" in r["item"]} == {OWN}


@pytest.mark.mpc
def test_audit_runs_pass_and_show_the_trust_model(small_config, tmp_path):
    config = small_config(rows=1000, epochs=1)
    result = run_audit(config=config, out=tmp_path / "audit", progress=False)
    assert result.passed, [c for c in result.checks if not c["passed"]]
    assert result.reconstruction["TFP"]["recovered_fraction"] == 1.0
    assert result.reconstruction["TTP"]["recovered_fraction"] == 0.0
    assert abs(result.reconstruction["TTP"]["correlation"]) < 0.1
    names = {c["name"] for c in result.checks}
    assert any(n.startswith("raw values of the wallet") for n in names)
    assert any(n.startswith("raw values of the gateway") for n in names)
    saved = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert saved["passed"] and set(saved["classification"]) == {"TFP", "TTP"}
    for figure in ("received_words.png", "reconstruction.png"):
        assert (tmp_path / "audit" / "figures" / figure).is_file()
    # every message each party received is in its transcript, with the operation that sent it
    transcript = json.loads((tmp_path / "audit" / "TTP" / "wallet" / "audit" / "transcript.json").read_text())
    ops = {m["op"] for m in transcript["messages"]}
    # petlab's training protocol (default engine) and CrypTen's operators (test scores)
    assert transcript["complete"] and ops >= {"beaver.matmul", "lean.fm_left", "lean.fm_right", "lean.open_bit",
                                              "lean.and_", "party._lean_setup"}


@pytest.mark.mpc
def test_audit_of_the_mlp_on_petlabs_protocol_passes(small_config, tmp_path):
    """The MLP's own openings (the ReLU bits under random bits, the masked hidden layer)
    pass the same checks: uniform words, balanced 1-bit words, no raw values."""
    result = run_audit(config=small_config(rows=1000, epochs=1, model="mlp"), out=tmp_path / "audit", progress=False)
    assert result.passed, [c for c in result.checks if not c["passed"]]
    assert any(c["name"].startswith("balance of 1-bit shares") for c in result.checks)
    for party in ("gateway", "wallet"):
        transcript = json.loads((tmp_path / "audit" / "TFP" / party / "audit" / "transcript.json").read_text())
        assert {"lean._mlp_step", "lean.open_bit", "lean.and_", "lean.fm_right"} <= {
            m["op"] for m in transcript["messages"]}


@pytest.mark.mpc
def test_keeping_the_transcript_does_not_change_results(small_config, tmp_path):
    from petlab.pipeline import run_poc

    plain = run_poc(config=small_config(provider="TFP"), runs_root=str(tmp_path / "a"), progress=False)
    audited = run_poc(config=small_config(provider="TFP", audit_words=True, audit_party0_view=True),
                      runs_root=str(tmp_path / "b"), progress=False)
    # MPC runs draw fresh randomness, so results agree to fixed-point noise, not bitwise
    assert abs(plain.metrics["auc"]["mpc"] - audited.metrics["auc"]["mpc"]) < 0.002
    assert audited.metrics["max_abs_weight_diff"] < 0.02
    assert plain.metrics["comm"] == audited.metrics["comm"]

