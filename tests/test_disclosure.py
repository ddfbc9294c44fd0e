"""The disclosure policy refuses anything undeclared and records every reveal."""

from __future__ import annotations

import pytest
import torch

from petlab.mpc.disclosure import DISCLOSURES, DisclosureError, DisclosureLedger, declared_disclosures, reveal
from petlab.mpc.trust import security_model
from petlab.parties import Party


class _FakeShared:
    """Stands in for an MPCTensor: records the receiver it was decrypted to."""

    def __init__(self, value):
        self.value, self.dst = value, None

    def get_plain_text(self, dst=None):
        self.dst = dst
        return self.value

    def nelement(self):
        return self.value.numel()


def test_only_declared_items_are_revealed_to_their_receiver():
    ledger = DisclosureLedger(allowed=("test_scores",))
    x = _FakeShared(torch.ones(3))
    assert reveal(x, item="test_scores", ledger=ledger, me=Party.GATEWAY) is not None
    assert x.dst == Party.GATEWAY.rank
    assert reveal(_FakeShared(torch.ones(3)), item="test_scores", ledger=ledger, me=Party.WALLET) is None
    with pytest.raises(DisclosureError, match="final_weights"):
        reveal(_FakeShared(torch.ones(2)), item="final_weights", ledger=ledger, me=Party.GATEWAY)
    with pytest.raises(DisclosureError):
        reveal(_FakeShared(torch.ones(2)), item="wallet_features", ledger=ledger, me=Party.GATEWAY)
    assert ledger.summary() == {"test_scores->gateway": {"count": 2, "numel": 6}}


def test_switches_control_the_declared_set():
    assert {d.item for d in declared_disclosures(reveal_weights=False, track_loss=False)} == {"test_scores"}
    assert len(declared_disclosures(reveal_weights=True, track_loss=True)) == len(DISCLOSURES)


def test_security_model_names_who_must_be_trusted():
    assert security_model(provider="TFP").trusted == "gateway"
    assert "reconstruct" in security_model(provider="TFP").statement
    assert security_model(provider="TTP").trusted == "dealer"
    with pytest.raises(ValueError):
        security_model(provider="HE")


def test_outputs_go_to_the_label_party_whichever_it_is():
    ledger = DisclosureLedger(allowed=("test_scores", "final_weights"), label_party=Party.WALLET)
    x = _FakeShared(torch.ones(3))
    assert reveal(x, item="test_scores", ledger=ledger, me=Party.WALLET) is not None
    assert x.dst == Party.WALLET.rank
    assert reveal(_FakeShared(torch.ones(2)), item="final_weights", ledger=ledger, me=Party.GATEWAY) is None
    assert set(ledger.summary()) == {"test_scores->wallet", "final_weights->wallet"}
    assert {d.receiver for d in declared_disclosures(reveal_weights=True, track_loss=True,
                                                     label_party=Party.WALLET)} == {Party.WALLET}


def test_the_training_loss_is_one_value_per_reveal():
    """A per-row loss vector revealed under the loss's name would give the label holder
    values that depend row by row on the other party's features: refused before sending."""
    ledger = DisclosureLedger(allowed=("train_loss",))
    one = _FakeShared(torch.ones(1))
    assert reveal(one, item="train_loss", ledger=ledger, me=Party.GATEWAY) is not None
    many = _FakeShared(torch.ones(64))
    with pytest.raises(DisclosureError, match="64 elements as 'train_loss'"):
        reveal(many, item="train_loss", ledger=ledger, me=Party.GATEWAY)
    assert many.dst is None  # nothing was decrypted
    assert ledger.summary() == {"train_loss->gateway": {"count": 1, "numel": 1}}
