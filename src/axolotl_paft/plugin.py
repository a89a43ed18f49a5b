"""`PAFTPlugin`: Axolotl's hooks wired to the modules beside it, nothing else."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from axolotl.integrations.base import BasePlugin

from axolotl_paft.config.args import PAFTArgs
from axolotl_paft.config.checks import (
    LORA_KERNELS,
    check_adapter_choice,
    check_output_dir_is_ours,
    run_traps,
    search_split_defaults,
)
from axolotl_paft.const import PEFT_DEFAULT_ADAPTER, run_seed
from axolotl_paft.merging.configs import base_model_reference
from axolotl_paft.merging.outputs import search_rows, write_run_outputs
from axolotl_paft.merging.runs import hold_output_dir, release_output_dir
from axolotl_paft.threads import machine_threads
from axolotl_paft.training.l1 import L1SparsityCallback

LOG = logging.getLogger(f"axolotl.{__name__}")  # shown by axolotl's log config

# The metric prefix of the SFT LoRA when it is the only adapter (SFT-only mode).
SFT_ROLE = "sft"


def paft_args(cfg) -> PAFTArgs:
    """The plugin's keys out of a validated Axolotl config (its rules ran in
    Axolotl's validation; not again at every hook)."""
    keys = PAFTArgs.model_fields
    return PAFTArgs.of_validated({k: cfg[k] for k in keys if cfg.get(k) is not None})


def adapter_folders(cfg, args: PAFTArgs) -> dict[str, Path]:
    """Where this run's deltas are saved (role -> folder)."""
    output_dir = Path(cfg.output_dir)
    if args.paft_parallel:
        return {
            "sft": output_dir / args.paft_sft_adapter_name,
            "preference": output_dir / args.paft_preference_adapter_name,
        }
    folders = {"sft": output_dir}
    if args.paft_preference_adapter:
        folders["preference"] = Path(args.paft_preference_adapter)
    return folders


def main_process() -> bool:
    """Whether this process writes the run's outputs, in `post_train`, which
    Axolotl calls after `train()` has destroyed the process group. Axolotl
    0.19's `is_main_process` then asks torch for the rank and raises under
    DDP/FSDP (measured: scripts/test_old_line.sh, test_fsdp); the launcher's
    global `RANK` still says which process is first, on every node (what 0.21's
    `is_main_process` does after teardown)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


class PAFTPlugin(BasePlugin):
    """PAFT for Axolotl: sparse SFT LoRA, parallel SFT + preference LoRAs, report
    and mergekit configs.

    Parallel mode acts only in `axolotl train`, recognised by Axolotl calling
    `load_datasets` (train and preprocess do, before the model; evaluate,
    inference and merge-lora do not). In the commands that use a trained adapter,
    the same YAML loads the one adapter named by `lora_model_dir` as a plain LoRA,
    or stops and names the folders to pass.
    """

    def __init__(self):
        super().__init__()
        self._callback: L1SparsityCallback | None = None
        self._preference = None
        self._training = False
        self._outputs_written = False

    def register(self, cfg) -> None:
        """Before validation: parallel mode turns Axolotl's fused LoRA kernels off
        unless set (they read only the first active adapter); `paft_merge_search`
        without held-out files holds out a split of each side's data unless one
        is set."""
        if cfg.get("paft_parallel"):
            for key in LORA_KERNELS:
                if cfg.get(key) is None:
                    cfg[key] = False
        for key, value in search_split_defaults(cfg).items():
            LOG.info(
                "paft: paft_merge_search scores merges on held-out rows: %s: %s "
                "(set it, or name a held-out file, to choose)",
                key,
                value,
            )
            cfg[key] = value

    def get_input_args(self) -> str:
        return "axolotl_paft.config.args.PAFTArgs"

    def load_datasets(self, cfg, preprocess: bool = False):
        """Parallel mode: load (and cache) the preference data before the model;
        in a training run, first take output_dir for this run (`runs.
        hold_output_dir`: a second run into it at the same time is refused,
        naming the other) and make sure it holds no other run's adapters. SFT
        data stay Axolotl's: returning None keeps its own loading."""
        args = paft_args(cfg)
        if not preprocess and os.environ.get("RANK", "0") == "0":
            hold_output_dir(Path(cfg.output_dir))
        if not args.paft_parallel:
            return None
        if not preprocess:
            self._training = True
            check_output_dir_is_ours(cfg, args)
        self._preference = self._load_preference(cfg, args)
        return None

    def pre_model_load(self, cfg) -> None:
        """Parallel mode outside training (evaluate, inference, merge-lora):
        `lora_model_dir` must name one of the run's adapters (checked here, before
        the model loads); it is then loaded as a plain LoRA."""
        args = paft_args(cfg)
        if args.paft_parallel and not self._training:
            LOG.info(
                "paft: parallel-mode config outside `axolotl train`: %s",
                check_adapter_choice(
                    cfg,
                    (args.paft_sft_adapter_name, args.paft_preference_adapter_name),
                    command="this command (training runs through `axolotl train`, "
                    "where Axolotl loads the datasets through the plugin)",
                ),
            )

    def post_model_load(self, cfg, model) -> None:
        """Parallel training: split Axolotl's LoRA into the two named adapters. Not
        in post_lora_load: Axolotl >= 0.21 re-draws every LoRA A from the seed and
        the adapter's name right after it, and the SFT adapter must keep the draw a
        plain SFT run makes."""
        args = paft_args(cfg)
        if args.paft_parallel and self._training:
            from axolotl_paft.training.adapters import add_parallel_adapters

            add_parallel_adapters(
                model,
                args.paft_sft_adapter_name,
                args.paft_preference_adapter_name,
                seed=run_seed(cfg),
            )

    def get_training_args(self, cfg) -> dict | None:
        """Axolotl forwards `greater_is_better` only when true, so `false` is
        dropped and the Trainer's default (larger is better unless the name ends
        in "loss") picks the best checkpoint by the wrong end of, say,
        `eval_dpo/rewards/margins`: pass it on as written."""
        if cfg.get("greater_is_better") is False:
            return {"greater_is_better": False}
        return None

    def get_trainer_cls(self, cfg):
        if paft_args(cfg).paft_parallel and self._training:
            from axolotl_paft.training.trainer import PAFTParallelTrainer

            return PAFTParallelTrainer
        return None

    def post_trainer_create(self, cfg, trainer) -> None:
        args = paft_args(cfg)
        if not (args.paft_parallel and self._training):
            return
        from axolotl_paft.training.data import preference_collator
        from axolotl_paft.training.trainer import ParallelSettings, PreferenceStream

        if cfg.fsdp_config:
            from axolotl_paft.training.sharded import use_for_final_save

            use_for_final_save()

        train, held_out = self._preference
        settings = ParallelSettings(
            sft_adapter=args.paft_sft_adapter_name,
            preference_adapter=args.paft_preference_adapter_name,
            loss=args.paft_preference_loss,
            beta=args.paft_preference_beta,
            learning_rate=args.paft_preference_learning_rate,
            micro_batch_size=args.paft_preference_micro_batch_size
            or cfg.micro_batch_size,
            seed=run_seed(cfg),
            cache_reference=args.paft_preference_cache_reference,
        )
        stream = PreferenceStream(
            train,
            preference_collator(trainer.processing_class, cfg),
            settings.micro_batch_size,
            settings.seed,
        )
        trainer.attach(settings, stream, held_out)

    def add_callbacks_post_trainer(self, cfg, trainer) -> list:
        args = paft_args(cfg)
        if args.paft_parallel and not self._training:
            return []
        adapter, prefix = PEFT_DEFAULT_ADAPTER, SFT_ROLE
        if args.paft_parallel:
            adapter = prefix = args.paft_sft_adapter_name

        def l1_callback(adapter: str, prefix: str, l1_lambda: float):
            return L1SparsityCallback(
                trainer,
                adapter=adapter,
                l1_lambda=l1_lambda,
                mode=args.paft_l1_mode,
                threshold=args.paft_sparsity_threshold,
                prefix=prefix,
                log_metrics=args.paft_log_sparsity == "all"
                or (args.paft_log_sparsity == "penalised" and l1_lambda > 0),
            )

        self._callback = l1_callback(adapter, prefix, args.paft_l1_lambda)
        self._outputs_written = False
        LOG.info(
            "paft: L1 %s mode, lambda %g on adapter %r",
            args.paft_l1_mode,
            args.paft_l1_lambda,
            adapter,
        )
        callbacks = [self._callback]
        if args.paft_parallel:
            preference = args.paft_preference_adapter_name
            callbacks.append(
                l1_callback(preference, preference, args.paft_preference_l1_lambda)
            )
        return callbacks

    def post_train(self, cfg, model) -> None:
        self._write_outputs(cfg)

    def post_train_unload(self, cfg) -> None:
        self._write_outputs(cfg)

    @staticmethod
    def _load_preference(cfg, args: PAFTArgs):
        """Training and held-out preference rows, loaded without moving the random
        streams, which stay those of a plain SFT run (the LoRA init draws from
        them afterwards)."""
        from axolotl.loaders import load_tokenizer

        from axolotl_paft.training.data import (
            load_preference_datasets,
            preserved_random_state,
        )

        with preserved_random_state():
            return load_preference_datasets(
                cfg,
                load_tokenizer(cfg),
                args.paft_preference_datasets,
                val_set_size=args.paft_preference_val_set_size,
                test_entries=args.paft_preference_test_datasets,
            )

    def _write_outputs(self, cfg) -> None:
        """Once per run, after the final adapters were saved (post_train runs
        twice: before and after Axolotl's final save), on the main process, with
        torch on the machine's cores (`threads.machine_threads`); the base named
        as `configs.base_model_reference` names it. A failing merge search raises
        `outputs.MergeSearchFailed` once everything else is written: nothing of
        Axolotl's comes after this hook."""
        callback = self._callback
        if self._outputs_written or callback is None or callback.ended_at is None:
            return
        args = paft_args(cfg)
        adapters = adapter_folders(cfg, args)
        weights = adapters["sft"] / "adapter_model.safetensors"
        if not weights.exists() or weights.stat().st_mtime < callback.started_at:
            return
        self._outputs_written = True
        if not main_process():
            return
        base = base_model_reference(cfg.base_model, cfg.get("revision_of_model"))

        def held_out():
            return search_rows(base, args, callback.trainer)

        try:
            with machine_threads():
                write_run_outputs(
                    Path(cfg.output_dir), base, adapters, args, held_out, run_traps(cfg)
                )
        finally:
            release_output_dir(Path(cfg.output_dir))
