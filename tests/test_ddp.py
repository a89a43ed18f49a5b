"""Parallel mode under torchrun: 2 CPU processes on the gloo backend."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from test_l1 import scalars_per_writer, tensorboard_scalars
from test_trainer import max_gap, weights

from axolotl_paft.lab.toy import parallel_config, run_axolotl_train

pytestmark = pytest.mark.slow

# DoRA: its magnitude vectors must be averaged across processes like A and B.
# adam_epsilon: Adam moves every entry by about the learning rate whatever its
# gradient's size, so an entry whose gradient is ~0 moves by +-lr on the sign of
# rounding noise, and 2 processes against 1 (other reduction orders) differ by
# 1.3 lr in one entry of 512 on one CPU and not on another (measured: Intel Xeon
# 4e-3, AMD EPYC < 1e-4). An epsilon above that noise moves such entries by
# ~0 and leaves the comparison to what DDP does.
COMMON = {
    "max_steps": 6,
    "adam_epsilon": 1e-4,
    "peft_use_dora": True,
    "use_tensorboard": True,
    "paft_merge_methods": [],
    "paft_report": False,
}
LAUNCHER = Path(__file__).with_name("ddp_train.py")


def torchrun_two_processes(
    config: dict, path: Path, launcher: Path = LAUNCHER, timeout: int = 600
) -> str:
    """Run `config` through `launcher` on 2 torchrun processes; their output."""
    path.write_text(yaml.safe_dump(config))
    torchrun = Path(sys.executable).with_name("torchrun")
    # --standalone: a free rendezvous port, so that two launches (pytest-xdist
    # workers) can run at once
    args = ["--standalone", "--nproc_per_node", "2", str(launcher), str(path)]
    done = subprocess.run(
        [str(torchrun), *args],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "PATH": f"{torchrun.parent}{os.pathsep}{os.environ['PATH']}",
        },
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout + done.stderr


def test_two_processes(llama_world, llama_hub_id, tmp_path):
    """Per process micro-batch 2 on 2 processes against micro-batch 4 on one;
    the 2-process run names its base by a hub id and writes its outputs once."""
    two = tmp_path / "two"
    output = torchrun_two_processes(
        parallel_config(
            replace(llama_world, model_dir=llama_hub_id),
            two,
            micro_batch_size=2,
            **{**COMMON, "paft_report": True, "paft_merge_methods": ["ties"]},
        ),
        tmp_path / "two.yml",
    )
    # post_train runs after Axolotl destroyed the process group: one process
    # (global rank 0) writes the report and the config
    assert output.count("paft: results of this run") == 1
    assert output.count("paft: wrote mergekit config ties") == 1
    assert (two / "paft_report.json").is_file()
    # the hub id resolved to its cached snapshot, as mergekit needs it offline
    cached = "models--" + llama_hub_id.replace("/", "--") + "/snapshots/"
    assert cached in (two / "mergekit" / "ties.yml").read_text()
    one = tmp_path / "one"
    run_axolotl_train(parallel_config(llama_world, one, micro_batch_size=4, **COMMON))

    # both sides (Axolotl's DDP step for the SFT adapter, our sharding for the
    # preference one) match one process with the same global batch
    dpo_vs_one = max_gap(weights(two / "dpo"), weights(one / "dpo"))
    sft_vs_one = max_gap(weights(two / "sft"), weights(one / "sft"))
    print(f"2 processes vs 1: DPO {dpo_vs_one:.3g}, SFT {sft_vs_one:.3g}")
    assert dpo_vs_one < 1e-4
    assert sft_vs_one < 1e-4
    # the logged preference metrics are means over both processes' pairs (every
    # process that writes logs writes the same, reduced, values)
    one_logs = tensorboard_scalars(one)
    for key in ("train/dpo/loss", "train/dpo/rewards/margins"):
        two_logs = [w[key][0] for w in scalars_per_writer(two)]  # step 5
        print(f"{key} at step 5: 2 processes {two_logs}, 1 process {one_logs[key][0]}")
        assert two_logs == pytest.approx([one_logs[key][0]] * len(two_logs), rel=1e-3)


def _average_on_two_processes(rank: int, init_file: str, results) -> None:
    import torch
    import torch.distributed as dist

    from axolotl_paft.training.trainer import average_gradients

    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=2
    )
    both, one, none = (torch.nn.Parameter(torch.zeros(3)) for _ in range(3))
    both.grad = torch.full((3,), float(rank + 1))  # 1 and 2
    if rank == 0:
        one.grad = torch.full((3,), 4.0)  # rank 1 had no gradient for `one`
    average_gradients([both, one, none])
    results[rank] = (both.grad.tolist(), one.grad.tolist(), none.grad)
    dist.destroy_process_group()


def test_gradient_average_has_a_fixed_layout(tmp_path):
    """A tensor without a gradient on one process averages as zero there (no
    size mismatch, no hang); without a gradient anywhere it stays None."""
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(
            _average_on_two_processes,
            args=(str(tmp_path / "init"), results),
            nprocs=2,
            join=True,
        )
        results = dict(results)
    for rank in (0, 1):
        assert results[rank] == ([1.5] * 3, [2.0] * 3, None)
