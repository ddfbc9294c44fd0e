"""The HTML report of a run: one self-contained file a reviewer can read offline.

It is built only from what the run folder holds (metrics.json, params.json,
environment.json, party records, figures), so re-building it from a copied folder gives
the same page.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from petlab.config import PocConfig
from petlab.audit.classification import classification_table
from petlab.mpc.disclosure import declared_disclosures
from petlab.mpc.trust import CHANNEL_NOTE, RANDOMNESS_NOTE, reference_note, security_model
from petlab.plots import model_labels

__all__ = ["write_report", "render_report"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0} td,th{border:1px solid #ccc;padding:.3em .6em;
text-align:right} th{background:#f4f4f4} td.l,th.l{text-align:left}
.box{background:#fff8e5;border-left:4px solid #e0a800;padding:.6em 1em;margin:1em 0}
.ok{color:#1a7f37} .bad{color:#b42318} img{max-width:100%} code{background:#f4f4f4;padding:0 .2em}
"""


def _e(x) -> str:
    return html.escape(str(x))


def _table(header: list[str], rows: list[list], left: int = 1) -> str:
    head = "".join(f'<th class="{"l" if i < left else ""}">{_e(h)}</th>' for i, h in enumerate(header))
    body = ""
    for row in rows:
        body += "<tr>" + "".join(
            f'<td class="{"l" if i < left else ""}">{_e(c)}</td>' for i, c in enumerate(row)) + "</tr>"
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v, digits=4):
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _img(path: Path, alt: str) -> str:
    if not path.is_file():
        return f"<p>(figure {alt} missing)</p>"
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _secret_randomness_in_force(run_dir: Path) -> str:
    """What the party records of this run say about their randomness (read, not assumed)."""
    said = []
    for role in ("gateway", "wallet", "dealer"):
        path = run_dir / "parties" / role / "result.json"
        if path.is_file():
            record = json.loads(path.read_text())
            fixes = record.get("compat_fixes", {})
            said.append(f"{role}: {'in force' if fixes.get('secret_randomness') else 'NOT in force'}")
    return f" In this run ({', '.join(said)})." if said else ""


def _audit_scope(audit: dict, params: dict) -> str:
    """What the audit ran on: this run's configuration and tables, or its own small runs."""
    config = audit.get("config", {})
    if audit.get("audited_run") and config.get("data") == params["config"]["data"]:
        epochs = config.get("train", {}).get("epochs")
        shorter = ("" if epochs == params["config"]["train"]["epochs"]
                   else f" (audit runs of {epochs} epoch{'s' if epochs != 1 else ''})")
        return (f"Audit runs of this run's own configuration and tables{shorter}, under both providers, "
                "kept every ring element each party received. ")
    d = config.get("data", {})
    return (f"Small audit runs of their own ({_e(d.get('source', 'synthetic'))} data, {d.get('rows', '?'):,} "
            "customers, not this run's tables) under both providers kept every ring element each party "
            "received; <code>petlab audit RUN</code> audits this run's own configuration and tables. ")


def _audit_section(run_dir: Path, params: dict) -> str:
    path = run_dir / "audit" / "audit.json"
    if not path.is_file():
        return ("<p>No privacy audit in this run folder: <code>petlab audit RUN</code> audits this run's "
                "configuration and tables into <code>RUN/audit</code> (or <code>petlab poc --audit</code> "
                "as part of a run).</p>")
    audit = json.loads(path.read_text())
    verdict = '<b class="ok">passed</b>' if audit["passed"] else '<b class="bad">FAILED</b>'
    parts = [f"<h2>Privacy audit: {verdict}</h2>",
             f"<p>{_audit_scope(audit, params)}"
             "Thresholds and their justification are in <code>petlab/audit/checks.py</code>. Every "
             "check is shown to fail on a deliberately broken variant of the protocol run through this "
             "same audit (<code>tests/test_audit.py</code>: a key from a small seed space, a mask reused "
             "for two openings, a mask reused for one word of two openings, an undeclared decryption "
             "through <code>all_reduce</code>, a one-word sum opened in the clear at every step, a "
             "comparison bit opened without its random bit (the sign of every row), a TTP run in "
             "which the gateway also holds the wallet's mask share).</p>"]
    rows = [[c["provider"], c["party"], c["name"], "pass" if c["passed"] else "FAIL",
             f"{c['statistic']:.4g}", c["threshold"], c["detail"]] for c in audit["checks"]]
    parts.append(_table(["provider", "party", "check", "result", "statistic", "threshold", "detail"], rows, left=3))
    rows = [[p, v["expected"], f"{v['recovered_fraction']:.1%}", f"{v['correlation']:+.4f}",
             "yes" if v["as_expected"] else "NO"] for p, v in audit["reconstruction"].items()]
    parts.append("<p>Trust model demonstrated: acting as party 0 (the gateway) with only its own view "
                 "(its knowledge of the Beaver masks plus the opened values it received), the audit "
                 "tries to reconstruct the wallet's features of the first minibatch:</p>")
    parts.append(_table(["provider", "expected", "wallet values recovered", "correlation with truth",
                         "as the security model says"], rows))
    parts.append(_img(run_dir / "audit" / "figures" / "reconstruction.png", "reconstruction"))
    parts.append(_img(run_dir / "audit" / "figures" / "received_words.png", "received words"))
    return "\n".join(parts)


def _mpc_method(metrics: dict) -> str:
    """How the run computed, in words (older run folders lack the engine: CrypTen's).

    >>> _mpc_method({"engine": "petlab", "sigmoid_method": "piecewise"})
    "petlab's own protocol on CrypTen shares, with its piecewise-polynomial sigmoid (within 4e-4)"
    >>> _mpc_method({})
    "CrypTen's operators and CrypTen's sigmoid approximation"
    """
    if metrics.get("engine") != "petlab":
        return "CrypTen's operators and CrypTen's sigmoid approximation"
    if metrics.get("sigmoid_method") == "piecewise":
        return "petlab's own protocol on CrypTen shares, with its piecewise-polynomial sigmoid (within 4e-4)"
    return "petlab's own protocol on CrypTen shares, with CrypTen's sigmoid approximation (within ~3e-3)"


def _psi_paragraph(psi: dict) -> str:
    """The private set intersection: protocol, security model, time, bytes, sizes."""
    from petlab.data.psi import SECURITY_MODEL

    g, w = psi.get("gateway", {}), psi.get("wallet", {})
    protocol = g.get("protocol") or "rr22"
    mb = {p: (r.get("bytes_sent", 0) + r.get("bytes_received", 0)) / 1e6 for p, r in (("gateway", g), ("wallet", w))}
    link = ("mutual TLS 1.3 with the pinned certificates" if g.get("tls", True)
            else "without TLS: tls: off in the run file")
    return (
        f"<p><b>Private set intersection</b>: SecretFlow's PSI ({_e(SECURITY_MODEL.get(protocol, protocol))}), "
        f"between the two party processes over the library's link (each party listening on its own port; "
        f"{link}). "
        f"{g.get('intersection_size', 0):,} shared customers out of {g.get('own_set_size', 0):,} at the gateway "
        f"and {g.get('other_set_size', 0):,} at the wallet, in {g.get('seconds', 0):.2f} s at the gateway "
        f"({w.get('seconds', 0):.2f} s at the wallet), from reading the ids to the aligned row order; "
        f"{mb['gateway']:.2f} MB sent and received by the gateway. What each party learns: the "
        "intersection and the size of the other's set; no id outside the intersection crosses the link "
        "in any form it can read. Each party then orders the shared customers by its own copy of the "
        "id (no id is sent for that). Training uses the shared customers only.</p>")


def render_report(*, run_dir: Path) -> str:
    """HTML text of the report for the run folder ``run_dir``."""
    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    params = json.loads((run_dir / "params.json").read_text())
    env = json.loads((run_dir / "environment.json").read_text())
    config = PocConfig.from_dict(params["config"])
    holder = str(metrics.get("label_party", config.data.label_party))
    other = "wallet" if holder == "gateway" else "gateway"
    labels = model_labels(label_party=holder)
    sm = security_model(provider=metrics["provider"])
    parts = [f"<h1>petlab proof of concept: {_e(metrics['model'])} with CrypTen MPC "
             f"({_e(metrics['provider'])}, {_e(metrics['device'])})</h1>",
             f"<p>Run folder <code>{_e(run_dir)}</code>. Gateway and wallet (label holder: "
             f"{_e(holder)}) each "
             f"ran in their own process, loaded only their own table, and secret-shared their "
             f"own columns before any joint operation. The labels are at the {_e(holder)}, which alone "
             f"receives the outputs; the {_e(other)} contributes its features and receives none.</p>"]

    parts.append("<h2>Results on the test customers</h2>")
    rows = [[labels[n], _fmt(metrics["auc"][n]), _fmt(metrics["accuracy"][n]),
             _fmt(metrics["log_loss"][n])] for n in ("mpc", "plaintext", "gateway_only", "wallet_only")]
    parts.append(_table(["model", "AUC", "accuracy", "log-loss"], rows))
    parts.append(
        f"<p>Collaboration gain (pooled AUC minus best single side): "
        f"<b>{metrics['collaboration_gain_auc']:+.4f}</b>. MPC minus plaintext AUC: "
        f"<b>{metrics['mpc_vs_plaintext_auc']:+.4f}</b>. Largest absolute difference between "
        f"MPC and plaintext final weights: <b>{_fmt(metrics['max_abs_weight_diff'])}</b> "
        f"(same initial weights, hyper-parameters and minibatch order; MPC uses "
        f"{config.mpc.precision_bits}-bit fixed point and {_e(_mpc_method(metrics))}). "
        f"n_train={metrics['n_train']}, n_test={metrics['n_test']}.</p>")
    parts.append(_img(run_dir / "figures" / "roc.png", "ROC curves"))
    parts.append(_img(run_dir / "figures" / "loss.png", "training loss"))

    parts.append("<h2>Security model</h2>")
    parts.append(f'<div class="box"><p><b>Provider {_e(sm.provider)}.</b> {_e(sm.statement)}</p>'
                 f"<p><b>Triples generated by:</b> {_e(sm.dealer)}. <b>Must be trusted:</b> "
                 f"{_e(sm.trusted)}. <b>Adversary:</b> {_e(sm.adversary)}.</p>"
                 f"<p><b>Randomness:</b> {_e(RANDOMNESS_NOTE)}{_e(_secret_randomness_in_force(run_dir))}</p>"
                 f"<p><b>Channel:</b> {_e(CHANNEL_NOTE)}</p></div>")

    parts.append("<h2>What left secret-shared form</h2>")
    declared = declared_disclosures(reveal_weights=config.mpc.reveal_weights,
                                    track_loss=config.mpc.track_loss, label_party=config.data.label_party)
    parts.append(_table(["item", "receiver", "what", "why"],
                        [[d.item, str(d.receiver), d.what, d.why] for d in declared], left=4))
    rows = []
    for party, summary in metrics["disclosures"].items():
        for key, v in sorted(summary.items()):
            rows.append([party, key, v["count"], v["numel"]])
    parts.append("<p>Decryptions each party took part in during this run (item → receiver):</p>")
    parts.append(_table(["party", "item → receiver", "decryptions", "values"], rows, left=2))

    parts.append("<p>What each party received over the wire, by the operation that sent it "
                 "(every message, from the party's own transcript):</p>")
    rows = []
    for party, ops in metrics.get("received_by_operation", {}).items():
        for op, v in sorted(ops.items(), key=lambda kv: -kv[1]["bytes"]):
            rows.append([party, op, f"{v['messages']:,}", f"{v['bytes']:,}"])
    parts.append(_table(["party", "operation", "messages", "bytes"], rows, left=2))

    parts.append("<h2>Data classification, in the regulator's terms</h2>")
    parts.append("<p>For each item a party holds or receives in this run: whether it is the "
                 "party's own personal data, another party's data in protected form, a revealed "
                 "output or public metadata, and what could be inferred from it.</p>")
    rows = [[r["party"], r["item"], r["classification"], r["inference"]] for r in classification_table(
        provider=metrics["provider"], reveal_weights=config.mpc.reveal_weights,
        track_loss=config.mpc.track_loss, label_party=config.data.label_party)]
    parts.append(_table(["party", "item", "classification", "what could be inferred"], rows, left=4))
    parts.append(_audit_section(run_dir, params))

    parts.append("<h2>What MPC costs</h2>")
    s = metrics["seconds"]
    ratio = s["mpc_train"] / max(s["plaintext_train"], 1e-12)
    parts.append(_table(["measure", "value"], [
        ["plaintext training (s)", _fmt(s["plaintext_train"])],
        ["MPC sharing + training (s)", _fmt(s["mpc_train"], 2)],
        ["MPC / plaintext time", f"{ratio:,.0f}x"],
        ["MPC reveal of scores and weights (s)", _fmt(s["mpc_reveal"], 2)],
        ["MPC loss monitoring, its own phase (s; the dealer makes its randomness during training)",
         _fmt(s["mpc_loss_monitor"], 2)],
        ["MPC wall time incl. process start-up (s)", _fmt(s["mpc_wall_incl_startup"], 1)],
    ]))
    parts.append(_table(["party", "bytes (sent+received, CrypTen's count)", "rounds"],
                        [[p, f"{v['bytes']:,}", f"{v['rounds']:,}"] for p, v in metrics["comm"].items()]))
    parts.append(_img(run_dir / "figures" / "cost.png", "cost"))
    parts.append("<p>Bytes and rounds are CrypTen's own communicator counts (8 bytes per ring "
                 "element) over input sharing, training and the reveals, excluding loss monitoring.</p>")

    parts.append("<h2>Reference models</h2>")
    parts.append(f"<p>{_e(reference_note(label_party=holder))}</p>")

    parts.append("<h2>Data</h2>")
    rows = [[p, t["path"], t["id_column"], t["label_column"] or "—", metrics["n_features"][p],
             t["sha256"][:16] + "…"] for p, t in (params.get("tables") or {}).items()]
    parts.append(_table(["party", "table", "id column", "label", "features (encoded)", "sha256"], rows, left=3))

    psi = metrics.get("psi", {})
    if psi and psi.get("gateway", {}).get("alignment", "psi") == "given":
        parts.append(
            f"<p><b>Alignment given</b>: both tables hold the same {psi['gateway']['intersection_size']:,} "
            "customers (no private set intersection was run; the parties compared digests of their id "
            "sets, which tells each only that the sets are equal).</p>")
    elif psi:
        parts.append(_psi_paragraph(psi))
    parts.append("<h2>Parameters</h2>")
    rows = [[f"{section}.{k}", v] for section, d in params["config"].items() for k, v in d.items()]
    parts.append(_table(["parameter", "value"], rows))
    parts.append("<h2>Environment</h2>")
    parts.append(_table(["key", "value"], [[k, ", ".join(map(str, v)) or "none" if isinstance(v, list) else v]
                                           for k, v in env.items()]))
    notebooks = sorted((run_dir / "notebooks").glob("*.ipynb")) if (run_dir / "notebooks").is_dir() else []
    if notebooks:
        parts.append("<p>Executed notebooks: " + ", ".join(f"<code>notebooks/{_e(n.name)}</code>"
                                                       for n in notebooks) + "</p>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>petlab run "
            f"{_e(run_dir.name)}</title><style>{_CSS}</style></head><body>"
            + "\n".join(parts) + "</body></html>")


def write_report(*, run) -> Path:
    """Write ``report.html`` into the run folder (from what the folder holds: metrics,
    parameters, environment, figures, audit) and return its path."""
    return run.write_text("report.html", render_report(run_dir=run.path))
