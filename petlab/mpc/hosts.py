"""One command per party, on separate hosts: ``petlab party --role R --config run.yaml``.

Both organisations keep a copy of the same run file; each fills in its own table and
its own ``tls`` section. The gateway's host is the meeting point (rank 0 of
torch.distributed, and it accepts the greeting and the direct link); the dealer (TTP
provider) connects there too. The private set intersection runs over SecretFlow's link,
on which each data party listens on its own port: the gateway on ``gateway_psi_port``, the
wallet on ``wallet_psi_port`` at ``wallet_address``.

.. code-block:: yaml

    rendezvous:
      address: 10.0.0.1     # the gateway's host, as the others reach it
      port: 29500           # torch.distributed (gloo) rendezvous, on the gateway's host
      psi_port: 29501       # greeting and direct link, on the gateway's host
      gateway_psi_port: 29502    # the gateway's end of the PSI link, on the gateway's host
      wallet_address: 10.0.0.2   # the wallet's host, as the gateway reaches it
      wallet_psi_port: 29503     # the wallet's end of the PSI link, on the wallet's host
    out: runs/joint-2026    # each role writes <out>/<role>/ on its own host
    tls:                    # the gateway's copy; made by: petlab keygen --role gateway --out keys
      cert: keys/gateway.crt          # this organisation's certificate
      key: keys/gateway.key           # its private key: never leaves this host
      peer_cert: keys/wallet.crt      # the wallet's certificate, the only one accepted
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

``tls`` gives the gateway and the wallet mutually authenticated TLS 1.3 on petlab's own
sockets (greeting, PSI, direct link; :mod:`petlab.mpc.tls`), each accepting only the
other's pinned certificate. ``{role}`` and ``{peer}`` in its paths stand for this host's
role and the other data party's, so one file can serve both organisations
(``cert: keys/{role}.crt``, ``key: keys/{role}.key``, ``peer_cert: keys/{peer}.crt``);
relative paths are taken from the current folder, as the table paths are. A data party
refuses to start without the section; ``tls: off`` runs without it, with a warning (all
of petlab's own traffic then unauthenticated and in the clear). The dealer ignores it: it
speaks only torch.distributed, which petlab neither encrypts nor authenticates.

>>> import tempfile, pathlib
>>> from petlab.mpc.tls import throwaway_pair
>>> tmp = pathlib.Path(tempfile.mkdtemp())
>>> _ = throwaway_pair(folder=tmp / "keys")
>>> path = tmp / "run.yaml"
>>> _ = path.write_text("rendezvous: {address: 127.0.0.1, port: 29500, psi_port: 29501, "
...                     "gateway_psi_port: 29502, wallet_address: 127.0.0.1, wallet_psi_port: 29503}\\n"
...                     f"tls:\\n  cert: {tmp}/keys/{{role}}.crt\\n  key: {tmp}/keys/{{role}}.key\\n"
...                     f"  peer_cert: {tmp}/keys/{{peer}}.crt\\n"
...                     f"out: {tmp}/runs\\nparams: {{rows: 1000, provider: TFP, root: {tmp}/data}}\\n")
>>> job = host_job(config_path=path, role="wallet")
>>> job.port, job.config.mpc.provider, sorted(job.tables), pathlib.Path(job.tls["wallet"].peer_cert).name
(29500, 'TFP', ['wallet'], 'gateway.crt')
>>> job.psi_endpoints()
{'gateway': ('127.0.0.1', 29502), 'wallet': ('127.0.0.1', 29503)}
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from petlab.config import ConfigError, poc_config
from petlab.mpc.job import Job
from petlab.mpc.tls import TlsError, TlsIdentity
from petlab.parties import DEALER, Party

__all__ = ["host_job", "ROLES"]

log = logging.getLogger("petlab.hosts")

ROLES = (str(Party.GATEWAY), str(Party.WALLET), DEALER)

#: Parameters only the privacy audit's own runs may set: they write every key and mask share
#: to disk (audit_words, audit_party0_view) or break the protocol on purpose (negative_control).
AUDIT_ONLY_PARAMS = ("audit_words", "audit_party0_view", "negative_control")

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
    unknown = set(data) - {"rendezvous", "out", "params", "tls"}
    if unknown:
        raise ConfigError(f"run file {path}: unknown section(s) {', '.join(sorted(unknown))} "
                          "(expected rendezvous, out, params, tls)")
    return data


_TLS_KEYS = ("cert", "key", "peer_cert")


def _tls_identity(data: dict, *, path: Path, role: str) -> TlsIdentity | None:
    """This data party's TLS identity from the run file's ``tls`` section (``None``:
    ``tls: off``)."""
    peer = next(str(p) for p in Party if str(p) != role)
    make = f"`petlab keygen --role {role} --out DIR` makes this organisation's key pair"
    section = data.get("tls")
    if section is None:
        raise ConfigError(f"run file {path}: no tls section: {make}; set tls: {{cert, key, peer_cert}} "
                          f"with the {peer}'s certificate as peer_cert (or tls: off to run without TLS)")
    if section is False or section == "off":
        log.warning("tls: off: everything on petlab's own sockets (greeting, PSI, direct link) travels "
                    "unauthenticated and in the clear, the openings included, and the two parties' key "
                    "exchange is unauthenticated: an attacker in the middle could learn both their keys")
        return None
    if not isinstance(section, dict) or set(section) != set(_TLS_KEYS):
        raise ConfigError(f"run file {path}: tls needs exactly cert, key and peer_cert (or: tls: off)")
    if not all(isinstance(section[k], str) for k in _TLS_KEYS):
        raise ConfigError(f"run file {path}: tls paths must be strings (quote one that starts with {{)")

    def resolve(value) -> str:
        return str(Path(str(value).replace("{role}", role).replace("{peer}", peer)).expanduser().absolute())

    identity = TlsIdentity(role=role, peer_role=peer, **{k: resolve(section[k]) for k in _TLS_KEYS})
    try:
        return identity.check()
    except TlsError as err:
        raise ConfigError(f"run file {path}: {err} ({make}; peer_cert is the {peer}'s certificate)") from None


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
    gateway_psi_port, wallet_address, wallet_psi_port = _psi_endpoints(
        rv, path=path, address=address, ports=(port, psi_port), needed=params.get("alignment", "psi") == "psi")
    if table:
        if role == DEALER:
            raise ConfigError("the dealer holds no table")
        params[f"{role}_table"] = table
    if params.get("gateway_table") or params.get("wallet_table") or params.get("source") == "tables":
        for party in Party:  # the other party's path is not known here, and never read
            params.setdefault(f"{party}_table", ELSEWHERE)
            if params[f"{party}_table"] in ("", None):
                params[f"{party}_table"] = ELSEWHERE
    # between organisations the final weights are not revealed unless the run file asks:
    # with the revealed scores they give one linear equation per customer in the other's features
    params.setdefault("reveal_weights", False)
    audit_only = sorted(k for k in params if k in AUDIT_ONLY_PARAMS)
    if audit_only:  # they keep every key and mask share on disk, or break the protocol on purpose
        raise ConfigError(f"run file {path}: {', '.join(audit_only)} belong to the privacy audit's own small "
                          "runs (petlab audit), not to a run between organisations")
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
    tls = {} if role == DEALER else {role: _tls_identity(data, path=path, role=role)}
    tls = {r: identity for r, identity in tls.items() if identity is not None}
    tables: dict = {}
    if role != DEALER:
        from petlab.pipeline import prepare_tables

        if config.data.source == "tables":
            own = getattr(config.data, f"{role}_table")
            if own == ELSEWHERE:
                raise ConfigError(f"the {role}'s table is not set: params.{role}_table or --table")
            tables[role] = {"path": own, "id_column": config.data.id_column_of(role),
                            "label_column": config.data.label_column if role == config.data.label_party else None}
        else:  # built-in data: generated (or loaded) on this host, and only this party's part is read
            tables[role] = prepare_tables(config=config)[role]
    return Job(config=config, address=address, port=port, out_dir=str(out_dir), tables=tables,
               psi_port=psi_port, tls=tls, gateway_psi_port=gateway_psi_port, wallet_address=wallet_address,
               wallet_psi_port=wallet_psi_port)


def _psi_endpoints(rv: dict, *, path: Path, address: str, ports: tuple[int, int],
                   needed: bool) -> tuple[int, str, int]:
    """``(gateway_psi_port, wallet_address, wallet_psi_port)`` from the rendezvous section:
    where each data party listens for the PSI link (the other connects there)."""
    keys = ("gateway_psi_port", "wallet_address", "wallet_psi_port")
    if not needed and not any(k in rv for k in keys):  # alignment "given": there is no PSI
        return 0, "", 0
    try:
        gateway_psi_port, wallet_address = int(rv["gateway_psi_port"]), str(rv["wallet_address"])
        wallet_psi_port = int(rv["wallet_psi_port"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"run file {path}: rendezvous needs gateway_psi_port, wallet_address and "
                          "wallet_psi_port (where each party listens for the private set intersection; "
                          "the other connects there)") from None
    for name, value in (("gateway_psi_port", gateway_psi_port), ("wallet_psi_port", wallet_psi_port)):
        if not 0 < value < 65536:
            raise ConfigError(f"run file {path}: {name} must be a TCP port, got {value}")
    if gateway_psi_port in ports:
        raise ConfigError(f"run file {path}: gateway_psi_port {gateway_psi_port} is already the rendezvous "
                          "port or psi_port")
    if wallet_address == address and wallet_psi_port in (*ports, gateway_psi_port):
        raise ConfigError(f"run file {path}: wallet_psi_port {wallet_psi_port} is already another port "
                          "on the same host")
    return gateway_psi_port, wallet_address, wallet_psi_port
