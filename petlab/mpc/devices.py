"""Where a party computes (CPU or a CUDA GPU) and how CUDA shares travel.

Gloo, the backend CrypTen uses between hosts, has no point-to-point, reduce, gather or
scatter for CUDA tensors, and NCCL cannot serve two parties on one GPU. So on CUDA each
party computes on its GPU and stages every tensor it sends or receives through host
memory: :func:`stage_cuda_communication` wraps CrypTen's communicator to do that. The
bytes and rounds CrypTen counts are unchanged (the wrapper sits outside its counters).

>>> resolve_device("cpu")
device(type='cpu')
"""

from __future__ import annotations

import functools

import torch

__all__ = ["resolve_device", "stage_cuda_communication"]


def resolve_device(name: str) -> torch.device:
    """The torch device for ``name``; for CUDA, also make it the current device.

    Call it inside the party process, before ``crypten.init()`` (CrypTen never selects
    a GPU itself, and CUDA must not be initialised in a parent process).
    """
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {name!r} requested but torch sees no CUDA GPU")
        torch.cuda.set_device(device.index or 0)
    return device


class _StagedWork:
    """An async receive into host memory that copies into the CUDA buffer on wait()."""

    def __init__(self, work, host, target):
        self._work, self._host, self._target = work, host, target

    def wait(self, *args, **kwargs):
        out = self._work.wait(*args, **kwargs)
        self._target.copy_(self._host)
        return out

    def is_completed(self):
        return self._work.is_completed()


def _is_cuda(x) -> bool:
    return torch.is_tensor(x) and x.is_cuda


def stage_cuda_communication(communicator_cls) -> None:
    """Make ``communicator_cls`` (CrypTen's DistributedCommunicator) move CUDA tensors
    through host memory for every collective and point-to-point call (idempotent)."""
    if getattr(communicator_cls, "_petlab_cuda_staged", False):
        return

    def wrap(name, fn):
        @functools.wraps(fn)
        def staged(self, *args, **kwargs):
            args = list(args)
            first = args[0] if args else None
            if name == "irecv" and _is_cuda(first):
                host = first.cpu()
                work = fn(self, host, *args[1:], **kwargs)
                return _StagedWork(work, host, first)
            if isinstance(first, list) and any(_is_cuda(t) for t in first):
                device = next(t.device for t in first if _is_cuda(t))
                args[0] = [t.cpu() for t in first]
            elif _is_cuda(first):
                device = first.device
                args[0] = first.cpu()
            else:
                return fn(self, *args, **kwargs)
            if "device" in kwargs:
                kwargs["device"] = "cpu"
            result = fn(self, *args, **kwargs)
            if name == "broadcast" and _is_cuda(first):
                first.copy_(args[0])
                return first
            if torch.is_tensor(result):
                return result.to(device)
            if isinstance(result, list):
                return [t.to(device) if torch.is_tensor(t) else t for t in result]
            return result

        return staged

    for name in ("send", "recv", "isend", "irecv", "scatter", "reduce", "all_reduce",
                 "gather", "all_gather", "broadcast"):
        if hasattr(communicator_cls, name):
            setattr(communicator_cls, name, wrap(name, getattr(communicator_cls, name)))
    communicator_cls._petlab_cuda_staged = True
