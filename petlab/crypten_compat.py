"""Make CrypTen 0.4.1 (the last release) work on current PyTorch.

Every petlab process that touches CrypTen gets it through :func:`import_crypten`,
never through a bare ``import crypten``: party processes are started afresh (spawned,
or on another host), so a fix applied only in a parent process would not reach them.

The fixes, each a small alias or wrapper around CrypTen's own code (none of CrypTen's
source is copied here):

1. ``crypten.nn.onnx_converter`` imports ``torch.onnx._internal.registration``, which
   torch 2.9+ moved to ``torch.onnx._internal.torchscript_exporter.registration``:
   an alias in ``sys.modules`` before the import.
2. ``crypten.nn.from_pytorch`` exports through ``torch.onnx.export``, which now defaults
   to the dynamo exporter (that bypasses CrypTen's TorchScript symbolic overrides): the
   export helper is wrapped so that it calls the legacy exporter (``dynamo=False``).
3. ``crypten.load`` / ``crypten.load_from_party`` unpickle whole objects, which
   ``torch.load`` refuses since torch 2.6 (``weights_only=True``): the old default is
   restored only around those calls (same trust as before: load only files you made).

>>> crypten = import_crypten()
>>> crypten.__name__
'crypten'
>>> applied_fixes()["onnx_registration_alias"] in (True, False)
True
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import sys
from types import ModuleType

__all__ = ["import_crypten", "applied_fixes", "legacy_torch_load"]

_OLD_REGISTRATION = "torch.onnx._internal.registration"
_NEW_REGISTRATION = "torch.onnx._internal.torchscript_exporter.registration"

_FIXES: dict[str, bool] = {
    "onnx_registration_alias": False,
    "onnx_legacy_exporter": False,
    "legacy_torch_load": False,
}


def applied_fixes() -> dict[str, bool]:
    """Which compatibility fixes are in force in this process.

    Returns:
        A copy of the mapping fix name -> applied (``False`` where the installed
        torch did not need it or :func:`import_crypten` has not run yet).
    """
    return dict(_FIXES)


def _alias_onnx_registration() -> None:
    try:
        importlib.import_module(_OLD_REGISTRATION)
        return  # old torch: nothing to do
    except ImportError:
        pass
    new = importlib.import_module(_NEW_REGISTRATION)
    sys.modules[_OLD_REGISTRATION] = new
    _FIXES["onnx_registration_alias"] = True


@contextlib.contextmanager
def legacy_torch_load():
    """Within the block, ``torch.load`` defaults to ``weights_only=False`` again.

    CrypTen's loaders pickle whole objects; they are only safe for files you made.
    """
    key = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
    old = os.environ.get(key)
    os.environ[key] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def _wrap_onnx_export(crypten: ModuleType) -> None:
    import torch

    converter = importlib.import_module("crypten.nn.onnx_converter")
    original = converter._export_pytorch_model
    if getattr(original, "_petlab_wrapped", False):
        return

    @functools.wraps(original)
    def export_with_legacy_exporter(f, pytorch_model, dummy_input):
        real_export = torch.onnx.export

        def legacy_export(*args, **kwargs):
            kwargs.setdefault("dynamo", False)
            return real_export(*args, **kwargs)

        torch.onnx.export = legacy_export
        try:
            return original(f, pytorch_model, dummy_input)
        finally:
            torch.onnx.export = real_export

    export_with_legacy_exporter._petlab_wrapped = True
    converter._export_pytorch_model = export_with_legacy_exporter
    _FIXES["onnx_legacy_exporter"] = True


def _wrap_loaders(crypten: ModuleType) -> None:
    for name in ("load", "load_from_party"):
        original = getattr(crypten, name)
        if getattr(original, "_petlab_wrapped", False):
            continue

        def make(original=original):
            @functools.wraps(original)
            def wrapped(*args, **kwargs):
                with legacy_torch_load():
                    return original(*args, **kwargs)

            wrapped._petlab_wrapped = True
            return wrapped

        setattr(crypten, name, make())
    _FIXES["legacy_torch_load"] = True


def import_crypten() -> ModuleType:
    """Import CrypTen with petlab's compatibility fixes in force (idempotent).

    Returns:
        The ``crypten`` module.

    >>> import_crypten() is import_crypten()
    True
    """
    if "crypten" in sys.modules and _FIXES["legacy_torch_load"]:
        return sys.modules["crypten"]
    _alias_onnx_registration()
    import crypten

    _wrap_onnx_export(crypten)
    _wrap_loaders(crypten)
    return crypten
