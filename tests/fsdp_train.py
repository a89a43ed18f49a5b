"""`axolotl train` under FSDP2 for one torchrun process on CPU (gloo), used by
test_fsdp.py.

On top of ddp_train.py's bridges (CUDA peer-access probe, `device_map`,
`ACCELERATE_USE_CPU`: without it the Trainer refuses FSDP as "not distributed"),
FSDP2 meets two places that assume GPUs, bridged here and nowhere else:

- Axolotl builds its device mesh with `build_device_mesh("cuda")`: the mesh is
  built on "cpu" instead (`init_device_mesh`, which Accelerate imports at call
  time);
- Accelerate's `AcceleratorState` enables FSDP for GPU-like process types only, not
  for CPU processes: the FSDP plugin it was given is put back in place, so
  `accelerator.prepare` runs FSDP2's `fully_shard` as on GPUs.

Everything after that (Axolotl's FSDP2 preparation, `fully_shard`, the gloo
collectives, the Trainer, the plugin) is the code a GPU run executes.
"""

import os
import runpy
import sys

import axolotl.cli.config
import torch
import torch.distributed.device_mesh as device_mesh
from accelerate.state import AcceleratorState, DistributedType
from ddp_train import _no_gpu_peer_access, _normalize_on_cpu


def _mesh_on_cpu(_device_type, *args, _init=device_mesh.init_device_mesh, **kwargs):
    return _init("cpu", *args, **kwargs)


def _fsdp_on_cpu(self, *args, fsdp_plugin=None, _init=AcceleratorState.__init__, **kw):
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kw)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin


if __name__ == "__main__":
    os.environ["ACCELERATE_USE_CPU"] = "true"  # as ddp_train.py
    torch.cuda.can_device_access_peer = _no_gpu_peer_access
    axolotl.cli.config.normalize_config = _normalize_on_cpu
    device_mesh.init_device_mesh = _mesh_on_cpu
    AcceleratorState.__init__ = _fsdp_on_cpu
    sys.argv = ["axolotl.cli.train", *sys.argv[1:]]
    runpy.run_module("axolotl.cli.train", run_name="__main__")
