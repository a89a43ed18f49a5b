"""axolotl-paft: PAFT (arXiv 2406.17923) for Axolotl.

Enable with `plugins: [axolotl_paft.PAFTPlugin]` in an Axolotl LoRA/QLoRA config.
The plugin only wires Axolotl's hooks to the modules beside it:

- `l1`: L1 sparsity of the SFT LoRA and `<adapter>/...` metrics in the trainer's logs;
- `adapters`, `data`, `trainer`, `losses`: parallel mode (`paft_parallel: true`),
  an SFT and a preference LoRA trained together on one base;
- `outputs` (`report`, `merge`): after training, the sparsity report and one
  mergekit config per merge method.
"""

from __future__ import annotations

__all__ = ["PAFTArgs", "PAFTPlugin"]
__version__ = "0.1.0"


def __getattr__(name: str):
    """Import the plugin (and with it Axolotl) only when it is asked for, so that
    `axolotl_paft.lab.toy` and friends stay cheap to import."""
    if name == "PAFTPlugin":
        from axolotl_paft.plugin import PAFTPlugin

        return PAFTPlugin
    if name == "PAFTArgs":
        from axolotl_paft.config.args import PAFTArgs

        return PAFTArgs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
