"""The per-party data-classification table, in the regulator's terms.

For each item a party holds or receives: whether it is the party's own personal data,
another party's data in protected form, a revealed output, or public metadata, and what
could be inferred from it. The table depends on the provider (who deals the triples)
and on which outputs the run reveals.

>>> rows = classification_table(provider="TFP", reveal_weights=True, track_loss=True)
>>> [r["classification"] for r in rows if r["party"] == "gateway" and r["item"].startswith("shares")][0]
'another party’s data, NOT protected from this party (it dealt the masks)'
"""

from __future__ import annotations

__all__ = ["classification_table", "OWN", "PROTECTED", "REVEALED", "PUBLIC"]

OWN = "own personal data"
PROTECTED = "another party’s data in protected form"
REVEALED = "revealed output"
PUBLIC = "public metadata"


def classification_table(*, provider: str, reveal_weights: bool, track_loss: bool,
                         label_party: str = "gateway") -> list[dict]:
    """Rows of {party, item, classification, inference} for a run's settings.

    Args:
        provider: "TFP" (the gateway, party 0, deals the triples) or "TTP" (a dealer).
        reveal_weights, track_loss: which optional outputs the run reveals.
        label_party: the party that holds the label and receives every output.
    """
    rows = []
    holder = str(label_party)
    other_of_holder = "wallet" if holder == "gateway" else "gateway"

    def add(party, item, classification, inference):
        rows.append({"party": party, "item": item, "classification": classification,
                     "inference": inference})

    for party, own in (("gateway", "its customers' records, e.g. payment behaviour"),
                       ("wallet", "its customers' records, e.g. app behaviour and preferences")):
        own += ", and their labels" if party == holder else ""
        add(party, f"its own table ({own})", OWN,
            "everything: the party is the controller of this data and processes it locally")
    for party, other in (("gateway", "wallet"), ("wallet", "gateway")):
        item = (f"shares received from the {other}: its shares of masked openings (Beaver ε, δ), "
                f"comparison circuits and of the revealed outputs")
        if provider == "TFP" and party == "gateway":
            add(party, item, "another party’s data, NOT protected from this party (it dealt the masks)",
                "with its own triples it can undo every mask and reconstruct the wallet's features "
                "(the audit demonstrates this): for the gateway these shares are effectively the "
                "wallet's personal data")
        else:
            add(party, item, PROTECTED,
                "nothing about any customer: each word is uniform over Z/2^64 and independent of the "
                "data (tested), and unmasking needs the other party's share or the dealer's triples")
    if provider == "TFP":
        add("gateway", "Beaver triples: generated in plaintext by the gateway", "own randomness (key material)",
            "no data by themselves, but they are the keys that unmask the wallet's openings")
        add("wallet", "its shares of the gateway's triples (from a shared seed, no communication)",
            "randomness", "nothing: uniformly random")
    else:
        add("gateway", "its shares of triples (from the dealer's seed; products requested from the dealer)",
            "randomness", "nothing: uniformly random, and the gateway never learns the masks")
        add("wallet", "its shares of triples (from the dealer's seed)", "randomness",
            "nothing: uniformly random")
        add("dealer", "every triple in plaintext; sizes of the requested operations", "randomness and public metadata",
            "no customer data (it receives no data shares), but it could unmask openings if it "
            "colluded with a party: it must be independent of both")
    add(holder, "test scores (one probability per test customer)", REVEALED,
        f"personal data for the {holder}: a score about each of its identified customers, computed "
        f"from both parties' features, so it carries some information about the {other_of_holder}'s "
        "features (e.g. which test customers are active users there). Not a share.")
    if reveal_weights:
        add(holder, f"final model weights, including those on the {other_of_holder}'s features", REVEALED,
            f"they show how the {other_of_holder}'s features relate to the label, and with the revealed "
            f"test scores they are more than that: each score is logit^-1(w·x + b), so every test "
            f"customer's score is one linear equation in that customer's {other_of_holder} features "
            f"(with a single {other_of_holder} feature, the {holder} solves it exactly; with k features it "
            "learns one linear combination of them per customer). Personal data about the "
            f"{other_of_holder}'s customers, not shares; off by default between organisations.")
    if track_loss:
        add(holder, "training loss per epoch (one number per epoch)", REVEALED,
            "an aggregate over thousands of customers: negligible")
    add(holder, "metrics (AUC, accuracy, log-loss)", REVEALED,
        "aggregates computed from its own labels and the revealed scores")
    for party, other in (("gateway", "wallet"), ("wallet", "gateway")):
        add(party, "PSI result: which of its own customers are shared, and the size of the other's set",
            REVEALED, f"personal data for the {party}: that each of these identified customers is also "
            f"a customer of the {other} (membership); nothing about the {other}'s other customers")
        add(party, "handshake: role, version and the shared configuration (greeting); row and feature "
            "counts, the id, label and column names of the other's table; keyed commitments (HMAC under "
            "a key only the two parties hold) of the configuration and of the intersection; X25519 "
            "public keys", PUBLIC,
            "the number of shared customers and of features, the other's schema (column names can "
            "themselves be sensitive: name them neutrally); that both PSI results agree. The "
            "commitments cover what both parties know anyway, and no outsider can test a guess "
            "against them; no digest of a table file is sent; the public keys carry nothing")
    return rows
