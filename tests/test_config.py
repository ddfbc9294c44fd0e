"""Configuration: defaults, overrides, params files, and one-line errors for bad values."""

from __future__ import annotations

import json

import pytest

from petlab.config import ConfigError, PocConfig, load_params_file, poc_config


def test_defaults_and_overrides():
    cfg = poc_config()
    assert (cfg.train.model, cfg.mpc.provider, cfg.mpc.device) == ("logreg", "TTP", "cpu")
    cfg = poc_config(seed=7, provider="tfp", model="mlp")
    assert cfg.data.seed == cfg.train.seed == 7 and cfg.mpc.provider == "TFP"
    assert PocConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model": "svm"}, "unknown model 'svm'"),
        ({"provider": "HE"}, "unknown provider 'HE'"),
        ({"rows": 60}, "rows=60 is too small"),
        ({"test_fraction": 1.5}, "test_fraction must be between 0 and 1"),
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"batch_size": 2.5}, "batch_size must be a positive integer"),
        ({"lr": -1}, "lr must be positive"),
        ({"device": "tpu"}, "unknown device 'tpu'"),
        ({"colour": "red"}, "unknown parameter 'colour'"),
        ({"source": "s3"}, "unknown data source 's3'"),
        ({"overlap": 0}, "overlap must be in"),
        ({"wallet_extra": -0.1}, "wallet_extra must be >= 0"),
        ({"engine": "spu"}, "unknown engine 'spu'"),
        ({"triple_chunk": 0}, "triple_chunk must be at least 1"),
        ({"sigmoid_exp_iterations": 0}, "sigmoid_exp_iterations must be between 1 and 16"),
        ({"sigmoid_nr_iterations": 9}, "sigmoid_nr_iterations must be between 1 and 8"),
        ({"precision_bits": 30}, "precision_bits must be between 8 and 24"),
        ({"sigmoid_method": "tanh"}, "unknown sigmoid_method 'tanh'"),
        ({"sigmoid_method": "piecewise", "model": "mlp", "engine": "crypten"},
         "sigmoid_method 'piecewise' is petlab's protocol"),
        ({"sigmoid_method": "piecewise", "engine": "crypten"}, "sigmoid_method 'piecewise' is petlab's protocol"),
        ({"alignment": "fuzzy"}, "unknown alignment 'fuzzy'"),
        ({"source": "wide", "features": 1}, "features must be at least 2"),
    ],
)
def test_bad_values_raise_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        poc_config(**overrides)
    assert "\n" not in str(info.value)


def test_cuda_without_a_gpu_is_refused(monkeypatch):
    monkeypatch.setattr("petlab.config._cuda_available", lambda: False)
    with pytest.raises(ConfigError, match="sees no CUDA GPU"):
        poc_config(device="cuda")


def test_params_files(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps({"rows": 3000, "model": "mlp"}))
    (tmp_path / "p.yaml").write_text("rows: 4000\nprovider: TFP\n")
    (tmp_path / "bad.json").write_text("{not json")
    assert poc_config(**load_params_file(tmp_path / "p.json")).data.rows == 3000
    assert poc_config(**load_params_file(tmp_path / "p.yaml")).mpc.provider == "TFP"
    with pytest.raises(ConfigError, match="cannot parse"):
        load_params_file(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="not found"):
        load_params_file(tmp_path / "missing.json")


def test_auto_engine_is_petlab_on_the_cpu_for_both_models():
    from petlab.config import resolved_engine

    assert resolved_engine(poc_config()) == "petlab"
    assert resolved_engine(poc_config(model="mlp")) == "petlab"
    assert resolved_engine(poc_config(model="mlp", sigmoid_method="piecewise")) == "petlab"
    assert resolved_engine(poc_config(engine="crypten")) == "crypten"
