"""A transcript of everything one party received over CrypTen's communicator.

:func:`install` wraps the communicator's receiving calls in a party process. Each call
is attributed to the operation that caused it (the innermost CrypTen or petlab function
outside the communicator, e.g. ``beaver.matmul``, ``circuit.add``, ``disclosure.reveal``)
and to petlab's current phase (``train``, ``reveal`` ...). Counts and bytes are always
kept; the received ring elements themselves are kept in full when asked (small audit runs).

What counts as "received": for point-to-point, broadcast and scatter, the tensor that
arrived; for a reduction (``all_reduce``, ``reduce`` at the receiver) between two parties,
the other party's contribution, i.e. the result minus (or XOR) this party's own input,
which is what crossed the wire. The wrappers return exactly what the wrapped calls return.

On audit runs each message also keeps its parts (one per tensor: its size and whether it
was opened as a sum or an XOR) and, for a reduction, what it *opened* (the result both
inputs made): the mask-reuse and plaintext checks of :mod:`petlab.audit.checks` read
openings, which a party knows in full, not only the other party's contribution.
"""

from __future__ import annotations

import dataclasses
import functools
import pickle
import sys

import numpy as np
import torch

__all__ = ["Transcript", "install", "wrap_communicator", "current", "set_phase"]

_SKIP_FUNCS = {
    "reveal", "reveal_batch", "get_plain_text", "__beaver_protocol", "_beaver_protocol",
    "logging_wrapper", "staged", "wrapper", "recorded", "_get_autograd_forward_function",
    "autograd_forward", "unary_wrapper_function", "binary_wrapper_function",
    # petlab.mpc.lean's openings: attributed to the operation that opens
    "open", "open_xor", "open_mixed", "_all_reduce",
}


def _operation(depth: int = 2) -> str:
    """A declared reveal (``disclosure.reveal[item]``) if one is on the stack, else the
    innermost CrypTen/petlab frame outside the communicator and reveal helpers."""
    probe = sys._getframe(depth)
    while probe is not None:
        if probe.f_code.co_name == "reveal" and probe.f_code.co_filename.replace("\\", "/").endswith(
                "petlab/mpc/disclosure.py"):
            return f"disclosure.reveal[{probe.f_locals.get('item')}]"
        probe = probe.f_back
    frame = sys._getframe(depth)
    while frame is not None:
        path = frame.f_code.co_filename.replace("\\", "/")
        name = frame.f_code.co_name
        inside = ("/crypten/" in path or "/petlab/" in path)
        if (inside and "/communicator/" not in path and "/petlab/audit/" not in path
                and "/petlab/mpc/devices" not in path and "/petlab/mpc/channel" not in path
                and name not in _SKIP_FUNCS
                and not name.startswith("__")):
            module = path.rsplit("/", 1)[-1].removesuffix(".py")
            return f"{module}.{name}"
        frame = frame.f_back
    return "unknown"


@dataclasses.dataclass
class Transcript:
    """Counts, bytes and (optionally) the received words, by (phase, operation, call)."""

    keep_words: bool = False
    max_words: int = 20_000_000
    phase: str = "setup"
    entries: list = dataclasses.field(default_factory=list)
    words: list = dataclasses.field(default_factory=list)
    opened: list = dataclasses.field(default_factory=list)  # (message index, what a reduction opened)
    kept: int = 0

    def add(self, *, call: str, received, peer: str | None = None, opened=None,
            kinds: list[str] | None = None) -> None:
        op = _operation(depth=3)
        entry_parts = None
        if isinstance(received, (bytes, bytearray)):
            nbytes, numel, is_tensor = len(received), 0, False
        else:
            tensors = [t for t in (received if isinstance(received, list) else [received])
                       if torch.is_tensor(t)]
            numel = sum(t.numel() for t in tensors)
            nbytes, is_tensor = numel * 8, True
            if self.keep_words and self.kept < self.max_words and tensors:
                flat = torch.cat([t.detach().reshape(-1).cpu().long() for t in tensors]).numpy()
                flat = flat[: self.max_words - self.kept]
                self.words.append((len(self.entries), flat.copy()))
                self.kept += flat.size
                kinds = list(kinds) if kinds is not None else ["sum"] * len(tensors)
                entry_parts = [[int(t.numel()), kind] for t, kind in zip(tensors, kinds)]
                if opened is not None and self.kept < self.max_words:
                    whole = torch.cat([torch.as_tensor(t).detach().reshape(-1).cpu().long()
                                       for t in (opened if isinstance(opened, list) else [opened])]).numpy()
                    whole = whole[: self.max_words - self.kept]
                    self.opened.append((len(self.entries), whole.copy()))
                    self.kept += whole.size
        entry = {"phase": self.phase, "op": op, "call": call, "numel": int(numel),
                 "bytes": int(nbytes), "tensor": is_tensor, "peer": peer}
        if entry_parts is not None:
            entry["parts"] = entry_parts
        self.entries.append(entry)

    def summary(self) -> list[dict]:
        """Counts and bytes by phase, operation and communicator call."""
        table: dict = {}
        for e in self.entries:
            key = (e["phase"], e["op"], e["call"])
            slot = table.setdefault(key, {"messages": 0, "bytes": 0, "elements": 0})
            slot["messages"] += 1
            slot["bytes"] += e["bytes"]
            slot["elements"] += e["numel"]
        return [{"phase": k[0], "op": k[1], "call": k[2], **v} for k, v in sorted(table.items())]

    def save(self, folder) -> None:
        """Write ``transcript.json`` (every message) and, if kept, ``received_words.npz``."""
        import json
        from pathlib import Path

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "transcript.json").write_text(json.dumps(
            {"summary": self.summary(), "messages": self.entries, "words_kept": self.kept,
             "complete": self.kept < self.max_words}, indent=1))
        if self.keep_words:
            arrays = {f"m{idx}": w for idx, w in self.words}
            np.savez_compressed(folder / "received_words.npz", **arrays)
            np.savez_compressed(folder / "opened_words.npz", **{f"m{idx}": w for idx, w in self.opened})


_CURRENT: Transcript | None = None


def current() -> Transcript | None:
    return _CURRENT


def set_phase(name: str) -> None:
    if _CURRENT is not None:
        _CURRENT.phase = name


def _kinds(result, op) -> list[str]:
    """``"xor"`` or ``"sum"`` for each tensor a reduction opened."""
    kind = "xor" if op is not None and "BXOR" in str(op) else "sum"
    return [kind] * (len(result) if isinstance(result, list) else 1)


def _other_contribution(result, own, op):
    """What the other party contributed to a two-party reduction."""
    xor = op is not None and "BXOR" in str(op)
    if isinstance(result, list):
        return [(r ^ o) if xor else (r - o) for r, o in zip(result, own)]
    return (result ^ own) if xor else (result - own)


def install(communicator_cls, *, keep_words: bool = False) -> Transcript:
    """Start recording what this process receives (idempotent per process)."""
    global _CURRENT
    if _CURRENT is not None:
        return _CURRENT
    _CURRENT = Transcript(keep_words=keep_words)
    wrap_communicator(communicator_cls, transcript=_CURRENT)
    return _CURRENT


def wrap_communicator(communicator_cls, *, transcript: Transcript) -> None:
    """Wrap ``communicator_cls``'s receiving calls so that they record into ``transcript``."""

    def wrap(name, fn):
        @functools.wraps(fn)
        def recorded(self, *args, **kwargs):
            rank = self.get_rank()
            # the other party's contribution to a reduction is only computed when the words
            # are kept (audit runs); counting needs only its size, which is the result's
            exact = transcript.keep_words and name in ("all_reduce", "reduce", "petlab_open")
            if exact:
                own = args[0]
                own = [t.copy() if isinstance(t, np.ndarray) else t.clone() for t in own] \
                    if isinstance(own, list) else own.clone()
            result = fn(self, *args, **kwargs)
            try:
                if name == "petlab_open":  # petlab's protocol over the direct link: an all_reduce in numpy
                    opened = [torch.from_numpy(t) for t in result]
                    if exact:
                        opened = [torch.from_numpy((r ^ o) if op == "xor" else (r - o))
                                  for r, o, op in zip(result, own, args[1])]
                    transcript.add(call="all_reduce", received=opened,
                                   opened=[torch.from_numpy(t) for t in result] if exact else None,
                                   kinds=["xor" if op == "xor" else "sum" for op in args[1]])
                elif name == "recv":
                    transcript.add(call=name, received=result, peer=str(kwargs.get("src", args[1] if len(args) > 1 else None)))
                elif name == "all_reduce":
                    transcript.add(call=name, received=_other_contribution(result, own, kwargs.get("op"))
                                   if exact else result, opened=result if exact else None,
                                   kinds=_kinds(result, kwargs.get("op")))
                elif name == "reduce":
                    dst = kwargs.get("dst", args[1] if len(args) > 1 else None)
                    if dst == rank and result is not None:
                        transcript.add(call=name, received=_other_contribution(result, own, kwargs.get("op"))
                                       if exact else result, opened=result if exact else None,
                                       kinds=_kinds(result, kwargs.get("op")))
                elif name == "broadcast":
                    src = kwargs.get("src", args[1] if len(args) > 1 else None)
                    if src != rank:
                        transcript.add(call=name, received=result, peer=str(src))  # what arrived is what opened
                elif name == "scatter":
                    src = kwargs.get("src", args[1] if len(args) > 1 else None)
                    if src != rank:
                        transcript.add(call=name, received=result, peer=str(src))
                elif name in ("gather", "all_gather"):
                    if isinstance(result, list) and result and result[0] is not None:
                        transcript.add(call=name, received=[t for i, t in enumerate(result) if i != rank])
                elif name in ("recv_obj", "broadcast_obj"):
                    src = kwargs.get("src", args[1] if len(args) > 1 else None) if name == "broadcast_obj" \
                        else kwargs.get("src", args[0] if args else None)
                    if src != rank:
                        transcript.add(call=name, received=pickle.dumps(result), peer=str(src))
            except Exception as err:  # noqa: BLE001 - recording must never break the protocol
                transcript.entries.append({"phase": transcript.phase, "op": "record-error",
                                           "call": name, "numel": 0, "bytes": 0, "tensor": False,
                                           "peer": repr(err)[:200]})
            return result

        return recorded

    for name in ("recv", "all_reduce", "reduce", "broadcast", "scatter", "gather", "all_gather",
                 "recv_obj", "broadcast_obj", "petlab_open"):
        if hasattr(communicator_cls, name):
            setattr(communicator_cls, name, wrap(name, getattr(communicator_cls, name)))
