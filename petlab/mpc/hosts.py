"""One command per party, on separate hosts: ``petlab party --role R --config run.yaml``.

Both organisations keep a copy of the same run file; each fills in its own table. The
gateway's host is the meeting point (rank 0 of torch.distributed, and it accepts the
greeting and the PSI connections); the dealer (TTP provider) connects there too.

.. code-block:: yaml

    rendezvous:
      address: 10.0.0.1     # the gateway's host, as the others reach it
      port: 29500           # torch.distributed (gloo) rendezvous, on the gateway's host
      psi_port: 29501       # greeting and private set intersection, on the gateway's host
    out: runs/joint-2026    # each role writes <out>/<role>/ on its own host
    params:                 # the proof of concept's parameters (see petlab.config)
      gateway_table: /data/gateway/customers.parquet   # the gateway's host only
      wallet_table: /data/wallet/users.csv             # the wallet's host only
      id_column: customer_id
      label_column: engaged
      label_party: gateway
      model: logreg
      provider: TTP
      peer_timeout_s: 60

Everything under ``params`` except each host's own settings
(:data:`petlab.config.LOCAL_FIELDS`: table paths, threads, timeouts) must be equal at
both parties; they compare it when they meet and stop, naming the difference, if not.

>>> import tempfile, pathlib
>>> tmp = pathlib.Path(tempfile.mkdtemp())
>>> path = tmp / "run.yaml"
>>> _ = path.write_text("rendezvous: {address: 127.0.0.1, port: 29500, psi_port: 29501}\\n"
...                     f"out: {tmp}/runs\\nparams: {{rows: 1000, provider: TFP, root: {tmp}/data}}\\n")
>>> job = host_job(config_path=path, role="wallet")
>>> job.port, job.config.mpc.provider, sorted(job.tables)
(29500, 'TFP', ['wallet'])
"""

from __future__ import annotations

import os
from pathlib import Path

from petlab.config import ConfigError, poc_config
from petlab.mpc.job import Job
from petlab.parties import DEALER, Party

__all__ = ["host_job", "ROLES"]

ROLES = (str(Party.GATEWAY), str(Party.WALLET), DEALER)

#: Stands in for the other party's table path, which this host does not know.
ELSEWHERE = "<on the other party's host>"


def _load_yaml(path: Path) -> dict:
    import yaml

    if not path.is_file():
        raise ConfigError(f"run file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot parse run file {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"run file {path} must hold a mapping (rendezvous, out, params)")
    unknown = set(data) - {"rendezvous", "out", "params"}
    if unknown:
        raise ConfigError(f"run file {path}: unknown section(s) {', '.join(sorted(unknown))} "
                          "(expected rendezvous, out, params)")
    return data


def host_job(*, config_path: str | os.PathLike, role: str, out: str | None = None,
             table: str | None = None) -> Job:
    """The job ``role`` runs on this host, from the shared run file.

    Args:
        config_path: the run file (YAML, see the module docstring).
        role: "gateway", "wallet" or "dealer".
        out: overrides the run file's ``out``.
        table: this party's own table (overrides ``params.<role>_table``).
    """
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}: expected one of {', '.join(ROLES)}")
    path = Path(config_path)
    data = _load_yaml(path)
    rv = data.get("rendezvous") or {}
    try:
        address, port, psi_port = str(rv["address"]), int(rv["port"]), int(rv["psi_port"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"run file {path}: rendezvous needs address, port and psi_port") from None
    if port == psi_port or not (0 < port < 65536 and 0 < psi_port < 65536):
        raise ConfigError(f"run file {path}: port and psi_port must be two different TCP ports")
    params = dict(data.get("params") or {})
    if table:
        if role == DEALER:
            raise ConfigError("the dealer holds no table")
        params[f"{role}_table"] = table
    if params.get("gateway_table") or params.get("wallet_table") or params.get("source") == "tables":
        for party in Party:  # the other party's path is not known here, and never read
            params.setdefault(f"{party}_table", ELSEWHERE)
            if params[f"{party}_table"] in ("", None):
                params[f"{party}_table"] = ELSEWHERE
    config = poc_config(**params)
    if config.data.source == "tables":  # keep the placeholder as it is (not a path)
        fixed = {f"{p}_table": ELSEWHERE for p in Party if params[f"{p}_table"] == ELSEWHERE}
        if fixed:
            import dataclasses

            config = dataclasses.replace(config, data=dataclasses.replace(config.data, **fixed))
    out_dir = out or data.get("out")
    if not out_dir:
        raise ConfigError(f"run file {path}: say where this party writes its record (out: or --out)")
    record = Path(out_dir) / role / "status.json"
    if record.is_file():
        raise ConfigError(f"{record.parent} holds a record already; runs are never overwritten")
    tables: dict = {}
    if role != DEALER:
        from petlab.pipeline import prepare_tables

        if config.data.source == "tables":
            own = getattr(config.data, f"{role}_table")
            if own == ELSEWHERE:
                raise ConfigError(f"the {role}'s table is not set: params.{role}_table or --table")
            tables[role] = {"path": own, "id_column": config.data.id_column,
                            "label_column": config.data.label_column if role == config.data.label_party else None}
        else:  # built-in data: generated (or loaded) on this host, and only this party's part is read
            tables[role] = prepare_tables(config=config)[role]
    return Job(config=config, address=address, port=port, out_dir=str(out_dir), tables=tables,
               psi_port=psi_port)
