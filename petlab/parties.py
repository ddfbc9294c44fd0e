"""The named roles of a petlab run.

A party is a role with a name, never a bare integer. CrypTen identifies parties by
rank; the mapping lives here and nowhere else.

>>> Party.GATEWAY.rank, Party.WALLET.rank
(0, 1)
>>> Party.from_rank(1)
<Party.WALLET: 'wallet'>
>>> Party.parse("Gateway")
<Party.GATEWAY: 'gateway'>
"""

from __future__ import annotations

import enum

__all__ = ["Party", "DEALER", "LABEL_PARTY", "Role"]


class Party(str, enum.Enum):
    """A data-holding party of the proof of concept."""

    GATEWAY = "gateway"  # the payments gateway: cross-border payments and the label
    WALLET = "wallet"  # the e-wallet partner: app behaviour and preferences

    @property
    def rank(self) -> int:
        """CrypTen rank of this party (rank 0 talks to the dealer under TTP)."""
        return _RANKS[self]

    @classmethod
    def from_rank(cls, rank: int) -> "Party":
        for party, r in _RANKS.items():
            if r == rank:
                return party
        raise ValueError(f"no party has rank {rank}")

    @classmethod
    def parse(cls, name: str) -> "Party":
        """Party from its name, case-insensitive, with a clear error."""
        try:
            return cls(str(name).strip().lower())
        except ValueError:
            names = ", ".join(p.value for p in cls)
            raise ValueError(f"unknown party {name!r}: expected one of {names}") from None

    def __str__(self) -> str:  # "gateway", not "Party.GATEWAY", in messages and paths
        return self.value


_RANKS = {Party.GATEWAY: 0, Party.WALLET: 1}

#: The party that holds the label (engagement outcome) in the proof of concept.
LABEL_PARTY = Party.GATEWAY

#: The non-data role of the TTP provider: a separate dealer process that generates
#: Beaver triples. Its CrypTen rank is the number of data parties.
DEALER = "dealer"

Role = str  # "gateway" | "wallet" | "dealer"
