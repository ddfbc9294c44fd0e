"""Take OmegaConf off CrypTen's hot path.

CrypTen reads its configuration (``crypten.cfg.mpc.provider``,
``cfg.encoder.precision_bits`` ...) on every operation, through OmegaConf, whose
attribute access is slow: a py-spy profile of a petlab training run spent most of its
Python time there. :func:`freeze_crypten_config` swaps the OmegaConf tree behind
``crypten.cfg`` for the same values in plain dictionaries with attribute access
(:class:`FastConfig`), through CrypTen's own ``cfg.set_config``, and gives that ``cfg``
object a ``temp_override`` that works on the plain tree (CrypTen's own merges with
OmegaConf, which refuses it; its approximations use it, e.g. for the reciprocal inside
the sigmoid). Values are unchanged, so results are the same (tested); only the look-ups
are faster.

>>> c = FastConfig.from_mapping({"mpc": {"provider": "TTP"}, "encoder": {"precision_bits": 16}})
>>> c.mpc.provider, c.encoder.precision_bits
('TTP', 16)
>>> c.mpc.provider = "TFP"; c["mpc"]["provider"]
'TFP'
"""

from __future__ import annotations

import contextlib

__all__ = ["FastConfig", "freeze_crypten_config"]


class FastConfig(dict):
    """A nested ``dict`` whose keys are also attributes (reads and writes)."""

    __slots__ = ()

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value

    @classmethod
    def from_mapping(cls, mapping) -> "FastConfig":
        return cls({k: cls.from_mapping(v) if isinstance(v, dict) else v for k, v in mapping.items()})


def freeze_crypten_config(crypten) -> FastConfig:
    """Replace ``crypten.cfg``'s OmegaConf tree by a :class:`FastConfig` with the same
    values; call after every setting is made. Returns the installed config."""
    from omegaconf import DictConfig, OmegaConf

    current = crypten.cfg.config
    values = OmegaConf.to_container(current, resolve=True) if isinstance(current, DictConfig) else dict(current)
    fast = FastConfig.from_mapping(values)
    cfg = crypten.cfg

    @contextlib.contextmanager
    def temp_override(override_dict):
        old = cfg.config
        new = FastConfig.from_mapping(old)  # a copy: the override ends with the block
        for dotted, value in override_dict.items():
            *path, last = dotted.split(".")
            node = new
            for key in path:
                node = node[key]
            node[last] = value
        cfg.set_config(new)
        try:
            yield
        finally:
            cfg.set_config(old)

    cfg.set_config(fast)
    object.__setattr__(cfg, "temp_override", temp_override)  # this cfg object only
    return fast
