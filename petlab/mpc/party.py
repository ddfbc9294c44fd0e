"""What one party process does in an MPC run.

A party process is started with a *job* (a JSON file, see :mod:`petlab.mpc.job`) and
its role. A data party loads only its own table, prepares its own features locally,
joins the other parties over torch.distributed (gloo), secret-shares its own columns
(``src=`` itself; the label holder also shares the labels), trains, and takes part in
the declared reveals (:mod:`petlab.mpc.disclosure`). The dealer role (TTP provider)
only serves Beaver triples. Each role writes its own record to ``<out>/<role>/``.

The same function runs for the embedded proof of concept (all roles as local
processes) and, later, on separate hosts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from petlab.config import PocConfig, resolved_engine, resolved_sigmoid_method
from petlab.crypten_compat import (agree_pair_key, applied_fixes, import_crypten, pair_key_agreed_in,
                                   set_run_binding)
from petlab.data.features import prepare_party_features
from petlab.data.tables import file_sha256
from petlab.models import ModelSpec, bce_loss, forward, gradients, init_params, sgd_step
from petlab.mpc import disclosure
from petlab.mpc.devices import resolve_device, stage_cuda_communication
from petlab.mpc.job import Job
from petlab.mpc.secret_random import KeyExchange
from petlab.mpc.timeline import Timeline
from petlab.mpc.rendezvous import (RendezvousError, bounded_waits, check_port_free, greet_peer, lost_peer,
                                   use_interface_towards, watchdog)
from petlab.parties import DEALER, Party

__all__ = ["run_party", "minibatches", "monitor_indices", "PeerLostError"]

SHARE_BLOCK_ROWS = 65_536  # rows secret-shared at a time

log = logging.getLogger("petlab.party")

#: The role of each torch.distributed rank: every agreed key is bound to its two roles.
ROLES_BY_RANK = {**{p.rank: str(p) for p in Party}, len(Party): DEALER}


def monitor_indices(*, n: int, rows: int, seed: int) -> np.ndarray:
    """The fixed sample of training rows on which the per-epoch loss is measured.

    >>> monitor_indices(n=10, rows=3, seed=0).tolist()
    [0, 5, 8]
    """
    order = np.random.default_rng([seed, 99]).permutation(n)
    return np.sort(order[: min(rows, n)])


def sigmoid_spec(cfg: PocConfig):
    """The petlab engine's sigmoid for ``cfg`` (a :class:`petlab.mpc.lean.Sigmoid`)."""
    from petlab.mpc.lean import Sigmoid

    return Sigmoid(method=resolved_sigmoid_method(cfg), exp_iterations=cfg.mpc.sigmoid_exp_iterations,
                   nr_iterations=cfg.mpc.sigmoid_nr_iterations)


def minibatches(*, n: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Row indices of each minibatch of one epoch, from public values only.

    Every backend and every party derives the same order.

    >>> [b.tolist() for b in minibatches(n=5, batch_size=2, seed=0, epoch=0)]
    [[2, 1], [0, 4], [3]]
    """
    order = np.random.default_rng([seed, 1000 + epoch]).permutation(n)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


class _Meter:
    """Wall time and CrypTen communication counters of named phases of this party."""

    def __init__(self, comm):
        self.comm = comm
        self.phases: dict[str, dict] = {}
        self.current: str | None = None

    def phase(self, name):
        meter = self

        class _Ctx:
            def __enter__(self):
                from petlab.audit.transcript import set_phase

                set_phase(name)
                meter.current = name
                self.t0 = time.perf_counter()
                self.c0 = dict(meter.comm.get().get_communication_stats())

            def __exit__(self, *exc):
                c1 = meter.comm.get().get_communication_stats()
                slot = meter.phases.setdefault(name, {"seconds": 0.0, "bytes": 0, "rounds": 0})
                slot["seconds"] += time.perf_counter() - self.t0
                slot["bytes"] += int(c1["bytes"] - self.c0["bytes"])
                slot["rounds"] += int(c1["rounds"] - self.c0["rounds"])
                from petlab.audit.transcript import set_phase

                set_phase("other")
                return False

        return _Ctx()


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _configure_crypten(crypten, cfg: PocConfig) -> None:
    crypten.cfg.mpc.provider = cfg.mpc.provider
    crypten.cfg.communicator.verbose = True  # count bytes and rounds
    crypten.cfg.encoder.precision_bits = cfg.mpc.precision_bits
    if cfg.mpc.fast_config:  # last: every setting above is kept
        from petlab.mpc.fastconfig import freeze_crypten_config

        freeze_crypten_config(crypten)


def _set_rendezvous_env(job: Job, rank: int) -> None:
    os.environ.update(
        {
            "RENDEZVOUS": f"tcp://{job.address}:{job.port}",
            "MASTER_ADDR": job.address,
            "MASTER_PORT": str(job.port),
            "WORLD_SIZE": str(len(Party)),  # data parties only; the dealer is the extra rank
            "RANK": str(rank),
            "DISTRIBUTED_BACKEND": "gloo",
        }
    )


def run_party(*, job: Job, role: str) -> None:
    """Run ``role`` ("gateway", "wallet" or "dealer") of ``job`` to the end.

    Raises on any failure; the caller turns that into a non-zero exit.
    """
    timeline = Timeline()
    timeline.mark("imports")
    cfg = job.config
    out = Path(job.out_dir) / role
    out.mkdir(parents=True, exist_ok=True)
    if role == DEALER and cfg.mpc.provider != "TTP":
        raise RendezvousError(f"the dealer role only exists under the TTP provider (this run uses "
                              f"{cfg.mpc.provider}: the gateway deals the triples)")
    _write_json(out / "status.json", {"status": "running", "role": role, "pid": os.getpid()})
    try:
        torch.set_num_threads(cfg.mpc.threads_per_party)
        crypten = import_crypten()
        _configure_crypten(crypten, cfg)
        timeline.mark("crypten_imported")
        if cfg.mpc.audit_words:  # audit runs: every key this process holds, for the audit to replay
            from petlab.audit import keys as audit_keys

            audit_keys.install()
        if cfg.mpc.negative_control:  # audit runs only: a deliberately broken variant the audit must fail
            from petlab.audit.negative_controls import apply_negative_control

            apply_negative_control(name=cfg.mpc.negative_control, role=role, config=cfg)
        if role == DEALER:
            _run_dealer(job=job, out=out, timeline=timeline)
        else:
            me = Party.parse(role)
            device = resolve_device(cfg.mpc.device)
            _run_data_party(crypten=crypten, job=job, me=me, device=device, out=out, timeline=timeline)
    except BaseException as err:
        _write_json(out / "status.json", failed_status(role=role, error=err))
        raise
    _write_json(out / "status.json", {"status": "complete", "role": role})


def failed_status(*, role: str, error: BaseException) -> dict:
    """A failed role's ``status.json``: ``error`` (type and the first line of the message),
    ``message`` (the line a user reads: the message alone where petlab raised it for a
    cause the user can act on) and ``failed_at`` (wall clock). The traceback is in the log.

    >>> failed_status(role="wallet", error=ValueError("too few shared customers"))["message"]
    'too few shared customers'
    >>> failed_status(role="wallet", error=KeyError("x"))["message"]
    "KeyError: 'x'"
    """
    text = next(iter(str(error).strip().splitlines()), "")
    typed = f"{type(error).__name__}: {text}" if text else type(error).__name__
    plain = isinstance(error, (ValueError, RuntimeError)) and not isinstance(error, NotImplementedError)
    return {"status": "failed", "role": role, "error": typed, "message": text if text and plain else typed,
            "failed_at": time.time()}


def _run_dealer(*, job: Job, out: Path, timeline: Timeline) -> None:
    _set_rendezvous_env(job, rank=len(Party))
    use_interface_towards(job.address)
    from petlab.mpc.dealer import DealerRequestError, dealer_server_class

    set_run_binding(config_digest=config_digest(job), roles=ROLES_BY_RANK)
    t0 = time.perf_counter()
    await_rendezvous(address=job.address, port=job.port, timeout_s=job.config.mpc.peer_timeout_s,
                     what="the dealer could not meet the parties")
    try:
        with bounded_waits(job.config.mpc.peer_timeout_s):
            dealer_server_class()()  # checked requests of party 0 until it says "terminate"
    except DealerRequestError:
        raise
    except RuntimeError as err:  # TTPServer handles errors while serving; this is set-up
        raise RendezvousError(f"the dealer could not meet the parties at tcp://{job.address}:{job.port} "
                              f"within {job.config.mpc.peer_timeout_s:g} s: "
                              f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    timeline.mark("served")
    _write_json(out / "result.json", {"role": DEALER, "seconds": time.perf_counter() - t0,
                                      "compat_fixes": applied_fixes(), "pid": os.getpid(),
                                      "peak_rss_mb": _peak_rss_mb(), "timeline": timeline.record()})


def await_rendezvous(*, address: str, port: int, timeout_s: float, what: str, poll_s: float = 0.02) -> None:
    """Return once the rendezvous (rank 0's store, at ``address:port``) accepts connections.

    gloo's own attempts to reach a store that is not up yet back off for seconds between
    tries (a dealer ready long before the parties, which wait for the PSI, could join them
    more than ten seconds late), so the roles that connect to it wait here, polling every
    ``poll_s``, and gloo's first try finds it.

    Raises:
        RendezvousError: nothing accepted connections there within ``timeout_s``.
    """
    import socket

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((address, port), timeout=max(poll_s, 0.2)):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RendezvousError(f"{what} at tcp://{address}:{port} within {timeout_s:g} s: the gateway's "
                                      "rendezvous never accepted a connection") from None
            time.sleep(poll_s)


def config_digest(job: Job) -> str:
    """SHA-256 of the configuration both parties must share (every agreed key is bound to it)."""
    return hashlib.sha256(json.dumps(job.shared_dict(), sort_keys=True).encode()).hexdigest()


def _public_meta(job: Job, me: Party, feats, table_digest: str) -> dict:
    return {
        "party": str(me),
        "n_train": int(feats.X_train.shape[0]),
        "n_test": int(feats.X_test.shape[0]),
        "n_features": int(feats.n_features),
        "id_digest": feats.id_digest,
        "config_digest": config_digest(job),
        "table_sha256": table_digest,
    }


#: What the handshake sends in place of a digest: a keyed commitment (HMAC-SHA256 under a
#: key only the two parties hold), so that equal values still compare equal but an
#: eavesdropper on gloo cannot test a guessed configuration or id list against them. Both
#: values are known to both parties anyway (the shared configuration; the intersection).
COMMITTED_FIELDS = ("id_digest", "config_digest")
#: Kept in the party's own record, never sent: a digest of the whole table file (customers
#: outside the intersection too) would let the peer test guesses about its content.
LOCAL_FIELDS = ("table_sha256",)


def _meta_for_peer(meta: dict) -> dict:
    """The public metadata as sent to the peer: shapes, schema, and keyed commitments."""
    from petlab.crypten_compat import pair_key
    from petlab.mpc.secret_random import derive_key, keyed_commitment

    key = derive_key(key=pair_key(), purpose="handshake/commitments")
    return {k: keyed_commitment(key=key, data=f"{k}:{v}".encode()) if k in COMMITTED_FIELDS else v
            for k, v in meta.items() if k not in LOCAL_FIELDS}


def _key_share(greeting: dict, *, peer: Party) -> bytes:
    try:
        share = bytes.fromhex(greeting["key_share"])
    except (KeyError, TypeError, ValueError):
        raise RendezvousError(f"the {peer}'s greeting carries no valid key share (a different petlab?)") from None
    if len(share) != 32:
        raise RendezvousError(f"the {peer}'s key share is {len(share)} bytes, not 32")
    return share


def _run_data_party(*, crypten, job: Job, me: Party, device, out: Path, timeline: Timeline) -> None:
    import crypten.communicator as comm

    from petlab.data.psi import private_intersection, start_library
    from petlab.data.validation import IntersectionError, TableOptions, check_intersection, load_party_table

    cfg = job.config
    # the PSI library loads in its own process meanwhile, ready when the peer has been met
    library = start_library(work_dir=out / "psi") if cfg.data.alignment == "psi" else None
    try:
        label_party = Party.parse(cfg.data.label_party)
        holds_label = me == label_party
        source = job.tables[str(me)]  # this party's own table, and nothing else
        table_path = Path(source["path"])
        label_column = source.get("label_column") if holds_label else None
        own = load_party_table(table_path, party=str(me), id_column=source["id_column"], label_column=label_column,
                               options=TableOptions.from_config(cfg.data))  # every problem at once, or a typed table
        table, table_record, id_shape = own.table, own.record(), own.id_shape
        _write_json(out / "table.json", table_record)  # this party's own record of its table (never sent)
        notes = logging.getLogger("petlab.data")
        notes.setLevel(logging.INFO)  # a party states its table's columns in its own log
        for line in own.summary.lines():
            notes.info(line)
        for warning in own.summary.warnings:
            notes.warning(warning)
        del own  # the table lives on as `table` only (memory at scale)
        # -- meet the peer: roles, versions and shared configuration must agree -----------
        peer = next(p for p in Party if p != me)
        timeline.mark("table_checked")
        if me.rank == 0:  # the gateway's host is the rendezvous: both ports must be free there
            check_port_free(address=job.address, port=job.port, what="MPC rendezvous")
        if cfg.data.alignment == "psi":  # each data party listens for the PSI link on its own host
            host, port = job.psi_endpoints()[str(me)]
            check_port_free(address=host, port=port, what="PSI")
        exchange = KeyExchange()  # the two parties' key: agreed inside the (TLS-authenticated) greeting
        greeting = greet_peer(role=str(me), peer=str(peer), listen=(me.rank == 0), address=job.address,
                              port=job.psi_port, timeout_s=cfg.mpc.peer_timeout_s, shared=job.shared_dict(),
                              tls=job.tls_identity(role=str(me)), key_share=exchange.public)
        agree_pair_key(exchange=exchange, peer_public=_key_share(greeting, peer=peer), my_role=str(me),
                       peer_role=str(peer), config_digest=config_digest(job))
        timeline.mark("greeted")
    except BaseException:
        if library is not None:
            library.close()
        raise
    # -- private set intersection with the peer: only the shared customers go on -------
    if cfg.data.alignment == "psi":  # each party listens on its own end of the PSI link
        psi = private_intersection(ids=table[source["id_column"]], role=str(me), endpoints=job.psi_endpoints(),
                                   protocol=cfg.data.psi, tls=job.tls_identity(role=str(me)),
                                   timeout_s=cfg.mpc.peer_timeout_s, work_dir=out / "psi", library=library)
    else:  # "given": the tables hold the same customers; the handshake compares id-set digests
        from petlab.data.psi import PsiResult

        ids = table[source["id_column"]].tolist()
        psi = PsiResult(ids=ids, own_set_size=len(ids), other_set_size=len(ids), seconds=0.0,
                        bytes_sent=0, bytes_received=0, protocol="")
    # too few shared customers: one line, with a hint from this party's own ids (nothing more is sent)
    table_record["intersection"] = {"shared": len(psi.ids), "own": psi.own_set_size, "other": psi.other_set_size}
    try:
        low = check_intersection(shared=len(psi.ids), own_size=psi.own_set_size, other_size=psi.other_set_size,
                                 test_fraction=cfg.data.test_fraction, party=str(me), peer=str(peer),
                                 shape=id_shape, rule=cfg.data.id_rule, alignment=cfg.data.alignment)
    except IntersectionError as err:
        table_record["intersection"]["error"] = str(err)
        _write_json(out / "table.json", table_record)
        raise
    if low:
        notes.warning(low)
        table_record["intersection"]["warning"] = low
    _write_json(out / "table.json", table_record)
    columns = list(map(str, table.columns))
    timeline.mark("aligned")
    feats = prepare_party_features(
        table=table,
        id_column=source["id_column"],
        label_column=label_column,
        test_fraction=cfg.data.test_fraction,
        seed=cfg.data.seed,
        keep_ids=psi.ids,
        max_levels=cfg.data.max_levels,
    )
    del table
    my_meta = _public_meta(job, me, feats, file_sha256(table_path))
    my_meta["columns"] = columns  # the schema (column names), checked against the peer's
    my_meta["label_column"] = label_column
    my_meta["id_column"] = source["id_column"]
    timeline.mark("features_ready")

    _set_rendezvous_env(job, rank=me.rank)
    from crypten.communicator.distributed_communicator import DistributedCommunicator

    if device.type == "cuda":
        stage_cuda_communication(DistributedCommunicator)
    link = None
    if cfg.mpc.direct_link:  # before the audit wraps the communicator, so the audit sees it
        from petlab.mpc.channel import install_peer_link, open_peer_link

        link = open_peer_link(listen=(me.rank == 0), address=job.address, port=job.psi_port,
                              timeout_s=cfg.mpc.peer_timeout_s, tls=job.tls_identity(role=str(me)))
        install_peer_link(DistributedCommunicator, link=link)
    from petlab.audit import transcript as transcript_mod

    transcript = transcript_mod.install(DistributedCommunicator, keep_words=cfg.mpc.audit_words)
    party0_view = None
    total_features = [0]  # known after the handshake
    if cfg.mpc.audit_party0_view and me.rank == 0:
        from petlab.audit import party0_view as view_mod

        first_batch = min(cfg.train.batch_size, my_meta["n_train"])
        party0_view = view_mod.install(view=view_mod.Party0View(
            provider=cfg.mpc.provider,
            x_shape_filter=lambda size: len(size) == 2 and size[0] == first_batch
            and size[1] == total_features[0]))
    t_start = time.perf_counter()
    others = [str(peer)] + ([DEALER] if cfg.mpc.provider == "TTP" else [])
    interface = use_interface_towards(job.address)  # what gloo advertises to the other hosts
    setup_limit = cfg.mpc.peer_timeout_s + 30  # gloo's own bound, plus time to report it

    def setup_stuck():
        message = (f"could not set up MPC with the {' and the '.join(others)} at tcp://{job.address}:"
                   f"{job.port} within {setup_limit:g} s (interface {interface or 'default'})")
        _write_json(out / "status.json", failed_status(role=str(me), error=RendezvousError(message)))
        print(f"petlab party: {me}: error: {message}", file=sys.stderr, flush=True)
        os._exit(1)

    set_run_binding(config_digest=my_meta["config_digest"], roles=ROLES_BY_RANK)
    try:
        with watchdog(seconds=setup_limit, on_expiry=setup_stuck), bounded_waits(cfg.mpc.peer_timeout_s):
            if me.rank != 0:  # the gateway's host is the rendezvous
                await_rendezvous(address=job.address, port=job.port, timeout_s=cfg.mpc.peer_timeout_s,
                                 what=f"could not set up MPC with the {' and the '.join(others)}")
            crypten.init()
    except RendezvousError:
        raise
    except RuntimeError as err:
        raise RendezvousError(f"could not set up MPC with the {' and the '.join(others)} at tcp://"
                              f"{job.address}:{job.port} within {cfg.mpc.peer_timeout_s:g} s: "
                              f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    timeline.mark("crypten_ready")
    meter = _Meter(comm)
    progress_path = out / "progress.json"
    try:
        # -- public metadata: shapes and digests, nothing about any customer --------
        with meter.phase("handshake"):
            sent = _meta_for_peer(my_meta)
            metas = {str(p): comm.get().broadcast_obj(sent if p == me else None, p.rank) for p in Party}
        _check_peers(metas, label_party=label_party)
        timeline.mark("handshake")
        total_features[0] = sum(m["n_features"] for m in metas.values())
        n_train, n_test = my_meta["n_train"], my_meta["n_test"]

        # -- secret sharing: each party shares its own columns ----------------------
        def share(own: np.ndarray | None, party: Party, shape) -> "crypten.CrypTensor":
            data = torch.from_numpy(own) if party == me else torch.zeros(shape)
            return crypten.cryptensor(data.to(device), src=party.rank, device=device)

        def share_columns(own: np.ndarray, rows: int) -> "crypten.CrypTensor":
            """Every party's columns (gateway's first), shared block by block into one
            share: no per-party parts to concatenate, bounded temporaries at scale."""
            widths = [metas[str(p)]["n_features"] for p in Party]
            out = torch.empty((rows, sum(widths)), dtype=torch.long, device=device)
            col = 0
            for party, d in zip(Party, widths):
                for i in range(0, rows, SHARE_BLOCK_ROWS):
                    j = min(rows, i + SHARE_BLOCK_ROWS)
                    block = np.ascontiguousarray(own[i:j]) if party == me else None
                    out[i:j, col:col + d] = share(block, party, (j - i, d)).share
                col += d
            return crypten.mpc.MPCTensor.from_shares(out)

        with meter.phase("share_inputs"):
            X_train_enc = share_columns(feats.X_train, n_train)
            X_test_enc = share_columns(feats.X_test, n_test)
            # the plaintext features are shared now: keep only what the record needs (memory at scale)
            feats = dataclasses.replace(feats, X_train=feats.X_train[:0].copy(), X_test=feats.X_test[:0].copy())
            y_own = feats.y_train[:, None] if holds_label else None
            y_train_enc = share(y_own, label_party, (n_train, 1))
        timeline.mark("inputs_shared")

        spec = ModelSpec(
            kind=cfg.train.model,
            n_features=sum(metas[str(p)]["n_features"] for p in Party),
            hidden=cfg.train.hidden,
        )
        # initial weights are public (shared seed); encrypted from the label holder
        params = {
            name: crypten.cryptensor(value.to(device), src=label_party.rank, device=device)
            for name, value in init_params(spec=spec, seed=cfg.train.seed).items()
        }
        ledger = disclosure.DisclosureLedger(
            allowed=tuple(
                d.item
                for d in disclosure.declared_disclosures(
                    reveal_weights=cfg.mpc.reveal_weights, track_loss=cfg.mpc.track_loss,
                    label_party=label_party,
                )
            ),
            label_party=label_party,
        )
        losses = []
        monitor = torch.from_numpy(
            monitor_indices(n=n_train, rows=cfg.train.monitor_rows, seed=cfg.train.seed)
        ).to(device)
        engine = resolved_engine(cfg)
        if engine != "petlab":  # petlab's protocol measures the loss on E's monitored rows
            X_monitor_enc, y_monitor_enc = X_train_enc[monitor], y_train_enc[monitor]
        batches_per_epoch = -(-n_train // cfg.train.batch_size)
        progress = _Progress(path=progress_path if holds_label else None, epochs=cfg.train.epochs,
                             steps=cfg.train.epochs * batches_per_epoch, t_start=t_start)
        lean = None
        if engine == "petlab":
            with meter.phase("mask_features"):  # once: E = X - A is opened, A stays secret
                lean, E = _lean_setup(crypten=crypten, cfg=cfg, me=me, X_shares=X_train_enc.share)
            if cfg.mpc.audit_words:  # audit runs: this party's view of the feature mask, for the audit to replay
                from petlab.audit.keys import save_mask_view

                save_mask_view(folder=out / "audit", E=E, own_share=lean["party"].rand.A, a_view=lean["a_view"])
            X_train_enc = None  # the masked features replace the shared ones (memory at scale)
            if party0_view is not None:  # audit runs: party 0's view of the first batch's mask
                first = minibatches(n=n_train, batch_size=cfg.train.batch_size, seed=cfg.train.seed, epoch=0)[0]
                party0_view.records.append({"a_view": lean["a_view"][torch.from_numpy(first)].clone(),
                                            "epsilon": E[torch.from_numpy(first)].clone()})
        if lean is not None:  # the loss monitor's randomness, requested ahead during each epoch's training
            monitor_plan = _monitor_plan(cfg=cfg, lean=lean, spec=spec, d=int(E.shape[1]),
                                         monitor=monitor.cpu().numpy())
        timeline.mark("training_started")
        for epoch in range(cfg.train.epochs):
            with meter.phase("train"):
                batches = minibatches(n=n_train, batch_size=cfg.train.batch_size, seed=cfg.train.seed, epoch=epoch)
                if lean is not None:
                    from petlab.mpc.lean import train_logreg, train_mlp

                    shares = {name: params[name].share for name in spec.param_names}
                    if spec.kind == "logreg":
                        w, b = train_logreg(party=lean["party"], E=E, y=y_train_enc.share, w=shares["w"],
                                            b=shares["b"], batches=batches, lr=cfg.train.lr,
                                            chunk=cfg.mpc.triple_chunk, on_batch=progress.step, then=monitor_plan)
                        shares = {"w": w, "b": b}
                    else:
                        shares = train_mlp(party=lean["party"], E=E, y=y_train_enc.share, params=shares,
                                           batches=batches, lr=cfg.train.lr, chunk=cfg.mpc.triple_chunk,
                                           on_batch=progress.step, then=monitor_plan)
                    params = {name: crypten.mpc.MPCTensor.from_shares(value, precision=lean["precision"])
                              for name, value in shares.items()}
                else:
                    for idx in batches:
                        index = torch.from_numpy(idx).to(device)
                        Xb, yb = X_train_enc[index], y_train_enc[index]
                        probs, cache = forward(spec=spec, params=params, X=Xb)
                        grads = gradients(spec=spec, params=params, X=Xb, y=yb, probs=probs, cache=cache)
                        params = sgd_step(params=params, grads=grads, lr=cfg.train.lr, batch_size=len(idx))
                        progress.step()
            if cfg.mpc.track_loss:
                with meter.phase("loss_monitor"):
                    if lean is not None:
                        loss = _lean_loss(crypten=crypten, lean=lean, E=E, y=y_train_enc.share, params=shares,
                                          rows=monitor.cpu().numpy(), plan=monitor_plan, ledger=ledger, me=me)
                    else:
                        probs, _ = forward(spec=spec, params=params, X=X_monitor_enc)
                        loss = disclosure.reveal(bce_loss(probs=probs, y=y_monitor_enc), item="train_loss",
                                                 ledger=ledger, me=me)
                    if loss is not None:
                        losses.append(float(loss))
            progress.epoch_done(epoch + 1)

        timeline.mark("training_done")
        E = lean = None  # the masked features and the mask are not needed any more (memory at scale)
        with meter.phase("reveal"):
            probs_test, _ = forward(spec=spec, params=params, X=X_test_enc)
            scores = disclosure.reveal(probs_test, item="test_scores", ledger=ledger, me=me)
            weights = {}
            if cfg.mpc.reveal_weights:
                for name in spec.param_names:
                    value = disclosure.reveal(params[name], item="final_weights", ledger=ledger, me=me)
                    if value is not None:
                        weights[name] = value.cpu().numpy()
        total = comm.get().get_communication_stats()
        timeline.mark("revealed")
    except (RendezvousError, disclosure.DisclosureError):
        raise
    except RuntimeError as err:  # gloo: connection closed or reset by a peer, or a wait timed out
        lost = _lost_role(error=err, me=me, provider=cfg.mpc.provider)
        raise PeerLostError(f"lost the {lost} during {meter.current or 'start-up'} (within "
                            f"{cfg.mpc.peer_timeout_s:g} s of its last message): "
                            f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    finally:
        _uninit_quietly(crypten)
        if link is not None:
            from petlab.mpc.channel import restore

            restore(DistributedCommunicator, link.originals)
            link.close()

    record = {
        "role": str(me),
        "rank": me.rank,
        "device": str(device),
        "provider": cfg.mpc.provider,
        "engine": engine,
        "sigmoid_method": resolved_sigmoid_method(cfg) if engine == "petlab" else "crypten",
        "direct_link": bool(link is not None),
        "meta": my_meta,
        "peers": metas,
        "phases": meter.phases,
        "comm_total": {"bytes": int(total["bytes"]), "rounds": int(total["rounds"])},
        "seconds_total": time.perf_counter() - t_start,
        "disclosures": ledger.entries,
        "disclosure_summary": ledger.summary(),
        "feature_names": list(feats.feature_names),
        "compat_fixes": applied_fixes(),
        "pair_key_agreed_in": pair_key_agreed_in(),
        "pid": os.getpid(),
        "peak_rss_mb": _peak_rss_mb(),
        "psi": {"alignment": cfg.data.alignment, "protocol": psi.protocol, "intersection_size": len(psi.ids),
                "own_set_size": psi.own_set_size, "other_set_size": psi.other_set_size, "seconds": psi.seconds,
                "bytes_sent": psi.bytes_sent, "bytes_received": psi.bytes_received, "phases": psi.phases,
                "library_peak_rss_mb": psi.peak_rss_mb, "tls": job.tls_identity(role=str(me)) is not None},
    }
    transcript.save(out / "audit")
    if cfg.mpc.audit_words:  # audit runs: the keys this process held
        from petlab.audit import keys as audit_keys

        audit_keys.save(out / "audit")
    record["transcript_summary"] = transcript.summary()
    if party0_view is not None:
        np.savez(out / "audit" / "party0_view.npz", **party0_view.arrays())
    if holds_label:
        record["train_loss"] = losses
        np.save(out / "test_scores.npy", scores.cpu().numpy().ravel())
        from petlab.metrics import binary_metrics

        m = binary_metrics(y_true=feats.y_test, scores=scores.cpu().numpy().ravel())
        record["metrics"] = {"auc": m.auc, "accuracy": m.accuracy, "log_loss": m.log_loss}
        np.save(out / "y_test.npy", feats.y_test)
        if weights:
            np.savez(out / "weights.npz", **weights)
    timeline.mark("recorded")
    record["timeline"] = timeline.record()
    _write_json(out / "result.json", record)


class _Progress:
    """The label holder's ``progress.json``: steps done, for the launcher's bar and ETA.
    Written at most every half second (and at each epoch's end), atomically."""

    def __init__(self, *, path: Path | None, epochs: int, steps: int, t_start: float):
        self.path, self.epochs, self.steps, self.t_start = path, epochs, steps, t_start
        self.done, self.epoch, self.last = 0, 0, 0.0
        self._write()

    def _write(self) -> None:
        if self.path is not None:
            self.last = time.perf_counter()
            _write_json(self.path, {"epoch": self.epoch, "epochs": self.epochs, "step": self.done,
                                    "steps": self.steps, "elapsed_s": self.last - self.t_start})

    def step(self) -> None:
        self.done += 1
        if self.path is not None and time.perf_counter() - self.last > 0.5:
            self._write()

    def epoch_done(self, epoch: int) -> None:
        self.epoch = epoch
        self._write()


def _lean_setup(*, crypten, cfg: PocConfig, me: Party, X_shares: torch.Tensor):
    """petlab's protocol: this party's randomness source, and the masked features.

    Under TTP the dealer deals (one request per chunk of steps); under TFP the gateway
    deals, as CrypTen's TFP provider does, the wallet's streams under a key the two agreed.
    """
    import crypten.communicator as comm

    from petlab.mpc import lean

    from petlab.crypten_compat import pair_key
    from petlab.mpc.secret_random import StreamSource, derive_key, fresh_key

    fixed = None
    if cfg.mpc.provider == "TTP":  # streams under the key this party agreed with the dealer
        from crypten.mpc.provider.ttp_provider import TTPClient

        key = derive_key(key=TTPClient.get().petlab_pair_key, purpose=lean.PROTOCOL_PURPOSE)
        source, fetch = StreamSource(key=key), lean.ttp_fetch
    else:  # TFP: the gateway deals; the wallet's streams under a key both agreed, nothing sent
        wallet_key = derive_key(key=pair_key(), purpose=lean.TFP_WALLET_PURPOSE)
        if me.rank == 0:
            source, fetch, fixed = lean.local_dealer(own_key=fresh_key(), peer_key=wallet_key)
        else:
            source, fetch = StreamSource(key=wallet_key), None
    precision = crypten.cfg.encoder.precision_bits
    rand = lean.Randomness(rank=me.rank, source=source, fetch=fetch)
    rand.prepare([("fm_init", tuple(X_shares.shape), (0,), None)])
    party = lean.LeanParty(rank=me.rank, scale=2**precision, rand=rand, sigmoid_spec=sigmoid_spec(cfg))
    X = X_shares.numpy()
    E = torch.empty_like(X_shares)
    for i in range(0, E.shape[0], 65536):  # opened in row blocks: no second full-size temporary
        (E[i: i + 65536],) = (torch.from_numpy(t) for t in party.open(X[i: i + 65536] - rand.A[i: i + 65536]))
    a_view = torch.from_numpy(fixed["A"] if fixed is not None else rand.A)  # what party 0 knows of the mask
    return {"party": party, "precision": precision, "a_view": a_view}, E


def _monitor_plan(*, cfg: PocConfig, lean: dict, spec: ModelSpec, d: int, monitor: np.ndarray):
    """The loss monitor's plan on petlab's protocol (:func:`petlab.mpc.lean.loss_plan`;
    None without the monitor). It is public (rows and shapes) and the same every epoch:
    each epoch's training requests it from the dealer during its last chunk, so that the
    dealer makes it while the parties train, not while they wait for it. (The next
    epoch's first chunk is not requested during the monitor: on two cores the dealer
    making it slowed the monitor by more than it saved.)"""
    from petlab.mpc.lean import loss_plan

    if not cfg.mpc.track_loss:
        return None
    return loss_plan(rows=monitor, d=d, bits=lean["party"].bits, hidden=spec.hidden if spec.kind == "mlp" else None)


def _lean_loss(*, crypten, lean: dict, E, y, params: dict, rows: np.ndarray, plan: list, ledger, me: Party):
    """The monitored rows' mean training loss on petlab's protocol: the summed
    cross-entropy stays shared (:func:`petlab.mpc.lean.monitor_loss`) until the declared
    reveal opens it to the label holder, who divides it by the public row count.
    ``plan``: the monitor's randomness (requested during the epoch's last chunk)."""
    from petlab.mpc.lean import monitor_loss

    party = lean["party"]
    party.rand.prepare(plan)
    share = monitor_loss(party=party, E=E, y=y, params=params, rows=rows)
    total = disclosure.reveal(crypten.mpc.MPCTensor.from_shares(share, precision=lean["precision"]),
                              item="train_loss", ledger=ledger, me=me)
    return None if total is None else float(total.item()) / len(rows)


def _lost_role(*, error: BaseException, me: Party, provider: str) -> str:
    """Which role a communication failure points at: the dealer where party 0 was talking
    to it (CrypTen's TTP client, or petlab's bulk request to the dealer), else the peer."""
    import traceback

    if provider == "TTP" and me.rank == 0:
        frames = traceback.extract_tb(error.__traceback__)
        if any(f.filename.replace("\\", "/").endswith("petlab/mpc/lean.py") and f.name in ("request", "collect")
               for f in frames):
            return DEALER
    return lost_peer(error=error, me=str(me), provider=provider)


class PeerLostError(RuntimeError):
    """Another role stopped answering, or closed its connection, during the run."""


def _uninit_quietly(crypten) -> None:
    """Tear CrypTen down; after a lost peer that can fail too, and must not hide why."""
    try:
        crypten.uninit()
    except Exception:  # noqa: BLE001 - the first error is the one to report
        log.debug("crypten.uninit failed after an error", exc_info=True)


def _peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB.

    Linux's ``VmHWM`` (this address space's high-water mark). Not ``ru_maxrss``: Linux
    carries that across ``exec`` from the process that started this one, so a party
    started by a large launcher would report the launcher's peak.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _check_peers(metas: dict, *, label_party: Party) -> None:
    from petlab.data.validation import check_schemas

    first = next(iter(metas.values()))
    for name, meta in metas.items():
        if meta["config_digest"] != first["config_digest"]:
            raise RendezvousError(f"party {name} runs with a different configuration")
        if meta["id_digest"] != first["id_digest"]:
            raise RendezvousError(
                f"party {name} holds a different set of customer ids: the rows cannot be "
                "aligned by id order (alignment 'given' needs the same customers at both parties; "
                "use alignment 'psi')"
            )
        if (meta["n_train"], meta["n_test"]) != (first["n_train"], first["n_test"]):
            raise RendezvousError(f"party {name} has a different number of rows")
    label_column = metas[str(label_party)]["label_column"]
    check_schemas(columns={name: meta["columns"] for name, meta in metas.items()},
                  paths={name: f"(the {name}'s table)" for name in metas},
                  id_column=metas[str(label_party)]["id_column"], label_column=label_column, label_party=str(label_party))
