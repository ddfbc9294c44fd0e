"""The report follows the label party: with the labels at the wallet, every sentence and
label says so. One run on own tables (label at the wallet), audited as part of the run
(``petlab poc --audit``), is shared by the file."""

from __future__ import annotations

import html
import json
import re

import pytest

from petlab.cli import main
from petlab.data.synthetic import make_engagement_tables
from petlab.report import render_report
from petlab.review import verify_run

pytestmark = pytest.mark.mpc


def _tables_with_the_label_at_the_wallet(folder, rows=400, seed=5):
    t = make_engagement_tables(rows=rows, seed=seed, overlap=0.8, wallet_extra=0.2)
    g, w = t["gateway"], t["wallet"]
    w = w.merge(g[["customer_id", "engaged"]], on="customer_id", how="left")
    w["engaged"] = w["engaged"].fillna(0).astype(int)  # the wallet's own label for its own customers
    g = g.drop(columns="engaged")
    paths = (folder / "gateway.csv", folder / "wallet.csv")
    g.to_csv(paths[0], index=False)
    w.to_csv(paths[1], index=False)
    return paths


@pytest.fixture(scope="module")
def wallet_run(tmp_path_factory):
    """``petlab poc --audit`` on own tables with the labels at the wallet (run once)."""
    base = tmp_path_factory.mktemp("wallet_label")
    g, w = _tables_with_the_label_at_the_wallet(base)
    out = base / "run"
    code = main(["poc", "--gateway-table", str(g), "--wallet-table", str(w), "--id-column", "customer_id",
                 "--label-column", "engaged", "--label-party", "wallet", "--provider", "TFP", "--epochs", "1",
                 "--batch-size", "128", "--timeout", "600", "--audit", "--out", str(out), "--quiet"])
    assert code == 0
    return out


def _text(html_page: str) -> str:
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html_page)))


def test_the_report_says_the_labels_are_at_the_wallet(wallet_run):
    text = _text(render_report(run_dir=wallet_run))
    assert "label holder: wallet" in text
    assert "The labels are at the wallet, which alone receives the outputs; the gateway contributes" in text
    assert "the gateway-only model is a counterfactual, since the labels are at the wallet" in text
    assert "gateway only (counterfactual)" in text and "wallet only (counterfactual)" not in text
    assert "labels are at the gateway" not in text and "wallet-only model is a counterfactual" not in text
    # the disclosures and the classification name the wallet as the receiver of every output
    assert "test_scores wallet predicted engagement probability" in text
    assert "test_scores->wallet" in text and "->gateway" not in text
    assert "personal data for the wallet: a score about each of its identified customers" in text
    # the stored report is the one rendered from the folder
    assert (wallet_run / "report.html").read_text() == render_report(run_dir=wallet_run)


def test_the_figures_name_the_counterfactual_of_the_run(wallet_run):
    from petlab.plots import model_labels

    labels = model_labels(label_party="wallet")
    assert labels["gateway_only"] == "gateway only (counterfactual)" and labels["wallet_only"] == "wallet only"


def test_own_tables_are_audited_as_part_of_the_run(wallet_run):
    audit = json.loads((wallet_run / "audit" / "audit.json").read_text())
    params = json.loads((wallet_run / "params.json").read_text())
    assert audit["passed"] and audit["config"]["data"] == params["config"]["data"]
    assert audit["config"]["data"]["label_party"] == "wallet" and audit["config"]["data"]["source"] == "tables"
    assert {row["provider"] for row in audit["checks"]} == {"TFP", "TTP"}
    text = _text((wallet_run / "report.html").read_text())
    assert "Privacy audit: passed" in text and "this run's own configuration and tables, under both" in text
    assert {c["name"] for c in audit["checks"] if c["party"] == "gateway"} >= {
        "raw values of the wallet in received words", "only declared outputs decrypted, to their declared receiver"}
    assert audit["reconstruction"]["TFP"]["as_expected"] and audit["reconstruction"]["TTP"]["as_expected"]
    review = verify_run(run_dir=wallet_run)
    assert review.passed, review.lines()
    assert "privacy audit" in {c.name for c in review.checks}
