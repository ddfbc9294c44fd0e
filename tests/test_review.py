"""Reviewing a run: the manifest, ``petlab verify`` (records, metrics, bands, --against),
re-runs from the record, ``petlab audit RUN``, and what environment.json says differs.

Two small MPC runs are shared by the whole file (a run and its re-run); every check of
a tampered folder works on a copy.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from petlab.cli import build_parser, main
from petlab.config import ConfigError, load_params_file, poc_config
from petlab.review import MPC_BANDS, RERUN_TOLERANCE, verify_run
from petlab.runs import Run, create_run, environment_record, git_state

#: The shared runs: small, TFP (no dealer process), two epochs.
RUN = dict(rows=1000, epochs=2, batch_size=128, provider="TFP", timeout_s=600)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A run made by ``petlab poc`` and its re-run by ``petlab rerun`` (run once)."""
    from petlab.pipeline import run_poc

    base = tmp_path_factory.mktemp("review")
    config = poc_config(**RUN, root=str(base / "parties"))
    first = run_poc(config=config, out=str(base / "first"), progress=False).run.path
    code = main(["rerun", str(first), "--out", str(base / "again"), "--quiet"])
    assert code == 0
    return {"first": first, "again": base / "again", "base": base}


def _copy(runs, name, tmp_path):
    target = tmp_path / f"{name}-copy"
    shutil.copytree(runs[name], target)
    return target


def _failed(review):
    return {c.name: c.detail for c in review.failed}


# -- a fresh run passes; edits are named ----------------------------------------------


@pytest.mark.mpc
def test_a_fresh_run_passes_every_check(runs, capsys):
    review = verify_run(run_dir=runs["first"])
    assert review.passed, review.lines()
    names = {c.name for c in review.checks}
    assert {"status", "manifest", "configuration digest", "exchanged metadata", "table digests", "counts",
            "revealed scores", "metrics", "MPC vs plaintext: AUC", "MPC vs plaintext: weights",
            "MPC vs plaintext: loss"} <= names
    manifest = json.loads((runs["first"] / "manifest.json").read_text())
    assert {"params.json", "metrics.json", "report.html", "test_scores.npz", "environment.json",
            "parties/gateway/result.json", "parties/wallet/result.json"} <= set(manifest["files"])
    assert "status.json" not in manifest["files"]
    assert main(["verify", str(runs["first"])]) == 0
    out = capsys.readouterr()
    assert "checks: all passed" in out.out and out.err == ""


@pytest.mark.mpc
def test_an_edited_metrics_file_fails(runs, tmp_path, capsys):
    run = _copy(runs, "first", tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["auc"]["mpc"] += 0.01
    (run / "metrics.json").write_text(json.dumps(metrics))
    failed = _failed(verify_run(run_dir=run))
    assert "edited: metrics.json" in failed["manifest"]
    assert "auc[mpc]" in failed["metrics"]  # recomputed from the revealed scores
    assert main(["verify", str(run)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == len(failed) and all(line.startswith("petlab verify: ") for line in err)


@pytest.mark.mpc
def test_an_edited_report_fails(runs, tmp_path):
    run = _copy(runs, "first", tmp_path)
    report = run / "report.html"
    report.write_text(report.read_text().replace("Collaboration gain", "Collaboration loss"))
    (run / "figures" / "extra.png").write_bytes(b"not from the run")
    (run / "curves.json").unlink()
    failed = _failed(verify_run(run_dir=run))
    assert "edited: report.html" in failed["manifest"] and "added: figures/extra.png" in failed["manifest"]
    assert "removed: curves.json" in failed["manifest"]


@pytest.mark.mpc
def test_a_swapped_party_record_fails(runs, tmp_path):
    run = _copy(runs, "first", tmp_path)
    shutil.copy(runs["again"] / "parties" / "wallet" / "result.json", run / "parties" / "wallet" / "result.json")
    failed = _failed(verify_run(run_dir=run))
    assert "edited: parties/wallet/result.json" in failed["manifest"]
    # same parameters and customers, but another run: its rendezvous (in the digest), its
    # start-up exchange (keyed commitments under that run's pair key) and its PSI timing
    assert "wallet" in failed["configuration digest"] and "params.json gives" in failed["configuration digest"]
    assert "not from the same run" in failed["exchanged metadata"]
    assert "PSI record is not the parties'" in failed["counts"]


@pytest.mark.mpc
def test_a_resealed_folder_still_fails_on_its_records(runs, tmp_path):
    """Rewriting the manifest after an edit hides nothing the records contradict."""
    run = _copy(runs, "first", tmp_path)
    params = json.loads((run / "params.json").read_text())
    params["tables"]["wallet"]["sha256"] = "0" * 64
    (run / "params.json").write_text(json.dumps(params))
    Run(path=run).mark_complete()
    failed = _failed(verify_run(run_dir=run))
    assert set(failed) == {"table digests"} and "wallet" in failed["table digests"]


@pytest.mark.mpc
def test_a_run_that_is_not_complete_fails(runs, tmp_path):
    run = _copy(runs, "first", tmp_path)
    (run / "status.json").write_text(json.dumps({"status": "failed", "error": "boom"}))
    failed = _failed(verify_run(run_dir=run))
    assert "'failed'" in failed["status"] and "not the one status.json recorded" in failed["manifest"]


def test_verify_names_a_folder_that_is_no_run(tmp_path, capsys):
    assert main(["verify", str(tmp_path)]) == 2
    assert "is not a petlab run folder" in capsys.readouterr().err


# -- re-runs ---------------------------------------------------------------------------


@pytest.mark.mpc
def test_a_rerun_repeats_the_recorded_configuration_and_agrees(runs, capsys):
    first, again = (json.loads((runs[k] / "params.json").read_text()) for k in ("first", "again"))
    assert first == again
    review = verify_run(run_dir=runs["again"], against=runs["first"])
    assert review.passed, review.lines()
    by_name = {c.name: c.detail for c in review.checks}
    assert "MPC run to run" in by_name and "plaintext references" in by_name
    assert main(["verify", str(runs["again"]), "--against", str(runs["first"])]) == 0
    assert "checks: all passed" in capsys.readouterr().out


@pytest.mark.mpc
def test_against_a_run_with_other_parameters_disagrees(runs, tmp_path):
    other = _copy(runs, "again", tmp_path)
    params = json.loads((other / "params.json").read_text())
    params["config"]["train"]["lr"] = 0.25
    (other / "params.json").write_text(json.dumps(params))
    Run(path=other).mark_complete()
    failed = _failed(verify_run(run_dir=runs["first"], against=other))
    assert "train.lr 0.5 vs 0.25" in failed["same configuration and tables"]


@pytest.mark.mpc
def test_against_scores_beyond_the_tolerance_disagree(runs, tmp_path):
    other = _copy(runs, "again", tmp_path)
    with np.load(other / "test_scores.npz") as npz:
        scores = {k: npz[k] for k in npz.files}
    scores["mpc"] = np.clip(scores["mpc"] + 2 * RERUN_TOLERANCE.scores, 0, 1)
    np.savez(other / "test_scores.npz", **scores)
    failed = _failed(verify_run(run_dir=runs["first"], against=other))
    assert "beyond the run-to-run tolerance" in failed["MPC run to run"] and "scores" in failed["MPC run to run"]
    assert "other run: manifest" in failed  # and the copy no longer matches its own manifest


@pytest.mark.mpc
def test_poc_takes_a_runs_params_file_as_written(runs):
    args = build_parser().parse_args(["poc", "--params", str(runs["first"] / "params.json"), "--epochs", "5"])
    from petlab.cli import _config_from_args

    config = _config_from_args(args)
    recorded = json.loads((runs["first"] / "params.json").read_text())["config"]
    assert config.train.epochs == 5  # a flag overrides the file
    as_written = json.loads(json.dumps(config.to_dict()))  # as JSON holds it (tuples are lists)
    assert {**as_written, "train": {**as_written["train"], "epochs": 2}} == recorded


def test_a_rerun_refuses_a_table_that_changed(tmp_path, capsys):
    config = poc_config(rows=400, root=str(tmp_path / "parties"))
    from petlab.pipeline import prepare_tables

    tables = prepare_tables(config=config)
    run = create_run(path=tmp_path / "run")
    run.write_json("params.json", {"config": config.to_dict(), "tables": tables})
    run.mark_complete()
    with open(tables["wallet"]["path"], "a") as fh:
        fh.write("\n")
    assert main(["rerun", str(run.path), "--out", str(tmp_path / "again")]) == 2
    assert "the wallet's table" in capsys.readouterr().err and not (tmp_path / "again").exists()


# -- params files ----------------------------------------------------------------------


def test_params_files_nested_and_flat(tmp_path):
    config = poc_config(rows=3000, data_seed=4, train_seed=5, model="mlp", provider="TFP")
    nested = tmp_path / "params.json"
    nested.write_text(json.dumps({"config": config.to_dict(), "tables": None}))
    assert poc_config(**load_params_file(nested)) == config
    sections = tmp_path / "sections.yaml"
    sections.write_text("data: {rows: 3000}\ntrain: {model: mlp}\n")
    assert poc_config(**load_params_file(sections)).train.model == "mlp"
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"rows": 3000, "seed": 2}))
    assert poc_config(**load_params_file(flat)).train.seed == 2
    for bad, message in (({"config": {"data": {"model": "mlp"}}}, r"data\.model \(it belongs to 'train'\)"),
                         ({"config": {"extra": {}}}, "unknown section 'extra'"),
                         ({"config": {}, "metrics": {}}, "unknown top-level key 'metrics'")):
        nested.write_text(json.dumps(bad))
        with pytest.raises(ConfigError, match=message):
            load_params_file(nested)


# -- the audit of a run ----------------------------------------------------------------


@pytest.mark.mpc
def test_any_run_can_be_audited_into_its_folder(runs, tmp_path, capsys):
    run = _copy(runs, "first", tmp_path)
    assert "No privacy audit in this run folder" in (run / "report.html").read_text()
    assert main(["audit", str(run), "--epochs", "1", "--quiet"]) == 0
    audit = json.loads((run / "audit" / "audit.json").read_text())
    assert audit["passed"] and audit["audited_run"] == str(run.resolve())
    params = json.loads((run / "params.json").read_text())
    assert audit["config"]["data"] == params["config"]["data"] and audit["config"]["train"]["epochs"] == 1
    assert {p: t["sha256"] for p, t in audit["tables"].items()} == {
        p: t["sha256"] for p, t in params["tables"].items()}
    report = (run / "report.html").read_text()
    assert "Privacy audit: <b class=\"ok\">passed</b>" in report
    assert "this run's own configuration and tables (audit runs of 1 epoch)" in report
    review = verify_run(run_dir=run)
    assert review.passed, review.lines()
    manifest = json.loads((run / "manifest.json").read_text())
    amendment = manifest["amendments"][-1]
    assert amendment["by"] == "petlab audit" and "report.html" in amendment["added_or_changed"]
    assert "audit/audit.json" in amendment["added_or_changed"] and "audit/audit.json" in manifest["files"]
    assert main(["audit", str(run), "--quiet"]) == 2  # never overwritten ...
    assert "exists already" in capsys.readouterr().err
    other = tmp_path / "second-audit"  # ... a second audit goes into a folder of its own
    assert main(["audit", str(run), "--epochs", "1", "--out", str(other), "--quiet"]) == 0
    assert json.loads((other / "audit" / "audit.json").read_text())["audited_run"] == str(run.resolve())
    assert json.loads((other / "params.json").read_text())["tables"] == params["tables"]
    review = verify_run(run_dir=other)
    assert review.passed and {c.name for c in review.checks} == {"status", "manifest", "privacy audit"}
    assert verify_run(run_dir=run).passed  # the audited run is left as it was


def test_the_audit_of_a_run_refuses_the_synthetic_sizes(tmp_path, capsys):
    assert main(["audit", str(tmp_path), "--rows", "500"]) == 2
    assert "--rows set the audit's own synthetic runs" in capsys.readouterr().err


# -- environment.json says what differs ------------------------------------------------


def _git(root, *args):
    subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
                   check=True, capture_output=True)


def test_environment_lists_what_differs_from_the_commit(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "model.py").write_text("a = 1\n")
    (repo / ".gitignore").write_text("runs/\n")
    _git(repo, "add", "model.py", ".gitignore")
    _git(repo, "commit", "-q", "-m", "first")
    clean = git_state(root=repo)
    assert not clean["git_commit"].endswith("+dirty") and clean["git_changed"] == [] and clean["git_diff_sha256"] is None
    (repo / "model.py").write_text("a = 2\n")
    (repo / "notes.txt").write_text("new\n")
    (repo / "runs").mkdir()
    (repo / "runs" / "ignored.json").write_text("{}")
    dirty = git_state(root=repo)
    assert dirty["git_commit"] == clean["git_commit"] + "+dirty"
    assert dirty["git_changed"] == ["M model.py"] and dirty["git_untracked"] == ["notes.txt"]
    (repo / "notes.txt").write_text("other\n")
    assert git_state(root=repo)["git_diff_sha256"] != dirty["git_diff_sha256"]  # the digest covers the content


def test_environment_without_git_still_records_the_run(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no git on the path
    env = environment_record(device="cpu", seed=0)
    assert env["git_commit"] is None and env["git_changed"] is None and env["torch"]


def test_the_bands_are_the_ones_the_tests_assert():
    """tests/test_mpc.py asserts AUC within 0.005 and weights within 0.02 for logistic
    regression and AUC within 0.02 for the MLP; the re-run tolerance is tighter than the bands."""
    assert (MPC_BANDS["logreg"].auc, MPC_BANDS["logreg"].weights, MPC_BANDS["logreg"].loss) == (0.005, 0.02, 0.01)
    assert MPC_BANDS["mlp"].auc == 0.02
    assert RERUN_TOLERANCE.auc < MPC_BANDS["logreg"].auc


@pytest.mark.notebooks
@pytest.mark.mpc
def test_the_notebooks_audit_their_own_run_when_asked(tmp_path):
    """Notebook 03 with AUDIT_THE_RUN audits the configuration of the run it writes into
    (run alone here: the audit needs the run's parameters, not its training)."""
    from petlab.notebooks import run_notebooks

    config = poc_config(rows=400, epochs=1, batch_size=128, provider="TFP", root=str(tmp_path / "parties"))
    assert run_notebooks(config=config, out=str(tmp_path / "run"), progress=False, audit=True,
                         notebooks=("03_privacy_audit.ipynb",), require_result=False) is None
    run = tmp_path / "run"
    audit = json.loads((run / "audit" / "audit.json").read_text())
    params = json.loads((run / "params.json").read_text())
    assert audit["passed"] and audit["audited_run"] == str(run.resolve())
    assert audit["config"]["data"] == params["config"]["data"]  # the run's 400 customers, not AUDIT_ROWS
    assert audit["config"]["train"] == params["config"]["train"]
    review = verify_run(run_dir=run)
    assert review.passed, review.lines()
    assert "notebooks/03_privacy_audit.ipynb" in json.loads((run / "manifest.json").read_text())["files"]
