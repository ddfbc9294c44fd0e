"""Run records: one new folder per run, never overwritten.

A run folder holds ``params.json``, ``environment.json``, ``metrics.json``, figures,
the report, party records and (for notebook runs) the executed notebooks. Its
``status.json`` says ``running`` until the run ends, then ``complete`` or ``failed``:
a folder whose status is not ``complete`` is not a finished run, whatever else it holds.
Every file is written atomically (temporary file, then rename).

>>> import tempfile
>>> run = create_run(root=tempfile.mkdtemp(), label="demo")
>>> run.status()
'running'
>>> _ = run.write_json("metrics.json", {"auc": {"mpc": 0.8}})
>>> run.mark_complete(); run.status()
'complete'
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["Run", "RunExistsError", "create_run", "open_run", "environment_record", "list_runs"]


class RunExistsError(FileExistsError):
    """The requested run folder exists already (runs are never overwritten)."""


def _atomic_write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _json_default(obj):
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__}")


@dataclasses.dataclass(frozen=True)
class Run:
    """A run folder and the helpers that write into it."""

    path: Path
    owned: bool = True  # this process created it (and so finishes it)

    def file(self, name: str) -> Path:
        return self.path / name

    def write_json(self, name: str, payload) -> Path:
        text = json.dumps(payload, indent=2, sort_keys=True, default=_json_default)
        return _atomic_write(self.path / name, text.encode())

    def read_json(self, name: str):
        return json.loads((self.path / name).read_text())

    def write_text(self, name: str, text: str) -> Path:
        return _atomic_write(self.path / name, text.encode())

    def status(self) -> str:
        try:
            return self.read_json("status.json")["status"]
        except (OSError, ValueError, KeyError):
            return "unknown"

    def _set_status(self, status: str, **extra) -> None:
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        self.write_json("status.json", {"status": status, "updated": now, **extra})

    def mark_complete(self) -> None:
        self._set_status("complete")

    def mark_failed(self, error: str) -> None:
        self._set_status("failed", error=error)

    def finish(self) -> None:
        """Mark complete if this process created the run (notebook runs started by a
        batch runner are finished by that runner, after the notebooks are saved)."""
        if self.owned:
            self.mark_complete()


def create_run(*, root: str | os.PathLike = "runs", label: str = "poc", path: str | os.PathLike | None = None) -> Run:
    """Create a new run folder, ``<root>/<UTC time>-<label>-<random>``, or exactly ``path``.

    Raises:
        RunExistsError: ``path`` exists and is not empty.
    """
    if path is not None:
        target = Path(path)
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise RunExistsError(f"run folder {target} exists already; runs are never overwritten")
        target.mkdir(parents=True, exist_ok=True)
    else:
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
        Path(root).mkdir(parents=True, exist_ok=True)
        while True:
            target = Path(root) / f"{stamp}-{label}-{secrets.token_hex(2)}"
            try:
                target.mkdir()
                break
            except FileExistsError:
                continue
    run = Run(path=target.resolve(), owned=True)
    run._set_status("running")
    return run


def open_run(path: str | os.PathLike) -> Run:
    """An existing run folder made by a batch runner (which will finish it)."""
    target = Path(path)
    if not (target / "status.json").is_file():
        raise FileNotFoundError(f"{target} is not a petlab run folder (no status.json)")
    return Run(path=target.resolve(), owned=False)


def list_runs(root: str | os.PathLike = "runs") -> list[dict]:
    """Every run under ``root`` with its status, newest first."""
    out = []
    for child in sorted(Path(root).glob("*/status.json"), reverse=True):
        run = Run(path=child.parent, owned=False)
        out.append({"path": str(run.path), "status": run.status()})
    return out


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if not commit:
        return None
    return commit + ("+dirty" if dirty else "")


def environment_record(*, device: str, seed: int) -> dict:
    """Versions, machine, device, seed and git commit, for the run record."""
    import importlib.metadata as md

    def version(name):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    import torch

    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "crypten": version("crypten"),
        "numpy": version("numpy"),
        "pandas": version("pandas"),
        "scikit-learn": version("scikit-learn"),
        "papermill": version("papermill"),
        "petlab": version("petlab"),
        "device": device,
        "seed": seed,
        "git_commit": _git_commit(),
        "utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
