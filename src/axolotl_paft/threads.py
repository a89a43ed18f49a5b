"""Threads for the CPU work after training: the machine's cores under the
launcher's single thread, the user's `OMP_NUM_THREADS` when set.

Kept apart from `outputs` (which imports mergekit, PEFT and the report) so
that a launcher's worker can read it without those imports.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOG = logging.getLogger(f"axolotl.{__name__}")  # shown by axolotl's log config

# What the launchers `axolotl train` uses set in every worker's environment:
# accelerate (launch, both launchers) and torch elastic (torchrun, accelerate's
# multi-GPU launcher).
LAUNCHER_ENV = ("ACCELERATE_DYNAMO_BACKEND", "TORCHELASTIC_RUN_ID")
THREADS_ENV = "OMP_NUM_THREADS"


def launcher_set_threads() -> bool:
    """Whether `OMP_NUM_THREADS` was set by the launcher, not the user.

    `accelerate launch` (what `axolotl train` runs) sets it to 1 in the worker
    when it is unset (`--num_cpu_threads_per_process`, default 1; torchrun does
    the same with several processes), and sets it to the user's value
    otherwise, so the worker's own value cannot tell the two apart. The
    launcher's environment can: the worker's parent is the launcher process,
    whose environment is what the user started it with."""
    if THREADS_ENV not in os.environ or not any(k in os.environ for k in LAUNCHER_ENV):
        return False
    try:
        launcher = Path(f"/proc/{os.getppid()}/environ").read_bytes().split(b"\0")
    except OSError:  # not Linux: keep what is set
        return False
    return not any(entry.startswith(f"{THREADS_ENV}=".encode()) for entry in launcher)


@contextmanager
def machine_threads() -> Iterator[int]:
    """torch on all the machine's cores for the CPU work after training (report,
    merges, search scoring), unless the user set `OMP_NUM_THREADS`; the
    launcher's single thread is restored afterwards. Yields the thread count."""
    import psutil
    import torch

    before = torch.get_num_threads()
    if launcher_set_threads():  # Linux only: sched_getaffinity too
        available = len(os.sched_getaffinity(0))
        cores = min(psutil.cpu_count(logical=False) or available, available)
        if cores > before:
            LOG.info(
                "paft: %s=%s was set by the launcher: the work after training "
                "uses %d threads (set %s to choose)",
                THREADS_ENV,
                os.environ[THREADS_ENV],
                cores,
                THREADS_ENV,
            )
            torch.set_num_threads(cores)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
