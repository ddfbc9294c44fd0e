"""The proof of concept, step by step: party tables, MPC training, plaintext reference
models, and the run record (metrics, figures, report).

Notebooks call the steps one by one to narrate them; :func:`run_poc` chains them for
the command line. Both write the same run folder.

>>> import tempfile
>>> from petlab.config import poc_config
>>> cfg = poc_config(rows=300, root=tempfile.mkdtemp())
>>> tables = prepare_tables(config=cfg)
>>> sorted(tables), tables["gateway"]["label_column"], tables["wallet"]["label_column"]
(['gateway', 'wallet'], 'engaged', None)
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from petlab.mpc import TRAINING_PHASES
from petlab.config import PocConfig
from petlab.data.features import prepare_party_features
from petlab.data.synthetic import ID_COLUMN, LABEL_COLUMN, make_engagement_tables, make_wide_tables
from petlab.data.tables import file_sha256, party_table_path, write_party_table
from petlab.mpc.launcher import MPCRun, run_mpc
from petlab.parties import Party
from petlab.runs import Run, create_run, environment_record

__all__ = [
    "MODEL_NAMES",
    "PocResult",
    "label_party",
    "prepare_tables",
    "read_tables",
    "train_mpc",
    "train_references",
    "write_record",
    "run_poc",
]

if TYPE_CHECKING:
    from petlab.train.plaintext import PlaintextFit

# scikit-learn (the metrics) and the plaintext trainer are imported where they are used,
# after the MPC run: the command launches the run's roles without waiting for them

log = logging.getLogger("petlab.pipeline")

#: The four models every run compares, in report order.
MODEL_NAMES = ("mpc", "plaintext", "gateway_only", "wallet_only")


def _dataset_name(config: PocConfig) -> str:
    d = config.data
    return f"engagement_n{d.rows}_ov{d.overlap:g}_wx{d.wallet_extra:g}_seed{d.seed}"


def label_party(config: PocConfig) -> Party:
    """The party that holds the label (and receives the outputs) in this run."""
    return Party.parse(config.data.label_party)


def _own_tables(config: PocConfig) -> dict:
    """Check the researcher's own party tables (source "tables") and describe them.

    Every check of :mod:`petlab.data.validation` runs here, before any run folder or
    party process exists, and every problem of both tables is reported in one message;
    each party process checks its own table again. Each table's column summary and
    warnings go to the ``petlab.data`` log (the command line prints them) and into its
    entry.
    """
    from petlab.data.validation import TableError, TableOptions, check_schemas, load_party_table

    d, holder = config.data, label_party(config)
    paths = {str(Party.GATEWAY): d.gateway_table, str(Party.WALLET): d.wallet_table}
    options = TableOptions.from_config(d)
    loaded, errors = {}, {}
    for party, path in paths.items():
        try:
            loaded[party] = load_party_table(path, party=party, id_column=d.id_column_of(party),
                                             label_column=d.label_column if party == str(holder) else None,
                                             options=options)
        except TableError as err:
            errors[party] = err
    if errors:
        raise TableError("\n".join(_label_elsewhere(errors, loaded, config=config)))
    check_schemas(columns={p: list(map(str, t.table.columns)) for p, t in loaded.items()}, paths=paths,
                  id_column={p: d.id_column_of(p) for p in paths}, label_column=d.label_column,
                  label_party=str(holder))
    _note_tables(loaded, config=config)
    return {
        party: {"path": str(Path(path).resolve()), "id_column": d.id_column_of(party),
                "label_column": d.label_column if party == str(holder) else None,
                "sha256": file_sha256(path), "options": options.to_dict(), **_described(loaded[party])}
        for party, path in paths.items()
    }


def _described(own) -> dict:
    """What a table's entry says of it besides where it is: its column summary and id rule."""
    record = own.record()
    return {"summary": {k: record[k] for k in ("rows", "columns", "warnings", "ids_changed", "id_shape")}}


def _label_elsewhere(errors: dict, loaded: dict, *, config: PocConfig) -> list[str]:
    """The tables' error messages; where the label party's table lacks the label column
    and the other table has it, the message says so."""
    holder, label = str(label_party(config)), config.data.label_column
    messages = {party: str(err) for party, err in errors.items()}
    if holder in errors and any(p.startswith(f"has no label column {label!r}") for p in errors[holder].problems):
        other = next(p for p in (str(q) for q in Party) if p != holder)
        columns = loaded[other].table.columns if other in loaded else (errors[other].columns or [])
        if label in columns:
            messages[holder] += (f"; the {other} table has a column {label!r}: is the label at the {other}? "
                                 f"(--label-party {other})")
    return [messages[p] for p in (str(q) for q in Party) if p in messages]


def _note_tables(loaded: dict, *, config: PocConfig) -> None:
    """Log each table's summary and warnings, and warn when few ids meet (the research
    harness reads both tables; each party process checks the intersection it gets)."""
    from petlab.data.ids import describe_shape, mismatch_hint

    note = logging.getLogger("petlab.data")
    for party, own in loaded.items():
        for line in own.summary.lines():
            note.info(line)
        for warning in own.summary.warnings:
            note.warning(f"{party} table: {warning}")
        if own.ids_changed:
            note.info(f"{party} table: {own.ids_changed:,} ids changed by id rule {own.options.id_rule!r} "
                      "(whitespace trimmed, 877122.0 read as 877122"
                      + (", leading zeros dropped)" if own.options.id_rule == "drop-zeros" else ")"))
    from petlab.data.validation import LOW_OVERLAP_SHARE

    sets = {p: set(t.table[t.id_column]) for p, t in loaded.items()}
    shared = len(set.intersection(*sets.values()))
    smaller = min(len(s) for s in sets.values())
    if shared < LOW_OVERLAP_SHARE * smaller:
        hints = "; ".join(f"{p} ids: {describe_shape(t.id_shape)}" for p, t in loaded.items())
        peer = {p: next(q for q in sets if q != p) for p in sets}
        first = next(iter(loaded))
        note.warning(f"only {shared:,} shared customers, {shared / max(smaller, 1):.0%} of the smaller table; "
                     f"{hints}; {mismatch_hint(shape=loaded[first].id_shape, rule=config.data.id_rule, peer=peer[first])}")


def prepare_tables(*, config: PocConfig) -> dict:
    """Describe each party's table: the researcher's own (checked strictly), or the
    synthetic / credit tables, written to their own locations once.

    Returns:
        party -> {"path", "id_column", "label_column", "sha256", "options"} (how the file
        is read: :class:`petlab.data.validation.TableOptions`), and for own tables its
        "summary" (columns, warnings, id shape); a party process is handed its own entry only.

    Raises:
        petlab.data.validation.TableError: a table petlab cannot train on (own tables).
    """
    if config.data.source == "tables":
        return _own_tables(config)
    root = Path(config.data.root)
    if config.data.source == "credit":
        from petlab.data.credit import CREDIT_ID, CREDIT_LABEL, credit_tables

        name, id_column, label_column = f"credit_data_seed{config.data.seed}", CREDIT_ID, CREDIT_LABEL
        make = lambda: credit_tables(seed=config.data.seed)  # noqa: E731
    elif config.data.source == "wide":
        d = config.data
        name, id_column, label_column = f"wide_n{d.rows}_d{d.features}_seed{d.seed}", ID_COLUMN, LABEL_COLUMN
        make = lambda: make_wide_tables(rows=d.rows, features=d.features, seed=d.seed)  # noqa: E731
    else:
        name, id_column, label_column = _dataset_name(config), ID_COLUMN, LABEL_COLUMN
        make = lambda: make_engagement_tables(  # noqa: E731
            rows=config.data.rows, seed=config.data.seed, overlap=config.data.overlap,
            wallet_extra=config.data.wallet_extra)
    fmt = "parquet" if config.data.source == "wide" else "csv"
    paths = {str(p): party_table_path(root=root, party=p, name=name, fmt=fmt) for p in Party}
    if not all(path.is_file() for path in paths.values()):
        for party, table in make().items():
            paths[party] = write_party_table(table, root=root, party=party, name=name, fmt=fmt)
    from petlab.data.validation import TableOptions

    return {
        party: {
            "path": str(path.resolve()),
            "id_column": id_column,
            "label_column": label_column if party == str(label_party(config)) else None,
            "sha256": file_sha256(path),
            "options": TableOptions.from_config(config.data).to_dict(),
        }
        for party, path in paths.items()
    }


def train_mpc(*, config: PocConfig, tables: dict, run: Run, progress: bool = True) -> MPCRun:
    """Train jointly with CrypTen, each party in its own process; records go to
    ``<run>/parties/<role>/``."""
    return run_mpc(config=config, tables=tables, out_dir=run.file("parties"), progress=progress)


def _read(tables: dict, party: Party):
    from petlab.data.validation import load_table_entry

    return load_table_entry(tables[str(party)], party=str(party)).table


def read_tables(*, tables: dict) -> dict:
    """Both parties' tables as DataFrames (party name -> table).

    The research harness's view, for looking at the data and for the reference models;
    a party process reads its own table only.
    """
    return {str(p): _read(tables, p) for p in Party}


def plain_intersection(*, tables: dict) -> set:
    """The shared customers, computed in the clear by the research harness (reference
    models and tests only; the parties use private set intersection)."""
    ids = [set(_read(tables, p)[tables[str(p)]["id_column"]].astype(str)) for p in Party]
    return set.intersection(*ids)


def _party_features(config: PocConfig, tables: dict, party: Party, keep_ids=None, table=None):
    entry = tables[str(party)]
    return prepare_party_features(
        table=_read(tables, party) if table is None else table,
        id_column=entry["id_column"],
        label_column=entry["label_column"],
        test_fraction=config.data.test_fraction,
        seed=config.data.seed,
        keep_ids=plain_intersection(tables=tables) if keep_ids is None else keep_ids,
        max_levels=config.data.max_levels,
    )


def reference_features(*, config: PocConfig, tables: dict) -> dict:
    """Each party's prepared features on the shared customers, as its own process makes
    them (research harness only: it reads both tables). Party -> PartyFeatures."""
    own = read_tables(tables=tables)  # each table read (and checked) once
    shared = set.intersection(*(set(own[str(p)][tables[str(p)]["id_column"]]) for p in Party))
    return {p: _party_features(config, tables, p, keep_ids=shared, table=own[str(p)]) for p in Party}


def train_references(*, config: PocConfig, tables: dict) -> dict[str, PlaintextFit]:
    """Plaintext models: pooled (same features, order and settings as MPC), gateway
    only and wallet only (the model of the party without the labels is a counterfactual:
    it could not be trained without the label holder).

    This is the research harness: it reads both parties' tables, which only a
    simulation may do (see :func:`petlab.mpc.trust.reference_note`).
    """
    from petlab.train.plaintext import train_plaintext

    feats = reference_features(config=config, tables=tables)
    label = feats[label_party(config)]
    t = config.train
    common = dict(model=t.model, epochs=t.epochs, batch_size=t.batch_size, lr=t.lr, seed=t.seed,
                  hidden=t.hidden, monitor_rows=t.monitor_rows)
    inputs = {
        "plaintext": ([feats[p].X_train for p in Party], [feats[p].X_test for p in Party]),
        "gateway_only": ([feats[Party.GATEWAY].X_train], [feats[Party.GATEWAY].X_test]),
        "wallet_only": ([feats[Party.WALLET].X_train], [feats[Party.WALLET].X_test]),
    }
    fits = {}
    for name, (train_blocks, test_blocks) in inputs.items():
        fits[name] = train_plaintext(
            X_train=np.hstack(train_blocks), y_train=label.y_train, X_test=np.hstack(test_blocks),
            **common,
        )
    return fits


@dataclasses.dataclass(frozen=True)
class PocResult:
    """What a proof-of-concept run produced (all of it is also in the run folder)."""

    run: Run
    metrics: dict
    curves: dict  # train loss per epoch, per backend
    scores: dict  # model -> test scores
    y_test: np.ndarray

    @property
    def summary(self):
        """The four models side by side, as a DataFrame."""
        import pandas as pd

        m = self.metrics
        rows = []
        for name in MODEL_NAMES:
            rows.append({"model": name, "auc": m["auc"][name], "accuracy": m["accuracy"][name],
                         "log_loss": m["log_loss"][name]})
        return pd.DataFrame(rows).set_index("model")


def _flatten_weights(weights: dict, names: tuple[str, ...]) -> np.ndarray:
    return np.concatenate([np.asarray(weights[n], dtype=np.float64).ravel() for n in names])


def _by_operation(summary: list[dict]) -> dict:
    """Transcript summary (phase, op, call) folded into op -> messages and bytes received."""
    out: dict = {}
    for row in summary:
        slot = out.setdefault(row["op"], {"messages": 0, "bytes": 0})
        slot["messages"] += row["messages"]
        slot["bytes"] += row["bytes"]
    return out


def write_record(*, config: PocConfig, tables: dict, mpc: MPCRun, references: dict, run: Run,
                 figures: bool = True) -> PocResult:
    """Assemble ``metrics.json``, curves, scores, figures and the HTML report."""
    from petlab.metrics import binary_metrics
    from petlab.models import ModelSpec

    holder = label_party(config)
    gateway = mpc.records[str(holder)]  # the label holder's record (holds the metrics)
    party_dir = Path(mpc.out_dir) / str(holder)
    y_test = np.load(party_dir / "y_test.npy")
    scores = {"mpc": np.load(party_dir / "test_scores.npy")}
    scores.update({name: fit.test_scores for name, fit in references.items()})
    per_model = {name: binary_metrics(y_true=y_test, scores=s) for name, s in scores.items()}

    spec = ModelSpec(kind=config.train.model, n_features=sum(
        gateway["peers"][str(p)]["n_features"] for p in Party), hidden=config.train.hidden)
    max_diff = None
    if (party_dir / "weights.npz").is_file():
        mpc_w = dict(np.load(party_dir / "weights.npz"))
        max_diff = float(np.max(np.abs(
            _flatten_weights(mpc_w, spec.param_names)
            - _flatten_weights(references["plaintext"].weights, spec.param_names))))

    def phase(record, name, key):
        return record["phases"].get(name, {}).get(key, 0)

    comm, comm_by_phase = {}, {}
    for party in Party:
        record = mpc.records[str(party)]
        comm[str(party)] = {
            "bytes": int(sum(phase(record, p, "bytes") for p in TRAINING_PHASES + ("reveal",))),
            "rounds": int(sum(phase(record, p, "rounds") for p in TRAINING_PHASES + ("reveal",))),
        }
        comm_by_phase[str(party)] = record["phases"]
    mpc_train_s = sum(phase(gateway, p, "seconds") for p in TRAINING_PHASES)
    metrics = {
        "auc": {n: per_model[n].auc for n in MODEL_NAMES},
        "accuracy": {n: per_model[n].accuracy for n in MODEL_NAMES},
        "log_loss": {n: per_model[n].log_loss for n in MODEL_NAMES},
        "max_abs_weight_diff": max_diff,
        "seconds": {
            "mpc_train": mpc_train_s,
            "plaintext_train": references["plaintext"].train_seconds,
            "mpc_reveal": phase(gateway, "reveal", "seconds"),
            "mpc_loss_monitor": phase(gateway, "loss_monitor", "seconds"),
            "mpc_wall_incl_startup": mpc.wall_seconds,
        },
        "comm": comm,
        "comm_by_phase": comm_by_phase,
        "psi": {str(p): mpc.records[str(p)]["psi"] for p in Party},
        "label_party": str(holder),
        "n_train": gateway["meta"]["n_train"],
        "n_test": gateway["meta"]["n_test"],
        "n_features": {str(p): gateway["peers"][str(p)]["n_features"] for p in Party},
        "model": config.train.model,
        "provider": config.mpc.provider,
        "device": gateway["device"],
        "engine": gateway.get("engine", "crypten"),
        "sigmoid_method": gateway.get("sigmoid_method", "crypten"),
        "disclosures": {str(p): mpc.records[str(p)]["disclosure_summary"] for p in Party},
        "received_by_operation": {str(p): _by_operation(mpc.records[str(p)].get("transcript_summary", []))
                                  for p in Party},
        "collaboration_gain_auc": per_model["plaintext"].auc - max(
            per_model["gateway_only"].auc, per_model["wallet_only"].auc),
        "mpc_vs_plaintext_auc": per_model["mpc"].auc - per_model["plaintext"].auc,
    }
    curves = {"train_loss": {"mpc": gateway.get("train_loss", []),
                             "plaintext": references["plaintext"].train_loss}}
    run.write_json("metrics.json", metrics)
    run.write_json("curves.json", curves)
    np.savez(run.file("test_scores.npz"), y_test=y_test, **scores)
    result = PocResult(run=run, metrics=metrics, curves=curves, scores=scores, y_test=y_test)
    if figures:
        from petlab import plots, report

        plots.save_poc_figures(result=result, folder=run.file("figures"))
        report.write_report(run=run)
    return result


def start_run(*, config: PocConfig, tables: dict | None = None, run: Run | None = None,
              runs_root: str = "runs", out: str | None = None) -> Run:
    """Create (or take) the run folder and write parameters and environment."""
    if run is None:
        run = create_run(root=runs_root, label=f"{config.train.model}-{config.mpc.provider}", path=out)
    run.write_json("params.json", {"config": config.to_dict(), "tables": tables})
    run.write_json("environment.json", environment_record(device=config.mpc.device, seed=config.data.seed))
    return run


def run_poc(*, config: PocConfig, run: Run | None = None, runs_root: str = "runs",
            out: str | None = None, progress: bool = True, audit: bool = False) -> PocResult:
    """The whole proof of concept: tables, MPC, references, record. Marks the run
    ``complete`` (if this call created it) or ``failed``.

    Args:
        config: a validated configuration (see :func:`petlab.config.poc_config`).
        run: an existing run to write into (e.g. made by the notebook runner).
        runs_root: where to create a new run folder when ``run`` and ``out`` are None.
        out: exact folder for the new run (must not exist or be empty).
        progress: show progress bars.
        audit: also audit this configuration and these tables under both providers into
            ``<run>/audit/`` (:func:`petlab.audit.run.run_audit`); a failed audit fails the run.
    """
    tables = prepare_tables(config=config)  # bad tables fail here, before any run folder exists
    run = start_run(config=config, tables=tables, run=run, runs_root=runs_root, out=out)
    try:
        mpc = train_mpc(config=config, tables=tables, run=run, progress=progress)
        references = train_references(config=config, tables=tables)
        found = None
        if audit:
            from petlab.audit.run import require_passed, run_audit

            found = run_audit(config=config, out=run.file("audit"), progress=progress, audited_run=run.path)
        result = write_record(config=config, tables=tables, mpc=mpc, references=references, run=run)
        if found is not None:
            require_passed(found)  # the report shows what failed
    except BaseException as err:
        run.mark_failed(f"{type(err).__name__}: {err}".splitlines()[0])
        raise
    run.finish()
    return result
