"""Run records: one new folder per run, never overwritten.

A run folder holds ``params.json``, ``environment.json``, ``metrics.json``, figures,
the report, party records and (for notebook runs) the executed notebooks. Its
``status.json`` says ``running`` until the run ends, then ``complete`` or ``failed``:
a folder whose status is not ``complete`` is not a finished run, whatever else it holds.
Every file is written atomically (temporary file, then rename).

When a run completes, ``manifest.json`` records the SHA-256 of every file the run wrote
(all but ``status.json`` and the manifest itself), and ``status.json`` records the
manifest's own digest, so ``petlab verify`` can name any file added, removed or edited
afterwards (:mod:`petlab.review`). A later command that adds to a finished run (the audit
of ``petlab audit RUN``) writes the manifest again and lists what it added in it.

>>> import tempfile
>>> run = create_run(root=tempfile.mkdtemp(), label="demo")
>>> run.status()
'running'
>>> _ = run.write_json("metrics.json", {"auc": {"mpc": 0.8}})
>>> run.mark_complete(); run.status()
'complete'
>>> sorted(run.read_json("manifest.json")["files"])
['metrics.json']
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import platform
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

from petlab.data.tables import file_sha256

__all__ = ["Run", "RunExistsError", "create_run", "open_run", "environment_record", "list_runs", "git_state",
           "file_digests", "MANIFEST", "UNLISTED"]

#: The file that lists the digest of every other file of a finished run.
MANIFEST = "manifest.json"
#: Files the manifest does not list: the status (it records the manifest's digest) and itself.
UNLISTED = ("status.json", MANIFEST)


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


def file_digests(*, folder: str | os.PathLike) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` (relative POSIX path -> hex digest), except
    :data:`UNLISTED` and the temporary files of writes in progress.

    Args:
        folder: a run folder.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp()); _ = (folder / "a.txt").write_text("a")
    >>> file_digests(folder=folder)["a.txt"][:12]
    'ca978112ca1b'
    """
    folder = Path(folder)
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if not path.is_file() or rel in UNLISTED or (path.name.startswith(".") and path.name.endswith(".tmp")):
            continue
        out[rel] = file_sha256(path)
    return out


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

    def write_manifest(self, *, added_by: str | None = None) -> str:
        """Write ``manifest.json`` (the digest of every file in the folder but
        :data:`UNLISTED`) and return its own SHA-256.

        Args:
            added_by: the command that adds to a finished run (e.g. ``"petlab audit"``);
                the files it added or changed are listed under ``amendments``.
        """
        files = file_digests(folder=self.path)
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        manifest = {"algorithm": "sha256", "made": now, "files": files, "amendments": []}
        if added_by is not None:
            before = self.read_json(MANIFEST) if self.file(MANIFEST).is_file() else {"files": {}}
            manifest["made"] = before.get("made", now)
            changed = sorted(k for k, v in files.items() if before["files"].get(k) != v)
            manifest["amendments"] = before.get("amendments", []) + [
                {"by": added_by, "utc": now, "added_or_changed": changed}]
        self.write_json(MANIFEST, manifest)
        return file_sha256(self.file(MANIFEST))

    def mark_complete(self) -> None:
        """Write the manifest, then ``status.json`` saying ``complete`` (with the
        manifest's digest): a complete run always has its manifest."""
        self._set_status("complete", manifest_sha256=self.write_manifest())

    def amend(self, *, added_by: str) -> None:
        """Record that ``added_by`` added to this finished run: the manifest is written
        again (naming what changed) and the status keeps ``complete``."""
        status = self.read_json("status.json")
        self._set_status(status["status"], manifest_sha256=self.write_manifest(added_by=added_by),
                         **{k: v for k, v in status.items() if k not in ("status", "updated", "manifest_sha256")})

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


#: At most this many changed or untracked files are named in ``environment.json``.
GIT_LIST_LIMIT = 200


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, timeout=10, check=True)


def git_state(*, root: str | os.PathLike | None = None) -> dict:
    """What the checkout at ``root`` runs: its commit and what differs from it.

    Returns ``{"git_commit": "<sha>" or "<sha>+dirty", "git_changed": [...],
    "git_untracked": [...], "git_diff_sha256": ...}``: the files that differ from the
    commit, as ``git status --porcelain`` names them (``M petlab/x.py``), the untracked
    files git does not ignore (at most :data:`GIT_LIST_LIMIT` of each; ``git_*_count``
    says how many there are), and the SHA-256 of ``git diff --binary HEAD`` followed by
    the path and SHA-256 of each untracked file listed: two runs with the same digest ran
    the same code. Every value is ``None`` where git or the repository is missing; a run
    never fails for it.

    Args:
        root: the checkout (default: the one this petlab is imported from).
    """
    root = Path(root) if root is not None else Path(__file__).resolve().parent.parent
    none = {"git_commit": None, "git_changed": None, "git_untracked": None, "git_diff_sha256": None}
    try:
        commit = _git(root, "rev-parse", "HEAD").stdout.decode().strip()
        status = _git(root, "status", "--porcelain", "--untracked-files=all").stdout.decode()
        diff = _git(root, "diff", "--binary", "HEAD").stdout
    except (OSError, subprocess.SubprocessError):
        return none
    if not commit:
        return none
    lines = [line for line in status.splitlines() if line.strip()]
    changed = [line.strip() for line in lines if not line.startswith("??")]
    untracked = [line[3:] for line in lines if line.startswith("??")]
    digest = hashlib.sha256(diff)
    for rel in untracked[:GIT_LIST_LIMIT]:
        path = root / rel
        digest.update(f"\n{rel}\0".encode() + (file_sha256(path) if path.is_file() else "-").encode())
    dirty = bool(changed or untracked)
    return {"git_commit": commit + ("+dirty" if dirty else ""),
            "git_changed": changed[:GIT_LIST_LIMIT], "git_changed_count": len(changed),
            "git_untracked": untracked[:GIT_LIST_LIMIT], "git_untracked_count": len(untracked),
            "git_diff_sha256": digest.hexdigest() if dirty else None}


def environment_record(*, device: str, seed: int) -> dict:
    """Versions, machine, device, seed, and the git commit with what differs from it
    (:func:`git_state`), for the run record.

    Args:
        device: the device the parties compute on.
        seed: the run's data seed.
    """
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
        **git_state(),
        "utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
