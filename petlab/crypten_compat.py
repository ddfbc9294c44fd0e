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
   CrypTen's ONNX converter (``crypten.nn.onnx_converter``, which imports ``onnx``: about
   a second of a party's start-up, for a path petlab's training never takes) is loaded on
   first use, and wrapped then.
3. ``crypten.load`` / ``crypten.load_from_party`` unpickle whole objects, which
   ``torch.load`` refuses since torch 2.6 (``weights_only=True``): the old default is
   restored only around those calls (same trust as before: load only files you made).
4. **Secret randomness** (:func:`install_secret_randomness`). CrypTen 0.4.1 as shipped
   draws every secret (pseudo-random zero sharings, the TFP provider's triples, the
   TTP dealer's streams) from torch's CPU generator, mt19937, which keeps only the low
   32 bits of a seed; it sends the pairwise seeds and the dealer's seeds to the parties
   in the clear, and the dealer draws its parties' seeds one after the other from
   torch's default generator. A party that knows its own seed can search the rest.
   petlab replaces all of it in every petlab process: CrypTen's generators become
   :class:`SecretGenerator` s (AES-256-CTR, :mod:`petlab.mpc.secret_random`) under keys
   agreed by X25519 (between the two parties, and between the dealer and each party)
   and bound to the run; CrypTen's random-tensor functions refuse a torch generator;
   ``crypten.manual_seed`` is refused.
5. **Decryption towards one party** (:func:`install_private_reduce`). CrypTen's
   ``reduce`` (every ``get_plain_text(dst=...)``) is gloo's ``dist.reduce``, whose
   algorithm passes partial sums between the ranks: the party that is *not* the
   receiver ends up holding the sum, i.e. the plaintext, of part of the tensor (for a
   5-element reveal, its buffer held the last element's sum). Between two data parties
   that would give the wallet some of the test scores the gateway receives, wherever the
   reveal goes through gloo (``direct_link: false``, CUDA tensors). petlab's ``reduce``
   has every other rank send its share to the receiver, which alone adds them
   (:func:`reduce_to_receiver`); CrypTen's counting is kept.

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
import importlib.util
import os
import sys
from types import ModuleType

__all__ = ["import_crypten", "applied_fixes", "load_onnx_converter", "legacy_torch_load", "SecretGenerator", "InsecureRandomnessError",
           "install_secret_randomness", "install_private_reduce", "reduce_to_receiver", "set_run_binding", "agree_pair_key", "pair_key", "pair_key_agreed_in"]

_OLD_REGISTRATION = "torch.onnx._internal.registration"
_NEW_REGISTRATION = "torch.onnx._internal.torchscript_exporter.registration"

_FIXES: dict[str, bool] = {
    "onnx_registration_alias": False,
    "onnx_legacy_exporter": False,
    "legacy_torch_load": False,
    "secret_randomness": False,
    "private_reduce": False,
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


_CONVERTER = "crypten.nn.onnx_converter"
#: What ``crypten.nn`` takes from its ONNX converter when it is imported.
_CONVERTER_FUNCTIONS = ("from_onnx", "from_pytorch", "from_tensorflow")


class _DeferredConverter(ModuleType):
    """Stands for ``crypten.nn.onnx_converter`` until something uses it: any attribute,
    or a call of one of the functions ``crypten.nn`` took from it, loads the real module
    (with fix 2 applied) and answers from it."""

    def __getattr__(self, name):
        if name.startswith("__"):  # the import system's probes (``__path__`` ...): not a use
            raise AttributeError(name)
        return getattr(load_onnx_converter(), name)


def _defer_onnx_converter() -> None:
    if _CONVERTER in sys.modules:
        return
    stub = _DeferredConverter(_CONVERTER, "crypten.nn.onnx_converter, loaded on first use (petlab.crypten_compat)")
    stub.TF_AND_TF2ONNX = all(importlib.util.find_spec(m) is not None for m in ("tensorflow", "tf2onnx"))

    def deferred(name):
        def call(*args, **kwargs):
            return getattr(load_onnx_converter(), name)(*args, **kwargs)

        call.__name__ = call.__qualname__ = name
        call.__doc__ = f"``crypten.nn.{name}`` (CrypTen's ONNX converter, loaded on first use)."
        return call

    for name in _CONVERTER_FUNCTIONS:
        setattr(stub, name, deferred(name))
    sys.modules[_CONVERTER] = stub


def load_onnx_converter() -> ModuleType:
    """CrypTen's ONNX converter, imported now if it was not yet, with fix 2 in force."""
    module = sys.modules.get(_CONVERTER)
    if module is None or isinstance(module, _DeferredConverter):
        sys.modules.pop(_CONVERTER, None)
        module = importlib.import_module(_CONVERTER)
    _wrap_onnx_export(module)
    return module


def _wrap_onnx_export(converter: ModuleType) -> None:
    import torch

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
    _defer_onnx_converter()
    import crypten

    _wrap_loaders(crypten)
    install_secret_randomness(crypten)
    install_private_reduce(crypten)
    return crypten


# -- 4. secret randomness -----------------------------------------------------------------

class InsecureRandomnessError(RuntimeError):
    """CrypTen asked for secret randomness from a source petlab does not trust."""


class SecretGenerator:
    """Stands where CrypTen expects a ``torch.Generator`` for secret values: its words
    come from a :class:`petlab.mpc.secret_random.SecretStream` (AES-256-CTR). One
    object serves every device (the words are made on the CPU and moved), so two
    holders of the key read the same words in the same order whatever the device."""

    def __init__(self, *, key: bytes, device="cpu"):
        from petlab.mpc.secret_random import SecretStream

        self.stream = SecretStream(key=key)
        self.device = torch_device(device)

    def __repr__(self) -> str:
        return f"SecretGenerator({self.stream!r})"


def torch_device(device):
    import torch

    return torch.device("cpu") if device is None else torch.device(device)


#: How this process's keys are bound: the run's configuration digest and the role of
#: each rank (set by the party before ``crypten.init``; a bare CrypTen program gets
#: ranks' names and an empty digest).
_BINDING: dict = {"config_digest": "", "roles": None}
_KEYS: dict = {}  # "pair": the key agreed between the two data parties (this process's copy)


def set_run_binding(*, config_digest: str, roles: dict[int, str]) -> None:
    """Bind the keys this process agrees from now on to this run and these roles."""
    _BINDING["config_digest"], _BINDING["roles"] = config_digest, dict(roles)


def _role(rank: int) -> str:
    roles = _BINDING["roles"]
    return roles[rank] if roles and rank in roles else f"rank{rank}"


def agree_pair_key(*, exchange, peer_public: bytes, my_role: str, peer_role: str, config_digest: str) -> None:
    """Agree the two data parties' key from an exchange made outside gloo (inside petlab's
    TLS-authenticated greeting); the next ``crypten.init`` uses it instead of agreeing
    one over gloo."""
    _KEYS["agreed"] = _bound_agreement(exchange=exchange, peer_public=peer_public, my_role=my_role,
                                       peer_role=peer_role, config_digest=config_digest)


def _bound_agreement(*, exchange, peer_public: bytes, my_role: str, peer_role: str, config_digest: str) -> bytes:
    """The key of an X25519 exchange, bound to the run and both roles with their public
    keys in role order (both sides build the same context)."""
    from petlab.mpc.secret_random import binding

    peer_public = bytes(peer_public)
    (role_a, public_a), (role_b, public_b) = sorted([(my_role, exchange.public), (peer_role, peer_public)])
    context = binding(config_digest=config_digest, roles=(role_a, role_b), publics=(public_a, public_b))
    return exchange.agree(peer_public=peer_public, context=context)


def pair_key() -> bytes:
    """The key this data party agreed with the other one at ``crypten.init``."""
    if "pair" not in _KEYS:
        raise InsecureRandomnessError("no key agreed with the other party yet (crypten.init has not run)")
    return _KEYS["pair"]


def pair_key_agreed_in() -> str | None:
    """Where this process agreed its key with the other party: "greeting" or "gloo"."""
    return _KEYS.get("how")


def _size_tuple(size) -> tuple:
    if isinstance(size, int):
        return (size,)
    return tuple(int(s) for s in size)


def _secret_source(generator, device):
    import crypten

    if generator is None:
        generator = crypten.generators["local"].get(torch_device(device))
    if isinstance(generator, SecretGenerator):
        return generator
    raise InsecureRandomnessError(
        "CrypTen asked for secret randomness from a torch generator (mt19937, 32-bit seeds): refused; "
        "every secret in a petlab process comes from petlab.mpc.secret_random")


def _as_crypten_tensor(words, *, device):
    import torch
    from crypten.cuda import CUDALongTensor

    out = torch.from_numpy(words)
    if device is not None and torch_device(device).type == "cuda":
        return CUDALongTensor(out.to(torch_device(device)))
    return out


def _secret_ring_element(size, ring_size=(2**64), generator=None, **kwargs):
    if ring_size != 2**64:
        raise InsecureRandomnessError(f"petlab's CrypTen randomness serves the 2^64 ring only, not {ring_size}")
    device = kwargs.get("device")
    source = _secret_source(generator, device)
    return _as_crypten_tensor(source.stream.take(_size_tuple(size)), device=device)


def _secret_kbit_tensor(size, bitlength=None, generator=None, **kwargs):
    if bitlength is None or bitlength == 64:
        return _secret_ring_element(size, generator=generator, **kwargs)
    device = kwargs.get("device")
    source = _secret_source(generator, device)
    return _as_crypten_tensor(source.stream.kbits(_size_tuple(size), bitlength), device=device)


def _exchange_publics(*, send, recv, mine: bytes) -> bytes:
    import torch

    send(torch.frombuffer(bytearray(mine), dtype=torch.uint8))
    theirs = torch.zeros(32, dtype=torch.uint8)
    recv(theirs)
    return bytes(theirs.numpy().tobytes())


def _agree_with(*, my_role: str, peer_role: str, send, recv) -> bytes:
    """An X25519 exchange over CrypTen's gloo link, bound to this run and both roles
    (an eavesdropper sees two public keys; see the README on an active attacker)."""
    from petlab.mpc.secret_random import KeyExchange

    kx = KeyExchange()
    theirs = _exchange_publics(send=send, recv=recv, mine=kx.public)
    return _bound_agreement(exchange=kx, peer_public=theirs, my_role=my_role, peer_role=peer_role,
                            config_digest=_BINDING["config_digest"])



def _exchange(*, my_role: str, peer_role: str, peer_rank: int, group=None) -> bytes:
    """Agree a key with ``peer_rank`` over gloo, then confirm it: each side sends an HMAC
    of its role under the new key, so a peer bound to another configuration (or a
    broken exchange) stops the run here instead of silently yielding wrong triples."""
    import hmac

    import torch.distributed as dist

    pending = []

    def send(t):
        pending.append(dist.isend(t, dst=peer_rank, group=group))

    def recv(t):
        dist.recv(t, src=peer_rank, group=group)

    key = _agree_with(my_role=my_role, peer_role=peer_role, send=send, recv=recv)
    theirs = _exchange_publics(send=send, recv=recv, mine=_confirmation(key, my_role))
    for request in pending:
        request.wait()
    if not hmac.compare_digest(theirs, _confirmation(key, peer_role)):
        raise InsecureRandomnessError(
            f"the {peer_role} agreed a different key: it runs with a different configuration, or the "
            "exchange was tampered with")
    return key


def _confirmation(key: bytes, role: str) -> bytes:
    from petlab.mpc.secret_random import derive_key, keyed_commitment

    return bytes.fromhex(keyed_commitment(key=derive_key(key=key, purpose="key-confirmation"),
                                          data=role.encode()))


def _setup_prng() -> None:
    """In place of ``crypten._setup_prng``: the pairwise ("prev", "next") generators from
    a key agreed with the other party, the "local" one from a fresh OS key; "global" (CrypTen's
    public, shared randomness: dropout masks) from a value derived from the agreed key."""
    import crypten
    import crypten.communicator as comm
    import torch

    from petlab.mpc.secret_random import derive_key, fresh_key

    rank, world = comm.get().get_rank(), comm.get().get_world_size()
    _KEYS.pop("pair", None)  # never a key from an earlier crypten.init in this process
    _KEYS.pop("how", None)
    if world == 1:
        pair = fresh_key()
    elif "agreed" in _KEYS:  # agreed in petlab's greeting (authenticated by TLS): used once
        pair = _KEYS.pop("agreed")
        _KEYS["how"] = "greeting"
    elif world == 2:  # a bare CrypTen program: agreed over gloo (an eavesdropper sees public keys only)
        peer = 1 - rank
        pair = _exchange(my_role=_role(rank), peer_role=_role(peer), peer_rank=peer)
        _KEYS["how"] = "gloo"
    else:
        raise InsecureRandomnessError(f"petlab's CrypTen randomness is for two parties, not {world}")
    _KEYS["pair"] = pair
    peer = (rank + 1) % world
    przs = {direction: derive_key(key=pair, purpose=f"crypten/przs/{direction}")
            for direction in (f"{rank}->{peer}", f"{peer}->{rank}")}
    generators = {"next": SecretGenerator(key=przs[f"{rank}->{peer}"]),
                  "prev": SecretGenerator(key=przs[f"{peer}->{rank}"]),
                  "local": SecretGenerator(key=fresh_key())}
    public_seed = int.from_bytes(derive_key(key=pair, purpose="crypten/global-public")[:8], "big")
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices += [torch.device("cuda")] + [torch.device(f"cuda:{i}") for i in range(torch.cuda.device_count())]
    for name in ("prev", "next", "local", "global"):
        crypten.generators[name] = {}
    for device in devices:
        for name, gen in generators.items():
            crypten.generators[name][device] = gen
        crypten.generators["global"][device] = torch.Generator(device=device).manual_seed(public_seed)


def _ttp_client_setup(self) -> None:
    """In place of ``TTPClient._setup_generators``: a key agreed with the dealer."""
    import crypten.communicator as comm
    import torch.distributed as dist

    from petlab.mpc.secret_random import derive_key

    rank, dealer = comm.get().get_rank(), comm.get().get_ttp_rank()
    key = _exchange(my_role=_role(rank), peer_role="dealer", peer_rank=dealer, group=self.ttp_group)
    dist.barrier(group=self.ttp_group)
    self.petlab_pair_key = key
    self.generator = SecretGenerator(key=derive_key(key=key, purpose="crypten/ttp"))
    self.generator_cuda = self.generator


def _ttp_server_setup(self) -> None:
    """In place of ``TTPServer._setup_generators``: one key agreed with each party."""
    import crypten.communicator as comm
    import torch.distributed as dist

    from petlab.mpc.secret_random import derive_key

    keys = [_exchange(my_role="dealer", peer_role=_role(i), peer_rank=i, group=self.ttp_group)
            for i in range(comm.get().get_world_size())]
    dist.barrier(group=self.ttp_group)
    self.petlab_pair_keys = keys
    self.generators = [SecretGenerator(key=derive_key(key=k, purpose="crypten/ttp")) for k in keys]
    self.generators_cuda = self.generators


def _refuse_reseeding(*args, **kwargs):
    raise InsecureRandomnessError("crypten.manual_seed would make CrypTen's secrets predictable: refused in petlab")


def install_secret_randomness(crypten: ModuleType) -> None:
    """Route every secret random value CrypTen draws through petlab's generator (see the
    module docstring, fix 4). Idempotent."""
    if _FIXES["secret_randomness"]:
        return
    import crypten.common.rng as rng
    from crypten.mpc.primitives import arithmetic, binary
    from crypten.mpc.provider import tfp_provider, ttp_provider

    for module in (rng, arithmetic, binary, tfp_provider, ttp_provider):
        if hasattr(module, "generate_random_ring_element"):
            module.generate_random_ring_element = _secret_ring_element
        if hasattr(module, "generate_kbit_random_tensor"):
            module.generate_kbit_random_tensor = _secret_kbit_tensor
    crypten._setup_prng = _setup_prng
    crypten.manual_seed = _refuse_reseeding
    ttp_provider.TTPClient._TTPClient__TTPClient._setup_generators = _ttp_client_setup
    ttp_provider.TTPServer._setup_generators = _ttp_server_setup
    _FIXES["secret_randomness"] = True


# -- 5. decryption towards one party --------------------------------------------------------

def reduce_to_receiver(tensor, *, dst: int, group=None, op=None):
    """The sum (or ``op``) of every rank's ``tensor`` in ``group``, at rank ``dst`` only:
    every other rank sends its own tensor to ``dst`` point to point and receives nothing.
    Returns the result at ``dst``, ``None`` elsewhere; ``tensor`` is never modified.

    Args:
        tensor: this rank's contribution (a torch tensor).
        dst: the global rank of the receiver.
        group: the torch.distributed group (default: the world).
        op: ``torch.distributed.ReduceOp.SUM`` (the default) or ``BXOR``.
    """
    import torch
    import torch.distributed as dist

    op = dist.ReduceOp.SUM if op is None else op
    me = dist.get_rank()
    ranks = dist.get_process_group_ranks(group) if group is not None else list(range(dist.get_world_size()))
    if me != dst:
        dist.send(tensor.contiguous(), dst, group=group)
        return None
    result = tensor.clone()
    for rank in ranks:
        if rank == dst:
            continue
        other = torch.empty_like(result)
        dist.recv(other, rank, group=group)
        if op == dist.ReduceOp.SUM:
            result += other
        elif op == dist.ReduceOp.BXOR:
            result ^= other
        else:
            raise ValueError(f"reduce_to_receiver supports SUM and BXOR, not {op}")
    return result


def install_private_reduce(crypten: ModuleType) -> None:
    """Replace CrypTen's ``DistributedCommunicator.reduce`` by one built on
    :func:`reduce_to_receiver` (see the module docstring, fix 5). Idempotent."""
    if _FIXES["private_reduce"]:
        return
    from crypten.communicator.communicator import _logging
    from crypten.communicator.distributed_communicator import DistributedCommunicator
    from torch.distributed import ReduceOp

    def reduce(self, input, dst, op=ReduceOp.SUM, batched=False):
        """Reduces the input data across all parties, towards ``dst`` only."""
        inputs = list(input) if batched else [input]
        results = [reduce_to_receiver(x.data, dst=dst, group=self.main_group, op=op) for x in inputs]
        if dst != self.get_rank():
            return None
        return results if batched else results[0]

    DistributedCommunicator.reduce = _logging(reduce)
    _FIXES["private_reduce"] = True
