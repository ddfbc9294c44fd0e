"""Notebooks: thin, parameterised, stripped, and they run end to end with papermill."""

from __future__ import annotations

import ast
import json

import nbformat
import pytest

from petlab.config import poc_config
from petlab.notebooks import NOTEBOOKS, notebook_dir, notebook_parameters, run_notebooks


def _load(name):
    return nbformat.read(notebook_dir() / name, as_version=4)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_thin_stripped_and_parameterised(name):
    nb = _load(name)
    code = [c for c in nb.cells if c.cell_type == "code"]
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)
    for cell in code:
        tree = ast.parse(cell.source)
        assert not any(isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.For, ast.While)) for n in ast.walk(tree))
    # every parameter is UPPER_CASE, annotated and commented
    for line in tagged[0].source.splitlines():
        assert line.split(":")[0].isupper() and "#" in line, line


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_defaults_equal_the_config_defaults(name):
    source = next(c.source for c in _load(name).cells if "parameters" in c.metadata.get("tags", []))
    values = {}
    exec(source, {}, values)  # noqa: S102 - our own committed parameter cell
    expected = notebook_parameters(config=poc_config())
    expected["DATA_ROOT"] = "data/parties"
    for key, value in expected.items():
        if key in values:  # the audit notebook has its own sizes (AUDIT_ROWS, AUDIT_EPOCHS)
            assert values[key] == value, key
    assert {"RUN_DIR", "RUNS_ROOT"} <= set(values)
    if name != "04_cross_border_links.ipynb":  # 04 plots measured WAN points, no run parameters
        assert {"SEED", "DATA_ROOT", "MODEL"} <= set(values)


def _notebook_config(name, values):
    """The notebook's own ``config = poc_config(...)``, evaluated with the parameter values
    ``values`` (as papermill leaves them after injecting its parameters)."""
    for cell in (c for c in _load(name).cells if c.cell_type == "code"):
        for node in ast.walk(ast.parse(cell.source)):
            if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                    and getattr(node.value.func, "id", None) == "poc_config"
                    and any(getattr(t, "id", None) == "config" for t in node.targets)):
                return eval(compile(ast.Expression(node.value), name, "eval"),  # noqa: S307 - our own notebook
                            {"poc_config": poc_config, **values})
    raise AssertionError(f"{name} makes no config = poc_config(...)")


@pytest.mark.parametrize("name", ["01_party_data.ipynb", "02_joint_training_mpc.ipynb"])
def test_the_notebooks_take_every_table_setting_of_the_command_line(name, tmp_path):
    config = poc_config(gateway_table="g.csv", wallet_table="w.parquet", id_column="id", gateway_id_column="cust",
                        wallet_id_column="user", id_rule="drop-zeros", label_column="answer", positive_label="yes",
                        label_party="wallet", sep=";", na_values=["unknown", "-"], max_levels=8, psi="ecdh",
                        root=str(tmp_path), model="mlp", epochs=3, batch_size=256, lr=0.25, hidden=8,
                        provider="TFP", sigmoid_method="piecewise", reveal_weights=False, track_loss=False)
    source = next(c.source for c in _load(name).cells if "parameters" in c.metadata.get("tags", []))
    values = {}
    exec(source, {}, values)  # noqa: S102 - our own committed parameter cell
    params = notebook_parameters(config=config)
    unused = {"ENGINE", "SIGMOID_METHOD"} if name.startswith("01") else set()  # 01 does not train
    assert set(params) - unused <= set(values), sorted(set(params) - unused - set(values))
    values.update({k: v for k, v in params.items() if k in values})  # what petlab.notebooks passes
    made = _notebook_config(name, values)
    assert made.data == config.data  # nothing of the tables' settings lost on the way
    if not unused:
        assert made == config


@pytest.mark.notebooks
@pytest.mark.mpc
def test_notebooks_run_with_papermill_and_record_the_run(tmp_path):
    config = poc_config(rows=1000, epochs=2, provider="TFP", root=str(tmp_path / "data"))
    result = run_notebooks(config=config, runs_root=str(tmp_path / "runs"), progress=False)
    run = result.run.path
    metrics = json.loads((run / "metrics.json").read_text())
    assert abs(metrics["auc"]["mpc"] - metrics["auc"]["plaintext"]) < 0.01
    assert metrics["auc"]["plaintext"] > 0.7
    assert json.loads((run / "status.json").read_text())["status"] == "complete"
    for name in NOTEBOOKS:
        executed = nbformat.read(run / "notebooks" / name, as_version=4)
        injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert injected and f"RUN_DIR = \"{run}\"" in injected[0].source
    checks = json.loads((run / "data_check.json").read_text())
    assert {c["features"] for c in checks} == {"joint", "gateway only", "wallet only"}
    assert (run / "figures" / "party_data.png").is_file()
    report = (run / "report.html").read_text()
    assert "notebooks/02_joint_training_mpc.ipynb" in report
    assert "Privacy audit: <b class=\"ok\">passed</b>" in report
    assert json.loads((run / "audit" / "audit.json").read_text())["passed"] is True


@pytest.mark.notebooks
def test_data_notebook_alone_starts_and_finishes_its_own_run(tmp_path):
    """As in JupyterLab: no RUN_DIR, so the notebook makes its own run and finishes it."""
    import papermill as pm

    pm.execute_notebook(str(notebook_dir() / NOTEBOOKS[0]), str(tmp_path / "out.ipynb"),
                        parameters={"ROWS": 600, "DATA_ROOT": str(tmp_path / "data"),
                                    "RUNS_ROOT": str(tmp_path / "runs")},
                        progress_bar=False, kernel_name="python3")
    (run,) = list((tmp_path / "runs").iterdir())
    assert json.loads((run / "status.json").read_text())["status"] == "complete"
    assert (run / "data_check.json").is_file() and (run / "params.json").is_file()
    assert (tmp_path / "data" / "gateway" / "engagement_n600_ov0.7_wx0.3_seed0.csv").is_file()


@pytest.mark.notebooks
def test_data_notebook_takes_your_own_tables_with_the_label_at_the_wallet(tmp_path):
    """Notebook 01 with GATEWAY_TABLE / WALLET_TABLE / ... parameters (no MPC in it)."""
    from petlab.data.synthetic import make_engagement_tables

    t = make_engagement_tables(rows=800, seed=5, overlap=0.8, wallet_extra=0.2)
    g = t["gateway"].rename(columns={"customer_id": "cid"})
    w = t["wallet"].rename(columns={"customer_id": "cid"}).merge(g[["cid", "engaged"]], on="cid", how="left")
    w["engaged"] = w["engaged"].fillna(0).astype(int)
    g.drop(columns="engaged").to_csv(tmp_path / "g.csv", index=False)
    w.to_parquet(tmp_path / "w.parquet", index=False)
    config = poc_config(gateway_table=str(tmp_path / "g.csv"), wallet_table=str(tmp_path / "w.parquet"),
                        id_column="cid", label_column="engaged", label_party="wallet")
    assert notebook_parameters(config=config)["LABEL_PARTY"] == "wallet"
    run_notebooks(config=config, runs_root=str(tmp_path / "runs"), progress=False,
                  notebooks=("01_party_data.ipynb",), require_result=False)
    (run,) = (tmp_path / "runs").iterdir()
    check = {r["features"]: r["test_auc"] for r in json.loads((run / "data_check.json").read_text())}
    assert check["joint"] > max(check["gateway only"], check["wallet only"])
    assert (run / "figures" / "party_data.png").is_file()
    assert json.loads((run / "status.json").read_text())["status"] == "complete"
