"""The job a party process runs: the shared configuration, where to meet, where to write,
each party's own table and each data party's TLS identity (paths to its certificate,
its key and the peer's certificate). Written by the launcher as JSON; a party reads the
shared part, its own table entry and its own TLS identity only.

>>> from petlab.config import poc_config
>>> job = Job(config=poc_config(rows=1000), address="127.0.0.1", port=29500,
...           out_dir="runs/x/mpc", tables={})
>>> Job.from_dict(job.to_dict()) == job, job.tls_identity(role="wallet")
(True, None)
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from petlab.config import PocConfig
from petlab.mpc.tls import TlsIdentity

__all__ = ["Job"]


@dataclasses.dataclass(frozen=True)
class Job:
    config: PocConfig
    address: str  # rendezvous host (rank 0's address)
    port: int  # rendezvous TCP port
    out_dir: str  # each role writes <out_dir>/<role>/
    tables: dict  # party -> {"path", "id_column", "label_column"}
    psi_port: int = 0  # on the gateway's host: the greeting and the direct link
    tls: dict = dataclasses.field(default_factory=dict)  # role -> TlsIdentity; none: plain TCP
    gateway_psi_port: int = 0  # on the gateway's host: the gateway's end of the PSI link
    wallet_address: str = ""  # the wallet's host, as the gateway reaches it (empty: ``address``)
    wallet_psi_port: int = 0  # on the wallet's host: the wallet's end of the PSI link

    def psi_endpoints(self) -> dict:
        """Where each data party listens for the PSI link: ``{role: (host, port)}``."""
        return {"gateway": (self.address, self.gateway_psi_port),
                "wallet": (self.wallet_address or self.address, self.wallet_psi_port)}

    def tls_identity(self, *, role: str) -> TlsIdentity | None:
        """``role``'s TLS identity on petlab's sockets, or ``None`` (plain TCP)."""
        return self.tls.get(str(role))

    def shared_dict(self) -> dict:
        """The part every party must agree on (compared by digest at start-up)."""
        return {"config": self.config.shared_dict(), "address": self.address, "port": self.port,
                "psi_port": self.psi_port, "gateway_psi_port": self.gateway_psi_port,
                "wallet_address": self.wallet_address, "wallet_psi_port": self.wallet_psi_port}

    def to_dict(self) -> dict:
        return {"config": self.config.to_dict(), "address": self.address, "port": self.port,
                "psi_port": self.psi_port, "gateway_psi_port": self.gateway_psi_port,
                "wallet_address": self.wallet_address, "wallet_psi_port": self.wallet_psi_port,
                "out_dir": self.out_dir, "tables": self.tables,
                "tls": {role: identity.to_dict() for role, identity in self.tls.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "Job":
        return cls(
            config=PocConfig.from_dict(d["config"]),
            address=d["address"],
            port=int(d["port"]),
            out_dir=d["out_dir"],
            tables=d["tables"],
            psi_port=int(d.get("psi_port", 0)),
            gateway_psi_port=int(d.get("gateway_psi_port", 0)),
            wallet_address=str(d.get("wallet_address", "")),
            wallet_psi_port=int(d.get("wallet_psi_port", 0)),
            tls={role: TlsIdentity.from_dict(identity) for role, identity in (d.get("tls") or {}).items()},
        )

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Job":
        return cls.from_dict(json.loads(Path(path).read_text()))
