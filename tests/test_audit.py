"""The privacy audit: transcripts, the checks and their thresholds, the trust demonstration."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from petlab.audit import attacks, checks
from petlab.audit.classification import OWN, PROTECTED, REVEALED, classification_table
from petlab.audit.negative_controls import CONTROLS, NegativeControlError, apply_negative_control
from petlab.audit.run import AuditFailed, AuditResult, declared_reveals_only, require_passed, run_audit
from petlab.audit.transcript import Transcript, wrap_communicator
from petlab.config import ConfigError, poc_config
from petlab.mpc.secret_random import SecretStream, derive_key, fresh_key

RNG = np.random.default_rng(0)

#: The audit runs of this file: a few hundred customers, one epoch, two minibatches.
AUDIT_RUN = dict(rows=300, epochs=1, batch_size=128, timeout_s=600)
#: The provider each negative control is run under (once each; TFP runs start no dealer).
CONTROL_RUNS = {"weak-key": "TTP", "reused-mask": "TFP", "undeclared-all-reduce": "TFP",
                "gateway-holds-wallet-mask": "TTP", "sign-in-clear": "TFP", "one-word-leak": "TFP",
                "partial-mask-reuse": "TFP"}
#: Checks a control fails besides its named one, because it is the same leak seen from the other side.
SAME_LEAK = {"gateway-holds-wallet-mask": ("the wallet cannot reconstruct the gateway's features",)}


def _audit_config(root, **overrides):
    return poc_config(**{**AUDIT_RUN, "root": str(root), **overrides})


@pytest.fixture(scope="module")
def real_audit(tmp_path_factory):
    """The audit of the real protocol (logistic regression, both providers), run once."""
    out = tmp_path_factory.mktemp("real_audit")
    return run_audit(config=_audit_config(out / "parties"), out=out / "audit", progress=False)


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
    # the loss is declared as one value a reveal: a vector under its name is not declared
    loss = [{"call": "reduce", "op": "disclosure.reveal[train_loss]", "numel": 1}]
    assert declared_reveals_only(messages=loss, allowed={"train_loss"}).passed
    per_row = [{"call": "reduce", "op": "disclosure.reveal[train_loss]", "numel": 256}]
    res = declared_reveals_only(messages=per_row, allowed={"train_loss"})
    assert not res.passed and "of 256 elements" in res.detail
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
def test_audit_runs_pass_and_show_the_trust_model(real_audit):
    result = real_audit
    tmp_path = result.folder.parent
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
def test_the_real_audit_runs_every_check_a_negative_control_fails(real_audit):
    """Each check the negative controls are caught by ran on the real runs, for each
    provider and party it applies to, and passed; both parties replayed their keys."""
    for control in CONTROLS.values():
        rows = [c for c in real_audit.checks if c["name"].startswith(control.fails)]
        assert rows and all(c["passed"] for c in rows), control
    by = {(c["provider"], c["party"]): set() for c in real_audit.checks}
    for c in real_audit.checks:
        by[(c["provider"], c["party"])].add(c["name"])
    for (provider, party), names in by.items():
        other = "wallet" if party == "gateway" else "gateway"
        assert f"no key of the {other} found in a small public key space" in names
        assert f"no mask reused across the openings the {party} saw" in names
        assert (f"the {party} cannot reconstruct the {other}'s features from its keys and view" in names) == (
            (provider, party) != ("TFP", "gateway"))  # there the gateway dealt the mask: it reconstructs
    assert real_audit.reconstruction["TTP"]["attempts"] > 10  # its share plus the streams of every key it held
    keys = json.loads((real_audit.folder / "TTP" / "gateway" / "audit" / "keys.json").read_text())
    assert {"agreed", "fresh"} <= {o for origins in keys["keys"].values() for o in origins}
    assert "protocol/correlated-randomness" in keys["purposes"]


@pytest.mark.mpc
@pytest.mark.parametrize("control", sorted(CONTROL_RUNS))
def test_each_negative_control_fails_the_audit_with_its_check(control, tmp_path):
    """A deliberately broken run (petlab.audit.negative_controls) is caught by the check
    made for it, and only by it: the per-word tests alone would have passed it."""
    config = _audit_config(tmp_path / "parties", negative_control=control, audit_words=True, audit_party0_view=True)
    result = run_audit(config=config, out=tmp_path / "audit", progress=False, providers=(CONTROL_RUNS[control],))
    expected = CONTROLS[control].fails
    assert not result.passed
    with pytest.raises(AuditFailed, match=re.escape(expected)):
        require_passed(result)
    failed = {c["name"] for c in result.checks if not c["passed"]}
    allowed = (expected,) + SAME_LEAK.get(control, ())
    assert failed and all(name.startswith(allowed) for name in failed), failed
    if control == "gateway-holds-wallet-mask":  # the trust demonstration says so too
        assert result.reconstruction["TTP"]["recovered_fraction"] == 1.0
        assert not result.reconstruction["TTP"]["as_expected"]


def test_every_negative_control_can_be_chosen_by_the_configuration():
    from petlab.config import NEGATIVE_CONTROLS

    assert set(CONTROL_RUNS) == set(CONTROLS)
    assert set(CONTROLS) == set(NEGATIVE_CONTROLS), (
        f"petlab.config.NEGATIVE_CONTROLS lacks {sorted(set(CONTROLS) - set(NEGATIVE_CONTROLS))}")


def test_negative_controls_are_refused_outside_audit_runs():
    with pytest.raises(ConfigError, match="audit runs only"):
        poc_config(negative_control="weak-key")
    with pytest.raises(ConfigError, match="expected one of"):
        poc_config(negative_control="leaky", audit_words=True, audit_party0_view=True)
    with pytest.raises(NegativeControlError, match="only audit runs"):
        apply_negative_control(name="reused-mask", role="gateway", config=poc_config())


def _masked(words):
    """Openings of ``words`` under fresh uniform masks."""
    return [(w + _uniform(w.size), "sum") for w in words]


def test_mask_reuse_is_caught_and_fresh_masks_pass():
    values = [checks.encode_fixed_point(RNG.standard_normal(30)) for _ in range(2)]
    fresh = [(_uniform(n), kind) for n, kind in zip(RNG.integers(2, 60, 5000), ["sum", "xor"] * 2500)]
    fresh += [(_uniform(30), "sum") for _ in range(2000)]  # many openings of the mask's length
    assert sum(w.size for w, _ in fresh) > 200_000
    clean = checks.mask_reuse(openings=fresh, label="x")
    assert clean.passed, clean.detail
    B = _uniform(30)  # one 30-word mask for w1 - B and w2 - B, among the fresh openings
    leaky = fresh[:3000] + [(values[0] - B, "sum", "step 1")] + fresh[3000:] + [(values[1] - B, "sum", "step 2")]
    words = np.concatenate([w for w, *_ in leaky])
    # each word alone still looks uniform: the per-word tests pass this run
    assert checks.bit_balance(words=words, label="x").passed and checks.ks_uniform(words=words, label="x").passed
    assert checks.byte_chi_square(words=words, label="x").passed
    found = checks.mask_reuse(openings=leaky, label="x")
    assert not found.passed and found.statistic == 1 and "step 1" in found.detail and "step 2" in found.detail
    bits = _uniform(30)  # an XOR mask reused: x1 ^ B and x2 ^ B differ (XOR) by x1 ^ x2
    assert not checks.mask_reuse(openings=fresh + [(values[0] ^ bits, "xor"), (values[1] ^ bits, "xor")],
                                 label="x").passed
    same = _uniform(8)  # the same opening twice
    assert not checks.mask_reuse(openings=[(same, "sum"), (same.copy(), "sum")], label="x").passed
    # near the ends of the ring: w - B with B close to 2^63 wraps; the difference is still found
    edge = np.full(30, np.iinfo(np.int64).max - 5)
    assert not checks.mask_reuse(openings=[(values[0] + edge, "sum"), (values[1] + edge, "sum")], label="x").passed
    capped = checks.mask_reuse(openings=[(same, "sum")] * 50, label="x", max_pairs=10)
    assert not capped.passed and "pair cap 10 reached" in capped.detail


def test_partial_mask_reuse_is_caught_whatever_word_and_sign():
    """A mask reused for some words of a pair only (not the first, with either sign) is
    found: one close word by its closeness, several by their count."""
    fresh = [(_uniform(35), "sum", "fresh") for _ in range(60)] + [(_uniform(128), "sum", "fresh") for _ in range(60)]
    fresh += [(_uniform(84), "xor", "fresh") for _ in range(60)]
    clean = checks.mask_reuse(openings=fresh, label="x")
    assert clean.passed, clean.detail
    w1, w2 = (checks.encode_fixed_point(0.1 * RNG.standard_normal(35)) for _ in range(2))
    B = _uniform(35)
    for sign in (1, -1):  # w2 opened under B or under -B (the sum of the openings is then w1 + w2)
        later = _uniform(35)
        later[17] = w2[17] + sign * -B[17]
        found = checks.mask_reuse(openings=fresh[:30] + [(w1 - B, "sum", "step 1")] + fresh[30:]
                                  + [(later, "sum", "step 2")], label="x")
        assert not found.passed and found.statistic == 1, found.detail
        assert "step 1 and" in found.detail and "step 2 (a word's" in found.detail, found.detail
    # five words reused, each difference far above the closeness bound: their count gives them away
    later = _uniform(35)
    far = RNG.integers(2**35, 2**38, 5)
    later[[3, 9, 20, 27, 34]] = (w1 - B)[[3, 9, 20, 27, 34]] + far
    found = checks.mask_reuse(openings=fresh + [(w1 - B, "sum", "a"), (later, "sum", "b")], label="x")
    assert not found.passed and "5 of 35 words within 2^40" in found.detail, found.detail
    bits = _uniform(84)  # one word of an XOR mask reused
    x1, x2 = _uniform(84), _uniform(84)
    x2[40] = x1[40] ^ 12345
    assert not checks.mask_reuse(openings=fresh + [(x1 ^ bits, "xor"), (x2 ^ bits, "xor")], label="x").passed
    # the comparisons in full reach back `window` openings of a length, and the detail says so
    apart = checks.mask_reuse(openings=[(w1 - B, "sum", "a")] + fresh[:60] + [(later, "sum", "b")], label="x",
                              window=10)
    assert apart.passed and "further apart than the window of 10" in apart.detail


def test_one_word_openings_in_the_clear_fail():
    masked = [{"call": "all_reduce", "op": "lean.trunc_together", "kind": "sum", "words": _uniform(1)}
              for _ in range(100)]
    sums = [{"call": "all_reduce", "op": "lean.train_logreg", "kind": "sum",
             "words": checks.encode_fixed_point(np.array([v]))} for v in (-13.5, 7.25)]
    messages = [{"call": "all_reduce", "op": "lean.trunc_together"}]
    assert declared_reveals_only(messages=messages, allowed=set(), opened=masked).passed
    assert declared_reveals_only(messages=messages, allowed=set(), opened=masked + sums[:1]).passed  # chance allows 1
    res = declared_reveals_only(messages=messages, allowed=set(), opened=masked + sums)
    assert not res.passed and "lean.train_logreg (all_reduce, 1 word)" in res.detail, res.detail
    assert not declared_reveals_only(messages=messages, allowed=set(), opened=masked[:5] + sums[:1]).passed
    assert checks.small_single_words(parts=[_uniform(1) for _ in range(8)])[1] == 1
    assert checks.small_single_words(parts=[_uniform(1) for _ in range(9)])[1] == 2


def test_opened_bits_must_be_fair_coins():
    fair = [RNG.integers(0, 2, 128) for _ in range(20)]
    assert checks.opened_bit_balance(openings=fair, label="b").passed
    signs = np.zeros(128, dtype=np.int64)  # the sign of z = 0 at the first step, opened without its bit
    res = checks.opened_bit_balance(openings=fair + [signs], label="b")
    assert not res.passed and "0 ones in 64" in res.detail, res.detail
    # the piecewise sigmoid's three comparisons (z < -10, z < 0, z < 10): balanced as a whole
    n = 128
    pieces = np.concatenate([RNG.random(n) < 0.02, RNG.integers(0, 2, n), RNG.random(n) < 0.98]).astype(np.int64)
    assert abs(pieces.mean() - 0.5) < 0.05
    assert not checks.opened_bit_balance(openings=fair + [pieces], label="b").passed
    assert not checks.opened_bit_balance(openings=[b * 2 for b in fair], label="b").passed  # not bits


def test_plaintext_openings_outside_declared_reveals_fail():
    y = checks.encode_fixed_point(RNG.integers(0, 2, 200).astype(float))
    masked = [{"call": "all_reduce", "op": "lean.fm_left", "kind": "sum", "words": _uniform(200)},
              {"call": "all_reduce", "op": "lean.open_bit", "kind": "xor", "words": RNG.integers(0, 2, 200)},
              {"call": "reduce", "op": "disclosure.reveal[test_scores]", "kind": "sum", "words": y}]
    messages = [{"call": "all_reduce", "op": "lean.fm_left"}, {"call": "all_reduce", "op": "lean.open_bit"},
                {"call": "reduce", "op": "disclosure.reveal[test_scores]"}]
    assert declared_reveals_only(messages=messages, allowed={"test_scores"}, opened=masked).passed
    for call in ("all_reduce", "broadcast"):  # y decrypted by a call that is not a declared reveal
        sneaky = masked + [{"call": call, "op": "party._run_data_party", "kind": "sum", "words": y}]
        res = declared_reveals_only(messages=messages, allowed={"test_scores"}, opened=sneaky)
        assert not res.passed and "party._run_data_party" in res.detail
    # a declared item opened to both parties is still a declared reveal; an undeclared one is not
    both = masked + [{"call": "all_reduce", "op": "disclosure.reveal[train_loss]", "kind": "sum", "words": y}]
    assert declared_reveals_only(messages=messages, allowed={"test_scores", "train_loss"}, opened=both).passed
    assert not declared_reveals_only(messages=messages, allowed={"test_scores"}, opened=both).passed
    assert checks.plaintext_parts(parts=[_uniform(1000) for _ in range(1000)]) == []


def test_the_transcript_keeps_what_each_reduction_opened_part_by_part():
    transcript = Transcript(keep_words=True)

    class Comm(_FakeComm):
        pass

    wrap_communicator(Comm, transcript=transcript)
    x = torch.arange(6, dtype=torch.long)
    Comm().all_reduce([x, x[:2]], batched=True)
    assert transcript.entries[0]["parts"] == [[6, "sum"], [2, "sum"]]
    (idx, opened), = transcript.opened
    assert idx == 0 and opened.tolist() == (x + 5).tolist() + (x[:2] + 5).tolist()  # what the reduction opened
    assert set(transcript.words[0][1].tolist()) == {5}  # what the peer contributed


def _share_of(key, n, d):
    return SecretStream(key=key, number=0).take((n, d))


def test_key_search_finds_a_key_made_from_a_small_seed():
    X = checks.encode_fixed_point(RNG.standard_normal((20, 6)))
    own = _share_of(fresh_key(), 20, 6)
    for weak in (attacks.seeded_key(4321), derive_key(key=attacks.seeded_key(77), purpose=attacks.KNOWN_PURPOSES[0]),
                 (4321).to_bytes(32, "big")):
        E = X - own - _share_of(weak, 20, 6)
        hit = attacks.key_search(E=E, own_share=own, other="gateway", public_seeds=(0,), config_digest="ab" * 32)
        assert not hit.passed and hit.statistic == 1, hit.detail
    E = X - own - _share_of(fresh_key(), 20, 6)
    assert attacks.key_search(E=E, own_share=own, other="gateway", public_seeds=(0,), config_digest="ab" * 32).passed


def test_reconstruction_replays_every_key_a_party_held():
    X = checks.encode_fixed_point(RNG.standard_normal((16, 4)))
    mine, theirs = fresh_key(), fresh_key()
    peer_key = derive_key(key=theirs, purpose=attacks.KNOWN_PURPOSES[0])
    own = _share_of(derive_key(key=mine, purpose=attacks.KNOWN_PURPOSES[0]), 16, 4)
    E = X - own - SecretStream(key=peer_key, number=1).take((16, 4))  # the peer's share is its stream 1
    view = {"E": E, "own_share": own, "a_view": own}
    rows, truth = np.arange(8), X[:8, 2:] / 2**16

    def attempt(held, streams):
        return attacks.reconstruct_from_keys(view=view, keys={"keys": {k.hex(): ["x"] for k in held},
                                                              "purposes": [], "streams": streams},
                                             rows=rows, columns=slice(2, None), truth=truth)

    assert attempt([mine], {}).get("recovered_fraction") == 0.0
    assert attempt([mine, theirs], {}).get("recovered_fraction") == 0.0  # it never read a stream 1
    found = attempt([mine, theirs], {peer_key.hex(): 1})
    assert found["recovered_fraction"] == 1.0 and "stream 1" in found["best"]


@pytest.mark.mpc
def test_audit_of_the_mlp_on_petlabs_protocol_passes(small_config, tmp_path):
    """The MLP's own openings (the ReLU bits under random bits, the masked hidden layer)
    pass the same checks: uniform words, balanced 1-bit words, no raw values."""
    result = run_audit(config=small_config(**{**AUDIT_RUN, "model": "mlp"}), out=tmp_path / "audit", progress=False)
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

