"""Party 0's own view of Beaver multiplications: what it knows of the mask ``a`` and the
opened ``epsilon = x - a``. Recorded in party 0's process on audit runs only.

Under TFP party 0 generates every triple in plaintext, so its view of ``a`` is the mask
itself and ``epsilon + a`` is the other party's secret input. Under TTP it only knows its
own share of ``a``, and the same computation yields noise. :mod:`petlab.audit.checks`
tries the reconstruction and scores it against the truth.
"""

from __future__ import annotations

import functools

import torch

__all__ = ["Party0View", "install"]


class Party0View:
    """The first ``limit`` feature-matrix multiplications party 0 took part in."""

    def __init__(self, *, provider: str, x_shape_filter, limit: int = 1):
        self.provider = provider
        self.x_shape_filter = x_shape_filter  # callable(size) -> bool: which matmuls to keep
        self.limit = limit
        self.records: list[dict] = []
        self._pending = None

    def arrays(self) -> dict:
        out = {}
        for i, r in enumerate(self.records):
            out[f"a_view_{i}"] = r["a_view"].cpu().numpy()
            out[f"epsilon_{i}"] = r["epsilon"].cpu().numpy()
        return out


def install(*, view: Party0View) -> Party0View:
    """Wrap the provider's triple generation and the Beaver openings in this process."""
    from crypten.mpc.primitives import ArithmeticSharedTensor
    from crypten.mpc.provider import tfp_provider, ttp_provider

    def want(size0, op):
        return op == "matmul" and len(view.records) < view.limit and view.x_shape_filter(tuple(size0))

    if view.provider == "TFP":
        original = tfp_provider.TrustedFirstParty.generate_additive_triple

        @functools.wraps(original)
        def tfp_triple(self, size0, size1, op, *args, **kwargs):
            if not want(size0, op):
                return original(self, size0, size1, op, *args, **kwargs)
            captured = []
            real_rng = tfp_provider.generate_random_ring_element

            def capture(*a, **k):
                value = real_rng(*a, **k)
                captured.append(value.clone())
                return value

            tfp_provider.generate_random_ring_element = capture
            try:
                result = original(self, size0, size1, op, *args, **kwargs)
            finally:
                tfp_provider.generate_random_ring_element = real_rng
            view._pending = captured[0]  # plaintext mask a, generated here by party 0
            return result

        tfp_provider.TrustedFirstParty.generate_additive_triple = tfp_triple
    else:
        original = ttp_provider.TrustedThirdParty.generate_additive_triple

        @functools.wraps(original)
        def ttp_triple(self, size0, size1, op, *args, **kwargs):
            a, b, c = original(self, size0, size1, op, *args, **kwargs)
            if want(size0, op):
                view._pending = a.share.clone()  # all party 0 knows of a: its own share
            return a, b, c

        ttp_provider.TrustedThirdParty.generate_additive_triple = ttp_triple

    original_reveal_batch = ArithmeticSharedTensor.reveal_batch

    def reveal_batch(tensor_or_list, dst=None):
        result = original_reveal_batch(tensor_or_list, dst=dst)
        if view._pending is not None and isinstance(result, list):
            view.records.append({"a_view": view._pending, "epsilon": result[0].clone()})
            view._pending = None
        return result

    ArithmeticSharedTensor.reveal_batch = staticmethod(reveal_batch)
    return view


def reconstruct(*, a_view: torch.Tensor, epsilon: torch.Tensor, precision_bits: int = 16) -> torch.Tensor:
    """``epsilon + a`` decoded from fixed point: the secret input, if ``a_view`` is the mask.

    >>> x = torch.tensor([1.5, -2.0]); a = torch.tensor([123456789, -987654321])
    >>> eps = (x * 2**16).long() - a
    >>> reconstruct(a_view=a, epsilon=eps).tolist()
    [1.5, -2.0]
    """
    return (epsilon + a_view).double() / (2**precision_bits)
