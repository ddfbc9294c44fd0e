"""Tables as partners really export them: each quirk as a table made here, with what it
must give (the table works, with the normalisation recorded, or one message names every
problem). None of these start party processes; test_own_tables runs two of them through
MPC."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from petlab.cli import main
from petlab.config import ConfigError, poc_config
from petlab.data.features import prepare_party_features
from petlab.data.ids import id_shape
from petlab.data.validation import (IntersectionError, TableError, TableOptions, check_intersection,
                                    load_party_table)
from petlab.data.synthetic import make_engagement_tables
from petlab.pipeline import prepare_tables, reference_features


def _export(rows=400, seed=5):
    """Synthetic tables with numeric ids (``C01234567`` -> ``1234567``), as a bank's export
    would have them: id ``customer_id`` and label ``engaged`` at the gateway."""
    t = make_engagement_tables(rows=rows, seed=seed, overlap=0.8, wallet_extra=0.2)
    g, w = t["gateway"].copy(), t["wallet"].copy()
    for table in (g, w):
        table["customer_id"] = table["customer_id"].str[1:].astype(int).astype(str)
    return g, w


def _load(path, *, label=None, id_column="customer_id", **options):
    return load_party_table(path, party="wallet" if label is None else "gateway", id_column=id_column,
                            label_column=label, options=TableOptions(**options))


def _config(gp, wp, **kw):
    params = dict(gateway_table=str(gp), wallet_table=str(wp), id_column="customer_id", label_column="engaged")
    params.update(kw)
    return poc_config(**params)


# -- ids -------------------------------------------------------------------------------

def test_ids_written_as_decimals_or_with_spaces_meet_their_plain_form(tmp_path):
    g, w = _export()
    shared = len(set(g["customer_id"]) & set(w["customer_id"]))
    w = w.astype({"customer_id": object})
    w["customer_id"] = w["customer_id"] + ".0"  # the wallet's export went through a float column
    w.loc[::3, "customer_id"] = w.loc[::3, "customer_id"].str.replace(".0", "   ", regex=False)  # a third: spaces
    g.to_csv(tmp_path / "g.csv", index=False)
    w.to_csv(tmp_path / "w.csv", index=False)
    config = _config(tmp_path / "g.csv", tmp_path / "w.csv")
    tables = prepare_tables(config=config)
    feats = reference_features(config=config, tables=tables)
    assert feats["gateway"].X_train.shape[0] + feats["gateway"].X_test.shape[0] == shared
    assert feats["gateway"].id_digest == feats["wallet"].id_digest
    # the normalisation is recorded with the table
    assert tables["wallet"]["options"]["id_rule"] == "keep-zeros"
    assert tables["wallet"]["summary"]["ids_changed"] == len(w)
    assert tables["wallet"]["summary"]["id_shape"]["whitespace"] == len(w.loc[::3])
    assert tables["wallet"]["summary"]["id_shape"]["decimal_point"] == len(w) - len(w.loc[::3])
    assert tables["gateway"]["summary"]["ids_changed"] == 0


def test_long_ids_are_read_as_text_never_through_a_float(tmp_path):
    ids = [f"{9_000_000_000_000_000_000 + i}" for i in range(60)] + ["007"]
    pd.DataFrame({"customer_id": ids, "x": np.arange(61.0)}).to_csv(tmp_path / "w.csv", index=False)
    own = _load(tmp_path / "w.csv")
    assert own.table["customer_id"].tolist() == ids


def test_leading_zeros_are_kept_by_default_and_dropped_on_request(tmp_path):
    g, w = _export()
    g["customer_id"] = g["customer_id"].str.zfill(10)  # the gateway pads its ids: 0012345678
    g.to_csv(tmp_path / "g.csv", index=False)
    w.to_csv(tmp_path / "w.csv", index=False)
    kept = {p: _load(tmp_path / f"{p[0]}.csv", label="engaged" if p == "gateway" else None)
            for p in ("gateway", "wallet")}
    assert not set(kept["gateway"].table["customer_id"]) & set(kept["wallet"].table["customer_id"])
    dropped = {p: _load(tmp_path / f"{p[0]}.csv", label="engaged" if p == "gateway" else None,
                        id_rule="drop-zeros") for p in ("gateway", "wallet")}
    assert len(set(dropped["gateway"].table["customer_id"]) & set(dropped["wallet"].table["customer_id"])) == 320
    assert dropped["gateway"].ids_changed == len(g) and dropped["wallet"].ids_changed == 0


def test_an_empty_intersection_says_so_with_a_hint_from_the_partys_own_ids():
    padded = pd.Series([f"{i:08d}" for i in range(3000, 6000)])
    with pytest.raises(IntersectionError) as info:
        check_intersection(shared=0, own_size=3000, other_size=3000, test_fraction=0.2, party="gateway",
                           peer="wallet", shape=id_shape(padded), rule="keep-zeros")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("private set intersection: 0 shared customers: too few for a train/test split")
    assert "3,000 customers at the gateway, 3,000 at the wallet" in message
    assert "gateway ids: 3,000 ids, 8 characters, all numeric, all with leading zeros" in message
    assert "if the wallet writes these ids without their leading zeros, run both parties with --id-rule drop-zeros" \
        in message
    plain = pd.Series([str(i) for i in range(3000, 6000)])
    with pytest.raises(IntersectionError, match=r"wallet ids: 3,000 ids, 4 characters, all numeric, id rule "
                                                r"'keep-zeros'; if the gateway's ids carry leading zeros"):
        check_intersection(shared=5, own_size=3000, other_size=3000, test_fraction=0.2, party="wallet",
                           peer="gateway", shape=id_shape(plain), rule="keep-zeros")


def test_a_much_smaller_intersection_than_the_tables_is_a_warning_with_the_hint():
    spaced = pd.Series([f"C{i} " if i % 3 == 0 else f"C{i}" for i in range(3000)])
    warning = check_intersection(shared=1182, own_size=3000, other_size=3000, test_fraction=0.2, party="wallet",
                                 peer="gateway", shape=id_shape(spaced), rule="keep-zeros")
    assert warning.startswith("private set intersection: only 1,182 shared customers, 39% of the smaller table")
    assert "1,000 with surrounding whitespace" in warning
    assert check_intersection(shared=1800, own_size=3000, other_size=3000, test_fraction=0.2, party="wallet",
                              peer="gateway", shape=id_shape(spaced), rule="keep-zeros") is None


def test_ids_equal_only_after_normalisation_are_duplicates_naming_both_spellings(tmp_path):
    pd.DataFrame({"customer_id": ["877122", "5", "877122.0"], "x": [1.0, 2.0, 3.0]}).to_csv(tmp_path / "w.csv",
                                                                                       index=False)
    with pytest.raises(TableError, match=r"duplicate id\(s\), e\.g\. '877122' on lines 2 and 4 \(written '877122' "
                                         r"and '877122\.0'; the same id under id rule 'keep-zeros'\)"):
        _load(tmp_path / "w.csv")
    assert _load(tmp_path / "w.csv", id_rule="trim-only").table["customer_id"].tolist() == ["877122", "5", "877122.0"]


# -- column types ------------------------------------------------------------------------

def test_a_date_column_becomes_one_feature_days_before_the_newest_date(tmp_path):
    g, _ = _export()
    newest = pd.Timestamp("2024-06-30")
    days = np.random.default_rng(0).integers(0, 365, len(g))
    g["last_txn_date"] = [(newest - pd.Timedelta(days=int(d))).strftime("%Y-%m-%d") for d in days]
    g.loc[0, "last_txn_date"] = "2024-06-30"  # the newest date, in the training rows or not
    g.to_csv(tmp_path / "g.csv", index=False)
    own = _load(tmp_path / "g.csv", label="engaged")
    summary = {c["column"]: c for c in own.summary.to_dict()["columns"]}
    assert summary["last_txn_date"]["kind"] == "date" and summary["last_txn_date"]["levels"] == g["last_txn_date"].nunique()
    oldest = min(g["last_txn_date"])
    assert f"column 'last_txn_date' holds dates ({oldest} to 2024-06-30): used as one numeric feature, the days " \
           "before the newest date of the training rows" in own.summary.warnings
    feats = prepare_party_features(table=own.table, id_column="customer_id", label_column="engaged",
                                   test_fraction=0.2, seed=0)
    without = prepare_party_features(table=own.table.drop(columns="last_txn_date"), id_column="customer_id",
                                     label_column="engaged", test_fraction=0.2, seed=0)
    assert feats.n_features == without.n_features + 1  # one feature, not one per distinct date
    assert "last_txn_date (days before newest)" in feats.feature_names


def test_dates_that_are_not_iso_or_not_dates_are_refused_with_their_lines(tmp_path):
    w = pd.DataFrame({"customer_id": [str(i) for i in range(6)], "x": np.arange(6.0),
                      "opened": ["05/03/2024", "06/03/2024", "07/03/2024", "08/03/2024", "09/03/2024", "10/03/2024"],
                      "seen": ["2024-01-01", "2024-01-02", "yesterday", "2024-02-30", "2024-01-05", "2024-01-06"]})
    w.to_csv(tmp_path / "w.csv", index=False)
    with pytest.raises(TableError) as info:
        _load(tmp_path / "w.csv")
    message = str(info.value)
    assert message.splitlines()[0].endswith("w.csv has 2 problems:")
    assert "column 'opened' holds dates written like '05/03/2024' (day or month first?)" in message
    assert "date column 'seen' holds values that are not dates (YYYY-MM-DD): 'yesterday' (line 4), " \
           "'2024-02-30' (line 5) (2 in all)" in message


@pytest.mark.parametrize("levels", [250, 400])
def test_a_categorical_with_hundreds_of_levels_is_capped_with_a_warning(tmp_path, levels):
    g, _ = _export(rows=1800)
    rng = np.random.default_rng(levels)
    g["merchant"] = [f"m{k:03d}" for k in rng.zipf(1.3, len(g)) % levels]
    g.to_csv(tmp_path / "g.csv", index=False)
    own = _load(tmp_path / "g.csv", label="engaged")
    n_levels = g["merchant"].nunique()
    warning = next(w for w in own.summary.warnings if "merchant" in w)
    assert re.search(rf"column 'merchant' has {n_levels} levels: the 20 most frequent \(on \d+% of the rows\) are "
                     rf"kept, the other {n_levels - 20} become '<other>' \(max_levels\)", warning)
    feats = prepare_party_features(table=own.table, id_column="customer_id", label_column="engaged",
                                   test_fraction=0.2, seed=0)
    merchant = [n for n in feats.feature_names if n.startswith("merchant=")]
    assert len(merchant) == 21 and "merchant=<other>" in merchant
    assert feats.X_test[:, [feats.feature_names.index(n) for n in merchant]].sum(axis=1).tolist() == \
        [1.0] * feats.X_test.shape[0]  # every test row in exactly one level, unseen ones in <other>
    wider = prepare_party_features(table=own.table, id_column="customer_id", label_column="engaged",
                                   test_fraction=0.2, seed=0, max_levels=50)
    assert len([n for n in wider.feature_names if n.startswith("merchant=")]) == 51


def test_id_like_columns_are_warned_about(tmp_path):
    g, w = _export()
    w["account_no"] = [f"ACC{i:06d}" for i in range(len(w))]
    w["opened_on"] = 20240101 + np.arange(len(w)) % 28
    w.to_csv(tmp_path / "w.csv", index=False)
    warnings = _load(tmp_path / "w.csv").summary.warnings
    assert any(w.startswith("column 'account_no' looks like an identifier (400 distinct values in 400 rows)")
               for w in warnings)
    assert any(w.startswith("column 'opened_on' looks like dates written as numbers (YYYYMMDD)") for w in warnings)


def test_missing_markers_are_the_usual_ones_plus_those_declared(tmp_path):
    w = pd.DataFrame({"customer_id": [str(i) for i in range(8)],
                      "balance": ["1.5", "N/A", "unknown", "-", "2", "?", "3", "4"],
                      "tier": ["gold", "N/A", "basic", " gold", "basic", "gold", "basic", "gold"]})
    w.to_csv(tmp_path / "w.csv", index=False)
    with pytest.raises(TableError, match=r"w\.csv: numeric column 'balance' holds non-numeric values 'unknown' "
                                         r"\(line 4\), '-' \(line 5\), '\?' \(line 7\) \(3 such values\): fix them or "
                                         r"declare them missing markers \(--na-values 'unknown,-,\?'\)$"):
        _load(tmp_path / "w.csv")
    own = _load(tmp_path / "w.csv", na_values=("unknown", "-", "?"))
    summary = {c["column"]: c for c in own.summary.to_dict()["columns"]}
    assert summary["balance"]["kind"] == "numeric" and summary["balance"]["missing"] == pytest.approx(4 / 8)
    assert summary["tier"]["missing"] == pytest.approx(1 / 8) and summary["tier"]["levels"] == 2  # " gold" trimmed
    assert own.table["balance"].dtype.kind == "f"


# -- label, separator, columns -----------------------------------------------------------

def test_a_yes_no_label_needs_its_positive_class_named(tmp_path):
    g, _ = _export()
    g["engaged"] = np.where(g["engaged"] == 1, "yes", "no")
    g.to_csv(tmp_path / "g.csv", index=False)
    with pytest.raises(TableError, match=r"label column 'engaged' is not binary: values 'no', 'yes' \(expected 0/1 "
                                         r"or true/false; name the positive class, e\.g\. --positive-label yes\)"):
        _load(tmp_path / "g.csv", label="engaged")
    own = _load(tmp_path / "g.csv", label="engaged", positive_label="yes")
    assert own.table["engaged"].tolist() == (g["engaged"] == "yes").astype(int).tolist()
    with pytest.raises(TableError, match=r"the positive label 'Yes' is not among its values 'no', 'yes'"):
        _load(tmp_path / "g.csv", label="engaged", positive_label="Yes")


def test_a_semicolon_separated_file_is_named_as_such_and_read_with_sep(tmp_path):
    _, w = _export()
    w.to_csv(tmp_path / "w.csv", index=False, sep=";")
    with pytest.raises(TableError, match=r"has no id column 'customer_id' \(columns: customer_id;app_sessions_30d;"
                                         r".*\); the header looks ';'-separated: read it with --sep ';'$"):
        _load(tmp_path / "w.csv")
    assert _load(tmp_path / "w.csv", sep=";").table.shape == w.shape


def test_the_parties_may_name_their_id_columns_differently(tmp_path):
    g, w = _export()
    g.rename(columns={"customer_id": "cust_no"}).to_csv(tmp_path / "g.csv", index=False)
    w.rename(columns={"customer_id": "user_id"}).to_csv(tmp_path / "w.csv", index=False)
    config = poc_config(gateway_table=str(tmp_path / "g.csv"), wallet_table=str(tmp_path / "w.csv"),
                        gateway_id_column="cust_no", wallet_id_column="user_id", label_column="engaged")
    tables = prepare_tables(config=config)
    assert (tables["gateway"]["id_column"], tables["wallet"]["id_column"]) == ("cust_no", "user_id")
    feats = reference_features(config=config, tables=tables)
    assert feats["gateway"].id_digest == feats["wallet"].id_digest and feats["gateway"].X_train.shape[0] == 256
    with pytest.raises(ConfigError, match=r"source 'tables' needs id_column"):
        poc_config(gateway_table="g.csv", wallet_table="w.csv", gateway_id_column="cust_no", label_column="engaged")


def test_blank_lines_do_not_shift_the_line_numbers(tmp_path):
    (tmp_path / "w.csv").write_text("customer_id,x\n1,0.5\n\n2,0.7\n3,oops\n4,1\n5,2\n\n")
    with pytest.raises(TableError, match=r"holds non-numeric value 'oops' \(line 5\)"):
        _load(tmp_path / "w.csv")


def test_every_problem_of_both_tables_comes_in_one_message(tmp_path, capsys):
    g, w = _export()
    g["engaged"] = g["engaged"].astype(float)
    g.loc[9, "engaged"] = np.nan  # line 11
    g.loc[3, "customer_id"] = None  # line 5
    g["spend_local_90d"] = g["spend_local_90d"].astype(object)
    g.loc[20, "spend_local_90d"] = "unknown"  # line 22
    w["region"] = np.nan
    g.to_csv(tmp_path / "g.csv", index=False)
    w.to_csv(tmp_path / "w.csv", index=False)
    code = main(["poc", "--gateway-table", str(tmp_path / "g.csv"), "--wallet-table", str(tmp_path / "w.csv"),
                 "--id-column", "customer_id", "--label-column", "engaged", "--out", str(tmp_path / "run"),
                 "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert re.fullmatch(r"petlab poc: error: gateway table .*g\.csv has 3 problems:", lines[0])
    assert lines[1:4] == ["  - id column 'customer_id' is empty on 1 row(s), first on line 5",
                          "  - label column 'engaged' is missing on 1 row(s), first on line 11",
                          "  - numeric column 'spend_local_90d' holds non-numeric value 'unknown' (line 22): fix it "
                          "or declare it a missing marker (--na-values 'unknown')"]
    assert re.fullmatch(r"wallet table .*w\.csv: column 'region' is missing on every row", lines[4])
    assert len(lines) == 5 and not (tmp_path / "run").exists()


def test_a_label_column_at_the_other_party_is_named(tmp_path, capsys):
    g, w = _export()
    w = w.merge(g[["customer_id", "engaged"]], on="customer_id", how="left").fillna({"engaged": 0})
    g.drop(columns="engaged").to_csv(tmp_path / "g.csv", index=False)
    w.to_csv(tmp_path / "w.csv", index=False)
    code = main(["poc", "--gateway-table", str(tmp_path / "g.csv"), "--wallet-table", str(tmp_path / "w.csv"),
                 "--id-column", "customer_id", "--label-column", "engaged", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert re.search(r"gateway table .*g\.csv has no label column 'engaged' \(columns: .*\); the wallet table has a "
                     r"column 'engaged': is the label at the wallet\? \(--label-party wallet\)$", err.strip())


# -- flags -------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, named", [(["--rows", "3000"], "--rows"),
                                          (["--overlap", "0.5", "--wallet-extra", "0.1"], "--overlap, --wallet-extra")])
def test_generated_data_flags_are_refused_with_own_tables(tmp_path, capsys, flags, named):
    g, w = _export()
    g.to_csv(tmp_path / "g.csv", index=False)
    w.to_csv(tmp_path / "w.csv", index=False)
    code = main(["poc", "--gateway-table", str(tmp_path / "g.csv"), "--wallet-table", str(tmp_path / "w.csv"),
                 "--id-column", "customer_id", "--label-column", "engaged", *flags])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"petlab poc: error: {named} only appl")
    assert "not to your own tables" in err and not (tmp_path / "runs").exists()
    with pytest.raises(ConfigError, match=r"^rows only applies to generated data"):
        _config(tmp_path / "g.csv", tmp_path / "w.csv", rows=3000)  # a params file or a notebook
    with pytest.raises(ConfigError, match=r"sep, na_values only apply to source 'tables', not 'synthetic'"):
        poc_config(sep=";", na_values="unknown")


@pytest.mark.parametrize("typo, suggestion", [("--lable-column", "--label-column"), ("--na-vlaues", "--na-values"),
                                              ("--positve-label=yes", "--positive-label")])
def test_a_mistyped_flag_gets_a_suggestion(capsys, typo, suggestion):
    with pytest.raises(SystemExit) as info:
        main(["poc", typo, "x"] if "=" not in typo else ["poc", typo])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err.strip().splitlines()[-1] == (f"petlab poc: error: unrecognized argument {typo.split('=')[0]}: "
                                            f"did you mean {suggestion}?")


def test_table_options_are_checked_and_normalised():
    cfg = poc_config(gateway_table="g.csv", wallet_table="w.csv", id_column="id", label_column="y", sep="\\t",
                     na_values="unknown, -,?", positive_label=" yes ")
    assert (cfg.data.sep, cfg.data.na_values, cfg.data.positive_label) == ("\t", ("unknown", "-", "?"), "yes")
    assert TableOptions.from_config(cfg.data) == TableOptions.from_dict(TableOptions.from_config(cfg.data).to_dict())
    for bad, message in (({"id_rule": "fuzzy"}, "unknown id_rule 'fuzzy': expected one of keep-zeros, drop-zeros"),
                         ({"max_levels": 1}, "max_levels must be an integer of at least 2"),
                         ({"sep": ";;"}, "sep must be one character")):
        with pytest.raises(ConfigError, match=message):
            poc_config(gateway_table="g.csv", wallet_table="w.csv", id_column="id", label_column="y", **bad)
