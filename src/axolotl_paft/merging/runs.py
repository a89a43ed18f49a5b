"""Which run made what: one run at a time per `output_dir` (`hold_output_dir`),
and the stamp (`run_stamp`) that ties what the search and the export write to
the run and the adapters it was built from."""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import socket
import time
import uuid
from pathlib import Path

LOG = logging.getLogger(f"axolotl.{__name__}")  # shown by axolotl's log config

LOCK = "paft_run.lock"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.")


class OutputDirInUse(RuntimeError):
    """Another run holds `output_dir` (the message names it)."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def hold_output_dir(output_dir: Path) -> str:
    """Take `output_dir` for this process's run, for as long as it lives (or
    until `release_output_dir`): `output_dir/paft_run.lock` names the run (its
    id, process, host, start). Another live run holding it is refused, naming
    output_dir and that run; a lock left by a dead process on this host is
    taken over (logged). Returns this run's id (the same id on a second call
    from the same process)."""
    path = Path(output_dir) / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    mine = {
        "run_id": f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}",
        "pid": os.getpid(),
        "host": host,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    for _ in range(2):
        try:
            with path.open("x") as handle:
                handle.write(json.dumps(mine))
            atexit.register(release_output_dir, output_dir, mine["run_id"])
            return mine["run_id"]
        except FileExistsError:
            other = _read(path)
            if other.get("pid") == os.getpid() and other.get("host") == host:
                return other["run_id"]
            if other.get("host") == host and not _alive(int(other.get("pid", -1))):
                LOG.warning(
                    "paft: %s was held by run %s (pid %s), which is gone: taking it",
                    output_dir, other.get("run_id"), other.get("pid"),
                )  # fmt: skip
                path.unlink(missing_ok=True)
                continue
            raise OutputDirInUse(
                f"output_dir {output_dir} is in use by another run (run "
                f"{other.get('run_id')}, pid {other.get('pid')} on "
                f"{other.get('host')}, since {other.get('started')}): two runs "
                "into one output_dir overwrite each other's adapters and results. "
                "Choose another output_dir, or wait for that run; if it is gone "
                f"(e.g. killed on another machine), delete {path}"
            ) from None
    raise OutputDirInUse(f"output_dir {output_dir}: could not take {path}")


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def run_id_of(output_dir: Path) -> str | None:
    """The id of the run holding `output_dir` from this process, if any."""
    held = _read(Path(output_dir) / LOCK)
    if held.get("pid") == os.getpid() and held.get("host") == socket.gethostname():
        return held.get("run_id")
    return None


def release_output_dir(output_dir: Path, run_id: str | None = None) -> None:
    """Give `output_dir` back (only this process's lock, `run_id`'s if named)."""
    path = Path(output_dir) / LOCK
    held = _read(path)
    if held.get("pid") == os.getpid() and run_id in (None, held.get("run_id")):
        path.unlink(missing_ok=True)


def adapter_digest(folder: Path) -> str:
    """A digest of an adapter: its adapter_config.json and adapter_model.*
    (not whatever else the folder holds: an SFT-only run's is output_dir)."""
    hasher = hashlib.sha256()
    files = sorted(
        p
        for p in Path(folder).iterdir()
        if p.is_file() and p.name.startswith(ADAPTER_FILES)
    )
    for path in files:
        hasher.update(path.name.encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                hasher.update(block)
    return hasher.hexdigest()


def run_stamp(adapters: dict[str, Path], run_id: str | None = None) -> dict:
    """What an output was built from: the run (`run_id`; None outside a
    training run) and each adapter's folder and digest."""
    return {
        "run_id": run_id,
        "adapters": {
            role: {"path": str(Path(f).resolve()), "sha256": adapter_digest(f)}
            for role, f in adapters.items()
        },
    }
