"""axolotl-paft: PAFT (arXiv 2406.17923) for Axolotl.

Enable with `plugins: [axolotl_paft.PAFTPlugin]` in an Axolotl LoRA/QLoRA config.
The plugin only wires Axolotl's hooks to the modules beside it:

- `l1`: L1 sparsity of the SFT LoRA and `paft/...` metrics in the trainer's logs;
- `outputs` (`report`, `merge`): after training, the sparsity report and one
  mergekit config per merge method.
"""

from __future__ import annotations

import logging
from pathlib import Path

from axolotl.integrations.base import BasePlugin
from axolotl.utils.distributed import is_main_process

from axolotl_paft.args import PAFTArgs
from axolotl_paft.l1 import L1SparsityCallback
from axolotl_paft.outputs import write_run_outputs

__all__ = ["PAFTArgs", "PAFTPlugin"]
__version__ = "0.1.0"

LOG = logging.getLogger(f"axolotl.{__name__}")  # shown by axolotl's log config

SFT_ADAPTER = "default"


def paft_args(cfg) -> PAFTArgs:
    """The plugin's keys out of a validated Axolotl config."""
    keys = PAFTArgs.model_fields
    return PAFTArgs(**{k: cfg[k] for k in keys if cfg.get(k) is not None})


class PAFTPlugin(BasePlugin):
    """PAFT for Axolotl: sparse SFT LoRA, report and mergekit configs."""

    def __init__(self):
        super().__init__()
        self._callback: L1SparsityCallback | None = None
        self._outputs_written = False

    def get_input_args(self) -> str:
        return "axolotl_paft.args.PAFTArgs"

    def add_callbacks_post_trainer(self, cfg, trainer) -> list:
        args = paft_args(cfg)
        self._callback = L1SparsityCallback(
            trainer,
            adapter=SFT_ADAPTER,
            l1_lambda=args.resolved_l1_lambda(),
            mode=args.paft_l1_mode,
            threshold=args.paft_sparsity_threshold,
        )
        self._outputs_written = False
        LOG.info(
            "paft: L1 %s mode, lambda %g on adapter %r",
            args.paft_l1_mode,
            args.resolved_l1_lambda(),
            SFT_ADAPTER,
        )
        return [self._callback]

    def post_train(self, cfg, model) -> None:
        self._write_outputs(cfg)

    def post_train_unload(self, cfg) -> None:
        self._write_outputs(cfg)

    def _write_outputs(self, cfg) -> None:
        """Once per run, after the final adapter was saved (post_train runs twice)."""
        callback = self._callback
        if self._outputs_written or callback is None or callback.ended_at is None:
            return
        output_dir = Path(cfg.output_dir)
        weights = output_dir / "adapter_model.safetensors"
        if not weights.exists() or weights.stat().st_mtime < callback.started_at:
            return
        self._outputs_written = True
        if not is_main_process():
            return
        args = paft_args(cfg)
        adapters = {"sft": output_dir}
        if args.paft_preference_adapter:
            adapters["preference"] = Path(args.paft_preference_adapter)
        write_run_outputs(output_dir, cfg.base_model, adapters, args)
