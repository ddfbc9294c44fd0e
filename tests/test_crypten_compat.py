"""The compatibility module makes CrypTen 0.4.1 work on current torch, in every process."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import textwrap

import torch

from petlab.crypten_compat import applied_fixes, import_crypten


def test_import_applies_registration_alias():
    crypten = import_crypten()
    assert crypten.__name__ == "crypten"
    assert "torch.onnx._internal.registration" in sys.modules
    fixes = applied_fixes()
    assert fixes["legacy_torch_load"] and fixes["onnx_legacy_exporter"]
    # without the alias crypten cannot import on this torch; prove the alias is what is used
    from crypten.nn import onnx_converter

    assert onnx_converter.registry is not None


def _run_in_fresh_interpreter(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "WORLD_SIZE": "1", "RANK": "0"})
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_bare_import_fails_without_the_fix_on_this_torch():
    """Documents why the module exists: a bare `import crypten` fails on torch >= 2.9."""
    code = "import crypten"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    if (major, minor) >= (2, 9):
        assert out.returncode != 0 and "registration" in out.stderr
    else:
        assert out.returncode == 0


def test_from_pytorch_and_save_load_round_trip(tmp_path):
    """from_pytorch needs the legacy exporter; crypten.load needs the old torch.load default."""
    stdout = _run_in_fresh_interpreter(f"""
        import torch
        from petlab.crypten_compat import import_crypten
        crypten = import_crypten()
        crypten.init()
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        x = torch.randn(5, 4)
        enc_model = crypten.nn.from_pytorch(model, torch.empty(1, 4)).encrypt()
        out = enc_model(crypten.cryptensor(x)).get_plain_text()
        err = (out - model(x)).abs().max().item()
        path = r"{tmp_path / 'x.pt'}"
        crypten.save(crypten.cryptensor(x), path)
        back = crypten.load(path).get_plain_text()
        print(err, (back - x).abs().max().item())
    """)
    model_err, load_err = (float(v) for v in stdout.split())
    assert model_err < 1e-2
    assert load_err < 1e-3


def _child(queue):
    from petlab.crypten_compat import applied_fixes, import_crypten

    import_crypten()
    queue.put(applied_fixes())


def test_fixes_in_force_in_a_spawned_child():
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue,))
    proc.start()
    fixes = queue.get(timeout=300)
    proc.join(timeout=60)
    assert proc.exitcode == 0
    assert fixes["legacy_torch_load"] and fixes["onnx_legacy_exporter"]
