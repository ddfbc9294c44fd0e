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
    # without the alias crypten cannot import on this torch; prove the alias is what is used
    from crypten.nn import onnx_converter

    assert onnx_converter.registry is not None  # the converter loads on this first use
    fixes = applied_fixes()
    assert fixes["legacy_torch_load"] and fixes["onnx_legacy_exporter"]


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
    onnx_loaded = "onnx" in sys.modules  # the ONNX converter (and onnx) load on first use only
    from crypten.nn import onnx_converter

    converter_loaded = onnx_converter.registry is not None and "onnx" in sys.modules  # a use: it loads
    queue.put((applied_fixes(), onnx_loaded, converter_loaded))


def test_fixes_in_force_in_a_spawned_child():
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue,))
    proc.start()
    fixes, onnx_loaded_at_import, converter_loaded = queue.get(timeout=300)
    proc.join(timeout=60)
    assert proc.exitcode == 0
    assert fixes["legacy_torch_load"] and fixes["onnx_legacy_exporter"]
    assert not onnx_loaded_at_import and converter_loaded


def test_crypten_secret_randomness_refuses_torch_generators():
    """After the fix, CrypTen's random-tensor functions (everywhere CrypTen imported them)
    draw from petlab's generator only: a torch generator, or crypten.manual_seed, is refused."""
    import pytest
    from crypten.common import rng
    from crypten.mpc.primitives import arithmetic
    from crypten.mpc.provider import tfp_provider, ttp_provider

    from petlab.crypten_compat import InsecureRandomnessError, SecretGenerator
    from petlab.mpc.secret_random import fresh_key

    crypten = import_crypten()
    assert applied_fixes()["secret_randomness"]
    for module in (rng, arithmetic, tfp_provider, ttp_provider):
        with pytest.raises(InsecureRandomnessError, match="torch generator"):
            module.generate_random_ring_element((3,), generator=torch.Generator().manual_seed(0))
    with pytest.raises(InsecureRandomnessError, match="refused"):
        crypten.manual_seed(1, 2, 3)
    key = fresh_key()
    words = rng.generate_random_ring_element((4, 5000), generator=SecretGenerator(key=key))
    again = rng.generate_random_ring_element((4, 5000), generator=SecretGenerator(key=key))
    assert words.dtype == torch.long and words.shape == (4, 5000) and torch.equal(words, again)
    assert abs(float((words < 0).double().mean()) - 0.5) < 0.02  # the sign bit is used: full 64-bit words
    bits = rng.generate_kbit_random_tensor((10000,), bitlength=1, generator=SecretGenerator(key=key))
    assert set(bits.unique().tolist()) == {0, 1}


def _przs_child(rank, port, queue, digests=("test", "test")):
    os.environ.update({"RENDEZVOUS": f"tcp://127.0.0.1:{port}", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port), "WORLD_SIZE": "2", "RANK": str(rank), "DISTRIBUTED_BACKEND": "gloo"})
    from petlab.crypten_compat import InsecureRandomnessError, SecretGenerator, import_crypten, pair_key, set_run_binding

    crypten = import_crypten()
    set_run_binding(config_digest=digests[rank], roles={0: "gateway", 1: "wallet"})
    try:
        crypten.init()
    except InsecureRandomnessError as err:
        queue.put((rank, str(err)))
        return
    from crypten.mpc.primitives import ArithmeticSharedTensor

    zero = ArithmeticSharedTensor.PRZS((1000,)).share
    x = crypten.cryptensor(torch.arange(5.0), src=0)
    gens = {name: type(crypten.generators[name][torch.device("cpu")]) for name in ("prev", "next", "local")}
    queue.put((rank, zero.numpy(), x.get_plain_text().tolist(), pair_key(), all(g is SecretGenerator
                                                                                   for g in gens.values())))
    crypten.uninit()


def test_two_parties_agree_their_pairwise_generators_without_sending_a_seed():
    """Two processes: the zero sharings from the agreed generators sum to zero, inputs
    share and open correctly, both hold the same agreed key, and each key is fresh."""
    import socket

    def run(digests=("test", "test")):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        procs = [ctx.Process(target=_przs_child, args=(r, port, queue, digests)) for r in (0, 1)]
        for p in procs:
            p.start()
        got = dict((item[0], item[1:]) for item in (queue.get(timeout=120) for _ in procs))
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
        return got

    first, second = run(), run()
    zero0, opened0, key0, secret0 = first[0]
    zero1, opened1, key1, secret1 = first[1]
    assert secret0 and secret1
    assert not (zero0 + zero1).any() and zero0.any()  # a sharing of zero, from random-looking shares
    assert opened0 == opened1 == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert key0 == key1 and second[0][2] == second[1][2] and key0 != second[0][2]
    # keys bound to different configurations: both sides stop at the key confirmation
    refused = run(digests=("one configuration", "another"))
    assert all("agreed a different key" in refused[r][0] for r in (0, 1))


def _reduce_in_two_ranks(rank: int, port: int, queue) -> None:
    """One rank of a two-rank gloo group: what each reduce leaves in this rank's buffer."""
    import torch
    import torch.distributed as dist

    from petlab.crypten_compat import reduce_to_receiver

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        mine = torch.full((5,), 1000 if rank == 0 else 7, dtype=torch.int64)
        gloo = mine.clone()
        dist.reduce(gloo, 0)  # what CrypTen 0.4.1 calls for get_plain_text(dst=0)
        own = mine.clone()
        result = reduce_to_receiver(own, dst=0)
        queue.put((rank, gloo.tolist(), own.tolist(), None if result is None else result.tolist()))
    finally:
        dist.destroy_process_group()


def test_a_decryption_to_one_party_leaves_the_other_nothing_but_its_share():
    """gloo's reduce hands the non-receiver partial sums (part of the plaintext: the broken
    variant, kept as the reference); petlab's reduce only sends towards the receiver."""
    import multiprocessing as mp

    from petlab.net import free_port

    ctx = mp.get_context("spawn")
    queue, port = ctx.Queue(), free_port()
    procs = [ctx.Process(target=_reduce_in_two_ranks, args=(rank, port, queue)) for rank in (0, 1)]
    for p in procs:
        p.start()
    out = {}
    for _ in procs:
        rank, gloo, own, result = queue.get(timeout=120)
        out[rank] = (gloo, own, result)
    for p in procs:
        p.join(timeout=60)
    assert out[0][0] == [1007] * 5 and out[0][2] == [1007] * 5  # the receiver gets the sum either way
    assert 1007 in out[1][0]  # gloo: the wallet's buffer holds a plaintext sum
    assert out[1][1] == [7] * 5 and out[1][2] is None  # petlab: its own share, untouched, and nothing else


def test_crypten_decrypts_towards_one_party_with_petlabs_reduce():
    from petlab.crypten_compat import applied_fixes, import_crypten

    import_crypten()
    from crypten.communicator.distributed_communicator import DistributedCommunicator

    assert applied_fixes()["private_reduce"]
    assert DistributedCommunicator.reduce.__wrapped__.__doc__.startswith("Reduces the input data across all parties, "
                                                                         "towards ``dst`` only")
