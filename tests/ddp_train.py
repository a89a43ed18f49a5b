"""`axolotl train` for one torchrun process on CPU (gloo), used by test_ddp.py.

Axolotl has no multi-process CPU path, and this launcher bridges the places that
assume GPUs, changing nothing else: it answers Axolotl's CUDA peer-access probe
with the AssertionError Axolotl already treats as "assume fine", it puts the model
on the CPU where Axolotl pins `device_map` to the GPU index LOCAL_RANK, and it sets
`ACCELERATE_USE_CPU`: without it transformers' `TrainingArguments` builds a
non-distributed Accelerate state ("process group is initialized, but parallel_mode
!= ParallelMode.DISTRIBUTED"), so every process trained on all the data with no
DDP and no data sharding (measured: bit-identical to one process at the
per-process micro-batch).
"""

import os
import runpy
import sys

import axolotl.cli.config
import torch


def _no_gpu_peer_access(*_args):
    raise AssertionError("no CUDA device: peer access not probed")


def _normalize_on_cpu(cfg, _normalize=axolotl.cli.config.normalize_config):
    _normalize(cfg)
    cfg.device_map = {"": "cpu"}


if __name__ == "__main__":
    os.environ["ACCELERATE_USE_CPU"] = "true"
    torch.cuda.can_device_access_peer = _no_gpu_peer_access
    axolotl.cli.config.normalize_config = _normalize_on_cpu
    sys.argv = ["axolotl.cli.train", *sys.argv[1:]]
    runpy.run_module("axolotl.cli.train", run_name="__main__")
