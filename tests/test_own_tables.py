"""Bring-your-own party tables: they run end to end, and every bad input ends with a
clear message, a non-zero exit and no run folder that looks complete."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from petlab.cli import main
from petlab.config import ConfigError, poc_config
from petlab.data.synthetic import make_engagement_tables
from petlab.data.validation import TableError
from petlab.pipeline import prepare_tables


def _own_tables(rows=600, seed=3, label_at="gateway"):
    """Synthetic tables dressed as a researcher's own: other id and label names."""
    t = make_engagement_tables(rows=rows, seed=seed, overlap=0.8, wallet_extra=0.2)
    g = t["gateway"].rename(columns={"customer_id": "cust", "engaged": "y"})
    w = t["wallet"].rename(columns={"customer_id": "cust"})
    if label_at == "wallet":
        w = w.merge(g[["cust", "y"]], on="cust", how="left")
        w["y"] = w["y"].fillna(0).astype(int)  # wallet-only customers: a label of the wallet's own
        g = g.drop(columns="y")
    return g, w


def _write(tmp_path, g, w, g_name="g.csv", w_name="w.csv"):
    paths = {}
    for name, table in ((g_name, g), (w_name, w)):
        path = tmp_path / name
        if name.endswith(".parquet"):
            table.to_parquet(path, index=False)
        elif table is not None:
            table.to_csv(path, index=False)
        paths[name] = str(path)
    return paths[g_name], paths[w_name]


def _cli(g_path, w_path, out, *extra, id_column="cust", label_column="y", label_party="gateway"):
    return main(["poc", "--gateway-table", g_path, "--wallet-table", w_path, "--id-column", id_column,
                 "--label-column", label_column, "--label-party", label_party, "--out", str(out),
                 "--quiet", *extra])


def _bad(case, tmp_path):
    """(gateway path, wallet path, CLI overrides, expected message) for one bad input."""
    g, w = _own_tables()
    kw = {}
    if case == "missing file":
        gp, wp = _write(tmp_path, g, w)
        return gp, str(tmp_path / "nope.csv"), kw, r"wallet table not found: .*nope\.csv"
    if case == "unreadable file":
        gp, wp = _write(tmp_path, g, w)
        bad = tmp_path / "w.parquet"
        bad.write_bytes(b"\x00\x01 this is not parquet")
        return gp, str(bad), kw, r"cannot read wallet table .*w\.parquet"
    if case == "unsupported format":
        gp, wp = _write(tmp_path, g, w)
        xls = tmp_path / "w.xlsx"
        xls.write_text("x")
        return gp, str(xls), kw, r"unsupported format '\.xlsx'"
    if case == "id column missing":
        gp, wp = _write(tmp_path, g, w.rename(columns={"cust": "customer"}))
        return gp, wp, kw, r"wallet table .*w\.csv has no id column 'cust'"
    if case == "duplicate ids":
        g.loc[5, "cust"] = g.loc[2, "cust"]
        gp, wp = _write(tmp_path, g, w)
        return gp, wp, kw, rf"gateway table .*g\.csv: id column 'cust' has 1 duplicate id\(s\), e\.g\. '{g.loc[2, 'cust']}' on rows 3 and 6"
    if case == "missing id":
        g.loc[7, "cust"] = None
        gp, wp = _write(tmp_path, g, w)
        return gp, wp, kw, r"id column 'cust' is empty on 1 row\(s\), first on row 8"
    if case == "empty table":
        gp, wp = _write(tmp_path, g, w.iloc[:0])
        return gp, wp, kw, r"wallet table .*w\.csv is empty \(a header but no rows\)"
    if case == "empty file":
        gp, wp = _write(tmp_path, g, w)
        (tmp_path / "w.csv").write_text("")
        return gp, wp, kw, r"wallet table .*w\.csv is empty \(no header, no rows\)"
    if case == "label column missing":
        gp, wp = _write(tmp_path, g.drop(columns="y"), w)
        return gp, wp, kw, r"gateway table .*g\.csv has no label column 'y'"
    if case == "label at both parties":
        gp, wp = _write(tmp_path, g, w.assign(y=0))
        return gp, wp, kw, r"label column 'y' is in both tables .*only the label party \(gateway\)"
    if case == "label not binary":
        g.loc[4, "y"] = 2
        gp, wp = _write(tmp_path, g, w)
        return gp, wp, kw, r"label column 'y' is not binary: values 2 "
    if case == "label text":
        g["y"] = np.where(g["y"] == 1, "yes", "no")
        gp, wp = _write(tmp_path, g, w)
        return gp, wp, kw, r"label column 'y' is not binary: values 'no', 'yes'"
    if case == "label one class":
        gp, wp = _write(tmp_path, g.assign(y=1), w)
        return gp, wp, kw, r"label column 'y' has one class only \(every row is 1\)"
    if case == "label missing values":
        g["y"] = g["y"].astype(float)
        g.loc[9, "y"] = np.nan
        gp, wp = _write(tmp_path, g, w)
        return gp, wp, kw, r"label column 'y' is missing on 1 row\(s\), first on row 10"
    if case == "column at both parties":
        gp, wp = _write(tmp_path, g, w.assign(home_market="SG"))
        return gp, wp, kw, r"column 'home_market' is in both tables \(gateway .*g\.csv and wallet .*w\.csv\)"
    if case == "numeric garbage":
        col = "app_sessions_30d"
        w[col] = w[col].astype(object)
        w.loc[11, col] = "n/a?"
        gp, wp = _write(tmp_path, g, w)
        return gp, wp, kw, rf"wallet table .*w\.csv: numeric column '{col}' holds non-numeric value 'n/a\?' on row 12"
    if case == "all-missing column":
        gp, wp = _write(tmp_path, g, w.assign(notes=np.nan))
        return gp, wp, kw, r"wallet table .*w\.csv: column 'notes' is missing on every row"
    if case == "bad label party":
        gp, wp = _write(tmp_path, g, w)
        return gp, wp, {"label_party": "bank"}, r"label party 'bank' is not one of the parties: gateway, wallet"
    raise AssertionError(case)


BAD_CASES = ["missing file", "unreadable file", "unsupported format", "id column missing", "duplicate ids",
             "missing id", "empty table", "empty file", "label column missing", "label at both parties",
             "label not binary", "label text", "label one class", "label missing values",
             "column at both parties", "numeric garbage", "all-missing column", "bad label party"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_fails_before_any_run_folder(case, tmp_path, capsys):
    gp, wp, kw, message = _bad(case, tmp_path)
    out = tmp_path / "runs" / "mine"
    code = _cli(gp, wp, out, **kw)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("petlab poc: error: ") and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err
    assert not out.exists() and not (tmp_path / "runs").exists()  # nothing half-written


@pytest.mark.parametrize("case", ["duplicate ids", "numeric garbage", "label one class"])
def test_the_notebook_runner_refuses_bad_tables_before_making_a_run(case, tmp_path):
    from petlab.notebooks import run_notebooks

    gp, wp, _, message = _bad(case, tmp_path)
    config = poc_config(gateway_table=gp, wallet_table=wp, id_column="cust", label_column="y")
    with pytest.raises(TableError, match=message):
        run_notebooks(config=config, runs_root=str(tmp_path / "runs"), progress=False)
    assert not (tmp_path / "runs").exists()


def test_own_tables_need_their_columns_named():
    with pytest.raises(ConfigError, match="source 'tables' needs id_column, label_column"):
        poc_config(gateway_table="g.csv", wallet_table="w.csv")
    with pytest.raises(ConfigError, match="needs wallet_table"):
        poc_config(gateway_table="g.csv", id_column="id", label_column="y")
    with pytest.raises(ConfigError, match="only apply to source 'tables'"):
        poc_config(source="synthetic", id_column="id")
    with pytest.raises(ConfigError, match="label_party 'wallet' needs your own tables"):
        poc_config(label_party="wallet")


def test_good_tables_are_described_with_digests(tmp_path):
    g, w = _own_tables(label_at="wallet")
    gp, wp = _write(tmp_path, g, w, w_name="w.parquet")
    tables = prepare_tables(config=poc_config(gateway_table=gp, wallet_table=wp, id_column="cust",
                                              label_column="y", label_party="wallet"))
    assert tables["wallet"]["label_column"] == "y" and tables["gateway"]["label_column"] is None
    assert tables["wallet"]["path"].endswith("w.parquet") and len(tables["gateway"]["sha256"]) == 64


@pytest.mark.mpc
def test_own_csv_tables_run_end_to_end(tmp_path, capsys):
    g, w = _own_tables(rows=800)
    gp, wp = _write(tmp_path, g, w)
    out = tmp_path / "runs" / "mine"
    code = _cli(gp, wp, out, "--provider", "TFP", "--epochs", "3", "--batch-size", "128")
    assert code == 0, capsys.readouterr().err
    m = json.loads((out / "metrics.json").read_text())
    assert json.loads((out / "status.json").read_text())["status"] == "complete"
    assert m["label_party"] == "gateway" and m["psi"]["gateway"]["intersection_size"] == 640
    assert abs(m["mpc_vs_plaintext_auc"]) < 0.005 and m["max_abs_weight_diff"] < 0.01
    params = json.loads((out / "params.json").read_text())
    assert params["tables"]["gateway"]["path"] == gp and params["config"]["data"]["source"] == "tables"


@pytest.mark.mpc
def test_label_at_the_wallet_and_parquet_run_end_to_end(tmp_path, capsys):
    g, w = _own_tables(rows=800, label_at="wallet")
    gp, wp = _write(tmp_path, g, w, g_name="g.parquet")
    out = tmp_path / "runs" / "wallet-label"
    code = _cli(gp, wp, out, "--provider", "TFP", "--epochs", "3", "--batch-size", "128",
                label_party="wallet")
    assert code == 0, capsys.readouterr().err
    m = json.loads((out / "metrics.json").read_text())
    assert m["label_party"] == "wallet"
    assert abs(m["mpc_vs_plaintext_auc"]) < 0.005 and m["auc"]["mpc"] > 0.6
    # every output went to the wallet, and the wallet's record holds them
    assert set(m["disclosures"]["gateway"]) == {"test_scores->wallet", "final_weights->wallet",
                                                "train_loss->wallet"}
    assert (out / "parties" / "wallet" / "test_scores.npy").is_file()
    assert not (out / "parties" / "gateway" / "test_scores.npy").exists()
    assert "label holder: wallet" in (out / "report.html").read_text()


@pytest.mark.mpc
@pytest.mark.parametrize("shared", [0, 30])
def test_too_small_an_intersection_fails_after_psi_and_marks_the_run_failed(shared, tmp_path, capsys):
    g, w = _own_tables(rows=400)
    w = w[~w["cust"].isin(g["cust"])].reset_index(drop=True)  # no shared customers ...
    if shared:
        w.loc[: shared - 1, "cust"] = g["cust"].iloc[:shared].to_numpy()  # ... but these
    gp, wp = _write(tmp_path, g, w)
    out = tmp_path / "runs" / "tiny"
    code = _cli(gp, wp, out, "--provider", "TFP", "--epochs", "1", "--timeout", "300")
    err = capsys.readouterr().err
    assert code == 1, err
    assert f"private set intersection: {shared} shared customers: too few for a train/test split" in err
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "failed" and not (out / "metrics.json").exists()
