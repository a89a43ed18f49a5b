"""The CPU work after training uses the machine's cores under `accelerate launch`
(what `axolotl train` runs), which sets OMP_NUM_THREADS=1 when it is unset, and
keeps the user's OMP_NUM_THREADS when set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

PROBE = """
import json, torch
from axolotl_paft.threads import machine_threads
before = torch.get_num_threads()
with machine_threads() as inside:
    used = torch.get_num_threads()
print("THREADS", json.dumps([before, inside, used, torch.get_num_threads()]))
"""


def launched(tmp_path: Path, threads: str | None) -> list[int]:
    """[before, yielded, inside, after] in a worker of `accelerate launch`, with
    `threads` as the user's OMP_NUM_THREADS (None: unset)."""
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = threads
    accelerate = Path(sys.executable).with_name("accelerate")
    done = subprocess.run(
        [str(accelerate), "launch", "--num_processes", "1", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", str(script)],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("THREADS")]
    return json.loads(line.split(" ", 1)[1])


CORES = min(psutil.cpu_count(logical=False) or 1, len(os.sched_getaffinity(0)))


@pytest.mark.skipif(CORES < 2, reason="one core: nothing to widen")
def test_the_launchers_single_thread_is_widened_for_the_work_after_training(
    tmp_path,
):
    assert launched(tmp_path, None) == [1, CORES, CORES, 1]


def test_a_users_thread_setting_is_kept(tmp_path):
    assert launched(tmp_path, "1") == [1, 1, 1, 1]
