"""Benchmarks: MPC training against plaintext, written to ``BENCHMARKS.md``.

Each configuration is a real proof-of-concept run (its run folder is kept under
``runs/bench-<time>/``); plaintext time is the median of several repetitions, since it is
tiny. Only measured numbers are written, with the command and the machine.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
from pathlib import Path

__all__ = ["SECTIONS", "MPC_CONFIGS", "run_benchmarks", "merge_sections", "render_mpc", "render_scale", "render_psi",
           "bench_psi"]

PLAINTEXT_REPEATS = 5


def _machine() -> str:
    import torch

    return (f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def _psi_side(role, path, endpoints, protocol, work, barrier, queue):
    """One party of the PSI benchmark, in its own process: read the ids, align."""
    import time

    import pyarrow.parquet as pq

    from petlab.data.psi import private_intersection, start_library, warm_up

    library = start_library(work_dir=work)  # as a party does at its start: loaded before the clock
    warm_up()  # as the roles' interpreter does (pyarrow's kernels), before the clock
    library.wait_ready(timeout_s=120)
    barrier.wait()
    t0 = time.perf_counter()
    ids = pq.read_table(path, columns=["customer_id"]).column("customer_id")
    # the protocol alone (its time and bytes), as in the published figures: no TLS around it
    result = private_intersection(ids=ids, role=role, endpoints=endpoints, protocol=protocol, tls=None,
                                  work_dir=work, timeout_s=600, progress=role == "gateway", library=library)
    seconds = time.perf_counter() - t0  # reading the ids to the aligned row order (result.rows)
    queue.put({"role": role, "seconds": seconds, "size": len(result.rows), "phases": result.phases,
               "bytes": result.bytes_sent + result.bytes_received,
               "peak_rss_mb": _vm_hwm_mb() + result.peak_rss_mb, "library_rss_mb": result.peak_rss_mb})


def _vm_hwm_mb() -> float:
    """This process's peak resident memory (Linux VmHWM), MB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def bench_psi(*, n: int, protocol: str = "rr22", overlap: float = 0.7) -> dict:
    """Time SecretFlow's PSI between two processes with ``n`` ids each (a share
    ``overlap`` shared), each reading its ids from a Parquet file.

    Args:
        n: ids per party.
        protocol: "rr22" or "ecdh".
        overlap: share of each party's ids the other holds too.
    """
    import multiprocessing as mp
    import shutil
    import tempfile

    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from petlab.net import free_port

    shared = int(n * overlap)
    folder = Path(tempfile.mkdtemp(prefix="petlab-bench-psi-"))
    try:
        paths = {}
        for role, first in (("gateway", 0), ("wallet", n - shared)):
            numbers = pa.array(np.random.default_rng(7).permutation(np.arange(first, first + n)))  # public order
            ids = pc.binary_join_element_wise("C", pc.utf8_lpad(pc.cast(numbers, pa.string()), 9, "0"), "")
            paths[role] = folder / f"{role}.parquet"
            pq.write_table(pa.table({"customer_id": ids}), paths[role])
        ports = []
        while len(ports) < 2:
            ports += [p for p in [free_port()] if p not in ports]
        endpoints = {"gateway": ("127.0.0.1", ports[0]), "wallet": ("127.0.0.1", ports[1])}
        ctx = mp.get_context("spawn")
        queue, barrier = ctx.Queue(), ctx.Barrier(2)
        procs = [ctx.Process(target=_psi_side, args=(role, str(paths[role]), endpoints, protocol,
                                                     str(folder / role), barrier, queue))
                 for role in ("gateway", "wallet")]
        for p in procs:
            p.start()
        results = {}
        for _ in procs:
            r = queue.get(timeout=3600)
            results[r["role"]] = r
        for p in procs:
            p.join()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert all(r["size"] == shared for r in results.values()), results
    g, w = results["gateway"], results["wallet"]
    return {"n": n, "protocol": protocol, "intersection": shared,
            "seconds": max(g["seconds"], w["seconds"]), "gateway_s": g["seconds"], "wallet_s": w["seconds"],
            "protocol_s": max(g["phases"]["protocol"], w["phases"]["protocol"]),
            "link_s": max(g["phases"]["link"], w["phases"]["link"]),
            "mb_per_party": max(g["bytes"], w["bytes"]) / 1e6,
            "peak_rss_mb": {"gateway": g["peak_rss_mb"], "wallet": w["peak_rss_mb"]},
            "library_rss_mb": {"gateway": g["library_rss_mb"], "wallet": w["library_rss_mb"]}}


SECTIONS = ("mpc", "scale", "psi", "wan", "startup")

#: The configurations of the ``mpc`` section: name -> (description, model, config overrides,
#: slow). Slow ones run ``slow_epochs`` at sizes above 10,000 (their time per epoch is
#: what matters; ten epochs at 100,000 rows would take hours).
MPC_CONFIGS = {
    "crypten-TFP": ("CrypTen 0.4.1 operators as shipped (gloo, OmegaConf), TFP", "logreg",
                    {"engine": "crypten", "provider": "TFP", "direct_link": False, "fast_config": False}, True),
    "crypten-TTP": ("CrypTen 0.4.1 operators as shipped, TTP (dealer)", "logreg",
                    {"engine": "crypten", "provider": "TTP", "direct_link": False, "fast_config": False}, True),
    "crypten+link-TTP": ("CrypTen operators, petlab direct link + fast config, TTP", "logreg",
                         {"engine": "crypten", "provider": "TTP"}, True),
    "petlab-TFP": ("petlab protocol (fixed-mask triples, bulk dealing, direct link), CrypTen's sigmoid, TFP",
                   "logreg", {"engine": "petlab", "provider": "TFP", "sigmoid_method": "reciprocal"}, False),
    "petlab-TTP": ("petlab protocol, CrypTen's sigmoid, TTP (dealer)", "logreg",
                   {"engine": "petlab", "provider": "TTP", "sigmoid_method": "reciprocal"}, False),
    "petlab-pw-TFP": ("petlab protocol, piecewise-polynomial sigmoid (15 rounds a step), TFP", "logreg",
                      {"engine": "petlab", "provider": "TFP", "sigmoid_method": "piecewise"}, False),
    "petlab-pw-TTP": ("petlab protocol, piecewise-polynomial sigmoid, TTP (dealer)", "logreg",
                      {"engine": "petlab", "provider": "TTP", "sigmoid_method": "piecewise"}, False),
    "petlab-TTP-exp6": ("petlab protocol, TTP, CrypTen's sigmoid with exp by 6 squarings instead of 9 (3 rounds "
                        "fewer per step)", "logreg",
                        {"engine": "petlab", "provider": "TTP", "sigmoid_method": "reciprocal",
                         "sigmoid_exp_iterations": 6}, False),
    "petlab-TTP-nr2": ("petlab protocol, TTP, CrypTen's sigmoid with 2 Newton steps for the reciprocal instead of 3 "
                       "(2 rounds fewer)", "logreg",
                       {"engine": "petlab", "provider": "TTP", "sigmoid_method": "reciprocal",
                        "sigmoid_nr_iterations": 2}, False),
    "petlab-TTP-p12": ("petlab protocol, TTP, CrypTen's sigmoid, 12 fractional bits instead of 16", "logreg",
                       {"engine": "petlab", "provider": "TTP", "sigmoid_method": "reciprocal", "precision_bits": 12},
                       False),
    "mlp-crypten-TFP": ("MLP, CrypTen operators as shipped, TFP", "mlp",
                        {"engine": "crypten", "provider": "TFP", "direct_link": False, "fast_config": False}, True),
    "mlp-crypten+link-TFP": ("MLP, CrypTen operators + direct link + fast config, TFP", "mlp",
                             {"engine": "crypten", "provider": "TFP"}, True),
    "mlp-crypten+link-TTP": ("MLP, CrypTen operators + direct link + fast config, TTP", "mlp",
                             {"engine": "crypten", "provider": "TTP"}, True),
    "mlp-petlab-TFP": ("MLP, petlab protocol (ReLU bit opened under a random bit, fixed-mask first layer), "
                       "CrypTen's sigmoid, TFP", "mlp",
                       {"engine": "petlab", "provider": "TFP", "sigmoid_method": "reciprocal"}, False),
    "mlp-petlab-TTP": ("MLP, petlab protocol, CrypTen's sigmoid, TTP (dealer)", "mlp",
                       {"engine": "petlab", "provider": "TTP", "sigmoid_method": "reciprocal"}, False),
    "mlp-petlab-pw-TFP": ("MLP, petlab protocol, piecewise-polynomial sigmoid, TFP", "mlp",
                          {"engine": "petlab", "provider": "TFP", "sigmoid_method": "piecewise"}, False),
    "mlp-petlab-pw-TTP": ("MLP, petlab protocol, piecewise-polynomial sigmoid, TTP (dealer)", "mlp",
                          {"engine": "petlab", "provider": "TTP", "sigmoid_method": "piecewise"}, False),
}

#: SecretFlow SPU on the same work, measured by ``petlab/spu/run_lr.py`` (SPU 0.9.5 is in
#: petlab's environment): name -> (description, SPU sigmoid mode, where its parties run).
SPU_CONFIGS = {
    "spu-SEMI2K": ("SecretFlow SPU 0.9.5, SEMI2K, FM64, exact sigmoid (SIGMOID_REAL), its two parties in two "
                   "processes over SPU's brpc link on loopback; Beaver triples made by party 0 (SPU's "
                   "TrustedFirstParty: a dealer assumption, as CrypTen's TFP)", "real", "processes"),
    "spu-SEMI2K-seg3": ("SecretFlow SPU 0.9.5, SEMI2K, FM64, clipped linear sigmoid (SIGMOID_SEG3), two "
                        "processes over brpc, TrustedFirstParty", "seg3", "processes"),
    "spu-SEMI2K-sim": ("SecretFlow SPU 0.9.5, SEMI2K, FM64, exact sigmoid, in SPU's own simulator: both parties "
                       "as threads of one process over an in-memory link (SPU's best case: no network, no "
                       "serialisation), TrustedFirstParty", "real", "simulator"),
    "spu-SEMI2K-seg3-sim": ("SecretFlow SPU 0.9.5, SEMI2K, FM64, clipped linear sigmoid, SPU's simulator "
                            "(one process, in-memory link), TrustedFirstParty", "seg3", "simulator"),
}
SPU_RUNNER = Path(__file__).parent / "spu" / "run_lr.py"
_MPC_ORDER = {name: i for i, name in enumerate(list(MPC_CONFIGS) + list(SPU_CONFIGS))}


def spu_python(explicit: str | None = None) -> str | None:
    """The interpreter that has SPU: ``explicit``, ``$PETLAB_SPU_PYTHON``, or this one when
    ``spu`` is installed here (``make venv`` installs it)."""
    import importlib.util

    for candidate in (explicit, os.environ.get("PETLAB_SPU_PYTHON")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    return sys.executable if importlib.util.find_spec("spu") is not None else None


#: Where the WAN section also keeps its points, for notebook 04.
WAN_RESULTS = "benchmarks/wan.json"
#: Where the mpc section keeps its rows: re-measuring some configurations keeps the others.
MPC_RESULTS = "benchmarks/mpc.json"
#: The PSI rows measured so far, each with its command (a run of some sizes replaces those)
PSI_RESULTS = "benchmarks/psi.json"


def _merge_rows(*, path: Path, rows: list[dict], key=lambda r: (r["config"], r["n_train"]),
                order=lambda r: (r["n_train"], _MPC_ORDER.get(r["config"], len(_MPC_ORDER)))) -> list[dict]:
    """The rows in ``path`` with ``rows`` replacing those of the same ``key`` (by default
    configuration and size); written back, and returned sorted by ``order``.

    >>> import tempfile; p = Path(tempfile.mkdtemp()) / "m.json"
    >>> _ = _merge_rows(path=p, rows=[{"config": "petlab-TTP", "n_train": 10, "mpc_s": 1.0}])
    >>> [r["mpc_s"] for r in _merge_rows(path=p, rows=[{"config": "petlab-TTP", "n_train": 10, "mpc_s": 2.0}])]
    [2.0]
    """
    import json

    old = json.loads(path.read_text())["rows"] if path.is_file() else []
    new_keys = {key(r) for r in rows}
    merged = [r for r in old if key(r) not in new_keys] + rows
    merged.sort(key=order)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"rows": merged}, indent=1))
    tmp.replace(path)
    return merged

HEADER = """# Benchmarks

Every number below was measured by the command printed in its section, on the machine
named there; `make bench` regenerates all sections. `petlab bench --sections psi`
(for example) re-measures one section and leaves the others as they are.
"""


def _marker(name: str) -> tuple[str, str]:
    return f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"


def merge_sections(*, text: str, sections: dict[str, str]) -> str:
    """``text`` (a BENCHMARKS.md) with the given sections replaced or appended.

    >>> doc = merge_sections(text="", sections={"psi": "old"})
    >>> doc = merge_sections(text=doc, sections={"mpc": "M"})
    >>> merge_sections(text=doc, sections={"psi": "new"}).count("new"), "old" in doc
    (1, True)
    """
    if not text.strip():
        text = HEADER
    for name in SECTIONS:
        if name not in sections:
            continue
        start, end = _marker(name)
        block = f"{start}\n{sections[name].rstrip()}\n{end}"
        if start in text and end in text:
            head, rest = text.split(start, 1)
            text = head + block + rest.split(end, 1)[1]
        else:
            text = text.rstrip() + "\n\n" + block + "\n"
    return text


def run_benchmarks(*, sizes, epochs: int, output: str, data_root: str, runs_root: str = "runs",
                   mpc_configs=None, slow_epochs: int = 1, features: int = 30,
                   psi_sizes=(10_000, 100_000, 1_000_000, 10_000_000), psi_protocols=("rr22", "ecdh"),
                   scale_rows_n: int = 1_000_000, scale_features: int = 100,
                   scale_epochs: int = 1, sections=SECTIONS, wan: dict | None = None,
                   spu: str | None = None) -> list[dict]:
    """Measure the requested sections and rewrite them in ``output`` (others are kept).

    Args:
        sizes: training rows of the ``mpc`` section (the tables hold 25% more: the test split).
        epochs: epochs of each configuration; ``slow_epochs`` for the slow ones above 10,000.
        mpc_configs: names from :data:`MPC_CONFIGS` (default all); features: columns.
        scale_rows_n, scale_features, scale_epochs: the ``scale`` section (one petlab TTP run;
            ``scale_rows_n`` training rows, as ``sizes``).
        psi_sizes: ids per side for section ``psi``; psi_protocols: "rr22", "ecdh".
        wan: keyword arguments of :func:`petlab.wan.measure_wan` for section ``wan``
            (rtts_ms, rates_mbit, providers, models, rows, epochs).
        output: the markdown file to update.
        data_root, runs_root: where party tables and run folders go.
        sections: which of :data:`SECTIONS` to measure.
        spu: the Python interpreter with SecretFlow SPU, for :data:`SPU_CONFIGS` (default:
            :func:`spu_python`).
    """
    from petlab.config import ConfigError

    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"unknown benchmark section(s) {sorted(unknown)}: expected {', '.join(SECTIONS)}")
    unknown = [c for c in (mpc_configs or []) if c not in MPC_CONFIGS and c not in SPU_CONFIGS]
    if unknown:
        raise ConfigError(f"unknown benchmark configuration(s) {unknown}: expected "
                          f"{', '.join([*MPC_CONFIGS, *SPU_CONFIGS])}")
    bad = [p for p in psi_protocols if p not in ("rr22", "ecdh")]
    if bad and "psi" in sections:
        raise ConfigError(f"unknown PSI protocol(s) {bad}: expected rr22, ecdh")
    spu_configs = [c for c in (mpc_configs or []) if c in SPU_CONFIGS] if "mpc" in sections else []
    spu = spu_python(spu)
    if spu_configs and spu is None:
        raise ConfigError(f"{', '.join(spu_configs)} need SecretFlow SPU 0.9.5 (spu), which is not installed "
                          "here: run `make venv` (or pass --spu-python / set PETLAB_SPU_PYTHON)")
    if "wan" in sections:  # before anything is measured: fail fast, not after an hour
        from petlab.wan import unavailable_reason

        reason = unavailable_reason()
        if reason:
            raise ConfigError(f"the wan section needs network namespaces and TUN links: {reason} "
                              "(measure the other sections with --sections mpc psi)")
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    root = Path(runs_root) / f"bench-{stamp}"
    rendered: dict[str, str] = {}
    rows = []
    if "mpc" in sections:
        command = "petlab bench --sections mpc " + " ".join(
            [f"--sizes {' '.join(map(str, sizes))}", f"--epochs {epochs}", f"--slow-epochs {slow_epochs}",
             f"--features {features}", f"--mpc-configs {' '.join(mpc_configs or list(MPC_CONFIGS))}"])
        rows = _bench_mpc(sizes=sizes, configs=mpc_configs or list(MPC_CONFIGS), epochs=epochs,
                          slow_epochs=slow_epochs, features=features, data_root=data_root, root=root, spu=spu)
        for r in rows:
            r.update(command=command, when=_stamp(), machine=_machine())
        kept = _merge_rows(path=Path(MPC_RESULTS), rows=rows)
        rendered["mpc"] = render_mpc(rows=kept)
    if "scale" in sections:
        scale_rows = _bench_mpc(sizes=[scale_rows_n], configs=["petlab-TTP"], epochs=scale_epochs,
                                slow_epochs=scale_epochs, features=scale_features, data_root=data_root,
                                root=root, plaintext_repeats=1)
        command = (f"petlab bench --sections scale --scale-rows {scale_rows_n} --scale-features {scale_features} "
                   f"--scale-epochs {scale_epochs}")
        rendered["scale"] = render_scale(rows=scale_rows, command=command, machine=_machine())
    if "psi" in sections:
        psi_rows = []
        for protocol in psi_protocols:
            for n in psi_sizes:
                print(f"[bench] PSI {protocol}, {n:,} ids per side", file=sys.stderr, flush=True)
                psi_rows.append(bench_psi(n=n, protocol=protocol))
        command = (f"petlab bench --sections psi --psi-sizes {' '.join(map(str, psi_sizes))} "
                   f"--psi-protocols {' '.join(psi_protocols)}")
        from petlab.config import PSI_PROTOCOLS

        for r in psi_rows:
            r.update(command=command, when=_stamp(), machine=_machine())
        kept = _merge_rows(path=Path(PSI_RESULTS), rows=psi_rows, key=lambda r: (r["protocol"], r["n"]),
                           order=lambda r: (PSI_PROTOCOLS.index(r["protocol"]) if r["protocol"] in PSI_PROTOCOLS
                                            else len(PSI_PROTOCOLS), r["n"]))
        rendered["psi"] = render_psi(rows=kept)
    if "wan" in sections:
        rendered["wan"] = _bench_wan(wan=wan or {}, root=root)
    if "startup" in sections:
        from petlab.bench_startup import measure_startup, render_startup

        rendered["startup"] = render_startup(measured=measure_startup(data_root=data_root, root=root),
                                             command="petlab bench --sections startup", machine=_machine(),
                                             stamp=_stamp())
    path = Path(output)
    text = merge_sections(text=path.read_text() if path.is_file() else "", sections=rendered)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return rows


def _bench_mpc(*, sizes, configs, epochs: int, slow_epochs: int, features: int, data_root: str, root: Path,
               plaintext_repeats: int = PLAINTEXT_REPEATS, spu: str | None = None) -> list[dict]:
    """Each configuration on the wide synthetic data (``features`` columns split evenly,
    label at the gateway, the same customers at both parties: no PSI)."""
    import statistics as stats

    from petlab.config import poc_config
    from petlab.mpc.lean import train_bytes
    from petlab.mpc.party import minibatches, sigmoid_spec
    from petlab.pipeline import prepare_tables, run_poc, train_references

    rows = []
    for n_train in sizes:
        table_rows = int(round(n_train / 0.8))  # 20% of the customers are held out for the test
        for name in configs:
            if name in SPU_CONFIGS:
                rows.append(_bench_spu(name=name, n_train=n_train, epochs=epochs, features=features,
                                       data_root=data_root, root=root, python=spu,
                                       plaintext_repeats=plaintext_repeats))
                continue
            description, model, overrides, slow = MPC_CONFIGS[name]
            n_epochs = slow_epochs if slow and n_train > 10_000 else epochs
            config = poc_config(source="wide", rows=table_rows, features=features, alignment="given",
                                model=model, epochs=n_epochs, root=data_root, track_loss=False,
                                timeout_s=6 * 3600, **overrides)
            print(f"[bench] {name}: {n_train:,} training rows x {features} features, {n_epochs} epoch(s)",
                  file=sys.stderr, flush=True)
            result = run_poc(config=config, runs_root=str(root), progress=True)
            m = result.metrics
            tables = prepare_tables(config=config)
            plain_s = stats.median(train_references(config=config, tables=tables)["plaintext"].train_seconds
                                   for _ in range(plaintext_repeats))
            records = {p: result.run.read_json(f"parties/{p}/result.json") for p in ("gateway", "wallet")}
            dealer_rss = None
            if config.mpc.provider == "TTP":
                dealer_rss = result.run.read_json("parties/dealer/result.json").get("peak_rss_mb")
            train = {p: records[p]["phases"]["train"] for p in records}
            analytic = None
            if records["gateway"].get("engine") == "petlab":
                steps = [b for e in range(n_epochs) for b in minibatches(
                    n=m["n_train"], batch_size=config.train.batch_size, seed=config.train.seed, epoch=e)]
                count = train_bytes(batches=steps, d=features, provider=config.mpc.provider, rank=1,
                                    chunk=config.mpc.triple_chunk, sigmoid=sigmoid_spec(config),
                                    merged=config.mpc.direct_link,
                                    hidden=config.train.hidden if model == "mlp" else None)
                analytic = count["bytes"] / n_epochs
            rows.append({
                "config": name, "description": description, "model": model, "provider": config.mpc.provider,
                "engine": records["gateway"].get("engine", "crypten"),
                "sigmoid_method": records["gateway"].get("sigmoid_method", "crypten"), "n_train": m["n_train"],
                "features": features, "epochs": n_epochs, "plaintext_s": plain_s,
                "mpc_s": m["seconds"]["mpc_train"], "ratio": m["seconds"]["mpc_train"] / plain_s,
                "auc_mpc": m["auc"]["mpc"], "auc_plaintext": m["auc"]["plaintext"],
                "max_abs_weight_diff": m["max_abs_weight_diff"],
                "bytes": {p: m["comm"][p]["bytes"] for p in m["comm"]},
                "rounds": {p: m["comm"][p]["rounds"] for p in m["comm"]},
                "train_bytes_per_epoch": {p: train[p]["bytes"] / n_epochs for p in train},
                "analytic_bytes_per_epoch": analytic,
                "peak_rss_mb": {**{p: records[p]["peak_rss_mb"] for p in records}, "dealer": dealer_rss},
                "rss": "VmHWM",  # per process (see petlab.mpc.party._peak_rss_mb)
                "run": str(result.run.path),
            })
    return rows


def _bench_spu(*, name: str, n_train: int, epochs: int, features: int, data_root: str, root: Path, python: str,
               plaintext_repeats: int) -> dict:
    """SecretFlow SPU on the same tables, features, minibatches and SGD arithmetic as the
    petlab rows (its two parties in their own processes over loopback, in SPU's own
    environment); the plaintext reference is petlab's."""
    import json
    import statistics as stats
    import subprocess

    import numpy as np

    from petlab.config import poc_config
    from petlab.metrics import binary_metrics
    from petlab.mpc.party import minibatches
    from petlab.parties import Party
    from petlab.pipeline import prepare_tables, reference_features, train_references

    description, sigmoid, where = SPU_CONFIGS[name]
    config = poc_config(source="wide", rows=int(round(n_train / 0.8)), features=features, alignment="given",
                        model="logreg", epochs=epochs, root=data_root, track_loss=False)
    tables = prepare_tables(config=config)
    feats = reference_features(config=config, tables=tables)
    gateway, wallet = feats[Party.GATEWAY], feats[Party.WALLET]
    t = config.train
    steps = [rows for e in range(epochs)
             for rows in minibatches(n=len(gateway.X_train), batch_size=t.batch_size, seed=t.seed, epoch=e)]
    folder = root / f"{name}-n{n_train}"
    folder.mkdir(parents=True, exist_ok=True)
    X_test = np.hstack([gateway.X_test, wallet.X_test])
    np.savez(folder / "inputs.npz", X_gateway=gateway.X_train, X_wallet=wallet.X_train, y=gateway.y_train,
             X_test=X_test, y_test=gateway.y_test, batches=np.concatenate(steps),
             batch_sizes=np.array([len(rows) for rows in steps]), lr=t.lr, epochs=epochs)
    print(f"[bench] {name}: {n_train:,} training rows x {features} features, {epochs} epoch(s)",
          file=sys.stderr, flush=True)
    proc = subprocess.run([python, str(SPU_RUNNER), "--data", str(folder / "inputs.npz"),
                           "--out", str(folder / "result.json"), "--sigmoid", sigmoid,
                           *(["--simulator"] if where == "simulator" else [])],
                          capture_output=True, text=True, timeout=6 * 3600)
    (folder / "spu.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the SPU run {name} failed (exit {proc.returncode}): {last}; log in {folder / 'spu.log'}")
    out = json.loads((folder / "result.json").read_text())
    fits = [train_references(config=config, tables=tables)["plaintext"] for _ in range(plaintext_repeats)]
    plain_s = stats.median(f.train_seconds for f in fits)
    w, b = np.asarray(out["w"], dtype=float).reshape(-1, 1), float(out["b"])
    scores = 1 / (1 + np.exp(-(X_test @ w + b)))
    plain = fits[0].weights
    diff = max(float(np.max(np.abs(w - plain["w"].reshape(-1, 1)))), abs(b - float(plain["b"].ravel()[0])))
    traffic = {p: None if out["bytes_sent"][str(i)] is None else
               out["bytes_sent"][str(i)] + ((out.get("bytes_received") or {}).get(str(i)) or 0)
               for i, p in enumerate(("gateway", "wallet"))}
    mpc_s = out["input_s"] + out["train_s"]  # as the petlab rows: sharing the inputs and the steps
    return {
        "config": name, "description": description, "model": "logreg", "provider": "SPU TrustedFirstParty",
        "engine": out.get("system", "spu"), "sigmoid_method": f"spu-{sigmoid}", "n_train": len(gateway.X_train),
        "features": features, "epochs": epochs, "plaintext_s": plain_s, "mpc_s": mpc_s, "ratio": mpc_s / plain_s,
        "auc_mpc": binary_metrics(y_true=gateway.y_test, scores=scores.ravel()).auc,
        "auc_plaintext": binary_metrics(y_true=gateway.y_test, scores=fits[0].test_scores).auc,
        "max_abs_weight_diff": diff, "bytes": traffic, "rounds": {"gateway": None, "wallet": None},
        "train_bytes_per_epoch": {"wallet": None}, "analytic_bytes_per_epoch": None,
        "peak_rss_mb": {"gateway": out["peak_rss_mb"]["0"], "wallet": out["peak_rss_mb"]["1"], "dealer": None},
        "rss": "VmHWM", "run": str(folder), "spu": {"where": where, "link": out.get("link")} | {
                                                        k: out.get(k) for k in ("compile_s", "input_s", "train_s",
                                                                           "reveal_s", "fxp_fraction_bits",
                                                                           "security_model", "bytes_sent",
                                                                           "bytes_received")},
    }


def _bench_wan(*, wan: dict, root: Path) -> str:
    import dataclasses
    import json

    from petlab.wan import measure_wan

    settings = {"rtts_ms": [1, 35, 80, 180], "rates_mbit": [1000, 100], "providers": ["TFP", "TTP"],
                "models": ["logreg", "mlp"], "rows": 2000, "epochs": 1, **wan}
    points = measure_wan(out_dir=root / "wan", **settings)
    command = ("petlab bench --sections wan "
               f"--wan-rtts {' '.join(f'{r:g}' for r in settings['rtts_ms'])} "
               f"--wan-rates {' '.join(f'{r:g}' for r in settings['rates_mbit'])} "
               f"--wan-providers {' '.join(settings['providers'])} --wan-models {' '.join(settings['models'])} "
               f"--wan-rows {settings['rows']} --wan-epochs {settings['epochs']}")
    rows = [dataclasses.asdict(p) for p in points]
    Path(WAN_RESULTS).parent.mkdir(parents=True, exist_ok=True)
    Path(WAN_RESULTS).write_text(json.dumps({"command": command, "machine": _machine(), "when": _stamp(),
                                             "points": rows}, indent=1))
    return render_wan(rows=rows, command=command, machine=_machine())


def rounds_model(rows: list[dict]) -> list[dict]:
    """Each point with the time the rounds model predicts: the same configuration's time
    at the smallest RTT, plus (rounds × the extra RTT).

    >>> pts = [{"provider": "TFP", "model": "logreg", "rate_mbit": 100, "rtt_ms": 1, "seconds": 2.0,
    ...         "rounds": 100}, {"provider": "TFP", "model": "logreg", "rate_mbit": 100,
    ...         "rtt_ms": 51, "seconds": 7.5, "rounds": 100}]
    >>> [round(r["predicted_s"], 2) for r in rounds_model(pts)]
    [2.0, 7.0]
    """
    out = []
    for r in rows:
        same = [q for q in rows if (q["provider"], q["model"], q["rate_mbit"]) == (r["provider"], r["model"], r["rate_mbit"])]
        base = min(same, key=lambda q: q["rtt_ms"])
        predicted = base["seconds"] + r["rounds"] * (r["rtt_ms"] - base["rtt_ms"]) / 1000
        out.append({**r, "predicted_s": predicted})
    return out


def _rss_cell(r: dict) -> str:
    """Peak memory of gateway / wallet / dealer; † where read from ``ru_maxrss`` (upper bound)."""
    rss = r["peak_rss_mb"]
    dealer = "—" if rss.get("dealer") is None else f"{rss['dealer']:,.0f}"
    return f"{rss['gateway']:,.0f} / {rss['wallet']:,.0f} / {dealer}{'' if r.get('rss') == 'VmHWM' else ' †'}"


def _section_head(*, title: str, command: str, machine: str) -> list[str]:
    """A measured section's first lines: its title and what measured it, when and where."""
    return [f"## {title}", "", f"Measured by `{command}` on {_stamp()}, on: {machine}.", ""]


def render_wan(*, rows: list[dict], command: str, machine: str) -> str:
    """The cross-border-link section for measured ``rows``."""
    lines = _section_head(title="Cross-border links (emulated WAN)", command=command, machine=machine) + [
        "Each role (gateway, wallet and, under TTP, the dealer) ran `petlab party --config` in its",
        "own network namespace; the namespaces were joined by petlab's user-space link emulator",
        "(`petlab/wan.py`: TUN interfaces, each packet delayed by RTT/2 plus its serialisation time",
        "at the rate; `tc netem` is not in this machine's kernel). **TCP RTT** is a measured TCP",
        "connect time across the link. **seconds**: gateway's secret-sharing + training time.",
        "**predicted**: the rounds model, time at the smallest RTT + rounds × the extra RTT.",
        "Rows: the gateway's customers (70% shared); the MLP has 16 hidden units.",
        "",
        "| model | provider | RTT ms | Mbit/s | TCP RTT ms | seconds | rounds | MB (gateway) | predicted s | measured / predicted | AUC |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rounds_model(rows):
        lines.append(
            f"| {r['model']} | {r['provider']} | {r['rtt_ms']:g} | {r['rate_mbit']:g} | {r['ping_ms']:.1f} "
            f"| {r['seconds']:.1f} | {r['rounds']:,} | {r['bytes'] / 1e6:,.1f} | {r['predicted_s']:.1f} "
            f"| {r['seconds'] / r['predicted_s']:.2f} | {r['auc']:.4f} |")
    lines += ["", f"Points also in `{WAN_RESULTS}` (plotted by `notebooks/04_cross_border_links.ipynb`)."]
    return "\n".join(lines)


def _stamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _mb(x) -> str:
    return "—" if x is None else f"{x / 1e6:,.1f}"


def _count(x) -> str:
    return "—" if x is None else f"{x:,}"


#: The petlab protocol's configurations the findings compare: prefix -> label.
PETLAB_VARIANTS = {"petlab": "petlab protocol, CrypTen's sigmoid", "petlab-pw": "petlab protocol, piecewise sigmoid"}


def _findings(rows: list[dict]) -> list[str]:
    """The ratios worth comparing, computed from the rows (per epoch where epochs differ).

    >>> rows = [{"config": c, "n_train": 10_000, "epochs": 10, "mpc_s": s, "model": "logreg"}
    ...         for c, s in (("petlab-TFP", 2.0), ("petlab-TTP", 3.0), ("crypten-TTP", 60.0), ("petlab-pw-TTP", 1.0),
    ...                      ("spu-SEMI2K-sim", 1.5))]
    >>> print("\\n".join(_findings(rows)))
    Findings at 10,000 training rows (seconds per epoch):
    - TTP / TFP, petlab protocol, CrypTen's sigmoid: 1.50
    - CrypTen operators as shipped (TTP) / petlab protocol, CrypTen's sigmoid (TTP): 20.0x
    - CrypTen operators as shipped (TTP) / petlab protocol, piecewise sigmoid (TTP): 60.0x
    - petlab protocol, CrypTen's sigmoid (TTP) / spu-SEMI2K-sim (measured, same command): 2.00x
    - petlab protocol, piecewise sigmoid (TTP) / spu-SEMI2K-sim (measured, same command): 0.67x
    """
    out = []
    for n in sorted({r["n_train"] for r in rows}):
        per_epoch = {r["config"]: r["mpc_s"] / r["epochs"] for r in rows if r["n_train"] == n}
        measured = {r["config"]: (r.get("command"), r.get("when")) for r in rows if r["n_train"] == n}

        def apart(a: str, b: str) -> str:  # a ratio of rows measured separately says so
            return "" if measured[a] == measured[b] else " (measured by different commands)"

        lines = []
        variants = {**PETLAB_VARIANTS, **{f"mlp-{k}": f"MLP, {v}" for k, v in PETLAB_VARIANTS.items()}}
        for prefix, label in variants.items():
            tfp, ttp = per_epoch.get(f"{prefix}-TFP"), per_epoch.get(f"{prefix}-TTP")
            if tfp and ttp:
                lines.append(f"- TTP / TFP, {label}: {ttp / tfp:.2f}{apart(f'{prefix}-TTP', f'{prefix}-TFP')}")
        for prefix, label in PETLAB_VARIANTS.items():
            if "crypten-TTP" in per_epoch and f"{prefix}-TTP" in per_epoch:
                lines.append(f"- CrypTen operators as shipped (TTP) / {label} (TTP): "
                             f"{per_epoch['crypten-TTP'] / per_epoch[f'{prefix}-TTP']:.1f}x"
                             f"{apart('crypten-TTP', f'{prefix}-TTP')}")
        for prefix, label in PETLAB_VARIANTS.items():
            for spu_name in SPU_CONFIGS:
                if f"{prefix}-TTP" in per_epoch and spu_name in per_epoch:
                    same = measured[f"{prefix}-TTP"] == measured[spu_name]
                    lines.append(f"- {label} (TTP) / {spu_name} (measured, "
                                 f"{'same command' if same else 'different commands'}): "
                                 f"{per_epoch[f'{prefix}-TTP'] / per_epoch[spu_name]:.2f}x")
        for name in ("mlp-crypten+link-TFP", "mlp-crypten+link-TTP", "mlp-petlab-TFP", "mlp-petlab-TTP",
                     "mlp-petlab-pw-TFP", "mlp-petlab-pw-TTP"):
            row = next((r for r in rows if r["config"] == name and r["n_train"] == n), None)
            if row is not None:
                lines.append(f"- {name}: {row['ratio']:,.0f}x plaintext")
        if lines:
            out += ([""] if out else []) + [f"Findings at {n:,} training rows (seconds per epoch):", *lines]
    return out


def _cost_total(cost: list[dict]) -> list[str]:
    opened = sum(c["opened"] for c in cost)
    return [f"| **step** | **{opened:,}** ({16 * opened / 1e6:.2f} MB per party) "
            f"| **{sum(c['rounds'] for c in cost)}** | **{sum(c['dealt'] for c in cost):,}** |"]


def _measured_by(*, rows: list[dict], title: str) -> tuple[list, list[str]]:
    """A section's title and one line per command that measured some of ``rows`` (tagged
    ``[k]`` where there are several); the commands, in that order, and the lines.

    >>> rows = [{"command": "a", "when": "t1", "machine": "m"}, {"command": "b", "when": "t2", "machine": "m"}]
    >>> _measured_by(rows=rows, title="T")[1]
    ['## T', '', 'Measured [1] by `a` on t1, on: m.', 'Measured [2] by `b` on t2, on: m.']
    """
    commands = list(dict.fromkeys((r["command"], r["when"], r["machine"]) for r in rows))
    lines = [f"## {title}", ""]
    for i, (command, when, machine) in enumerate(commands, 1):
        tag = f" [{i}]" if len(commands) > 1 else ""
        lines.append(f"Measured{tag} by `{command}` on {when}, on: {machine}.")
    return commands, lines


def render_mpc(*, rows: list[dict]) -> str:
    """The MPC-vs-plaintext section for measured ``rows`` (each with its command)."""
    from petlab.mpc.lean import Sigmoid, mlp_step_cost, step_cost

    commands, lines = _measured_by(rows=rows, title="MPC training against plaintext")
    lines += [
        "",
        "Data: the wide synthetic tables (`--source wide`): numeric columns split evenly between",
        "the parties, label at the gateway, the same customers at both (alignment given: PSI is",
        "measured in its own section). Logistic regression from zero weights, batch 1024, lr 0.5;",
        "the MLP has 16 hidden units and starts from the same weights in every backend.",
        "",
        "- **MPC s**: gateway's wall time for sharing the inputs, masking the features (petlab",
        "  engine) and the SGD steps; both parties (and, under TTP, the dealer) in their own",
        "  processes on this machine over loopback TCP. Start-up and the final reveals are excluded.",
        "- **plaintext s**: the same model, data, initial weights and minibatch order in PyTorch on one",
        f"  thread, median of {PLAINTEXT_REPEATS} repetitions. **×**: MPC s / plaintext s.",
        "- **MB, rounds**: CrypTen's communicator counts per party (8-byte elements, sent + received)",
        "  over sharing, masking, training and reveals. **train MB/epoch**: the SGD steps only",
        "  (wallet); **analytic**: what the petlab protocol must send by its own count (table below).",
        "- **peak RSS**: peak resident memory of each process (gateway / wallet / dealer), from",
        "  Linux's VmHWM. Rows marked † were read from `ru_maxrss`, which Linux carries over from",
        "  the launching process (the benchmark, which had generated the tables): upper bounds.",
        "- **max |Δw|**: largest difference between the MPC and plaintext final weights.",
        "",
        "| configuration | model | train rows | epochs | plaintext s | MPC s | × plaintext | AUC MPC "
        "| AUC plaintext | max abs weight diff | MB gateway / wallet | rounds gateway / wallet "
        "| train MB/epoch (wallet) | analytic MB/epoch | peak RSS MB gateway / wallet / dealer |"
        + (" command |" if len(commands) > 1 else ""),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if len(commands) > 1 else ""),
    ]
    which = {c[0]: i for i, c in enumerate(commands, 1)}
    for r in rows:
        wd = "—" if r["max_abs_weight_diff"] is None else f"{r['max_abs_weight_diff']:.4f}"
        lines.append(
            f"| {r['config']} | {r['model']} | {r['n_train']:,} | {r['epochs']} | {r['plaintext_s']:.4f} "
            f"| {r['mpc_s']:.1f} | {r['ratio']:,.0f} | {r['auc_mpc']:.4f} | {r['auc_plaintext']:.4f} | {wd} "
            f"| {_mb(r['bytes']['gateway'])} / {_mb(r['bytes']['wallet'])} "
            f"| {_count(r['rounds']['gateway'])} / {_count(r['rounds']['wallet'])} "
            f"| {_mb(r['train_bytes_per_epoch']['wallet'])} | {_mb(r['analytic_bytes_per_epoch'])} "
            f"| {_rss_cell(r)} |"
            + (f" [{which[r['command']]}] |" if len(commands) > 1 else ""))
    spu_rows = [r for r in rows if r.get("spu")]
    if spu_rows:
        lines += ["", "SecretFlow SPU rows, measured by the same command (`petlab/spu/run_lr.py`; **MPC s** = sharing "
                  "the inputs + training; compiling excluded, as petlab's start-up is). `-sim` rows ran in SPU's own "
                  "simulator (both parties as threads of one process over an in-memory link: SPU's best case, no "
                  "network); the others in two processes over SPU's brpc link on loopback, as petlab's parties run:", ""]
        for r in spu_rows:
            x = r["spu"]
            lines.append(f"- `{r['config']}` ({x.get('where', 'processes')}), {r['n_train']:,} rows: inputs "
                         f"{x['input_s']:.1f} s, training "
                         f"{x['train_s']:.1f} s, compile {x['compile_s']:.1f} s; fixed point "
                         f"{x['fxp_fraction_bits']} fractional bits; {x['security_model'].split('.')[0]}.")
    lines += ["", *_findings(rows), "", "Configurations:", ""]
    described = {**MPC_CONFIGS, **SPU_CONFIGS}
    for name in dict.fromkeys(r["config"] for r in rows):
        lines.append(f"- `{name}`: {described[name][0]}")
    B, d = 1024, rows[0]["features"] if rows else 30
    lines += [
        "",
        f"### What one petlab training step sends (batch {B}, {d} features)",
        "",
        "Counted from the protocol (`petlab.mpc.lean.step_cost`); each party sends and receives",
        "each opened element (CrypTen counts both: 16 bytes per element). `tests/test_mpc.py`",
        "checks that a run's training traffic equals this count exactly. The piecewise method's",
        "rounds are over petlab's direct link (without it, through gloo, its powers and their truncations take 7 more).",
    ]
    for method, title in (("reciprocal", "CrypTen's sigmoid (`sigmoid_method: reciprocal`)"),
                          ("piecewise", "piecewise-polynomial sigmoid (`sigmoid_method: piecewise`)")):
        lines += ["", f"With {title}:", "", "| operation | opened elements | rounds | dealt to the gateway (TTP) |",
                  "|---|---|---|---|"]
        cost = step_cost(batch=B, d=d, sigmoid=Sigmoid(method))
        for c in cost:
            lines.append(f"| {c['operation']} | {c['opened']:,} | {c['rounds']} | {c['dealt']:,} |")
        lines += _cost_total(cost)
    h = 16
    lines += ["", f"The MLP ({d}-{h}-1, ReLU; `petlab.mpc.lean.mlp_step_cost`), with CrypTen's sigmoid:", "",
              "| operation | opened elements | rounds | dealt to the gateway (TTP) |", "|---|---|---|---|"]
    cost = mlp_step_cost(batch=B, d=d, hidden=h, sigmoid=Sigmoid("reciprocal"))
    for c in cost:
        lines.append(f"| {c['operation']} | {c['opened']:,} | {c['rounds']} | {c['dealt']:,} |")
    lines += _cost_total(cost)
    lines += ["", "Run folders of these measurements (not committed, under `runs/bench-*/`): "
              + ", ".join(f"`{Path(r['run']).name}`" for r in rows)]
    return "\n".join(lines)


def render_scale(*, rows: list[dict], command: str, machine: str) -> str:
    """The one-machine scale section (petlab engine, TTP)."""
    lines = _section_head(title="Scale: a million rows on one machine", command=command, machine=machine) + [
        "Logistic regression with the petlab protocol under TTP: gateway, wallet and dealer each in",
        "their own process on this machine; wide synthetic tables (Parquet), the same customers at",
        "both parties. The launcher shows a progress bar over the SGD steps with the time left.",
        "",
        "| train rows | features | epochs | MPC s | plaintext s | AUC MPC | AUC plaintext | max abs weight diff "
        "| MB gateway / wallet | peak RSS MB gateway / wallet / dealer |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n_train']:,} | {r['features']} | {r['epochs']} | {r['mpc_s']:.1f} | {r['plaintext_s']:.2f} "
            f"| {r['auc_mpc']:.4f} | {r['auc_plaintext']:.4f} | {r['max_abs_weight_diff']:.4f} "
            f"| {_mb(r['bytes']['gateway'])} / {_mb(r['bytes']['wallet'])} "
            f"| {_rss_cell(r)} |")
    lines += ["", "Peak RSS from Linux's VmHWM per process († : from `ru_maxrss`, which Linux carries over "
              "from the launching process: an upper bound).",
              "", "Run folder (not committed): " + ", ".join(f"`{Path(r['run']).name}`" for r in rows)]
    return "\n".join(lines)


#: The rows of the PSI library petlab used before SecretFlow's (openmined-psi 2.0.6, ECDH on
#: P-256 run in both directions at once), as measured by ``petlab bench --sections psi
#: --psi-sizes 10000 100000 1000000`` on 2026-11-30 06:45 UTC on this kind of machine; kept
#: for comparison: (ids per side, shared, seconds, MB per party, peak RSS MB).
OPENMINED_ROWS = ((10_000, 7_000, 27.2, 1.5, 328), (100_000, 70_000, 203.3, 15.2, 348),
                  (1_000_000, 700_000, 2635.2, 151.2, 918))


def render_psi(*, rows: list[dict]) -> str:
    """The private-set-intersection section for measured ``rows`` (each with its command),
    and the old library's."""
    commands, lines = _measured_by(rows=rows, title="Private set intersection")
    lines += [
        "",
        "SecretFlow's PSI (`spu` 0.9.5's `psi_execute`), RR22 and ECDH on Curve25519, the gateway",
        "receiving and sending the result on (both parties learn the intersection), between two",
        "party processes on loopback, each listening on its own port, without TLS (the protocol",
        "alone); n ids per side in a Parquet file, 70% shared.",
        "",
        "- **seconds**: the slower party, end to end: reading its ids from the file, checking them,",
        "  the library's process (link, protocol, its output), to the aligned row order (each",
        "  party's row numbers of the shared customers, in ascending id). **link s** / **protocol s**:",
        "  the library's link set-up and `psi_execute` (slower party).",
        "- **MB per party**: TCP payload sent + received on the link by one party (the larger).",
        "- **peak RSS MB**: each party's process (Linux VmHWM, imports included) plus what the",
        "  library's process added above the memory it shared with it at its start.",
        "",
        "| protocol | ids per side | shared | seconds | link s | protocol s | MB per party | peak RSS MB gateway / wallet |"
        + (" measured |" if len(commands) > 1 else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|" if len(commands) > 1 else ""),
    ]
    which = {c: i for i, c in enumerate(commands, 1)}
    for r in rows:
        rss = r["peak_rss_mb"]
        tag = f" [{which[(r['command'], r['when'], r['machine'])]}] |" if len(commands) > 1 else ""
        lines.append(f"| {r['protocol']} | {r['n']:,} | {r['intersection']:,} | {r['seconds']:.2f} | "
                     f"{r['link_s']:.2f} | {r['protocol_s']:.2f} | {r['mb_per_party']:.1f} | "
                     f"{rss['gateway']:,.0f} / {rss['wallet']:,.0f} |{tag}")
    lines += [
        "",
        "The library used before (openmined-psi 2.0.6: ECDH on P-256 in both directions at once, over",
        "petlab's own sockets; removed), as measured by `petlab bench --sections psi --psi-sizes 10000",
        "100000 1000000` on 2026-11-30 06:45 UTC on the same kind of machine (not re-measured):",
        "",
        "| ids per side | shared | seconds | MB per party | peak RSS MB |",
        "|---|---|---|---|---|",
    ]
    for n, shared, seconds, mb, rss in OPENMINED_ROWS:
        lines.append(f"| {n:,} | {shared:,} | {seconds:.1f} | {mb:.1f} | {rss:,} |")
    return "\n".join(lines)