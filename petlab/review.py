"""Checking a run folder: is it intact, do the parties' records agree, do the metrics
follow from the revealed scores, is MPC within its bands of plaintext, and does a
re-run agree with it within the run-to-run tolerance of MPC.

``petlab verify RUN [--against OTHER]`` prints :meth:`Review.lines`; the reviewer's
walk-through is ``docs/reviewing-a-run.md``. Every check reads only the run folder: the
manifest (:mod:`petlab.runs`), ``params.json``, ``metrics.json``, ``test_scores.npz``,
``curves.json``, the launcher's ``parties/job.json`` and each party's own record
(``parties/<role>/result.json``, and the label holder's revealed scores and weights).

>>> MPC_BANDS["logreg"].auc, RERUN_TOLERANCE.auc
(0.005, 0.002)
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from petlab.config import LOCAL_FIELDS, ConfigError, PocConfig
from petlab.data.tables import file_sha256
from petlab.parties import Party
from petlab.runs import MANIFEST, file_digests

__all__ = ["Band", "MPC_BANDS", "RerunTolerance", "RERUN_TOLERANCE", "Check", "Review", "verify_run",
           "recorded_config", "check_recorded_tables"]


@dataclasses.dataclass(frozen=True)
class Band:
    """How far MPC may be from the plaintext model trained on the same data, seed, initial
    weights and minibatch order (the differences come from fixed point and the sigmoid
    approximation). ``None``: not checked for this model."""

    auc: float  # |AUC(MPC) - AUC(plaintext)|
    weights: float | None  # max |final weight difference|
    loss: float | None  # max |per-epoch training loss difference|


#: The bands of MPC against plaintext, by model. Logistic regression: the bands of
#: ``tests/test_mpc.py`` (``test_logreg_mpc_matches_plaintext``: AUC 0.005, weights 0.02,
#: loss 0.01). MLP: AUC 0.02 (``test_mlp_mpc_trains_and_beats_chance``); weights 0.02, from
#: the README's measurements (0.0014-0.0033 at 10,000 rows, 0.010-0.014 at 100,000 rows).
MPC_BANDS = {
    "logreg": Band(auc=0.005, weights=0.02, loss=0.01),
    "mlp": Band(auc=0.02, weights=0.02, loss=None),
}


@dataclasses.dataclass(frozen=True)
class RerunTolerance:
    """How far two runs of the same configuration on the same tables may differ. Only MPC
    differs: its masks and shares are fresh secret randomness in every run, and the
    truncation of fixed-point products rounds up or down with them. The plaintext
    reference models are deterministic and must agree to ``references``."""

    auc: float  # |AUC difference| of the MPC models
    scores: float  # max |difference| of one test customer's MPC score
    weights: float  # max |difference| of one final MPC weight
    loss: float  # max |difference| of one epoch's MPC training loss
    references: float  # max |score difference| of the plaintext reference models


#: The run-to-run tolerance of MPC, set at five or more times the largest difference
#: measured (docs/reviewing-a-run.md has the commands): over the ten pairs of five runs of
#: the default configuration (10,000 rows a side, logistic regression, TTP, 10 epochs) the
#: largest differences were AUC 9.1e-5, one score 3.9e-3, one weight 2.3e-4, one epoch's
#: loss 1.5e-4; over the three pairs of three runs of the MLP (otherwise default): AUC
#: 4.4e-5, score 2.5e-3, weight 1.7e-3, loss 1.5e-4. The AUC tolerance also allows for
#: small test sets, where one pair of scores changing order moves the AUC by 1/(n_pos n_neg).
RERUN_TOLERANCE = RerunTolerance(auc=0.002, scores=0.02, weights=0.01, loss=0.002, references=1e-6)

#: Metrics recomputed from the scores must equal the recorded ones to this (float noise).
RECOMPUTE_ATOL = 1e-9


@dataclasses.dataclass(frozen=True)
class Check:
    """One finding: what was checked, whether it passed, and the evidence in one line."""

    name: str
    passed: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.passed else 'FAIL'}  {self.name}: {self.detail}"


@dataclasses.dataclass(frozen=True)
class Review:
    """Every check of one run folder (and of its comparison with another run)."""

    run_dir: Path
    checks: tuple[Check, ...]
    against: Path | None = None

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def lines(self) -> list[str]:
        """The checks, one line each, and a last line with the verdict."""
        n, bad = len(self.checks), len(self.failed)
        verdict = f"{n} checks: all passed" if not bad else f"{bad} of {n} checks FAILED"
        return [c.line() for c in self.checks] + [verdict]


def _read_json(path: Path):
    return json.loads(path.read_text())


def _safe(name: str, fn) -> list[Check]:
    """Run one group of checks; a file that is missing or unreadable is a failed check
    naming it, never a traceback."""
    try:
        return fn()
    except FileNotFoundError as err:
        return [Check(name, False, f"missing: {err.filename}")]
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        return [Check(name, False, f"unreadable record ({type(err).__name__}: {err})".splitlines()[0])]


def _names(items, limit: int = 6) -> str:
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def recorded_config(*, run_dir: str | Path) -> tuple[PocConfig, dict]:
    """The configuration and the table record of a run folder (its ``params.json``).

    Args:
        run_dir: the run folder.

    Raises:
        ConfigError: not a run folder, or its ``params.json`` cannot be read.
    """
    from petlab.config import load_params_file, poc_config

    run_dir = Path(run_dir)
    path = run_dir / "params.json"
    if not (run_dir / "status.json").is_file():
        raise ConfigError(f"{run_dir} is not a petlab run folder (no status.json)")
    if not path.is_file():
        raise ConfigError(f"{run_dir} has no params.json: it records no run to repeat or audit")
    config = poc_config(**load_params_file(path))
    return config, _read_json(path).get("tables") or {}


def check_recorded_tables(*, tables: dict, recorded: dict) -> None:
    """Raise :class:`ConfigError` unless each party's table is the file the run read
    (same SHA-256 as recorded), so a re-run or an audit works on the run's own data.

    Args:
        tables: what :func:`petlab.pipeline.prepare_tables` describes now.
        recorded: the ``tables`` section of the run's ``params.json``.
    """
    for party, entry in recorded.items():
        now = tables.get(party, {})
        if entry.get("sha256") and now.get("sha256") != entry["sha256"]:
            raise ConfigError(f"the {party}'s table {now.get('path', entry.get('path'))} is not the file the run "
                              f"read (SHA-256 {str(now.get('sha256'))[:12]}..., recorded "
                              f"{entry['sha256'][:12]}...)")


# -- the folder itself --------------------------------------------------------------


def _integrity_checks(run_dir: Path, prefix: str = "") -> list[Check]:
    status = _read_json(run_dir / "status.json")
    out = []
    state = status.get("status")
    out.append(Check(f"{prefix}status", state == "complete",
                     "complete" if state == "complete" else f"{state!r}, not 'complete': not a finished run"
                     + (f" ({status['error']})" if status.get("error") else "")))
    manifest_path = run_dir / MANIFEST
    if not manifest_path.is_file():
        out.append(Check(f"{prefix}manifest", False, f"no {MANIFEST}: the run never finished, or the file was "
                         "removed (runs made before manifests existed have none)"))
        return out
    own = file_sha256(manifest_path)
    if status.get("manifest_sha256") != own:
        out.append(Check(f"{prefix}manifest", False, f"{MANIFEST} is not the one status.json recorded "
                         f"(SHA-256 {own[:12]}..., recorded {str(status.get('manifest_sha256'))[:12]}...)"))
        return out
    manifest = _read_json(manifest_path)
    listed, found = manifest["files"], file_digests(folder=run_dir)
    edited = sorted(k for k in listed if k in found and found[k] != listed[k])
    removed = sorted(k for k in listed if k not in found)
    added = sorted(k for k in found if k not in listed)
    amended = [a["by"] for a in manifest.get("amendments", [])]
    if edited or removed or added:
        what = "; ".join(f"{label}: {_names(files)}" for label, files in
                         (("edited", edited), ("removed", removed), ("added", added)) if files)
        out.append(Check(f"{prefix}manifest", False, f"the folder differs from its manifest ({what})"))
    else:
        out.append(Check(f"{prefix}manifest", True,
                         f"{len(listed)} files, each with the SHA-256 recorded at the end of the run"
                         + (f" (added to by {', '.join(amended)})" if amended else "")))
    return out


# -- the parties' records against each other ----------------------------------------


def _records(run_dir: Path) -> dict[str, dict]:
    return {str(p): _read_json(run_dir / "parties" / str(p) / "result.json") for p in Party}


def _record_checks(run_dir: Path) -> list[Check]:
    from petlab.mpc.job import Job
    from petlab.mpc.party import config_digest

    params, metrics = _read_json(run_dir / "params.json"), _read_json(run_dir / "metrics.json")
    records = _records(run_dir)
    g, w = records["gateway"], records["wallet"]
    out = []

    job = Job.load(run_dir / "parties" / "job.json")
    digest = config_digest(job)
    digests = {p: r["meta"]["config_digest"] for p, r in records.items()}
    same_config = json.loads(json.dumps(job.config.to_dict())) == params["config"]  # tuples are JSON lists
    ok = same_config and set(digests.values()) == {digest}
    out.append(Check("configuration digest", ok,
                     f"both parties ran configuration {digest[:12]}..., the one params.json and job.json hold"
                     if ok else ("job.json's configuration is not params.json's" if not same_config else
                                 "; ".join(f"{p} {d[:12]}..." for p, d in digests.items())
                                 + f" (params.json gives {digest[:12]}...)")))

    ok = g["peers"] == w["peers"]
    out.append(Check("exchanged metadata", ok,
                     "what each party sent at start-up (shapes, columns, keyed commitments) is what the other "
                     "recorded receiving" if ok else
                     "the parties' records of the start-up exchange differ: they are not from the same run"))

    tables = params.get("tables") or {}
    rows = []
    for p, r in records.items():
        want = (tables.get(p) or {}).get("sha256")
        if want is not None:
            rows.append((p, r["meta"].get("table_sha256") == want))
    if rows:
        ok = all(flag for _, flag in rows)
        out.append(Check("table digests", ok, "each party read the table params.json names (same SHA-256)" if ok
                         else "read another table than params.json names: "
                         + ", ".join(p for p, flag in rows if not flag)))

    psi = {p: r["psi"] for p, r in records.items()}
    n = {p: (r["meta"]["n_train"], r["meta"]["n_test"]) for p, r in records.items()}
    problems = []
    if g["meta"]["id_digest"] != w["meta"]["id_digest"]:
        problems.append("the parties trained on different customers (id digests differ)")
    if n["gateway"] != n["wallet"]:
        problems.append(f"train/test rows differ: gateway {n['gateway']}, wallet {n['wallet']}")
    if (metrics["n_train"], metrics["n_test"]) != n["gateway"]:
        problems.append(f"metrics.json says {metrics['n_train']}/{metrics['n_test']}, the records {n['gateway']}")
    if psi["gateway"]["intersection_size"] != psi["wallet"]["intersection_size"]:
        problems.append("the parties' intersection sizes differ")
    if (psi["gateway"]["own_set_size"], psi["gateway"]["other_set_size"]) != (
            psi["wallet"]["other_set_size"], psi["wallet"]["own_set_size"]):
        problems.append("each party's count of the other's customers is not the other's own count")
    if sum(n["gateway"]) != psi["gateway"]["intersection_size"]:
        problems.append(f"train + test rows {sum(n['gateway'])} != {psi['gateway']['intersection_size']} shared")
    if metrics.get("psi") != psi:
        problems.append("metrics.json's PSI record is not the parties'")
    features = {p: r["meta"]["n_features"] for p, r in records.items()}
    if metrics.get("n_features") != features:
        problems.append(f"metrics.json's feature counts {metrics.get('n_features')} are not the records' {features}")
    k = psi["gateway"]
    out.append(Check("counts", not problems, "; ".join(problems) or
                     f"{k['intersection_size']:,} shared customers (gateway {k['own_set_size']:,}, wallet "
                     f"{k['other_set_size']:,}), the same ids at both, {n['gateway'][0]:,} train + "
                     f"{n['gateway'][1]:,} test rows, {features['gateway']} + {features['wallet']} features"))
    return out


# -- the metrics from the revealed scores --------------------------------------------


def _scores(run_dir: Path) -> dict[str, np.ndarray]:
    with np.load(run_dir / "test_scores.npz") as npz:
        return {k: npz[k] for k in npz.files}


def _metric_checks(run_dir: Path) -> list[Check]:
    from petlab.metrics import binary_metrics
    from petlab.pipeline import MODEL_NAMES

    metrics = _read_json(run_dir / "metrics.json")
    holder = metrics["label_party"]
    party_dir = run_dir / "parties" / holder
    scores = _scores(run_dir)
    y_test = scores.pop("y_test")
    out = []
    revealed = np.load(party_dir / "test_scores.npy")
    same = (np.array_equal(revealed, scores["mpc"]) and np.array_equal(np.load(party_dir / "y_test.npy"), y_test))
    out.append(Check("revealed scores", same,
                     f"test_scores.npz holds the {revealed.size:,} scores revealed to the {holder} and its labels"
                     if same else f"test_scores.npz is not what the {holder}'s record holds"))
    wrong = []
    for name in MODEL_NAMES:
        m = binary_metrics(y_true=y_test, scores=scores[name])
        for key in ("auc", "accuracy", "log_loss"):
            if abs(getattr(m, key) - metrics[key][name]) > RECOMPUTE_ATOL:
                wrong.append(f"{key}[{name}] {metrics[key][name]:.6f} (recomputed {getattr(m, key):.6f})")
    own = _read_json(party_dir / "result.json")["metrics"]
    for key in ("auc", "accuracy", "log_loss"):
        if abs(own[key] - metrics[key]["mpc"]) > RECOMPUTE_ATOL:
            wrong.append(f"{key}[mpc] {metrics[key]['mpc']:.6f} (the {holder}'s own record: {own[key]:.6f})")
    auc = metrics["auc"]
    derived = {"collaboration_gain_auc": auc["plaintext"] - max(auc["gateway_only"], auc["wallet_only"]),
               "mpc_vs_plaintext_auc": auc["mpc"] - auc["plaintext"]}
    wrong += [f"{k} {metrics[k]:+.6f} (from the AUCs: {v:+.6f})" for k, v in derived.items()
              if abs(metrics[k] - v) > RECOMPUTE_ATOL]
    out.append(Check("metrics", not wrong, "; ".join(wrong) or
                     f"AUC, accuracy and log-loss of the {len(MODEL_NAMES)} models recomputed from "
                     f"test_scores.npz equal metrics.json (MPC AUC {auc['mpc']:.6f}), and the {holder}'s own record"))
    return out


def _band_checks(run_dir: Path) -> list[Check]:
    from petlab.metrics import binary_metrics

    metrics = _read_json(run_dir / "metrics.json")
    band = MPC_BANDS[metrics["model"]]
    scores = _scores(run_dir)  # the AUCs from the scores, whatever metrics.json says
    auc = {n: binary_metrics(y_true=scores["y_test"], scores=scores[n]).auc for n in ("mpc", "plaintext")}
    d_auc = abs(auc["mpc"] - auc["plaintext"])
    out = [Check("MPC vs plaintext: AUC", d_auc <= band.auc,
                 f"|difference| {d_auc:.6f} from the test scores (band {band.auc})")]
    diff = metrics.get("max_abs_weight_diff")
    if band.weights is not None:
        if diff is None:
            out.append(Check("MPC vs plaintext: weights", True, "not revealed in this run (no weights to compare)"))
        else:
            out.append(Check("MPC vs plaintext: weights", diff <= band.weights,
                             f"max |difference| {diff:.6f} (band {band.weights})"))
    curves = _read_json(run_dir / "curves.json")["train_loss"]
    if band.loss is not None and curves.get("mpc"):
        mpc, plain = np.asarray(curves["mpc"]), np.asarray(curves["plaintext"])
        if mpc.shape != plain.shape:
            out.append(Check("MPC vs plaintext: loss", False, f"{mpc.size} MPC epochs, {plain.size} plaintext"))
        else:
            d = float(np.max(np.abs(mpc - plain)))
            out.append(Check("MPC vs plaintext: loss", d <= band.loss,
                             f"max |difference| per epoch {d:.6f} (band {band.loss})"))
    return out


def _audit_checks(run_dir: Path) -> list[Check]:
    audit = _read_json(run_dir / "audit" / "audit.json")
    failed = [f"{c['provider']}/{c['party']}: {c['name']}" for c in audit["checks"] if not c["passed"]]
    failed += [f"{p}: reconstruction {v['recovered_fraction']:.1%} (expected: {v['expected']})"
               for p, v in audit["reconstruction"].items() if not v["as_expected"]]
    consistent = audit["passed"] == (not failed)
    ok = consistent and not failed
    return [Check("privacy audit", ok,
                  f"{len(audit['checks'])} checks under {', '.join(audit['reconstruction'])} passed"
                  if ok else ("audit.json says passed but its checks do not" if not consistent
                              else f"failed: {_names(failed, 3)}"))]


# -- two runs of the same configuration ----------------------------------------------


def _shared(params: dict) -> dict:
    d = json.loads(json.dumps(params["config"]))
    for section, keys in LOCAL_FIELDS.items():
        for key in keys:
            d.get(section, {}).pop(key, None)
    return d


def _config_differences(a: dict, b: dict) -> list[str]:
    out = []
    for section in sorted(set(a) | set(b)):
        for key in sorted(set(a.get(section, {})) | set(b.get(section, {}))):
            va, vb = a.get(section, {}).get(key), b.get(section, {}).get(key)
            if va != vb:
                out.append(f"{section}.{key} {va!r} vs {vb!r}")
    return out


def _against_checks(run_dir: Path, other: Path) -> list[Check]:
    tol = RERUN_TOLERANCE
    out = _safe("other run: files", lambda: _integrity_checks(other, prefix="other run: "))
    pa, pb = _read_json(run_dir / "params.json"), _read_json(other / "params.json")
    diffs = _config_differences(_shared(pa), _shared(pb))
    ta, tb = pa.get("tables") or {}, pb.get("tables") or {}
    diffs += [f"the {p}'s table (SHA-256 {str(ta[p].get('sha256'))[:12]}... vs {str(tb.get(p, {}).get('sha256'))[:12]}...)"
              for p in sorted(ta) if ta[p].get("sha256") != (tb.get(p) or {}).get("sha256")]
    out.append(Check("same configuration and tables", not diffs,
                     "every shared parameter and both table digests are equal" if not diffs
                     else f"the runs differ: {_names(diffs, 4)}"))
    sa, sb = _scores(run_dir), _scores(other)
    ra, rb = _records(run_dir), _records(other)
    same_rows = (np.array_equal(sa["y_test"], sb["y_test"])
                 and ra["gateway"]["meta"]["id_digest"] == rb["gateway"]["meta"]["id_digest"])
    out.append(Check("same customers", same_rows,
                     "the same shared customers, and the same test labels in the same order" if same_rows
                     else "the runs trained or tested on different customers"))
    if not same_rows:
        return out
    refs = {n: float(np.max(np.abs(sa[n] - sb[n]))) for n in ("plaintext", "gateway_only", "wallet_only")}
    worst = max(refs.values())
    out.append(Check("plaintext references", worst <= tol.references,
                     f"max |score difference| {worst:.2e} (deterministic: tolerance {tol.references:g})"))
    ma, mb = _read_json(run_dir / "metrics.json"), _read_json(other / "metrics.json")
    found = {"auc": abs(ma["auc"]["mpc"] - mb["auc"]["mpc"]),
             "scores": float(np.max(np.abs(sa["mpc"] - sb["mpc"])))}
    wa = run_dir / "parties" / ma["label_party"] / "weights.npz"
    wb = other / "parties" / mb["label_party"] / "weights.npz"
    if wa.is_file() and wb.is_file():
        with np.load(wa) as a, np.load(wb) as b:
            found["weights"] = max(float(np.max(np.abs(a[k] - b[k]))) for k in a.files)
    la = _read_json(run_dir / "curves.json")["train_loss"].get("mpc") or []
    lb = _read_json(other / "curves.json")["train_loss"].get("mpc") or []
    if la and len(la) == len(lb):
        found["loss"] = float(np.max(np.abs(np.asarray(la) - np.asarray(lb))))
    over = [k for k, v in found.items() if v > getattr(tol, k)]
    out.append(Check("MPC run to run", not over,
                     ", ".join(f"{k} {v:.2e} (tolerance {getattr(tol, k):g})" for k, v in found.items())
                     + ("" if not over else f": beyond the run-to-run tolerance of MPC ({', '.join(over)})")))
    return out


def verify_run(*, run_dir: str | Path, against: str | Path | None = None) -> Review:
    """Every check of the run folder ``run_dir`` (and, given ``against``, whether the two
    runs agree within :data:`RERUN_TOLERANCE`).

    Args:
        run_dir: a run folder (``petlab poc``, ``petlab notebooks``, ``petlab rerun``).
        against: a second run folder, e.g. a re-run of the first.

    Raises:
        ConfigError: ``run_dir`` (or ``against``) is not a run folder.
    """
    run_dir = Path(run_dir).resolve()
    folders = [run_dir] + ([Path(against).resolve()] if against is not None else [])
    for folder in folders:
        if not (folder / "status.json").is_file():
            raise ConfigError(f"{folder} is not a petlab run folder (no status.json)")
    checks = _safe("files", lambda: _integrity_checks(run_dir))
    trained = (run_dir / "metrics.json").is_file()
    if trained:
        checks += _safe("party records", lambda: _record_checks(run_dir))
        checks += _safe("metrics", lambda: _metric_checks(run_dir))
        checks += _safe("MPC vs plaintext", lambda: _band_checks(run_dir))
    if (run_dir / "audit" / "audit.json").is_file():
        checks += _safe("privacy audit", lambda: _audit_checks(run_dir))
    elif not trained:
        checks.append(Check("contents", False, "no metrics.json and no audit/audit.json: nothing was recorded"))
    if against is not None:
        if trained and (folders[1] / "metrics.json").is_file():
            checks += _safe("against", lambda: _against_checks(run_dir, folders[1]))
        else:
            checks.append(Check("against", False, "both runs need a metrics.json to be compared"))
    return Review(run_dir=run_dir, checks=tuple(checks), against=folders[1] if against is not None else None)
