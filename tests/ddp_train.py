"""`axolotl train` for one torchrun process on CPU (gloo), used by test_ddp.py.

Axolotl has no multi-process CPU path, and this launcher bridges the two places
that assume GPUs, changing nothing else: it answers Axolotl's CUDA peer-access
probe with the AssertionError Axolotl already treats as "assume fine", and it puts
the model on the CPU where Axolotl pins `device_map` to the GPU index LOCAL_RANK.
"""

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
    torch.cuda.can_device_access_peer = _no_gpu_peer_access
    axolotl.cli.config.normalize_config = _normalize_on_cpu
    sys.argv = ["axolotl.cli.train", *sys.argv[1:]]
    runpy.run_module("axolotl.cli.train", run_name="__main__")
