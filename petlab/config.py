"""The configuration tree of a proof-of-concept run: frozen dataclasses whose defaults,
with a comment each, are the defaults of the CLI and of the notebooks' parameters.

Overrides come by keyword (:func:`poc_config`) or from a JSON/YAML params file
(:func:`load_params_file`); :func:`validate` rejects bad values with a one-line
message before any work starts.

>>> cfg = poc_config(rows=5000, model="mlp", provider="TFP")
>>> cfg.data.rows, cfg.train.model, cfg.mpc.provider
(5000, 'mlp', 'TFP')
>>> poc_config(model="svm")
Traceback (most recent call last):
...
petlab.config.ConfigError: unknown model 'svm': expected one of logreg, mlp
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from petlab.models import MODELS

__all__ = [
    "ConfigError",
    "DataConfig",
    "TrainConfig",
    "MPCConfig",
    "PocConfig",
    "PROVIDERS",
    "poc_config",
    "validate",
    "load_params_file",
    "MIN_TRAIN_ROWS",
    "MIN_TEST_ROWS",
]

PROVIDERS = ("TTP", "TFP")
DATA_SOURCES = ("synthetic", "credit")
MIN_TRAIN_ROWS = 40  # below this a minibatch run says nothing
MIN_TEST_ROWS = 20  # below this an AUC says nothing


class ConfigError(ValueError):
    """A parameter value petlab cannot run with (the message is one line)."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    source: str = "synthetic"  # party tables: "synthetic" (generated) or "credit" (modeldata::credit_data)
    rows: int = 10_000  # the gateway's customers (synthetic data)
    overlap: float = 0.7  # share of the gateway's customers who also use the wallet (synthetic)
    wallet_extra: float = 0.3  # wallet customers the gateway never saw, as a share of rows (synthetic)
    seed: int = 0  # seed of the generator and of the train/test split
    test_fraction: float = 0.2  # share of aligned rows held out for the metrics
    root: str = "data/parties"  # each party's tables live in <root>/<party>/


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model: str = "logreg"  # "logreg" or "mlp" (one hidden ReLU layer)
    hidden: int = 16  # MLP hidden width
    epochs: int = 10  # passes over the training rows
    batch_size: int = 1024 # rows per SGD step (same minibatch order in every backend)
    lr: float = 0.5  # SGD learning rate on the mean loss
    seed: int = 0  # seed of the initial weights and of the minibatch order
    monitor_rows: int = 2048  # training rows (fixed sample) on which the per-epoch loss is measured


@dataclasses.dataclass(frozen=True)
class MPCConfig:
    provider: str = "TTP"  # Beaver-triple source: TTP (separate dealer) or TFP (party 0 deals)
    device: str = "cpu"  # "cpu" or "cuda" / "cuda:N" (each party computes there)
    reveal_weights: bool = True  # reveal the final weights to the label holder
    track_loss: bool = True  # reveal the training loss per epoch (a scalar) to the label holder
    audit_words: bool = False  # keep every ring element each party receives (small audit runs)
    audit_party0_view: bool = False  # record party 0's view of the first feature-matrix Beaver triple
    threads_per_party: int = 1  # torch threads in each party process
    timeout_s: float = 3600.0  # a party run that takes longer is stopped and reported


@dataclasses.dataclass(frozen=True)
class PocConfig:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    mpc: MPCConfig = dataclasses.field(default_factory=MPCConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PocConfig":
        return cls(
            data=DataConfig(**d.get("data", {})),
            train=TrainConfig(**d.get("train", {})),
            mpc=MPCConfig(**d.get("mpc", {})),
        )


def _flat_fields() -> dict[str, str]:
    """keyword -> section for every field (field names are unique across sections)."""
    out = {}
    for section, klass in (("data", DataConfig), ("train", TrainConfig), ("mpc", MPCConfig)):
        for f in dataclasses.fields(klass):
            out.setdefault(f.name, section)
    out["data_seed"], out["train_seed"] = "data", "train"
    return out


def poc_config(**overrides: Any) -> PocConfig:
    """A validated :class:`PocConfig` with keyword overrides.

    Keywords are field names of any section (``rows``, ``model``, ``provider`` ...);
    ``seed`` sets both the data and the training seed (``data_seed`` / ``train_seed``
    set one). ``None`` values are ignored, so notebook parameters can pass through.
    """
    fields = _flat_fields()
    sections: dict[str, dict] = {"data": {}, "train": {}, "mpc": {}}
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "seed":
            sections["data"]["seed"] = sections["train"]["seed"] = value
        elif key in ("data_seed", "train_seed"):
            sections[fields[key]]["seed"] = value
        elif key in fields:
            sections[fields[key]][key] = value
        else:
            raise ConfigError(f"unknown parameter {key!r}")
    if isinstance(sections["mpc"].get("provider"), str):
        sections["mpc"]["provider"] = sections["mpc"]["provider"].upper()
    cfg = PocConfig(
        data=DataConfig(**sections["data"]),
        train=TrainConfig(**sections["train"]),
        mpc=MPCConfig(**sections["mpc"]),
    )
    validate(cfg)
    return cfg


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def validate(cfg: PocConfig) -> None:
    """Raise :class:`ConfigError` naming the first bad value; return quietly otherwise."""
    d, t, m = cfg.data, cfg.train, cfg.mpc
    if d.source not in DATA_SOURCES:
        raise ConfigError(f"unknown data source {d.source!r}: expected one of {', '.join(DATA_SOURCES)}")
    if t.model not in MODELS:
        raise ConfigError(f"unknown model {t.model!r}: expected one of {', '.join(MODELS)}")
    if m.provider not in PROVIDERS:
        raise ConfigError(f"unknown provider {m.provider!r}: expected one of {', '.join(PROVIDERS)}")
    if not 0 < d.test_fraction < 1:
        raise ConfigError(f"test_fraction must be between 0 and 1, got {d.test_fraction}")
    if not 0 < d.overlap <= 1:
        raise ConfigError(f"overlap must be in (0, 1], got {d.overlap}")
    if d.wallet_extra < 0:
        raise ConfigError(f"wallet_extra must be >= 0, got {d.wallet_extra}")
    shared = int(round(d.rows * d.overlap)) if d.source == "synthetic" else 4454
    n_test = int(round(shared * d.test_fraction))
    if n_test < MIN_TEST_ROWS or shared - n_test < MIN_TRAIN_ROWS:
        need = max(
            int(MIN_TEST_ROWS / d.test_fraction + 1), int(MIN_TRAIN_ROWS / (1 - d.test_fraction) + 1)
        )
        need = int(need / d.overlap) + 1
        raise ConfigError(
            f"rows={d.rows} is too small for a train/test split of the {shared} shared customers "
            f"at test_fraction={d.test_fraction}: need at least {need}"
        )
    for name, value in (("epochs", t.epochs), ("batch_size", t.batch_size), ("hidden", t.hidden),
                        ("monitor_rows", t.monitor_rows),
                        ("threads_per_party", m.threads_per_party)):
        if int(value) != value or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value}")
    if not t.lr > 0:
        raise ConfigError(f"lr must be positive, got {t.lr}")
    if not m.timeout_s > 0:
        raise ConfigError(f"timeout_s must be positive, got {m.timeout_s}")
    dev = str(m.device)
    if dev != "cpu" and not dev.startswith("cuda"):
        raise ConfigError(f"unknown device {dev!r}: expected cpu or cuda[:N]")
    if dev.startswith("cuda"):
        if not _cuda_available():
            raise ConfigError(f"device {dev!r} requested but torch sees no CUDA GPU here")
        import torch

        index = int(dev.split(":")[1]) if ":" in dev else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device {dev!r}: torch sees {torch.cuda.device_count()} GPU(s)")


def load_params_file(path: str | os.PathLike) -> dict[str, Any]:
    """Flat keyword overrides from a JSON or YAML file (e.g. ``{"rows": 5000}``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as err:  # noqa: BLE001 - any parse error is the file's fault
        raise ConfigError(f"cannot parse params file {path}: {err}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise ConfigError(f"params file {path} must hold a mapping of parameter names")
    return data
