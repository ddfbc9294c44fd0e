"""Benchmarks: MPC training against plaintext, written to ``BENCHMARKS.md``.

Each configuration is a real proof-of-concept run (its run folder is kept under
``runs/bench-<time>/``); plaintext time is the median of several repetitions, since it is
tiny. Only measured numbers are written, with the command and the machine.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import sys
from pathlib import Path

__all__ = ["SECTIONS", "run_benchmarks", "merge_sections", "render_mpc", "render_psi", "bench_psi"]

PLAINTEXT_REPEATS = 5


def _plaintext_median_seconds(*, config, tables) -> float:
    from petlab.pipeline import train_references

    times = [train_references(config=config, tables=tables)["plaintext"].train_seconds
             for _ in range(PLAINTEXT_REPEATS)]
    return statistics.median(times)


def _machine() -> str:
    import torch

    return (f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def _psi_side(ids, listen, port, queue):
    from petlab.data.psi import private_intersection

    result = private_intersection(ids=ids, listen=listen, address="127.0.0.1", port=port, timeout_s=7200)
    import resource

    queue.put({"listen": listen, "seconds": result.seconds, "size": len(result.ids),
               "bytes": result.bytes_sent + result.bytes_received,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def bench_psi(*, n: int, overlap: float = 0.7) -> dict:
    """Time PSI (both directions) between two processes with ``n`` ids each."""
    import multiprocessing as mp

    from petlab.net import free_port

    shared = int(n * overlap)
    gateway_ids = [f"C{i:09d}" for i in range(n)]
    wallet_ids = [f"C{i:09d}" for i in range(n - shared, 2 * n - shared)]
    ctx = mp.get_context("spawn")
    queue, port = ctx.Queue(), free_port()
    procs = [ctx.Process(target=_psi_side, args=(gateway_ids, True, port, queue)),
             ctx.Process(target=_psi_side, args=(wallet_ids, False, port, queue))]
    for p in procs:
        p.start()
    results = [queue.get(timeout=7200) for _ in procs]
    for p in procs:
        p.join()
    assert all(r["size"] == shared for r in results), results
    return {"n": n, "intersection": shared, "seconds": max(r["seconds"] for r in results),
            "mb_per_party": max(r["bytes"] for r in results) / 1e6,
            "peak_rss_mb": max(r["peak_rss_mb"] for r in results)}


SECTIONS = ("mpc", "psi", "wan")

#: Where the WAN section also keeps its points, for notebook 04.
WAN_RESULTS = "benchmarks/wan.json"

HEADER = """# Benchmarks

Every number below was measured by the command quoted in its section, on the machine
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


def run_benchmarks(*, sizes, providers, models, epochs: int, output: str, data_root: str,
                   runs_root: str = "runs", psi_sizes=(10_000, 100_000),
                   sections=SECTIONS, wan: dict | None = None) -> list[dict]:
    """Measure the requested sections and rewrite them in ``output`` (others are kept).

    Args:
        sizes, providers, models, epochs: the MPC configurations (section ``mpc``).
        psi_sizes: ids per side for section ``psi``.
        wan: keyword arguments of :func:`petlab.wan.measure_wan` for section ``wan``
            (rtts_ms, rates_mbit, providers, models, rows, epochs).
        output: the markdown file to update.
        data_root, runs_root: where party tables and run folders go.
        sections: which of :data:`SECTIONS` to measure.
    """
    from petlab.config import ConfigError, poc_config
    from petlab.pipeline import prepare_tables, run_poc

    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"unknown benchmark section(s) {sorted(unknown)}: expected {', '.join(SECTIONS)}")
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
        for model in models:
            for size in sizes:
                for provider in providers:
                    config = poc_config(rows=size, model=model, provider=provider, epochs=epochs,
                                        root=data_root, track_loss=False)
                    print(f"[bench] {model} {provider} rows={size} epochs={epochs}", file=sys.stderr, flush=True)
                    result = run_poc(config=config, runs_root=str(root), progress=True)
                    m = result.metrics
                    tables = prepare_tables(config=config)
                    plain_s = _plaintext_median_seconds(config=config, tables=tables)
                    records = {p: result.run.read_json(f"parties/{p}/result.json") for p in ("gateway", "wallet")}
                    rows.append({
                        "model": model, "provider": provider, "rows": size, "n_train": m["n_train"],
                        "epochs": epochs, "plaintext_s": plain_s, "mpc_s": m["seconds"]["mpc_train"],
                        "ratio": m["seconds"]["mpc_train"] / plain_s,
                        "auc_mpc": m["auc"]["mpc"], "auc_plaintext": m["auc"]["plaintext"],
                        "max_abs_weight_diff": m["max_abs_weight_diff"],
                        "bytes": {p: m["comm"][p]["bytes"] for p in m["comm"]},
                        "rounds": {p: m["comm"][p]["rounds"] for p in m["comm"]},
                        "peak_rss_mb": {p: records[p]["peak_rss_mb"] for p in records},
                        "run": str(result.run.path),
                    })
        command = "petlab bench --sections mpc " + " ".join(
            [f"--sizes {' '.join(map(str, sizes))}", f"--providers {' '.join(providers)}",
             f"--models {' '.join(models)}", f"--epochs {epochs}"])
        rendered["mpc"] = render_mpc(rows=rows, command=command, machine=_machine())
    if "psi" in sections:
        psi_rows = []
        for n in psi_sizes:
            print(f"[bench] PSI {n} ids per side", file=sys.stderr, flush=True)
            psi_rows.append(bench_psi(n=n))
        command = f"petlab bench --sections psi --psi-sizes {' '.join(map(str, psi_sizes))}"
        rendered["psi"] = render_psi(rows=psi_rows, command=command, machine=_machine())
    if "wan" in sections:
        rendered["wan"] = _bench_wan(wan=wan or {}, root=root)
    path = Path(output)
    text = merge_sections(text=path.read_text() if path.is_file() else "", sections=rendered)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return rows


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


def render_wan(*, rows: list[dict], command: str, machine: str) -> str:
    """The cross-border-link section for measured ``rows``."""
    lines = [
        "## Cross-border links (emulated WAN)",
        "",
        f"Measured by `{command}` on {_stamp()}, on: {machine}.",
        "",
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


def render_mpc(*, rows: list[dict], command: str, machine: str) -> str:
    """The MPC-vs-plaintext section for measured ``rows``."""
    lines = [
        "## MPC training against plaintext",
        "",
        f"Measured by `{command}` on {_stamp()}, on: {machine}.",
        "",
        "- **MPC s**: gateway's wall time for secret-sharing the inputs and the training loop (both",
        "  parties and, under TTP, the dealer each in their own process on this machine, over",
        "  loopback TCP); process start-up, loss monitoring and the final reveals are excluded.",
        "- **plaintext s**: the same model, data, initial weights and minibatch order in PyTorch on",
        f"  one thread, median of {PLAINTEXT_REPEATS} repetitions.",
        "- **bytes / rounds**: CrypTen's own communicator counts per party (8 bytes per ring",
        "  element, sent + received) over input sharing, training and reveals.",
        "- **peak RSS**: peak resident memory of each party process.",
        "- **rows**: the gateway's customers; 70% of them are shared with the wallet (found by PSI,",
        "  not timed here) and 80% of the shared ones train, e.g. 5,600 training rows at 10,000.",
        "",
        "| model | provider | rows | epochs | plaintext s | MPC s | MPC / plaintext | AUC MPC | AUC plaintext "
        "| max abs weight diff | MB gateway | MB wallet | rounds gateway | rounds wallet | peak RSS MB gateway / wallet |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        wd = "—" if r["max_abs_weight_diff"] is None else f"{r['max_abs_weight_diff']:.4f}"
        lines.append(
            f"| {r['model']} | {r['provider']} | {r['rows']:,} | {r['epochs']} | {r['plaintext_s']:.4f} "
            f"| {r['mpc_s']:.1f} | {r['ratio']:,.0f}x | {r['auc_mpc']:.4f} | {r['auc_plaintext']:.4f} | {wd} "
            f"| {r['bytes']['gateway'] / 1e6:,.1f} | {r['bytes']['wallet'] / 1e6:,.1f} "
            f"| {r['rounds']['gateway']:,} | {r['rounds']['wallet']:,} "
            f"| {r['peak_rss_mb']['gateway']:,.0f} / {r['peak_rss_mb']['wallet']:,.0f} |")
    lines += ["", "Run folders of these measurements (not committed, under `runs/bench-*/`): "
              + ", ".join(f"`{Path(r['run']).name}`" for r in rows)]
    return "\n".join(lines)


def render_psi(*, rows: list[dict], command: str, machine: str) -> str:
    """The private-set-intersection section for measured ``rows``."""
    lines = [
        "## Private set intersection",
        "",
        f"Measured by `{command}` on {_stamp()}, on: {machine}.",
        "",
        "OpenMined ECDH PSI in both directions at once (so both parties learn the intersection),",
        "between two processes on loopback, n ids per side, 70% shared; time of the slower",
        "party, bytes sent + received by one party, peak resident memory of the larger party",
        "process.",
        "",
        "| ids per side | shared | seconds | MB per party | peak RSS MB |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['n']:,} | {r['intersection']:,} | {r['seconds']:.1f} | {r['mb_per_party']:.1f} "
                     f"| {r['peak_rss_mb']:,.0f} |")
    return "\n".join(lines)
