"""Run the notebooks in batch with papermill, all into one run folder, and helpers the
notebooks use.

The notebooks live in ``notebooks/`` at the project root; each has one cell tagged
``parameters`` whose names are the upper-case keywords of :func:`petlab.config.poc_config`
plus ``RUN_DIR`` and ``RUNS_ROOT``.
"""

from __future__ import annotations

import os
from pathlib import Path

from petlab.config import PocConfig

__all__ = ["NOTEBOOKS", "notebook_dir", "project_root", "work_from_project_root",
           "notebook_parameters", "run_for_notebook", "run_notebooks", "load_result"]

#: Executed in this order by :func:`run_notebooks`.
NOTEBOOKS = ("01_party_data.ipynb", "02_joint_training_mpc.ipynb", "03_privacy_audit.ipynb",
             "04_cross_border_links.ipynb")


def project_root() -> Path:
    """The petlab checkout (the folder holding ``notebooks/`` and ``pyproject.toml``)."""
    return Path(__file__).resolve().parent.parent


def notebook_dir() -> Path:
    return project_root() / "notebooks"


def work_from_project_root() -> Path:
    """Make the project root the working directory, so relative paths (``data/``,
    ``runs/``) mean the same in JupyterLab, papermill and the CLI. Returns it."""
    root = project_root()
    os.chdir(root)
    return root


def notebook_parameters(*, config: PocConfig) -> dict:
    """The notebooks' parameter values for ``config`` (upper-case names)."""
    d, t, m = config.data, config.train, config.mpc
    return {
        "SOURCE": d.source, "ROWS": d.rows, "OVERLAP": d.overlap, "WALLET_EXTRA": d.wallet_extra, "SEED": d.seed, "TEST_FRACTION": d.test_fraction,
        "DATA_ROOT": str(Path(d.root).resolve()),
        "GATEWAY_TABLE": d.gateway_table, "WALLET_TABLE": d.wallet_table, "ID_COLUMN": d.id_column,
        "LABEL_COLUMN": d.label_column, "LABEL_PARTY": d.label_party, "PSI": d.psi,
        "GATEWAY_ID_COLUMN": d.gateway_id_column, "WALLET_ID_COLUMN": d.wallet_id_column, "ID_RULE": d.id_rule,
        "POSITIVE_LABEL": d.positive_label, "SEP": d.sep, "NA_VALUES": list(d.na_values), "MAX_LEVELS": d.max_levels,
        "MODEL": t.model, "EPOCHS": t.epochs, "BATCH_SIZE": t.batch_size, "LR": t.lr,
        "HIDDEN": t.hidden, "PROVIDER": m.provider, "DEVICE": m.device, "ENGINE": m.engine,
        "SIGMOID_METHOD": m.sigmoid_method,
        "REVEAL_WEIGHTS": m.reveal_weights, "TRACK_LOSS": m.track_loss,
    }


def run_for_notebook(*, config: PocConfig, run_dir: str | None, runs_root: str, tables: dict | None = None):
    """The run a notebook writes into: the batch runner's (``run_dir``), or a new one.

    A run the notebook creates is finished by the notebook's last cell
    (:meth:`petlab.runs.Run.finish`); one made by :func:`run_notebooks` is finished
    by the runner after every notebook is saved.
    """
    from petlab.pipeline import start_run
    from petlab.runs import open_run

    if run_dir:
        return open_run(run_dir)
    return start_run(config=config, tables=tables, runs_root=runs_root)


def load_result(*, run_dir):
    """A :class:`petlab.pipeline.PocResult` read back from a finished run folder."""
    import numpy as np

    from petlab.pipeline import PocResult
    from petlab.runs import Run

    run = Run(path=Path(run_dir).resolve(), owned=False)
    scores = dict(np.load(run.file("test_scores.npz")))
    y_test = scores.pop("y_test")
    return PocResult(run=run, metrics=run.read_json("metrics.json"), curves=run.read_json("curves.json"),
                     scores=scores, y_test=y_test)


def run_notebooks(*, config: PocConfig, runs_root: str = "runs", out: str | None = None,
                  progress: bool = True, notebooks: tuple[str, ...] = NOTEBOOKS,
                  require_result: bool = True, audit: bool = False):
    """Execute the notebooks with papermill into a new run folder and finish it.

    Args:
        config: validated configuration; passed to every notebook as parameters.
        runs_root / out: where the run folder is made (see :func:`petlab.runs.create_run`).
        progress: papermill's cell progress bar.
        notebooks: notebook file names under ``notebooks/``, run in order.
        require_result: the notebooks must record a training result (``metrics.json``);
            ``False`` for a selection without notebook 02 (e.g. the data notebook alone).
        audit: notebook 03 audits this run's own configuration and tables
            (``AUDIT_THE_RUN``) instead of its small synthetic runs.

    Returns:
        The :class:`petlab.pipeline.PocResult` the notebooks recorded, or ``None`` when
        ``require_result`` is ``False`` and there is none.
    """
    import papermill as pm

    from petlab.pipeline import prepare_tables, start_run

    root = project_root()
    tables = prepare_tables(config=config)  # bad tables fail here, before any run folder exists
    run = start_run(config=config, tables=tables, runs_root=str(Path(runs_root).resolve()),
                    out=str(Path(out).resolve()) if out else None)
    params = {**notebook_parameters(config=config), "RUN_DIR": str(run.path),
              "RUNS_ROOT": str(Path(runs_root).resolve()), "AUDIT_THE_RUN": bool(audit)}
    (run.path / "notebooks").mkdir(exist_ok=True)
    try:
        for name in notebooks:
            declared = pm.inspect_notebook(str(notebook_dir() / name))  # pass only what it declares
            pm.execute_notebook(
                str(notebook_dir() / name), str(run.path / "notebooks" / name),
                parameters={k: v for k, v in params.items() if k in declared},
                cwd=str(root), progress_bar=progress, kernel_name="python3",
            )
        result = None
        if require_result or run.file("metrics.json").is_file():
            result = load_result(run_dir=run.path)
            from petlab.report import write_report

            write_report(run=run)  # again, now that the executed notebooks are saved
    except BaseException as err:
        run.mark_failed(f"{type(err).__name__}: {err}".splitlines()[0])
        raise
    run.mark_complete()
    return result
