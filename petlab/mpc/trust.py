"""The security model of a run, stated plainly for every report.

>>> sm = security_model(provider="TFP")
>>> sm.trusted
'gateway'
>>> security_model(provider="TTP").dealer
'dealer (separate process)'
"""

from __future__ import annotations

import dataclasses

from petlab.parties import Party

__all__ = ["SecurityModel", "security_model", "CHANNEL_NOTE", "RANDOMNESS_NOTE", "REFERENCE_NOTE", "reference_note"]

CHANNEL_NOTE = (
    "petlab's own sockets between the gateway and the wallet (greeting, and the direct link that "
    "carries the openings) and SecretFlow's PSI link use mutually authenticated TLS 1.3 with each "
    "organisation's pinned certificate (throw-away certificates in this simulation). "
    "torch.distributed (gloo) is neither encrypted nor authenticated: it carries public keys, "
    "metadata and uniform words only; an active attacker there can corrupt results or sit in "
    "the middle of a dealer's key exchange (docs/security.md)."
)

RANDOMNESS_NOTE = (
    "Every secret random value (masks, triples, random bits, truncation pairs, CrypTen's zero "
    "sharings) comes from AES-256-CTR streams under keys drawn from the operating system or "
    "agreed by X25519 with the one peer that shares them (the gateway-wallet key inside the "
    "TLS greeting), bound to this run's configuration and roles; no key or seed is sent. "
    "CrypTen 0.4.1's own generators (mt19937, 32-bit seeds sent in the clear) are replaced "
    "in every party process."
)

def reference_note(*, label_party: str = "gateway") -> str:
    """What the plaintext reference models are, for a run with the labels at ``label_party``.

    Args:
        label_party: the party that holds the labels.

    >>> reference_note(label_party="wallet").split("; ")[-1]
    'the gateway-only model is a counterfactual, since the labels are at the wallet.'
    """
    holder = str(label_party)
    other = "wallet" if holder == "gateway" else "gateway"
    return ("The plaintext reference models (pooled, gateway only, wallet only) are trained by "
            "the research harness, which reads both parties' tables on this machine. They exist "
            "only in this simulation, to measure what MPC costs and what collaboration gains; "
            f"the {other}-only model is a counterfactual, since the labels are at the {holder}.")


#: :func:`reference_note` with the labels at the gateway.
REFERENCE_NOTE = reference_note(label_party="gateway")


@dataclasses.dataclass(frozen=True)
class SecurityModel:
    provider: str
    dealer: str  # who generates the Beaver triples
    trusted: str  # who must be trusted not to misuse them
    adversary: str
    statement: str


def security_model(*, provider: str) -> SecurityModel:
    """What a run under ``provider`` protects, and whom it asks you to trust."""
    party0 = str(Party.from_rank(0))
    adversary = (
        "semi-honest (honest-but-curious), non-colluding parties; CrypTen has no active "
        "security, so a party that deviates from the protocol can corrupt results undetected"
    )
    if provider == "TFP":
        return SecurityModel(
            provider="TFP",
            dealer=f"{party0} (rank 0, a data party)",
            trusted=party0,
            adversary=adversary,
            statement=(
                f"Trusted first party: the {party0} generates every Beaver triple in plaintext "
                f"and deals the other party its shares. It can therefore unmask every value the "
                f"other party opens during multiplications and reconstruct that party's "
                f"secret-shared inputs. The other party must trust the {party0} not to do so: "
                f"this provider protects the {party0}'s data from the wallet, not the reverse."
            ),
        )
    if provider == "TTP":
        return SecurityModel(
            provider="TTP",
            dealer="dealer (separate process)",
            trusted="dealer",
            adversary=adversary,
            statement=(
                "Trusted third party: a separate dealer process generates the Beaver triples and "
                "receives no data shares. Neither data party can unmask the other's values, "
                "provided the dealer colludes with neither; in a deployment an organisation "
                "independent of both parties must run it (here it runs on the same machine)."
            ),
        )
    raise ValueError(f"unknown provider {provider!r}")
