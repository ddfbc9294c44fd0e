"""Bring-your-own party tables: they run end to end, and every bad input ends with a
clear message, a non-zero exit and no run folder that looks complete."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
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
        return gp, wp, kw, rf"gateway table .*g\.csv: id column 'cust' has 1 duplicate id\(s\), e\.g\. '{g.loc[2, 'cust']}' on lines 4 and 7"
    if case == "missing id":
        g.loc[7, "cust"] = None
        gp, wp = _write(tmp_path, g, w)
        return gp, wp, kw, r"id column 'cust' is empty on 1 row\(s\), first on line 9"
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
        return gp, wp, kw, r"label column 'y' is not binary: values '2' \(expected 0/1 or true/false, or two values"
    if case == "label text":
        g["y"] = np.where(g["y"] == 1, "yes", "no")
        gp, wp = _write(tmp_path, g, w)
        return gp, wp, kw, r"label column 'y' is not binary: values 'no', 'yes' .*--positive-label yes"
    if case == "label one class":
        gp, wp = _write(tmp_path, g.assign(y=1), w)
        return gp, wp, kw, r"label column 'y' has one class only \(every row is 1\)"
    if case == "label missing values":
        g["y"] = g["y"].astype(float)
        g.loc[9, "y"] = np.nan
        gp, wp = _write(tmp_path, g, w)
        return gp, wp, kw, r"label column 'y' is missing on 1 row\(s\), first on line 11"
    if case == "column at both parties":
        gp, wp = _write(tmp_path, g, w.assign(home_market="SG"))
        return gp, wp, kw, r"column 'home_market' is in both tables \(gateway .*g\.csv and wallet .*w\.csv\)"
    if case == "numeric garbage":
        col = "app_sessions_30d"
        w[col] = w[col].astype(object)
        w.loc[11, col] = "n/a?"
        gp, wp = _write(tmp_path, g, w)
        return gp, wp, kw, rf"wallet table .*w\.csv: numeric column '{col}' holds non-numeric value 'n/a\?' \(line 13\): fix it or declare it a missing marker \(--na-values 'n/a\?'\)"
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


def _wallet_export(rows=800):
    """The label at the wallet, and the quirks of real exports at once: numeric ids that the
    wallet wrote through a float (``877122.0``) and with trailing spaces on a third of
    them, another id column name at each party, a yes/no label, a semicolon-separated
    wallet file, a date column at the gateway and a categorical of up to 250 levels at the
    wallet."""
    g, w = _own_tables(rows=rows, label_at="wallet")
    for table in (g, w):
        table["cust"] = table["cust"].str[1:].astype(int).astype(str)
    w["cust"] = (w["cust"] + ".0").where(np.arange(len(w)) % 3 != 0, w["cust"] + "  ")
    w["y"] = np.where(w["y"] == 1, "yes", "no")
    rng = np.random.default_rng(1)
    g["last_txn_date"] = (pd.Timestamp("2024-06-30") - pd.to_timedelta(rng.integers(0, 365, len(g)), unit="D")
                          ).strftime("%Y-%m-%d")
    w["merchant"] = [f"m{k:03d}" for k in rng.zipf(1.3, len(w)) % 250]
    return g.rename(columns={"cust": "gateway_customer"}), w.rename(columns={"cust": "wallet_user"})


@pytest.mark.mpc
def test_label_at_the_wallet_and_an_export_with_quirks_run_end_to_end(tmp_path, capsys):
    g, w = _wallet_export(rows=800)
    gp = str(tmp_path / "g.parquet")
    g.to_parquet(gp, index=False)
    wp = str(tmp_path / "w.csv")
    w.to_csv(wp, index=False, sep=";")
    out = tmp_path / "runs" / "wallet-label"
    code = main(["poc", "--gateway-table", gp, "--wallet-table", wp, "--gateway-id-column", "gateway_customer",
                 "--wallet-id-column", "wallet_user", "--label-column", "y", "--positive-label", "yes",
                 "--label-party", "wallet", "--sep", ";", "--out", str(out), "--quiet",
                 "--provider", "TFP", "--epochs", "3", "--batch-size", "128"])
    err = capsys.readouterr().err
    assert code == 0, err
    # the column summary and its warnings came before the run, one line per column
    assert re.search(r"wallet table .*w\.csv: 800 rows, 11 columns\n  wallet_user +id ", err)
    assert "gateway table: column 'last_txn_date' holds dates" in err
    assert re.search(r"wallet table: column 'merchant' has 1\d\d levels: the 20 most frequent", err)
    m = json.loads((out / "metrics.json").read_text())
    assert m["label_party"] == "wallet" and m["psi"]["wallet"]["intersection_size"] == 640  # every shared id met
    wallet_names = json.loads((out / "parties" / "wallet" / "result.json").read_text())["feature_names"]
    assert m["n_features"]["wallet"] == len(wallet_names) == 5 + 3 + 6 + 3 + 21  # age_band: 5 levels + <missing>
    assert [n for n in wallet_names if n.startswith("merchant=")][-1] == "merchant=<other>"
    assert abs(m["mpc_vs_plaintext_auc"]) < 0.005 and m["auc"]["mpc"] > 0.6
    # every output went to the wallet, and the wallet's record holds them
    assert set(m["disclosures"]["gateway"]) == {"test_scores->wallet", "final_weights->wallet",
                                                "train_loss->wallet"}
    assert (out / "parties" / "wallet" / "test_scores.npy").is_file()
    assert not (out / "parties" / "gateway" / "test_scores.npy").exists()
    assert "label holder: wallet" in (out / "report.html").read_text()
    # each party recorded its own table: the id rule, what it changed, the columns, the intersection
    for party, changed in (("gateway", 0), ("wallet", 800)):
        record = json.loads((out / "parties" / party / "table.json").read_text())
        assert record["id_rule"] == "keep-zeros" and record["ids_changed"] == changed
        assert record["intersection"] == {"shared": 640, "own": 800, "other": 800}
    wallet = json.loads((out / "parties" / "wallet" / "table.json").read_text())
    assert {c["column"]: c["kind"] for c in wallet["columns"]}["y"] == "label"
    assert wallet["options"]["positive_label"] == "yes" and wallet["options"]["sep"] == ";"
    gateway = json.loads((out / "parties" / "gateway" / "result.json").read_text())
    assert "last_txn_date (days before newest)" in gateway["feature_names"]
    params = json.loads((out / "params.json").read_text())
    assert params["tables"]["wallet"]["summary"]["ids_changed"] == 800
    assert params["config"]["data"]["wallet_id_column"] == "wallet_user"


@pytest.mark.mpc
@pytest.mark.parametrize("shared", [0, 30])
def test_too_small_an_intersection_fails_after_psi_and_marks_the_run_failed(shared, tmp_path, capsys):
    g, w = _own_tables(rows=400)
    for table in (g, w):
        table["cust"] = table["cust"].str[1:].astype(int).astype(str)
    if shared:
        w = w[~w["cust"].isin(g["cust"])].reset_index(drop=True)  # no shared customers ...
        w.loc[: shared - 1, "cust"] = g["cust"].iloc[:shared].to_numpy()  # ... but these
    else:  # the same customers, but the gateway pads its ids with zeros: 0012345678
        g["cust"] = g["cust"].str.zfill(10)
    gp, wp = _write(tmp_path, g, w)
    out = tmp_path / "runs" / "tiny"
    code = _cli(gp, wp, out, "--provider", "TFP", "--epochs", "1", "--timeout", "300")
    err = capsys.readouterr().err
    assert code == 1, err
    cause = f"private set intersection: {shared} shared customers: too few for a train/test split"
    failed = next(line for line in err.splitlines() if line.startswith("petlab poc: MPC run failed: "))
    assert cause in failed  # the first line of the failure says why
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "failed" and not (out / "metrics.json").exists()
    assert cause in status["error"]  # the cause is kept in the run's status, not only in a log
    if not shared:  # whichever party's account the run kept, it describes that party's own ids
        assert re.search(r"(gateway|wallet) ids: 400 ids, \d+ (to \d+ )?characters", status["error"]), status["error"]
        assert "run both parties with --id-rule drop-zeros" in status["error"]
        gateway = json.loads((out / "parties" / "gateway" / "table.json").read_text())["intersection"]["error"]
        assert "gateway ids: 400 ids, 10 characters, all numeric, all with leading zeros" in gateway
    logs = {party: (out / "parties" / party / "party.log").read_text() for party in ("gateway", "wallet")}
    # the party that failed first holds the cause in its log (the other may only have lost it)
    assert any(cause in log for log in logs.values()), logs
    for party in ("gateway", "wallet"):
        record = json.loads((out / "parties" / party / "table.json").read_text())
        assert record["intersection"]["shared"] == shared and cause in record["intersection"]["error"]
