"""Run the privacy audit: small MPC runs under both providers that keep everything each
party received, the checks of :mod:`petlab.audit.checks` on it, and the trust-model
demonstration (party 0 reconstructing the wallet's features from its own view).

The audit is the reviewer's harness: to score the checks it reads both parties' tables
(the ground truth); the parties themselves still see only their own data.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from petlab.audit import checks
from petlab.audit.classification import classification_table
from petlab.audit.party0_view import reconstruct
from petlab.config import PocConfig
from petlab.mpc.disclosure import declared_disclosures
from petlab.mpc.party import minibatches
from petlab.parties import Party

__all__ = ["AuditResult", "AuditFailed", "run_audit", "require_passed", "declared_reveals_only",
           "received_words"]


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


def declared_reveals_only(*, messages: list[dict], allowed: set[str]) -> checks.CheckResult:
    """Every decryption towards one receiver (``reduce``) must be a declared reveal."""
    decryptions = [m for m in messages if m["call"] == "reduce"]
    bad = [m["op"] for m in decryptions
           if not (m["op"].startswith("disclosure.reveal[") and m["op"][18:-1] in allowed)]
    errors = [m for m in messages if m["op"] == "record-error"]
    return checks.CheckResult(
        name="only declared outputs decrypted, to their declared receiver",
        passed=not bad and not errors, statistic=float(len(bad) + len(errors)),
        threshold="0 undeclared decryptions, 0 unrecorded messages",
        detail=f"{len(decryptions)} decryptions received; undeclared: {sorted(set(bad)) or 'none'}",
    )


def _truth(config: PocConfig, tables: dict):
    from petlab.pipeline import _party_features

    from petlab.pipeline import plain_intersection

    shared = plain_intersection(tables=tables)
    return {p: _party_features(config, tables, p, keep_ids=shared) for p in Party}


def _save_figures(out: Path, tables: dict) -> None:
    from petlab import plots

    words = {}
    for provider in PROVIDERS:
        for party in Party:
            wide, _ = received_words(out / provider / str(party), narrow_ops=NARROW_OPS[provider])
            words[f"{party} ({provider})"] = wide
    plots.save_figure(plots.plot_received_words(words=words), out / "figures" / "received_words.png")
    pairs = {}
    for provider in PROVIDERS:
        npz = np.load(out / f"reconstruction_{provider}.npz")
        pairs[provider] = (npz["reconstructed"], npz["truth"])
    plots.save_figure(plots.plot_reconstruction(pairs=pairs), out / "figures" / "reconstruction.png")


def run_audit(*, config: PocConfig, out: str | Path, progress: bool = True) -> AuditResult:
    """Audit runs under TFP and TTP into ``out``; returns (and writes) the findings.

    Args:
        config: a small configuration (e.g. 1,000 rows, 1 epoch); its provider is ignored.
        out: a new folder for the audit (party records, ``audit.json``, figures).
        progress: progress bars.
    """
    from petlab.mpc.launcher import run_mpc
    from petlab.pipeline import prepare_tables

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tables = prepare_tables(config=config)
    feats = _truth(config, tables)
    n_train = feats[Party.GATEWAY].X_train.shape[0]
    first = minibatches(n=n_train, batch_size=config.train.batch_size, seed=config.train.seed, epoch=0)[0]
    d_gateway = feats[Party.GATEWAY].n_features
    wallet_first = feats[Party.WALLET].X_train[first]
    secrets_of = {
        Party.GATEWAY: np.concatenate([feats[Party.GATEWAY].X_train.ravel(), feats[Party.GATEWAY].X_test.ravel(),
                                       feats[Party.GATEWAY].y_train, feats[Party.GATEWAY].y_test]),
        Party.WALLET: np.concatenate([feats[Party.WALLET].X_train.ravel(), feats[Party.WALLET].X_test.ravel()]),
    }
    allowed = {d.item for d in declared_disclosures(reveal_weights=config.mpc.reveal_weights,
                                                     track_loss=config.mpc.track_loss)}
    results, reconstruction, classification = [], {}, {}
    for provider in PROVIDERS:
        cfg = dataclasses.replace(config, mpc=dataclasses.replace(
            config.mpc, provider=provider, audit_words=True, audit_party0_view=True))
        mpc = run_mpc(config=cfg, tables=tables, out_dir=out / provider, progress=progress)
        for party in Party:
            other = Party.WALLET if party == Party.GATEWAY else Party.GATEWAY
            pdir = Path(mpc.out_dir) / str(party)
            words, bits = received_words(pdir, narrow_ops=NARROW_OPS[provider])
            messages = json.loads((pdir / "audit" / "transcript.json").read_text())["messages"]
            label = f"words the {party} received"
            found = [
                checks.raw_value_matches(words=words, secrets=secrets_of[other], label=f"the {other}"),
                checks.bit_balance(words=words, label=label),
                checks.byte_chi_square(words=words, label=label),
                checks.ks_uniform(words=words, label=label),
                declared_reveals_only(messages=messages, allowed=allowed),
            ]
            if bits.size:
                found.append(checks.single_bit_balance(bits=bits, label=f"1-bit shares the {party} received"))
            for res in found:
                results.append({"provider": provider, "party": str(party), **dataclasses.asdict(res)})
        view = np.load(Path(mpc.out_dir) / str(Party.GATEWAY) / "audit" / "party0_view.npz")
        import torch

        eps = view["epsilon_0"]
        x_hat = reconstruct(a_view=torch.from_numpy(view["a_view_0"]), epsilon=torch.from_numpy(eps)).numpy()
        wallet_hat = x_hat[:, d_gateway:]
        err = np.abs(wallet_hat - wallet_first)
        corr = checks.correlation_with_secret(opened=eps[:, d_gateway:], secret=wallet_first,
                                              label="the opened ε (wallet columns)")
        results.append({"provider": provider, "party": "gateway", **dataclasses.asdict(corr)})
        recovered = float((err <= 2.0 ** -15).mean())
        r = np.corrcoef(wallet_hat.ravel(), wallet_first.ravel())[0, 1] if wallet_hat.std() > 0 else 0.0
        reconstruction[provider] = {
            "recovered_fraction": recovered, "max_abs_error": float(err.max()),
            "correlation": float(r), "values": int(err.size),
            "expected": "reconstructs" if provider == "TFP" else "fails",
            "as_expected": (recovered > 0.99) if provider == "TFP" else (recovered < 0.01),
        }
        classification[provider] = classification_table(
            provider=provider, reveal_weights=config.mpc.reveal_weights, track_loss=config.mpc.track_loss)
        np.savez(out / f"reconstruction_{provider}.npz", reconstructed=wallet_hat, truth=wallet_first)
    _save_figures(out, tables)
    passed = all(r["passed"] for r in results) and all(v["as_expected"] for v in reconstruction.values())
    payload = {"passed": passed, "checks": results, "reconstruction": reconstruction,
               "classification": classification, "config": config.to_dict()}
    (out / "audit.json").write_text(json.dumps(payload, indent=2))
    return AuditResult(folder=out, checks=results, reconstruction=reconstruction,
                       classification=classification, passed=passed)
