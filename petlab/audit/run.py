"""Run the privacy audit: small MPC runs under both providers that keep everything each
party received, the checks of :mod:`petlab.audit.checks` on it, the attacks of
:mod:`petlab.audit.attacks` (each party replaying every key it held, and searching a
small public key space for the other's), and the trust-model demonstration (party 0
reconstructing the wallet's features from its own view under TFP, and failing under TTP).

The audit is the reviewer's harness: to score the checks it reads both parties' tables
(the ground truth); the parties themselves still see only their own data. That the
checks catch what they are for is shown by :mod:`petlab.audit.negative_controls`:
deliberately broken runs that must fail, each with its named check (``tests/test_audit.py``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np

from petlab.audit import attacks, checks
from petlab.audit import keys as audit_keys
from petlab.audit.classification import classification_table
from petlab.audit.party0_view import reconstruct
from petlab.config import PocConfig
from petlab.mpc.disclosure import declared_disclosures
from petlab.mpc.party import minibatches
from petlab.parties import Party

__all__ = ["AuditResult", "AuditFailed", "run_audit", "audit_run_folder", "require_passed", "declared_reveals_only",
           "received_words", "openings", "BIT_OPENINGS"]


class AuditFailed(AssertionError):
    """A privacy check failed, or the trust demonstration contradicted the security model."""


def require_passed(result: "AuditResult") -> None:
    """Raise :class:`AuditFailed` naming every failed check (so a batch run fails)."""
    failed = [f"{c['provider']}/{c['party']}: {c['name']} ({c['detail']})" for c in result.checks
              if not c["passed"]]
    failed += [f"{p}: reconstruction expected to {v['expected'].rstrip('s')}, recovered "
               f"{v['recovered_fraction']:.1%}" for p, v in result.reconstruction.items() if not v["as_expected"]]
    if failed:
        raise AuditFailed("privacy audit failed: " + "; ".join(failed))

PROVIDERS = ("TFP", "TTP")


@dataclasses.dataclass(frozen=True)
class AuditResult:
    folder: Path
    checks: list  # dicts: provider, party, name, passed, statistic, threshold, detail
    reconstruction: dict  # provider -> {"recovered_fraction", "max_abs_error", "correlation"}
    classification: dict  # provider -> rows
    passed: bool

    @property
    def table(self):
        import pandas as pd

        return pd.DataFrame(self.checks)


#: Operations whose messages are 1-bit XOR shares by protocol design. CrypTen's TTP
#: provider deals the random bit r of a B2A conversion as 1-bit shares, so the opened
#: z = x XOR r and both shares are uniform *bits*: value search is meaningless there (any
#: word is 0 or 1), and uniformity is tested on bit 0, with all higher bits zero.
#: petlab's own comparison (``lean.open_bit``) opens its sign bit the same way, under both
#: providers.
NARROW_OPS = {"TTP": {"beaver.B2A_single_bit", "lean.open_bit"}, "TFP": {"lean.open_bit"}}


def received_words(party_dir: Path, *, narrow_ops: set[str] = frozenset()) -> tuple[np.ndarray, np.ndarray]:
    """Every ring element a party received, split into full-width words and the 1-bit
    shares of ``narrow_ops``."""
    npz = np.load(party_dir / "audit" / "received_words.npz")
    messages = json.loads((party_dir / "audit" / "transcript.json").read_text())["messages"]
    wide, narrow = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for key in npz.files:
        op = messages[int(key[1:])]["op"]
        (narrow if op in narrow_ops else wide).append(npz[key].astype(np.int64))
    return np.concatenate(wide), np.concatenate(narrow)


#: Operations whose openings are bits by design (an XOR share of a bit opened under a
#: random bit: 0 or 1), so "small" says nothing there: CrypTen's B2A conversion and
#: petlab's ``lean.open_bit``. The mask-reuse and plaintext tests skip them; the opened
#: bits themselves must be fair coins (:func:`petlab.audit.checks.opened_bit_balance`),
#: and so must the shares received (:data:`NARROW_OPS`).
BIT_OPENINGS = {"beaver.B2A_single_bit", "lean.open_bit"}

OPENING_CALLS = ("all_reduce", "reduce", "broadcast")


def _declared(op: str, allowed: set[str]) -> bool:
    return op.startswith("disclosure.reveal[") and op[18:-1] in allowed


def openings(party_dir: Path) -> list[dict]:
    """Everything a party saw opened, one entry per opened tensor (``op``, ``call``,
    ``kind`` "sum"/"xor", ``words``): what its reductions opened and what broadcasts
    brought, from the transcript of an audit run."""
    audit = Path(party_dir) / "audit"
    messages = json.loads((audit / "transcript.json").read_text())["messages"]
    opened_path = audit / "opened_words.npz"
    opened = np.load(opened_path) if opened_path.is_file() else {}
    received = np.load(audit / "received_words.npz")
    out = []
    for idx, m in enumerate(messages):
        key = f"m{idx}"
        if m["call"] == "broadcast":
            words = received[key] if key in received.files else None
        elif m["call"] in ("all_reduce", "reduce"):
            words = opened[key] if key in getattr(opened, "files", ()) else None
        else:
            continue
        if words is None:
            continue
        words = words.astype(np.int64)
        at = 0
        for numel, kind in m.get("parts") or [[words.size, "sum"]]:
            if at + numel > words.size:  # the words kept ran out (a run too large to keep whole)
                break
            out.append({"op": m["op"], "call": m["call"], "kind": kind, "words": words[at: at + numel]})
            at += numel
    return out


def _undeclared(opened: list[dict] | None, allowed: set[str]) -> list[dict]:
    """The openings (:func:`openings`) that are neither declared reveals nor bits."""
    return [o for o in (opened or []) if o["call"] in OPENING_CALLS and not _declared(o["op"], allowed)
            and o["op"] not in BIT_OPENINGS]


def _plaintext(others: list[dict]) -> tuple[list[int], list[int], int]:
    """Which of ``others`` look like plaintext: the openings of >= 2 words
    (:func:`petlab.audit.checks.plaintext_parts`), and the small one-word ones
    (:func:`petlab.audit.checks.small_single_words`) with the count from which they fail."""
    words = [o["words"] for o in others]
    single, limit = checks.small_single_words(parts=words)
    return checks.plaintext_parts(parts=words), single, limit


def declared_reveals_only(*, messages: list[dict], allowed: set[str],
                          opened: list[dict] | None = None) -> checks.CheckResult:
    """Every decryption towards one receiver (``reduce``) must be a declared reveal, and
    no other opening (``opened``: :func:`openings`; by any call, ``all_reduce`` included)
    may look like plaintext (:func:`petlab.audit.checks.plaintext_parts`), nor may more
    one-word openings be small than chance allows (:func:`petlab.audit.checks.small_single_words`)."""
    from petlab.mpc.disclosure import describe

    decryptions = [m for m in messages if m["call"] == "reduce"]
    bad = [m["op"] for m in decryptions if not _declared(m["op"], allowed)]
    bounds = {item: describe(item=item).max_numel for item in allowed}
    bad += [f"{m['op']} of {m['numel']} elements" for m in decryptions if _declared(m["op"], allowed)
            and bounds.get(m["op"][18:-1]) is not None and m.get("numel", 0) > bounds[m["op"][18:-1]]]
    errors = [m for m in messages if m["op"] == "record-error"]
    others = _undeclared(opened, allowed)
    wide, single, limit = _plaintext(others)
    plain = [others[i] for i in wide] + ([others[i] for i in single] if len(single) >= limit else [])
    plain_ops = sorted({f"{o['op']} ({o['call']}, {o['words'].size} word{'s' if o['words'].size > 1 else ''})"
                        for o in plain})
    n_single = sum(1 for o in others if o["words"].size == 1)
    return checks.CheckResult(
        name="only declared outputs decrypted, to their declared receiver",
        passed=not plain and not bad and not errors, statistic=float(len(bad) + len(errors) + len(plain)),
        threshold="0 undeclared decryptions, 0 plaintext-looking openings outside declared reveals "
                  f"(of >= 2 words; of one word: fewer than {limit} below 2^{checks.SMALL_BITS}), "
                  "0 unrecorded messages",
        detail=f"{len(decryptions)} decryptions received; undeclared: {sorted(set(bad)) or 'none'}; "
               f"{len(others):,} other openings ({n_single:,} of one word, {len(single)} of them small), "
               f"plaintext-looking: {plain_ops or 'none'}",
    )


def _truth(config: PocConfig, tables: dict):
    from petlab.pipeline import _party_features

    from petlab.pipeline import plain_intersection

    shared = plain_intersection(tables=tables)
    return {p: _party_features(config, tables, p, keep_ids=shared) for p in Party}


def _save_figures(out: Path, providers) -> None:
    from petlab import plots

    words = {}
    for provider in providers:
        for party in Party:
            wide, _ = received_words(out / provider / str(party), narrow_ops=NARROW_OPS[provider])
            words[f"{party} ({provider})"] = wide
    plots.save_figure(plots.plot_received_words(words=words), out / "figures" / "received_words.png")
    pairs = {}
    for provider in providers:
        npz = np.load(out / f"reconstruction_{provider}.npz")
        pairs[provider] = (npz["reconstructed"], npz["truth"])
    plots.save_figure(plots.plot_reconstruction(pairs=pairs), out / "figures" / "reconstruction.png")


def _row(provider: str, party, res: checks.CheckResult) -> dict:
    return {"provider": provider, "party": str(party), **dataclasses.asdict(res)}


def _masked(opened: list[dict], allowed: set[str]) -> list[dict]:
    """The openings the mask-reuse test compares: undeclared, not bits, and not
    plaintext-looking (two plaintext values differ by little whatever their masks; the
    declared-reveals check reports them)."""
    others = _undeclared(opened, allowed)
    wide, single, _ = _plaintext(others)
    plain = set(wide) | set(single)
    return [o for i, o in enumerate(others) if i not in plain]


def _word_checks(*, provider: str, party, pdir: Path, secrets: np.ndarray, allowed: set[str]) -> list:
    """The checks on what one party received and saw opened."""
    other = Party.WALLET if party == Party.GATEWAY else Party.GATEWAY
    words, bits = received_words(pdir, narrow_ops=NARROW_OPS[provider])
    messages = json.loads((pdir / "audit" / "transcript.json").read_text())["messages"]
    opened = openings(pdir)
    label = f"words the {party} received"
    found = [
        checks.raw_value_matches(words=words, secrets=secrets, label=f"the {other}"),
        checks.bit_balance(words=words, label=label),
        checks.byte_chi_square(words=words, label=label),
        checks.ks_uniform(words=words, label=label),
        declared_reveals_only(messages=messages, allowed=allowed, opened=opened),
        checks.mask_reuse(openings=[(o["words"], o["kind"], o["op"]) for o in _masked(opened, allowed)],
                          label=f"the openings the {party} saw"),
    ]
    if bits.size:
        found.append(checks.single_bit_balance(bits=bits, label=f"1-bit shares the {party} received"))
    opened_bits = [o["words"] for o in opened if o["op"] in BIT_OPENINGS]
    if opened_bits:
        found.append(checks.opened_bit_balance(openings=opened_bits, label=f"the opened bits the {party} saw"))
    return [_row(provider, party, res) for res in found]


def _attack_checks(*, provider: str, party, pdir: Path, feats, first: np.ndarray, d_gateway: int,
                   config: PocConfig) -> tuple[list, dict | None]:
    """The audit playing ``party`` (petlab's protocol: its view of the feature mask): the
    key search for the other party's key, and the reconstruction from every key it held.
    Returns the check rows and the reconstruction (None for CrypTen's operators)."""
    view = audit_keys.load_mask_view(pdir / "audit")
    if view is None:
        return [], None
    other = Party.WALLET if party == Party.GATEWAY else Party.GATEWAY
    digest = json.loads((pdir / "result.json").read_text())["meta"]["config_digest"]
    rows = [_row(provider, party, attacks.key_search(
        E=view["E"], own_share=view["own_share"], other=str(other),
        public_seeds=(config.data.seed, config.train.seed), config_digest=digest))]
    columns = slice(d_gateway, None) if party == Party.GATEWAY else slice(0, d_gateway)
    rec = attacks.reconstruct_from_keys(view=view, keys=audit_keys.load(pdir / "audit"), rows=first,
                                        columns=columns, truth=feats[other].X_train[first])
    if not (provider == "TFP" and party == Party.GATEWAY):  # there the gateway dealt the mask: it must succeed
        rows.append(_row(provider, party, checks.CheckResult(
            name=f"the {party} cannot reconstruct the {other}'s features from its keys and view",
            passed=rec["recovered_fraction"] < 0.01, statistic=rec["recovered_fraction"],
            threshold="< 1% of the values within 2^-15",
            detail=f"{rec['attempts']} attempts (its view of the mask; its share plus every stream of every key "
                   f"it held, as held and derived under every purpose); best: {rec['best']}, "
                   f"{rec['recovered_fraction']:.1%} of {rec['values']} values")))
    return rows, rec


def _audit_provider(*, config: PocConfig, provider: str, tables: dict, feats: dict, out: Path,
                    progress: bool) -> tuple[list, dict, list]:
    """One audit run under ``provider``: its checks, the gateway's reconstruction, and
    the classification table."""
    from petlab.mpc.launcher import run_mpc

    n_train = feats[Party.GATEWAY].X_train.shape[0]
    first = minibatches(n=n_train, batch_size=config.train.batch_size, seed=config.train.seed, epoch=0)[0]
    d_gateway = feats[Party.GATEWAY].n_features
    wallet_first = feats[Party.WALLET].X_train[first]
    secrets_of = {  # each party's own values, its labels too where it holds them
        p: np.concatenate([feats[p].X_train.ravel(), feats[p].X_test.ravel()]
                          + [y for y in (feats[p].y_train, feats[p].y_test) if y is not None])
        for p in Party
    }
    allowed = {d.item for d in declared_disclosures(reveal_weights=config.mpc.reveal_weights,
                                                     track_loss=config.mpc.track_loss,
                                                     label_party=config.data.label_party)}
    cfg = dataclasses.replace(config, mpc=dataclasses.replace(
        config.mpc, provider=provider, audit_words=True, audit_party0_view=True))
    mpc = run_mpc(config=cfg, tables=tables, out_dir=out / provider, progress=progress)
    results, attacked = [], {}
    for party in Party:
        other = Party.WALLET if party == Party.GATEWAY else Party.GATEWAY
        pdir = Path(mpc.out_dir) / str(party)
        results += _word_checks(provider=provider, party=party, pdir=pdir, secrets=secrets_of[other],
                                allowed=allowed)
        rows, attacked[party] = _attack_checks(provider=provider, party=party, pdir=pdir, feats=feats,
                                               first=first, d_gateway=d_gateway, config=config)
        results += rows
    view = np.load(Path(mpc.out_dir) / str(Party.GATEWAY) / "audit" / "party0_view.npz")
    import torch

    eps = view["epsilon_0"]
    corr = checks.correlation_with_secret(opened=eps[:, d_gateway:], secret=wallet_first,
                                          label="the opened ε (wallet columns)")
    results.append(_row(provider, Party.GATEWAY, corr))
    rec = attacked[Party.GATEWAY]
    if rec is None:  # CrypTen's operators: party 0's view of its first Beaver product
        x_hat = reconstruct(a_view=torch.from_numpy(view["a_view_0"]), epsilon=torch.from_numpy(eps)).numpy()
        wallet_hat = x_hat[:, d_gateway:]
        err = np.abs(wallet_hat - wallet_first)
        r = np.corrcoef(wallet_hat.ravel(), wallet_first.ravel())[0, 1] if wallet_hat.std() > 0 else 0.0
        rec = {"recovered_fraction": float((err <= 2.0 ** -15).mean()), "max_abs_error": float(err.max()),
               "correlation": float(r), "values": int(err.size), "attempts": 1,
               "best": "E + its view of the mask", "reconstructed": wallet_hat}
    recovered = rec["recovered_fraction"]
    reconstruction = {
        **{k: v for k, v in rec.items() if k != "reconstructed"},
        "expected": "reconstructs" if provider == "TFP" else "fails",
        "as_expected": (recovered > 0.99) if provider == "TFP" else (recovered < 0.01),
    }
    np.savez(out / f"reconstruction_{provider}.npz", reconstructed=rec["reconstructed"], truth=wallet_first)
    classification = classification_table(provider=provider, reveal_weights=config.mpc.reveal_weights,
                                          track_loss=config.mpc.track_loss, label_party=config.data.label_party)
    return results, reconstruction, classification


def run_audit(*, config: PocConfig, out: str | Path, progress: bool = True,
              providers: tuple[str, ...] = PROVIDERS, audited_run: str | Path | None = None) -> AuditResult:
    """Audit runs under TFP and TTP into ``out``; returns (and writes) the findings.

    Args:
        config: the configuration to audit: a small synthetic one (e.g. 1,000 rows, 1
            epoch), or a run's own (:func:`audit_run_folder`); its provider is ignored.
        out: a new folder for the audit (party records, ``audit.json``, figures).
        progress: progress bars.
        providers: the providers to audit (both by default).
        audited_run: the run folder whose configuration and tables these are, if any
            (recorded in ``audit.json``; the report says what the audit covered).
    """
    from petlab.pipeline import prepare_tables

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tables = prepare_tables(config=config)
    feats = _truth(config, tables)
    results, reconstruction, classification = [], {}, {}
    for provider in providers:
        found, reconstruction[provider], classification[provider] = _audit_provider(
            config=config, provider=provider, tables=tables, feats=feats, out=out, progress=progress)
        results += found
    _save_figures(out, providers)
    passed = all(r["passed"] for r in results) and all(v["as_expected"] for v in reconstruction.values())
    payload = {"passed": passed, "checks": results, "reconstruction": reconstruction,
               "classification": classification, "config": config.to_dict(),
               "tables": {p: {"path": t["path"], "sha256": t["sha256"]} for p, t in tables.items()},
               "audited_run": str(Path(audited_run).resolve()) if audited_run is not None else None}
    (out / "audit.json").write_text(json.dumps(payload, indent=2))
    return AuditResult(folder=out, checks=results, reconstruction=reconstruction,
                       classification=classification, passed=passed)


def audit_run_folder(*, run_dir: str | Path, out: str | Path | None = None, epochs: int | None = None,
                     progress: bool = True) -> AuditResult:
    """Audit a finished run: its configuration and its tables (own tables included) run
    again under both providers with every received word kept.

    The audit goes into ``<run_dir>/audit/``, the run's report is rebuilt to show it, and
    its manifest is written again naming what the audit added (``petlab verify`` still
    checks every file). With ``out``, it goes into that new folder instead and the run
    folder is left as it is (e.g. a notebook run, whose ``audit/`` holds notebook 03's).

    Args:
        run_dir: a complete run folder (``petlab poc``, ``petlab notebooks``, ``petlab rerun``).
        out: a new folder for the audit instead of ``<run_dir>/audit``.
        epochs: audit runs of fewer epochs than the run (every received word is kept:
            the audit's memory grows with the run's traffic); default the run's own.
        progress: progress bars.

    Raises:
        ConfigError: not a complete run folder, an audit is there already, or a table is
            not the file the run read.
    """
    from petlab.config import ConfigError, poc_config
    from petlab.pipeline import prepare_tables
    from petlab.review import check_recorded_tables, recorded_config
    from petlab.runs import Run, create_run

    run_dir = Path(run_dir).resolve()
    config, recorded = recorded_config(run_dir=run_dir)
    run = Run(path=run_dir, owned=False)
    if run.status() != "complete":
        raise ConfigError(f"{run_dir} is not a complete run (status {run.status()!r}); audit a finished run")
    if epochs is not None:
        config = poc_config(**{**_flat(config), "epochs": epochs})
    if config.mpc.negative_control or config.mpc.audit_words:
        raise ConfigError(f"{run_dir} is an audit run itself; audit the run it was made for")
    check_recorded_tables(tables=prepare_tables(config=config), recorded=recorded)
    if out is None:
        target = run.file("audit")
        if target.exists():
            raise ConfigError(f"{target} exists already (runs are never overwritten): give --out NEW for "
                              "another audit of this run")
        partial = run.file("audit.partial")  # renamed to audit/ once complete: never half an audit
        if partial.exists():
            shutil.rmtree(partial)  # what an interrupted audit left
        result = run_audit(config=config, out=partial, progress=progress, audited_run=run_dir)
        os.replace(partial, target)
        result = dataclasses.replace(result, folder=target)
        from petlab.report import write_report

        if run.file("metrics.json").is_file():
            write_report(run=run)
        run.amend(added_by="petlab audit")
        return result
    new = create_run(path=out)
    try:
        new.write_json("params.json", {"config": config.to_dict(), "tables": recorded})
        result = run_audit(config=config, out=new.file("audit"), progress=progress, audited_run=run_dir)
    except BaseException as err:
        new.mark_failed(f"{type(err).__name__}: {err}".splitlines()[0])
        raise
    new.mark_complete()
    return result


def _flat(config: PocConfig) -> dict:
    """Keywords of :func:`petlab.config.poc_config` that give ``config`` back."""
    out = {}
    for section, values in config.to_dict().items():
        for key, value in values.items():
            out[f"{section}_seed" if key == "seed" else key] = value
    return out
