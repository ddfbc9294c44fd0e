"""What a party process held of the secret randomness, kept on audit runs so that the
audit can play that party: every key it touched and every stream it read, and its view
of the feature mask.

:func:`install` wraps :mod:`petlab.mpc.secret_random` in a party process: keys drawn from
the operating system (``fresh_key``), agreed with a peer (``KeyExchange.agree``), derived
(``derive_key``: the key it started from, the purpose and the result) and every key a
stream was read under (``SecretStream``, with its number). :func:`save` writes them to
``<party>/audit/keys.json``; :func:`save_mask_view` writes the opened ``E = X - A``, this
party's share of ``A`` and what it knows of ``A`` to ``mask_view.npz``.

These are throw-away keys of small audit runs, written so that the audit can replay them
(:mod:`petlab.audit.attacks`); nothing outside an audit run records a key.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import numpy as np

__all__ = ["KeyRecord", "install", "current", "save", "load", "save_mask_view", "load_mask_view"]


@dataclasses.dataclass
class KeyRecord:
    """Keys (hex) with how this process came by them, the purposes it derived keys for,
    and the highest stream number read under each key."""

    keys: dict = dataclasses.field(default_factory=dict)  # hex -> sorted origins
    purposes: set = dataclasses.field(default_factory=set)
    streams: dict = dataclasses.field(default_factory=dict)  # hex -> highest stream number read

    def hold(self, key, origin: str) -> None:
        if isinstance(key, (bytes, bytearray)) and len(key) == 32:
            self.keys.setdefault(bytes(key).hex(), set()).add(origin)

    def as_dict(self) -> dict:
        return {"keys": {k: sorted(v) for k, v in self.keys.items()}, "purposes": sorted(self.purposes),
                "streams": dict(self.streams)}


_CURRENT: KeyRecord | None = None


def current() -> KeyRecord | None:
    return _CURRENT


def install() -> KeyRecord:
    """Record every key this process holds from now on (idempotent per process)."""
    global _CURRENT
    if _CURRENT is not None:
        return _CURRENT
    import petlab.mpc.lean as lean
    from petlab.mpc import secret_random as sr

    record = _CURRENT = KeyRecord()
    fresh, derive = sr.fresh_key, sr.derive_key

    @functools.wraps(fresh)
    def fresh_key():
        key = fresh()
        record.hold(key, "fresh")
        return key

    @functools.wraps(derive)
    def derive_key(*, key, purpose):
        out = derive(key=key, purpose=purpose)
        record.hold(key, "derived from")
        record.hold(out, f"derived: {purpose}")
        record.purposes.add(purpose)
        return out

    agree = sr.KeyExchange.agree

    @functools.wraps(agree)
    def agreed(self, *, peer_public, context):
        key = agree(self, peer_public=peer_public, context=context)
        record.hold(key, "agreed")
        return key

    stream_init = sr.SecretStream.__init__

    @functools.wraps(stream_init)
    def stream(self, *, key, number=0):
        stream_init(self, key=key, number=number)
        record.hold(key, "stream")
        hexed = bytes(key).hex()
        record.streams[hexed] = max(number, record.streams.get(hexed, 0))

    sr.fresh_key, sr.derive_key = fresh_key, derive_key
    lean.derive_key = derive_key  # bound by name at lean's import
    sr.KeyExchange.agree = agreed
    sr.SecretStream.__init__ = stream
    return record


def save(folder: str | Path) -> None:
    """Write ``keys.json`` of what this process recorded (nothing when not installed)."""
    if _CURRENT is None:
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "keys.json").write_text(json.dumps(_CURRENT.as_dict(), indent=1))


def load(folder: str | Path) -> dict:
    """``keys.json``: {"keys": {hex: origins}, "purposes": [...], "streams": {hex: n}}."""
    return json.loads((Path(folder) / "keys.json").read_text())


def save_mask_view(*, folder: str | Path, E, own_share, a_view) -> None:
    """This party's view of the feature mask: the opened ``E``, its share of ``A``, and
    what it knows of ``A`` (under TFP, the gateway deals: the whole mask)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {name: np.asarray(v.numpy() if hasattr(v, "numpy") else v, dtype=np.int64)
              for name, v in (("E", E), ("own_share", own_share), ("a_view", a_view))}
    np.savez(folder / "mask_view.npz", **arrays)


def load_mask_view(folder: str | Path) -> dict | None:
    path = Path(folder) / "mask_view.npz"
    if not path.is_file():
        return None
    with np.load(path) as npz:
        return {k: npz[k] for k in npz.files}
