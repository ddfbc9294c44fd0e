"""The disclosure policy: everything an MPC run may reveal, and to whom.

This is the one place a reviewer reads to know what leaves secret-shared form. Party
code reveals only through :func:`reveal`, which refuses anything not declared here and
records every decryption with its receiver in a :class:`DisclosureLedger`.

>>> [d.item for d in declared_disclosures(reveal_weights=True, track_loss=False)]
['test_scores', 'final_weights']
>>> describe(item="test_scores").receiver
<Party.GATEWAY: 'gateway'>
>>> describe(item="test_scores", label_party=Party.WALLET).receiver
<Party.WALLET: 'wallet'>
"""

from __future__ import annotations

import dataclasses

from petlab.parties import LABEL_PARTY, Party

__all__ = [
    "Disclosure",
    "DisclosureError",
    "DisclosureLedger",
    "DISCLOSURES",
    "declared_disclosures",
    "describe",
    "reveal",
]


class DisclosureError(RuntimeError):
    """An attempt to reveal something the policy does not declare."""


@dataclasses.dataclass(frozen=True)
class Disclosure:
    item: str
    receiver: Party
    what: str  # what exactly is revealed
    why: str  # why the receiver needs it
    switch: str | None = None  # MPCConfig flag that enables it (None: always)
    max_numel: int | None = None  # the most elements one reveal of it may hold (None: its shape says)


def _policy(label_party: Party) -> tuple[Disclosure, ...]:
    """Every output goes to the party that holds the label, and only to it."""
    other = next(p for p in Party if p != label_party)
    return (
        Disclosure(
            item="test_scores",
            receiver=label_party,
            what="predicted engagement probability of each test customer (n_test floats)",
            why="the label holder computes AUC, accuracy and log-loss on its own test labels",
        ),
        Disclosure(
            item="train_loss",
            receiver=label_party,
            what="mean training cross-entropy on the monitored training rows after each epoch (one float per "
                 "epoch; petlab's protocol opens their summed loss, which the receiver divides by their public count)",
            why="monitor convergence; compare with the plaintext model's loss curve",
            switch="track_loss",
            max_numel=1,
        ),
        Disclosure(
            item="final_weights",
            receiver=label_party,
            what=f"all trained model parameters, including those on the {other}'s features",
            why="compare MPC and plaintext weight by weight; deploy the model",
            switch="reveal_weights",
        ),
    )


#: The policy with the label at the gateway (the proof of concept's setting).
DISCLOSURES: tuple[Disclosure, ...] = _policy(LABEL_PARTY)


def declared_disclosures(*, reveal_weights: bool, track_loss: bool,
                         label_party: Party = LABEL_PARTY) -> list[Disclosure]:
    """The disclosures in force for a run with these switches and label holder."""
    switches = {"reveal_weights": reveal_weights, "track_loss": track_loss, None: True}
    return [d for d in _policy(Party.parse(str(label_party))) if switches[d.switch]]


def describe(*, item: str, label_party: Party = LABEL_PARTY) -> Disclosure:
    for d in _policy(Party.parse(str(label_party))):
        if d.item == item:
            return d
    raise DisclosureError(f"{item!r} is not a declared disclosure")


@dataclasses.dataclass
class DisclosureLedger:
    """Every decryption a party took part in, with item, receiver and element count."""

    allowed: tuple[str, ...]
    label_party: Party = LABEL_PARTY  # the receiver of every declared output
    entries: list = dataclasses.field(default_factory=list)

    def record(self, *, item: str, receiver: Party, numel: int) -> None:
        self.entries.append({"item": item, "receiver": str(receiver), "numel": int(numel)})

    def summary(self) -> dict:
        out: dict = {}
        for e in self.entries:
            key = f"{e['item']}->{e['receiver']}"
            slot = out.setdefault(key, {"count": 0, "numel": 0})
            slot["count"] += 1
            slot["numel"] += e["numel"]
        return out


def reveal(x_enc, *, item: str, ledger: DisclosureLedger, me: Party):
    """Decrypt ``x_enc`` to the receiver the policy names for ``item``.

    Every party calls this (decryption is joint); only the receiver gets the value,
    the others get ``None``. Undeclared or switched-off items raise
    :class:`DisclosureError` before anything is sent.
    """
    if item not in ledger.allowed:
        raise DisclosureError(f"run tried to reveal {item!r}, which this run does not declare")
    declared = describe(item=item, label_party=ledger.label_party)
    if declared.max_numel is not None and x_enc.nelement() > declared.max_numel:
        raise DisclosureError(f"run tried to reveal {x_enc.nelement()} elements as {item!r}, which is declared "
                              f"as at most {declared.max_numel}")
    receiver = declared.receiver
    value = x_enc.get_plain_text(dst=receiver.rank)
    ledger.record(item=item, receiver=receiver, numel=x_enc.nelement())
    return value if me == receiver else None
