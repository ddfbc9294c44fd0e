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

from petlab.data.columns import DEFAULT_MAX_LEVELS
from petlab.data.ids import DEFAULT_ID_RULE, ID_RULES

__all__ = [
    "ConfigError",
    "DataConfig",
    "TrainConfig",
    "MPCConfig",
    "PocConfig",
    "PROVIDERS",
    "ENGINES",
    "poc_config",
    "resolved_engine",
    "resolved_sigmoid_method",
    "validate",
    "load_params_file",
    "PARAMS_SECTIONS",
    "MIN_TRAIN_ROWS",
    "MIN_TEST_ROWS",
    "check_split_size",
]

PROVIDERS = ("TTP", "TFP")
MODELS = ("logreg", "mlp")  # petlab.models implements them
ENGINES = ("auto", "petlab", "crypten")
SIGMOID_METHODS = ("reciprocal", "piecewise")
ALIGNMENTS = ("psi", "given")
PSI_PROTOCOLS = ("rr22", "ecdh")  # SecretFlow's PSI: RR22 (OPRF from VOLE) or ECDH on Curve25519
DATA_SOURCES = ("synthetic", "credit", "tables", "wide")
PARTY_NAMES = ("gateway", "wallet")  # the data parties (see petlab.parties.Party)
#: Deliberately broken variants that the privacy audit must fail (audit runs only;
#: petlab.audit.negative_controls)
NEGATIVE_CONTROLS = ("weak-key", "reused-mask", "undeclared-all-reduce", "gateway-holds-wallet-mask", "sign-in-clear",
                     "one-word-leak", "partial-mask-reuse")
MIN_TRAIN_ROWS = 40  # below this a minibatch run says nothing
MIN_MONITOR_ROWS = 128  # the loss monitor's revealed sum covers at least this many rows (fewer where the training rows are fewer)
MIN_TEST_ROWS = 20  # below this an AUC says nothing


#: Settings each host chooses for itself; they are left out of the comparison of the
#: parties' configurations at start-up.
LOCAL_FIELDS = {"data": ("root", "gateway_table", "wallet_table", "sep", "na_values"),
                "mpc": ("threads_per_party", "timeout_s", "peer_timeout_s", "fast_config")}


class ConfigError(ValueError):
    """A parameter value petlab cannot run with (the message is one line)."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    source: str = "synthetic"  # "synthetic" (generated), "credit" (modeldata::credit_data) or "tables" (your own)
    rows: int = 10_000  # the gateway's customers (synthetic data)
    overlap: float = 0.7  # share of the gateway's customers who also use the wallet (synthetic)
    wallet_extra: float = 0.3  # wallet customers the gateway never saw, as a share of rows (synthetic)
    seed: int = 0  # seed of the generator and of the train/test split
    test_fraction: float = 0.2  # share of aligned rows held out for the metrics
    features: int = 30  # numeric columns of the "wide" synthetic data (benchmarks), split evenly
    alignment: str = "psi"  # "psi": private set intersection; "given": both tables already hold the same customers
    psi: str = "rr22"  # the PSI protocol: "rr22" (OPRF from VOLE, fastest) or "ecdh" (Curve25519)
    root: str = "data/parties"  # each party's tables live in <root>/<party>/
    gateway_table: str = ""  # your own gateway table, CSV or Parquet (source "tables")
    wallet_table: str = ""  # your own wallet table, CSV or Parquet (source "tables")
    id_column: str = ""  # customer-id column of your own tables (both parties, unless named per party below)
    gateway_id_column: str = ""  # the gateway's own id column, where its name differs (default: id_column)
    wallet_id_column: str = ""  # the wallet's own id column, where its name differs (default: id_column)
    id_rule: str = DEFAULT_ID_RULE  # how ids are compared (petlab.data.ids): "keep-zeros", "drop-zeros" or "trim-only"
    label_column: str = ""  # label column of your own tables (0/1, true/false, or see positive_label), at the label party only
    positive_label: str = ""  # the label value that means 1, for a text label such as yes/no (your own tables)
    label_party: str = "gateway"  # the party whose table holds the label; it receives the outputs
    sep: str = ","  # field separator of your own CSV tables ("\\t" or "tab": a tab)
    na_values: tuple[str, ...] = ()  # missing markers of your own tables besides pandas' defaults (empty, NA, N/A, NaN, null ...)
    max_levels: int = DEFAULT_MAX_LEVELS  # levels a categorical column keeps (its most frequent); the rest are one level, "<other>"

    def __post_init__(self):  # a params file or a job file gives a list
        if not isinstance(self.na_values, tuple):
            object.__setattr__(self, "na_values", tuple(self.na_values))

    def id_column_of(self, party: str) -> str:
        """The id column of ``party``'s own table: its own name if set, else ``id_column``.

        >>> DataConfig(id_column="cust", wallet_id_column="user").id_column_of("wallet")
        'user'
        """
        return getattr(self, f"{party}_id_column") or self.id_column


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model: str = "logreg"  # "logreg" or "mlp" (one hidden ReLU layer)
    hidden: int = 16  # MLP hidden width
    epochs: int = 10  # passes over the training rows
    batch_size: int = 1024 # rows per SGD step (same minibatch order in every backend)
    lr: float = 0.5  # SGD learning rate on the mean loss
    seed: int = 0  # seed of the initial weights and of the minibatch order
    # training rows (a fixed sample, the same in MPC and plaintext) on which the per-epoch
    # loss is measured: the same rows every epoch, so the curve is smooth; 512 keeps the
    # monitor's cost on shares under a fifth of training (BENCHMARKS.md, start-up section)
    monitor_rows: int = 512


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
    peer_timeout_s: float = 120.0  # longest wait for a peer to appear or to answer; a lost peer ends the run within it
    fast_config: bool = True  # CrypTen reads its settings from plain dicts, not OmegaConf (same values, faster)
    engine: str = "auto"  # "petlab" (own protocol on CrypTen shares, CPU), "crypten" (its operators); auto: petlab on the CPU
    direct_link: bool = True  # the two parties' openings over one direct TCP link instead of gloo (same bytes)
    triple_chunk: int = 32  # training steps whose correlated randomness is made in one go (petlab engine)
    sigmoid_method: str = "reciprocal"  # petlab engine: "reciprocal" (CrypTen's method, 42 rounds a step) or "piecewise" (petlab's: 15 rounds, 1.6x the bytes, more accurate)
    sigmoid_exp_iterations: int = 9  # petlab engine: exp by (1 + x/2^k)^(2^k); CrypTen's sigmoid uses 9
    sigmoid_nr_iterations: int = 3  # petlab engine: Newton steps for the reciprocal; CrypTen's sigmoid uses 3
    precision_bits: int = 16  # fixed-point fractional bits (both engines; CrypTen's default 16)
    negative_control: str = ""  # audit runs only: a deliberately broken variant the audit must fail (NEGATIVE_CONTROLS)


@dataclasses.dataclass(frozen=True)
class PocConfig:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    mpc: MPCConfig = dataclasses.field(default_factory=MPCConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def shared_dict(self) -> dict[str, Any]:
        """The part every party must agree on: everything but each host's own settings
        (where its table lives, its threads and timeouts)."""
        d = self.to_dict()
        for key in LOCAL_FIELDS["data"]:
            d["data"].pop(key)
        for key in LOCAL_FIELDS["mpc"]:
            d["mpc"].pop(key)
        return d

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
    d = sections["data"]
    if (d.get("gateway_table") or d.get("wallet_table")) and "source" not in d:
        d["source"] = "tables"  # naming your own tables selects them
    for key in ("gateway_table", "wallet_table"):
        if d.get(key):
            d[key] = str(Path(d[key]).expanduser().resolve())  # same file from any working directory
    if isinstance(d.get("label_party"), str):
        d["label_party"] = d["label_party"].strip().lower()
    if isinstance(d.get("na_values"), str):  # "unknown,-,?" as on the command line
        d["na_values"] = [v for v in d["na_values"].split(",") if v.strip()]
    if d.get("na_values") is not None:
        d["na_values"] = tuple(str(v).strip() for v in d["na_values"])
    if d.get("positive_label") is not None:
        d["positive_label"] = str(d["positive_label"]).strip()
    if isinstance(d.get("sep"), str):
        d["sep"] = {"\\t": "\t", "tab": "\t"}.get(d["sep"], d["sep"])
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


#: petlab's protocol: products at scale 2^(2p) must stay below 2^62 (its truncation's range)
PETLAB_MAX_PRECISION_BITS = 20


def resolved_engine(cfg: PocConfig) -> str:
    """The engine a run uses: ``auto`` is petlab's own protocol on the CPU (logistic
    regression and the MLP), CrypTen's operators on a GPU.

    >>> resolved_engine(poc_config()), resolved_engine(poc_config(model="mlp"))
    ('petlab', 'petlab')
    """
    if cfg.mpc.engine != "auto":
        return cfg.mpc.engine
    return "petlab" if cfg.mpc.device == "cpu" else "crypten"


def resolved_sigmoid_method(cfg: PocConfig) -> str:
    """The sigmoid a run computes: ``sigmoid_method`` on petlab's protocol; CrypTen's
    operators always compute CrypTen's own (the ``reciprocal`` method).

    >>> resolved_sigmoid_method(poc_config(sigmoid_method="piecewise"))
    'piecewise'
    >>> resolved_sigmoid_method(poc_config(model="mlp", engine="crypten", sigmoid_method="reciprocal"))
    'reciprocal'
    """
    return cfg.mpc.sigmoid_method if resolved_engine(cfg) == "petlab" else "reciprocal"


_DEFAULT_DATA = DataConfig()


def validate(cfg: PocConfig) -> None:
    """Raise :class:`ConfigError` naming the first bad value; return quietly otherwise."""
    d, t, m = cfg.data, cfg.train, cfg.mpc
    if d.source not in DATA_SOURCES:
        raise ConfigError(f"unknown data source {d.source!r}: expected one of {', '.join(DATA_SOURCES)}")
    if t.model not in MODELS:
        raise ConfigError(f"unknown model {t.model!r}: expected one of {', '.join(MODELS)}")
    if d.source == "wide" and d.features < 2:
        raise ConfigError(f"features must be at least 2 for the wide data (one column per party), got {d.features}")
    if d.alignment not in ALIGNMENTS:
        raise ConfigError(f"unknown alignment {d.alignment!r}: expected one of {', '.join(ALIGNMENTS)}")
    if d.psi not in PSI_PROTOCOLS:
        raise ConfigError(f"unknown PSI protocol {d.psi!r}: expected one of {', '.join(PSI_PROTOCOLS)}")
    if m.engine not in ENGINES:
        raise ConfigError(f"unknown engine {m.engine!r}: expected one of {', '.join(ENGINES)}")
    if m.sigmoid_method not in SIGMOID_METHODS:
        raise ConfigError(f"unknown sigmoid_method {m.sigmoid_method!r}: expected one of {', '.join(SIGMOID_METHODS)}")
    if m.sigmoid_method == "piecewise" and resolved_engine(cfg) != "petlab":
        raise ConfigError("sigmoid_method 'piecewise' is petlab's protocol (engine 'petlab', on the CPU); "
                          "CrypTen's operators compute CrypTen's sigmoid ('reciprocal')")
    if m.engine == "petlab" and m.device != "cpu":
        raise ConfigError("engine 'petlab' runs on the CPU; use engine 'crypten' (or 'auto') with device "
                          f"{m.device!r}")
    if not 1 <= m.sigmoid_exp_iterations <= 16:
        raise ConfigError(f"sigmoid_exp_iterations must be between 1 and 16, got {m.sigmoid_exp_iterations}")
    if not 1 <= m.sigmoid_nr_iterations <= 8:
        raise ConfigError(f"sigmoid_nr_iterations must be between 1 and 8, got {m.sigmoid_nr_iterations}")
    if not 8 <= m.precision_bits <= 24:
        raise ConfigError(f"precision_bits must be between 8 and 24, got {m.precision_bits}")
    if m.precision_bits > PETLAB_MAX_PRECISION_BITS and resolved_engine(cfg) == "petlab":
        # petlab's truncation is exact for |x| < 2^62: a product at scale 2^(2p) must stay
        # below 2^(62 - 2p) in real value, 4.2e6 at p = 20 but 16,384 at p = 24
        raise ConfigError(f"precision_bits {m.precision_bits} with petlab's protocol leaves products only "
                          f"2^{62 - 2 * m.precision_bits} of headroom in real value: use at most "
                          f"{PETLAB_MAX_PRECISION_BITS}")
    if m.triple_chunk < 1:
        raise ConfigError(f"triple_chunk must be at least 1, got {m.triple_chunk}")
    if m.provider not in PROVIDERS:
        raise ConfigError(f"unknown provider {m.provider!r}: expected one of {', '.join(PROVIDERS)}")
    if m.negative_control and (m.negative_control not in NEGATIVE_CONTROLS or not (m.audit_words and m.audit_party0_view)):
        raise ConfigError(f"negative_control {m.negative_control!r}: " + ("audit runs only (audit_words and audit_party0_view)"
                          if m.negative_control in NEGATIVE_CONTROLS else f"expected one of {', '.join(NEGATIVE_CONTROLS)}"))
    if d.label_party not in PARTY_NAMES:
        raise ConfigError(f"label party {d.label_party!r} is not one of the parties: {', '.join(PARTY_NAMES)}")
    if d.id_rule not in ID_RULES:
        raise ConfigError(f"unknown id_rule {d.id_rule!r}: expected one of {', '.join(ID_RULES)}")
    if isinstance(d.max_levels, bool) or int(d.max_levels) != d.max_levels or d.max_levels < 2:
        raise ConfigError(f"max_levels must be an integer of at least 2, got {d.max_levels}")
    if len(d.sep) != 1:
        raise ConfigError(f"sep must be one character, got {d.sep!r}")
    if d.source == "tables":
        has_ids = d.id_column or all(d.id_column_of(p) for p in PARTY_NAMES)
        missing = [name for name, value in (("gateway_table", d.gateway_table), ("wallet_table", d.wallet_table),
                                            ("id_column", has_ids), ("label_column", d.label_column))
                   if not value]
        if missing:
            raise ConfigError(f"source 'tables' needs {', '.join(missing)} (e.g. --gateway-table g.csv "
                              "--wallet-table w.csv --id-column customer_id --label-column engaged)")
        if d.id_column_of(d.label_party) == d.label_column:
            raise ConfigError(f"id_column and label_column are the same column {d.label_column!r}")
        generated = [name for name in ("rows", "overlap", "wallet_extra", "features")
                     if getattr(d, name) != getattr(_DEFAULT_DATA, name)]
        if generated:
            raise ConfigError(f"{', '.join(generated)} only appl{'ies' if len(generated) == 1 else 'y'} to generated data (source synthetic or wide), "
                              "not to your own tables")
    else:
        given = [name for name, value in (("gateway_table", d.gateway_table), ("wallet_table", d.wallet_table),
                                          ("id_column", d.id_column), ("gateway_id_column", d.gateway_id_column),
                                          ("wallet_id_column", d.wallet_id_column),
                                          ("label_column", d.label_column), ("positive_label", d.positive_label),
                                          ("sep", d.sep != _DEFAULT_DATA.sep), ("na_values", d.na_values))
                 if value]
        if given:
            raise ConfigError(f"{', '.join(given)} only apply to source 'tables', not {d.source!r}")
        if d.label_party != "gateway":
            raise ConfigError(f"the {d.source} tables hold the label at the gateway; "
                              f"label_party {d.label_party!r} needs your own tables")
    if not 0 < d.test_fraction < 1:
        raise ConfigError(f"test_fraction must be between 0 and 1, got {d.test_fraction}")
    if not 0 < d.overlap <= 1:
        raise ConfigError(f"overlap must be in (0, 1], got {d.overlap}")
    if d.wallet_extra < 0:
        raise ConfigError(f"wallet_extra must be >= 0, got {d.wallet_extra}")
    shared = {"synthetic": int(round(d.rows * d.overlap)), "wide": d.rows}.get(d.source, 4454)
    n_test = int(round(shared * d.test_fraction))
    if d.source != "tables" and (n_test < MIN_TEST_ROWS or shared - n_test < MIN_TRAIN_ROWS):
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
    if t.monitor_rows < MIN_MONITOR_ROWS:
        raise ConfigError(f"monitor_rows must be at least {MIN_MONITOR_ROWS}, got {t.monitor_rows}: the label holder "
                          "learns the monitored rows' summed loss every epoch, which for a few rows says much of "
                          "each row's logit")
    if not t.lr > 0:
        raise ConfigError(f"lr must be positive, got {t.lr}")
    # The SGD update multiplies the summed gradients by the public fixed-point constant
    # round(lr / B * 2^precision_bits) (petlab.mpc.lean.sgd_constant; CrypTen's operators
    # encode lr / B at the same precision): refuse one more than 1% off, for every batch
    # size a step uses (the last batch of an epoch holds n_train % batch_size rows). Where
    # the training rows are not known before the run (source 'tables'), batch_size only.
    n_train = None if d.source == "tables" else shared - n_test
    sizes = {t.batch_size} if n_train is None else {min(t.batch_size, n_train)} | (
        {n_train % t.batch_size} if n_train > t.batch_size and n_train % t.batch_size else set())

    def step_off(batch: int, bits: int) -> float:
        exact = t.lr / batch * 2**bits
        return abs(round(exact) - exact) / exact

    bad = [b for b in sorted(sizes, reverse=True) if step_off(b, m.precision_bits) > 0.01]
    if bad:
        batch, exact = bad[0], t.lr / bad[0] * 2**m.precision_bits
        which = ("" if batch == t.batch_size else f" of the last batch of an epoch ({batch} of {n_train} training "
                 "rows)" if batch < t.batch_size and batch != n_train else f" of the one batch of {batch} rows")
        enough = next((bits for bits in range(m.precision_bits + 1, 25)
                       if all(step_off(b, bits) <= 0.01 for b in sizes)), None)
        fix = "raise precision_bits" + (f" ({enough} would do)" if enough is not None else "") + (
            ", raise lr or change batch_size")
        raise ConfigError(f"the SGD step constant{which} round(lr / batch * 2^precision_bits) = "
                          f"round({t.lr} / {batch} * 2^{m.precision_bits}) = {round(exact)} is "
                          f"{step_off(batch, m.precision_bits):.0%} off {exact:.4g} (more than 1%"
                          + (": the weights would never move" if round(exact) == 0 else "") + f"): {fix}")
    if not m.timeout_s > 0:
        raise ConfigError(f"timeout_s must be positive, got {m.timeout_s}")
    if not m.peer_timeout_s > 0:
        raise ConfigError(f"peer_timeout_s must be positive, got {m.peer_timeout_s}")
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


def check_split_size(*, shared: int, test_fraction: float) -> None:
    """Raise :class:`ConfigError` when ``shared`` aligned rows are too few to split.

    >>> check_split_size(shared=0, test_fraction=0.2)
    Traceback (most recent call last):
    ...
    petlab.config.ConfigError: 0 shared customers: too few for a train/test split at test_fraction=0.2 (need 40 train and 20 test rows)
    """
    n_test = int(round(shared * test_fraction))
    if n_test < MIN_TEST_ROWS or shared - n_test < MIN_TRAIN_ROWS:
        raise ConfigError(f"{shared} shared customers: too few for a train/test split at test_fraction="
                          f"{test_fraction} (need {MIN_TRAIN_ROWS} train and {MIN_TEST_ROWS} test rows)")


#: The sections of a run's ``params.json`` (and of a nested params file).
PARAMS_SECTIONS = ("data", "train", "mpc")


def _flatten_sections(sections: dict, *, path: Path) -> dict[str, Any]:
    """Flat keywords of :func:`poc_config` from ``{"data": {...}, "train": {...}, "mpc": {...}}``."""
    fields = _flat_fields()
    flat: dict[str, Any] = {}
    for section, values in sections.items():
        if section not in PARAMS_SECTIONS:
            raise ConfigError(f"params file {path}: unknown section {section!r} in 'config' (expected "
                              f"{', '.join(PARAMS_SECTIONS)})")
        if not isinstance(values, dict):
            raise ConfigError(f"params file {path}: section {section!r} must be a mapping")
        for key, value in values.items():
            if key == "seed":
                flat[f"{section}_seed"] = value
            elif fields.get(key) == section:
                flat[key] = value
            else:
                where = f" (it belongs to {fields[key]!r})" if key in fields else ""
                raise ConfigError(f"params file {path}: unknown parameter {section}.{key}{where}")
    return flat


def load_params_file(path: str | os.PathLike) -> dict[str, Any]:
    """Keyword overrides of :func:`poc_config` from a JSON or YAML file.

    Two forms are read:

    * flat keywords, e.g. ``{"rows": 5000, "provider": "TFP"}`` (``seed`` sets both seeds);
    * a run's ``params.json`` as written, ``{"config": {"data": ..., "train": ..., "mpc": ...},
      "tables": ...}`` (or the three sections at the top level). ``tables`` is the record of
      the files the run read (paths and SHA-256); the configuration already names them, so it
      is not an override (``petlab rerun`` checks the files against it).

    Args:
        path: the file (``.json``, ``.yaml`` or ``.yml``).

    >>> import json, tempfile
    >>> f = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
    >>> _ = f.write(json.dumps({"config": {"data": {"rows": 3000, "seed": 1}, "train": {"seed": 1}},
    ...                         "tables": {}})); f.close()
    >>> load_params_file(f.name)
    {'rows': 3000, 'data_seed': 1, 'train_seed': 1}
    """
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
    if "config" in data:  # a run's params.json as written
        extra = sorted(set(data) - {"config", "tables"})
        if extra:
            raise ConfigError(f"params file {path}: unknown top-level key {extra[0]!r} beside 'config' "
                              "(a run's params.json holds 'config' and 'tables')")
        if not isinstance(data["config"], dict):
            raise ConfigError(f"params file {path}: 'config' must be a mapping of sections")
        return _flatten_sections(data["config"], path=path)
    if data and set(data) <= set(PARAMS_SECTIONS) and all(isinstance(v, dict) for v in data.values()):
        return _flatten_sections(data, path=path)
    return data
