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
        ({"monitor_rows": 16}, "monitor_rows must be at least 128, got 16: the label holder learns"),
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


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"precision_bits": 8}, r"round\(0.5 / 1024 \* 2\^8\) = 0 is 100% off 0.125 .*would never move.*"
                                r"raise precision_bits \(14 would do\)"),
        ({"lr": 0.1, "batch_size": 3000}, r"= 2 is 8% off 2.185"),
        # 5,600 training rows: the last batch of an epoch holds 480, and 0.5 / 480 * 2^12 = 4.27
        ({"precision_bits": 12, "batch_size": 1024}, r"constant of the last batch of an epoch \(480 of 5600 "
                                                      r"training rows\).* = 4 is 6% off"),
        ({"precision_bits": 8, "batch_size": 6000}, r"constant of the one batch of 5600 rows .* = 0 is 100% off"),
        ({"source": "tables", "gateway_table": "g.csv", "wallet_table": "w.csv", "id_column": "id",
          "label_column": "y", "precision_bits": 8}, r"constant round\(lr / batch \* 2\^precision_bits\) = "
                                                     r"round\(0.5 / 1024 \* 2\^8\) = 0 is 100% off"),
    ],
)
def test_an_sgd_step_constant_rounded_more_than_one_percent_off_is_refused(overrides, message):
    """The SGD update multiplies by round(lr / B * 2^precision_bits): a constant of 0 (or
    one far off) would train silently wrong, so such a configuration does not start."""
    with pytest.raises(ConfigError, match=message) as info:
        poc_config(**overrides)
    assert "\n" not in str(info.value)


def test_the_default_configuration_has_an_exact_sgd_step_constant():
    from petlab.mpc.lean import sgd_constant

    cfg = poc_config()
    bits, lr, batch = cfg.mpc.precision_bits, cfg.train.lr, cfg.train.batch_size
    assert sgd_constant(lr=lr, batch=batch, bits=bits) == lr / batch * 2**bits == 32  # what the protocol uses
    last = 5600 % batch  # the default's 5,600 training rows: the last batch of an epoch
    assert abs(sgd_constant(lr=lr, batch=last, bits=bits) / (lr / last * 2**bits) - 1) < 0.01
    poc_config(batch_size=100, lr=0.3)  # small batches: large constants, always close


def test_precision_beyond_the_truncations_range_is_refused_for_petlabs_protocol():
    """petlab's truncation is exact for |x| < 2^62: at 24 fractional bits a product could
    hold only 2^14 in real value; CrypTen's operators keep their own truncation."""
    with pytest.raises(ConfigError, match="use at most 20"):
        poc_config(precision_bits=24)
    assert poc_config(precision_bits=20).mpc.precision_bits == 20
    assert poc_config(precision_bits=24, engine="crypten").mpc.precision_bits == 24
