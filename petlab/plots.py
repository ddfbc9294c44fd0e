"""Seaborn figures of a run: loss per epoch, ROC curves, and what MPC costs.

Each ``plot_*`` function returns a matplotlib Figure (notebooks show it);
:func:`save_poc_figures` writes them all as PNG into a run folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["plot_loss", "plot_roc", "plot_cost", "plot_party_data", "plot_received_words", "plot_reconstruction",
           "save_figure", "save_poc_figures",
           "MODEL_LABELS", "model_labels"]

def model_labels(*, label_party: str = "gateway") -> dict[str, str]:
    """The four models' names in figures and the report; the model of the party without
    the labels is the counterfactual (it could not be trained without the label holder).

    Args:
        label_party: the party that holds the labels.

    >>> model_labels(label_party="wallet")["gateway_only"]
    'gateway only (counterfactual)'
    """
    holder = str(label_party)
    return {
        "mpc": "MPC (joint, CrypTen)",
        "plaintext": "plaintext (pooled)",
        "gateway_only": "gateway only" + ("" if holder == "gateway" else " (counterfactual)"),
        "wallet_only": "wallet only" + ("" if holder == "wallet" else " (counterfactual)"),
    }


#: The models' names with the labels at the gateway (:func:`model_labels`).
MODEL_LABELS = model_labels(label_party="gateway")


def _plt():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg",) and not _in_notebook():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    return plt, sns


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython

        return get_ipython() is not None
    except ImportError:
        return False


def plot_loss(*, curves: dict):
    """Training cross-entropy per epoch, plaintext vs MPC (same monitoring rows)."""
    plt, sns = _plt()
    rows = [
        {"epoch": i + 1, "loss": v, "backend": MODEL_LABELS[name]}
        for name, values in curves["train_loss"].items()
        for i, v in enumerate(values)
    ]
    fig, ax = plt.subplots(figsize=(6, 4))
    if rows:
        sns.lineplot(data=pd.DataFrame(rows), x="epoch", y="loss", hue="backend", style="backend",
                     markers=True, dashes=False, ax=ax)
    ax.set_title("Training loss per epoch")
    ax.set_ylabel("binary cross-entropy")
    fig.tight_layout()
    return fig


def plot_roc(*, scores: dict, y_test: np.ndarray, auc: dict, label_party: str = "gateway"):
    """ROC curves of the four models on the test customers.

    Args:
        scores / y_test / auc: the models' test scores, the labels and the AUCs.
        label_party: the party that holds the labels (names the counterfactual model).
    """
    from petlab.metrics import roc_points

    labels = model_labels(label_party=label_party)

    plt, sns = _plt()
    rows, dashes = [], {}
    for name, s in scores.items():
        fpr, tpr = roc_points(y_true=y_test, scores=s)
        label = f"{labels.get(name, name)}  AUC {auc[name]:.3f}"
        dashes[label] = (4, 2) if name == "mpc" else ""  # MPC dashed: it lies on the plaintext curve
        rows += [{"false positive rate": a, "true positive rate": b, "model": label} for a, b in zip(fpr, tpr)]
    fig, ax = plt.subplots(figsize=(6, 5))
    sns.lineplot(data=pd.DataFrame(rows), x="false positive rate", y="true positive rate",
                 hue="model", style="model", dashes=dashes, estimator=None, sort=False, ax=ax)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_title("ROC on the test customers")
    fig.tight_layout()
    return fig


def plot_cost(*, metrics: dict):
    """What MPC costs: training time against plaintext, and bytes and rounds per party."""
    plt, sns = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    secs = pd.DataFrame({
        "backend": ["plaintext", "MPC"],
        "seconds": [metrics["seconds"]["plaintext_train"], metrics["seconds"]["mpc_train"]],
    })
    sns.barplot(data=secs, x="backend", y="seconds", hue="backend", ax=axes[0], legend=False)
    axes[0].set_yscale("log")
    ratio = secs["seconds"][1] / max(secs["seconds"][0], 1e-9)
    axes[0].set_title(f"training time (MPC {ratio:,.0f}x)")
    comm = pd.DataFrame([{"party": p, "MB sent+received": v["bytes"] / 1e6, "rounds": v["rounds"]}
                         for p, v in metrics["comm"].items()])
    sns.barplot(data=comm, x="party", y="MB sent+received", hue="party", ax=axes[1], legend=False)
    axes[1].set_title("MPC communication per party")
    sns.barplot(data=comm, x="party", y="rounds", hue="party", ax=axes[2], legend=False)
    axes[2].set_title("MPC communication rounds")
    fig.suptitle(f"{metrics['model']}, {metrics['provider']}, {metrics['device']}, n_train={metrics['n_train']}")
    fig.tight_layout()
    return fig


def save_figure(fig, path) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
    return path


def save_poc_figures(*, result, folder) -> dict[str, Path]:
    """Write loss.png, roc.png and cost.png for a :class:`petlab.pipeline.PocResult`."""
    plt, _ = _plt()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    figures = {
        "loss": plot_loss(curves=result.curves),
        "roc": plot_roc(scores=result.scores, y_test=result.y_test, auc=result.metrics["auc"],
                        label_party=result.metrics.get("label_party", "gateway")),
        "cost": plot_cost(metrics=result.metrics),
    }
    paths = {}
    for name, fig in figures.items():
        paths[name] = save_figure(fig, folder / f"{name}.png")
        plt.close(fig)
    return paths


def plot_party_data(*, tables: dict, label_party: str, label_column: str, id_column: str):
    """A first look at each party's own table (each panel uses one party's data only):
    the label rate by the label holder's first categorical column (or its first numeric
    column, by label), the label holder's most skewed non-negative column by label, and
    the other party's first categorical (or numeric) column.

    Args:
        tables: party name -> that party's DataFrame.
        label_party: the party whose table holds ``label_column``.
        label_column, id_column: column names.
    """
    plt, sns = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    holder = tables[label_party]
    other_name = next(p for p in tables if p != label_party)
    other = tables[other_name]

    def kinds(table, skip):
        cols = [c for c in table.columns if c not in skip and table[c].notna().any()]
        numeric = [c for c in cols if pd.api.types.is_numeric_dtype(table[c])]
        return numeric, [c for c in cols if c not in numeric]

    h_num, h_cat = kinds(holder, (id_column, label_column))
    o_num, o_cat = kinds(other, (id_column,))
    labelled = holder.assign(**{label_column: holder[label_column].astype(int).map({0: "no", 1: "yes"})})
    if h_cat:
        rate = (holder.assign(**{label_column: holder[label_column].astype(float)})
                .groupby(h_cat[0])[label_column].mean().sort_values().reset_index())
        rate[h_cat[0]] = rate[h_cat[0]].astype(str)
        sns.barplot(data=rate, x=h_cat[0], y=label_column, hue=h_cat[0], ax=axes[0], legend=False)
        axes[0].set_title(f"{label_party}: {label_column} rate by {h_cat[0]}")
    elif h_num:
        sns.histplot(data=labelled, x=h_num[0], hue=label_column, element="step", stat="density",
                     common_norm=False, ax=axes[0])
        axes[0].set_title(f"{label_party}: {h_num[0]} by {label_column}")
    nonneg = [c for c in h_num if holder[c].min() >= 0 and (holder[c] > 0).any()]
    if nonneg:
        skewed = max(nonneg, key=lambda c: holder[c].skew())
        positive = labelled[labelled[skewed] > 0]
        sns.histplot(data=positive, x=skewed, hue=label_column, log_scale=bool(holder[skewed].skew() > 1),
                     element="step", stat="density", common_norm=False, ax=axes[1])
        axes[1].set_title(f"{label_party}: {skewed} (> 0), by {label_column}")
    else:
        axes[1].set_axis_off()
    if o_cat:
        order = sorted(other[o_cat[0]].dropna().astype(str).unique())[:20]
        hue = o_cat[1] if len(o_cat) > 1 and other[o_cat[1]].nunique() <= 8 else None
        hue_order = sorted(other[hue].dropna().astype(str).unique()) if hue else None
        sns.countplot(data=other.astype({c: str for c in o_cat[:2]}), x=o_cat[0], hue=hue, order=order,
                      hue_order=hue_order, ax=axes[2])
        axes[2].set_title(f"{other_name}: {o_cat[0]}" + (f" and {hue}" if hue else ""))
    elif o_num:
        sns.histplot(data=other, x=o_num[0], element="step", ax=axes[2])
        axes[2].set_title(f"{other_name}: {o_num[0]}")
    fig.tight_layout()
    return fig


def plot_received_words(*, words: dict):
    """Distribution of received words (mapped to [0, 1)) and their bit balance, per party.

    Args:
        words: label -> array of received ring elements.
    """
    from petlab.audit.checks import as_unit_interval

    plt, sns = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    rows, bits = [], []
    for label, w in words.items():
        sample = w if w.size <= 200_000 else w[np.random.default_rng(0).choice(w.size, 200_000, replace=False)]
        rows.append(pd.DataFrame({"word / 2^64": as_unit_interval(sample), "received by": label}))
        u = w.astype(np.int64).view(np.uint64)
        bits += [{"bit": i, "share of ones": float(((u >> np.uint64(i)) & np.uint64(1)).mean()),
                  "received by": label} for i in range(64)]
    sns.histplot(data=pd.concat(rows), x="word / 2^64", hue="received by", bins=50, stat="density",
                 common_norm=False, element="step", fill=False, ax=axes[0])
    axes[0].axhline(1.0, color="grey", linestyle=":")
    axes[0].set_title("received ring elements: uniform is flat at 1")
    sns.lineplot(data=pd.DataFrame(bits), x="bit", y="share of ones", hue="received by", ax=axes[1])
    axes[1].axhline(0.5, color="grey", linestyle=":")
    axes[1].set_ylim(0.45, 0.55)
    axes[1].set_title("bit balance per bit position")
    fig.tight_layout()
    return fig


def plot_reconstruction(*, pairs: dict):
    """Party 0's reconstruction of the wallet's features against the truth, per provider.

    Args:
        pairs: provider -> (reconstructed, truth) arrays of the same shape.
    """
    plt, sns = _plt()
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.5 * len(pairs), 4.2), squeeze=False)
    for ax, (provider, (hat, truth)) in zip(axes[0], pairs.items()):
        hat, truth = np.asarray(hat).ravel(), np.asarray(truth).ravel()
        shown = np.clip(hat, -10, 10)
        sns.scatterplot(x=truth, y=shown, s=8, alpha=0.4, ax=ax, edgecolor=None)
        ax.set_xlabel("wallet's true (encoded) feature value")
        ax.set_ylabel("party 0's reconstruction (clipped to ±10)")
        ok = np.mean(np.abs(hat - truth) <= 2.0 ** -15)
        ax.set_title(f"{provider}: {ok:.0%} of values recovered")
    fig.suptitle("Can the gateway (party 0) undo the masks on the wallet's features?")
    fig.tight_layout()
    return fig


def plot_wan(*, points: list[dict]):
    """Training time against round-trip time, one panel per link rate: measured (solid,
    markers) and the rounds model (dashed: time at the smallest RTT + rounds × extra RTT).

    Args:
        points: measured configurations, as in ``benchmarks/wan.json`` (``points``).
    """
    from petlab.bench import rounds_model

    plt, sns = _plt()
    table = pd.DataFrame(rounds_model(points))
    table["configuration"] = table["model"] + " · " + table["provider"]
    rates = sorted(table["rate_mbit"].unique(), reverse=True)
    fig, axes = plt.subplots(1, len(rates), figsize=(6 * len(rates), 4), sharey=True, squeeze=False)
    for ax, rate in zip(axes[0], rates):
        part = table[table["rate_mbit"] == rate].sort_values("rtt_ms")
        names = sorted(table["configuration"].unique())
        colors = dict(zip(names, sns.color_palette(n_colors=len(names))))
        sns.lineplot(data=part, x="rtt_ms", y="seconds", hue="configuration", hue_order=names,
                     palette=colors, marker="o", ax=ax)
        for name, group in part.groupby("configuration"):
            ax.plot(group["rtt_ms"], group["predicted_s"], linestyle="--", color=colors[name], alpha=0.7)
        ax.set_title(f"{rate:g} Mbit/s (dashed: time at lowest RTT + rounds × RTT)")
        ax.set_xlabel("round-trip time (ms)")
        ax.set_ylabel("MPC sharing + training (s)")
    fig.tight_layout()
    return fig
