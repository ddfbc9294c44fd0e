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

__all__ = ["run_benchmarks", "render_markdown"]

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


def run_benchmarks(*, sizes, providers, models, epochs: int, output: str, data_root: str,
                   runs_root: str = "runs") -> list[dict]:
    """Run every (model, provider, size) configuration and rewrite ``output``."""
    from petlab.config import poc_config
    from petlab.pipeline import prepare_tables, run_poc

    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    root = Path(runs_root) / f"bench-{stamp}"
    rows = []
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
    command = "petlab bench " + " ".join(
        [f"--sizes {' '.join(map(str, sizes))}", f"--providers {' '.join(providers)}",
         f"--models {' '.join(models)}", f"--epochs {epochs}"])
    Path(output).write_text(render_markdown(rows=rows, command=command, machine=_machine()))
    return rows


def render_markdown(*, rows: list[dict], command: str, machine: str) -> str:
    """The BENCHMARKS.md text for measured ``rows``."""
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Benchmarks",
        "",
        f"Regenerate with `make bench` (or `{command}`). Every number below was measured by that",
        f"command on {when}, on: {machine}.",
        "",
        "- **MPC s**: gateway's wall time for secret-sharing the inputs and the training loop (both",
        "  parties and, under TTP, the dealer each in their own process on this machine, over",
        "  loopback TCP); process start-up, loss monitoring and the final reveals are excluded.",
        f"- **plaintext s**: the same model, data, initial weights and minibatch order in PyTorch on",
        f"  one thread, median of {PLAINTEXT_REPEATS} repetitions.",
        "- **bytes / rounds**: CrypTen's own communicator counts per party (8 bytes per ring",
        "  element, sent + received) over input sharing, training and reveals.",
        "- **peak RSS**: peak resident memory of each party process.",
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
    lines += ["", "Run folders of these measurements (not committed): "
              + ", ".join(f"`{Path(r['run']).name}`" for r in rows[:1]) + (" …" if len(rows) > 1 else ""), ""]
    return "\n".join(lines)
