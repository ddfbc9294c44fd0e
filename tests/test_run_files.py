"""Bad run files, flags and settings for one-command-per-party runs and benchmarks end
with a clear one-line error before anything starts."""

from __future__ import annotations

import pytest
import yaml

from petlab.bench import run_benchmarks
from petlab.cli import main
from petlab.config import ConfigError, poc_config
from petlab.mpc.hosts import host_job

RV = {"address": "127.0.0.1", "port": 29500, "psi_port": 29501, "gateway_psi_port": 29502,
      "wallet_address": "127.0.0.1", "wallet_psi_port": 29503}


def _file(tmp_path, doc, name="run.yaml"):
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize("doc,role,kw,message", [
    (None, "wallet", {}, "run file not found"),
    ("rendezvous: [unclosed", "wallet", {}, "cannot parse run file"),
    ("- a list", "wallet", {}, "must hold a mapping"),
    ({"rendezvous": RV, "out": "x", "params": {}, "extra": 1}, "wallet", {}, "unknown section(s) extra"),
    ({"rendezvous": {"address": "127.0.0.1"}, "out": "x"}, "wallet", {}, "rendezvous needs address, port and psi_port"),
    ({"rendezvous": {**RV, "psi_port": 29500}, "out": "x"}, "wallet", {}, "two different TCP ports"),
    ({"rendezvous": {k: v for k, v in RV.items() if not k.startswith("wallet")}, "out": "x"}, "wallet", {},
     "rendezvous needs gateway_psi_port, wallet_address and wallet_psi_port"),
    ({"rendezvous": {**RV, "gateway_psi_port": 29501}, "out": "x"}, "gateway", {},
     "gateway_psi_port 29501 is already the rendezvous port or psi_port"),
    ({"rendezvous": {**RV, "wallet_psi_port": 29502}, "out": "x"}, "gateway", {},
     "wallet_psi_port 29502 is already another port on the same host"),
    ({"rendezvous": RV, "params": {"provider": "TFP"}}, "dealer", {}, "say where this party writes its record"),
    ({"rendezvous": RV, "out": "x"}, "bank", {}, "unknown role 'bank'"),
    ({"rendezvous": RV, "out": "x"}, "dealer", {"table": "t.csv"}, "the dealer holds no table"),
    ({"rendezvous": RV, "out": "x", "tls": "off", "params": {"gateway_table": "g.csv", "id_column": "id",
                                                             "label_column": "y"}}, "wallet", {},
     "the wallet's table is not set"),
    ({"rendezvous": RV, "out": "x", "params": {"model": "svm"}}, "dealer", {}, "unknown model 'svm'"),
])
def test_bad_run_files_are_named(tmp_path, doc, role, kw, message):
    path = tmp_path / "missing.yaml" if doc is None else _file(tmp_path, doc)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        host_job(config_path=path, role=role, **kw)


def test_an_existing_party_record_is_never_overwritten(tmp_path):
    out = tmp_path / "out"
    (out / "dealer").mkdir(parents=True)
    (out / "dealer" / "status.json").write_text("{}")
    path = _file(tmp_path, {"rendezvous": RV, "out": str(out), "params": {}})
    with pytest.raises(ConfigError, match="holds a record already"):
        host_job(config_path=path, role="dealer")


def test_party_command_needs_exactly_one_of_config_and_job(tmp_path, capsys):
    assert main(["party", "--role", "wallet"]) == 2
    assert "give either --config (a run file) or --job" in capsys.readouterr().err
    path = _file(tmp_path, {"rendezvous": RV, "out": "x"})
    assert main(["party", "--role", "wallet", "--config", str(path), "--job", "j.json"]) == 2


def test_peer_timeout_must_be_positive():
    with pytest.raises(ConfigError, match="peer_timeout_s must be positive, got 0"):
        poc_config(peer_timeout_s=0)


def test_unknown_benchmark_sections_fail_before_measuring(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown benchmark section\(s\) \['gpu'\]"):
        run_benchmarks(sizes=[10], epochs=1, output=str(tmp_path / "B.md"), data_root=str(tmp_path),
                       sections=["gpu"])
    assert not (tmp_path / "B.md").exists()


def test_unknown_benchmark_configurations_fail_before_measuring(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown benchmark configuration\(s\) \['spu'\]"):
        run_benchmarks(sizes=[10], epochs=1, output=str(tmp_path / "B.md"), data_root=str(tmp_path),
                       sections=["mpc"], mpc_configs=["petlab-TTP", "spu"], runs_root=str(tmp_path / "runs"))
    assert not (tmp_path / "B.md").exists() and not (tmp_path / "runs").exists()


def test_spu_configurations_without_spu_fail_before_measuring(tmp_path, monkeypatch):
    import importlib.util

    monkeypatch.delenv("PETLAB_SPU_PYTHON", raising=False)
    real_find_spec = importlib.util.find_spec  # as where spu is not installed
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "spu" else real_find_spec(name, *a))
    with pytest.raises(ConfigError, match=r"spu-SEMI2K need SecretFlow SPU 0.9.5 \(spu\), which is not installed .*make venv"):
        run_benchmarks(sizes=[10], epochs=1, output=str(tmp_path / "B.md"), data_root=str(tmp_path),
                       sections=["mpc"], mpc_configs=["petlab-TTP", "spu-SEMI2K"], runs_root=str(tmp_path / "runs"),
                       spu=str(tmp_path / "missing" / "python"))
    assert not (tmp_path / "B.md").exists() and not (tmp_path / "runs").exists()


def test_spu_rows_render_without_rounds():
    """SPU's link does not count rounds: its rows show a dash, and the findings compare it
    with petlab only when both were measured."""
    from petlab.bench import render_mpc

    base = {"model": "logreg", "n_train": 10_000, "features": 30, "epochs": 10, "plaintext_s": 0.01,
            "auc_mpc": 0.86, "auc_plaintext": 0.86, "max_abs_weight_diff": 0.001, "command": "petlab bench x",
            "when": "now", "machine": "here", "rss": "VmHWM", "run": "runs/x", "analytic_bytes_per_epoch": None}
    rows = [{**base, "config": "spu-SEMI2K", "mpc_s": 2.0, "ratio": 200, "bytes": {"gateway": 1e6, "wallet": 2e6},
             "rounds": {"gateway": None, "wallet": None}, "train_bytes_per_epoch": {"wallet": None},
             "peak_rss_mb": {"gateway": 300, "wallet": 310, "dealer": None},
             "spu": {"input_s": 0.2, "train_s": 1.8, "compile_s": 3.0, "fxp_fraction_bits": 18,
                     "security_model": "SEMI2K: semi-honest. Party 0 deals."}},
            {**base, "config": "spu-SEMI2K-sim", "mpc_s": 1.5, "ratio": 150, "bytes": {"gateway": None, "wallet": None},
             "rounds": {"gateway": None, "wallet": None}, "train_bytes_per_epoch": {"wallet": None},
             "peak_rss_mb": {"gateway": 500, "wallet": 500, "dealer": None},
             "spu": {"where": "simulator", "input_s": 0.1, "train_s": 1.4, "compile_s": 3.0, "fxp_fraction_bits": 18,
                     "security_model": "SEMI2K: semi-honest. Party 0 deals."}},
            {**base, "config": "petlab-TTP", "mpc_s": 1.0, "ratio": 100, "bytes": {"gateway": 1e6, "wallet": 1e6},
             "rounds": {"gateway": 5, "wallet": 5}, "train_bytes_per_epoch": {"wallet": 1e6},
             "peak_rss_mb": {"gateway": 300, "wallet": 310, "dealer": 200}}]
    text = render_mpc(rows=rows)
    assert "| spu-SEMI2K | logreg | 10,000 | 10 | 0.0100 | 2.0 | 200 |" in text
    assert "| 1.0 / 2.0 | — / — | — |" in text
    assert "petlab protocol, CrypTen's sigmoid (TTP) / spu-SEMI2K (measured, same command): 0.50x" in text
    assert "- `spu-SEMI2K`: SecretFlow SPU 0.9.5, SEMI2K" in text
    assert ("- `spu-SEMI2K` (processes), 10,000 rows: inputs 0.2 s, training 1.8 s, compile 3.0 s; fixed point 18 "
            "fractional bits; SEMI2K: semi-honest." in text)
    # the simulator row says where it ran, has no traffic, and is compared as measured
    assert "- `spu-SEMI2K-sim` (simulator), 10,000 rows: inputs 0.1 s, training 1.4 s" in text
    assert "| spu-SEMI2K-sim | logreg | 10,000 | 10 | 0.0100 | 1.5 | 150 |" in text
    assert "/ spu-SEMI2K-sim (measured, same command): 0.67x" in text
    assert "quoted" not in text.lower()


def test_final_weights_stay_secret_between_organisations_unless_the_run_file_asks(tmp_path):
    """With the revealed scores, revealed weights give one linear equation per customer in
    the other party's features: ``petlab party`` runs keep them secret by default."""
    base = {"rendezvous": RV, "out": str(tmp_path / "runs"), "tls": "off", "params": {"provider": "TTP"}}
    assert host_job(config_path=_file(tmp_path, base), role="dealer").config.mpc.reveal_weights is False
    asked = {**base, "params": {"provider": "TTP", "reveal_weights": True}}
    assert host_job(config_path=_file(tmp_path, asked, "asked.yaml"), role="dealer").config.mpc.reveal_weights
    assert poc_config().mpc.reveal_weights  # the simulation compares the weights with plaintext


@pytest.mark.parametrize("param,value", [("audit_words", True), ("audit_party0_view", True),
                                         ("negative_control", "gateway-holds-wallet-mask")])
def test_audit_only_parameters_are_refused_between_organisations(tmp_path, param, value):
    doc = {"rendezvous": RV, "out": str(tmp_path / "runs"), "tls": "off",
           "params": {"provider": "TTP", "audit_words": True, "audit_party0_view": True, param: value}}
    with pytest.raises(ConfigError, match="belong to the privacy audit"):
        host_job(config_path=_file(tmp_path, doc), role="dealer")
