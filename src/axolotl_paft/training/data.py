"""Preference data for parallel mode, through Axolotl's RL loaders and TRL's
tokenisation.

`paft_preference_datasets` entries have exactly the shape `rl: dpo` accepts under
`datasets:` (path, type, split, data_files, field_*...). They are loaded and
transformed by Axolotl's own `prepare_preference_datasets` on a copy of the config
(`rl: dpo`, cached under `<dataset_prepared_path>/paft_preference/`), tokenised by
TRL's `DPOTrainer` preprocessing and batched by TRL's `DataCollatorForPreference`,
so the preference LoRA sees the batches an `axolotl train` DPO run would build.
"""

from __future__ import annotations

import copy
import json
import random
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from axolotl.common.const import DEFAULT_DATASET_PREPARED_PATH
from axolotl.utils.data.rl import prepare_preference_datasets
from axolotl.utils.data.shared import (
    generate_dataset_hash_from_config,
    get_prepared_dataset_path,
)
from axolotl.utils.data.utils import remove_double_bos_token
from axolotl.utils.dict import DictDefault
from axolotl.utils.schemas.enums import RLType
from datasets import Dataset
from transformers import PreTrainedTokenizerBase
from trl.trainer.dpo_trainer import DataCollatorForPreference, DPOTrainer

PREFERENCE_SUBDIR = "paft_preference"
TOKEN_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")
_OPTIONAL_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")
_LOCAL_PREFIXES = ("/", "./", "../", "~")
_FILE_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".arrow", ".txt")
TRAIN_KEY = "paft_preference_datasets"
TEST_KEY = "paft_preference_test_datasets"


@contextmanager
def preserved_random_state() -> Iterator[None]:
    """Run a block without moving Python's, NumPy's or torch's random streams."""
    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])


class PreferenceDataError(ValueError):
    """Preference data that cannot be used; the message names the dataset."""


def preference_cfg(
    cfg: DictDefault,
    entries: Sequence[Mapping],
    val_set_size: float = 0,
    test_entries: Sequence[Mapping] | None = None,
) -> DictDefault:
    """A deep copy of `cfg` as a `rl: dpo` run on `entries`, cached in a subfolder.

    The held-out part is the preference one (`val_set_size` of the rows, or
    `test_entries`), never the SFT run's; no hub push: the SFT cache is left alone.
    """
    pref = copy.deepcopy(cfg)
    pref.rl = RLType.DPO
    pref.datasets = [DictDefault(copy.deepcopy(dict(e))) for e in entries]
    pref.test_datasets = (
        [DictDefault(copy.deepcopy(dict(e))) for e in test_entries]
        if test_entries
        else None
    )
    # a count arrives as a float (the key is typed as Axolotl's val_set_size),
    # and datasets' train_test_split reads a float >= 1 as a bad fraction
    pref.val_set_size = int(val_set_size) if val_set_size >= 1 else val_set_size
    pref.push_dataset_to_hub = None
    base = cfg.dataset_prepared_path or DEFAULT_DATASET_PREPARED_PATH
    pref.dataset_prepared_path = str(Path(base) / PREFERENCE_SUBDIR)
    return pref


def load_preference_datasets(
    cfg: DictDefault,
    tokenizer: PreTrainedTokenizerBase,
    entries: Sequence[Mapping],
    *,
    val_set_size: float = 0,
    test_entries: Sequence[Mapping] | None = None,
) -> tuple[Dataset, Dataset | None]:
    """Load, transform, length-filter and tokenise the preference datasets: the
    training rows and the held-out rows (`None` without `val_set_size` or
    `test_entries`).

    Rows have `prompt_ids`, `chosen_ids` and `rejected_ids` (lists of ints).
    `cfg` (a validated, normalised Axolotl config) is not modified.
    """
    check_preference_entries(entries)
    if test_entries:
        check_preference_entries(test_entries, key=TEST_KEY)
    pref = preference_cfg(cfg, entries, val_set_size, test_entries)
    names = ", ".join(_label(i, e) for i, e in enumerate(entries))
    Path(pref.dataset_prepared_path).mkdir(parents=True, exist_ok=True)
    try:
        train, held_out = prepare_preference_datasets(pref, tokenizer)
    except Exception as exc:
        raise PreferenceDataError(
            f"{names}: Axolotl's DPO data loading failed: {exc}"
        ) from exc
    if {"image", "images"} & set(train.column_names):
        raise PreferenceDataError(f"{names}: image preference data is not supported")
    if len(train) == 0:
        # Axolotl cached the empty result under a hash that ignores
        # excess_length_strategy: drop it so a corrected config is not served it
        digest = generate_dataset_hash_from_config(
            pref, pref.datasets, tokenizer.name_or_path
        )
        shutil.rmtree(get_prepared_dataset_path(pref, digest), ignore_errors=True)
        raise PreferenceDataError(
            f"{names}: no preference rows left; every row was dropped as longer than "
            f"sequence_len={cfg.sequence_len} (see excess_length_strategy) or the "
            "data are empty"
        )
    splits = []
    for split, rows in (("training", train), ("held-out", held_out)):
        if rows is None:
            splits.append(None)
            continue
        rows = tokenize_preference_dataset(
            rows, tokenizer, max_length=cfg.sequence_len, num_proc=cfg.dataset_num_proc
        )
        if len(rows) == 0:
            raise PreferenceDataError(
                f"{names}: no {split} preference row left: every prompt fills "
                f"sequence_len={cfg.sequence_len}, or the split is empty"
            )
        splits.append(rows)
    return splits[0], splits[1]


def tokenize_preference_dataset(
    dataset: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int | None,
    num_proc: int | None = None,
) -> Dataset:
    """TRL `DPOTrainer`'s own preprocessing of prompt/chosen/rejected rows.

    Runs `DPOTrainer._prepare_dataset` (prompt extraction, EOS appended to
    non-conversational completions, tokenisation, rows whose prompt fills
    `max_length` dropped) with a stand-in trainer, then strips a doubled BOS from
    `prompt_ids` as `AxolotlDPOTrainer._tokenize` means to (that override is no
    longer reached in TRL >= 1.8). Keeps only the token columns.
    """
    args = SimpleNamespace(
        dataset_num_proc=num_proc, max_length=max_length, truncation_mode="keep_start"
    )
    stub = SimpleNamespace(_tokenizer=tokenizer)
    dataset = DPOTrainer._prepare_dataset(stub, dataset, tokenizer, args, TRAIN_KEY)
    keep = [c for c in (*TOKEN_COLUMNS, *_OPTIONAL_COLUMNS) if c in dataset.features]
    dataset = dataset.select_columns(keep)
    bos = tokenizer.bos_token_id
    if bos is None:
        return dataset

    def _strip_bos(row: dict) -> dict:
        ids = remove_double_bos_token({"input_ids": row["prompt_ids"]}, bos)
        return {"prompt_ids": ids["input_ids"]}

    return dataset.map(_strip_bos, desc="Removing double BOS")


def preference_collator(
    tokenizer: PreTrainedTokenizerBase, cfg: DictDefault
) -> DataCollatorForPreference:
    """TRL's preference collator as `rl: dpo` builds it: chosen rows first, then
    rejected; `input_ids`, `attention_mask`, `completion_mask`, each sequence
    truncated to `sequence_len` (keep start) and right-padded."""
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id
    return DataCollatorForPreference(
        pad_token_id=pad_id,
        max_length=cfg.sequence_len,
        truncation_mode="keep_start",
        pad_to_multiple_of=cfg.pad_to_multiple_of,
    )


def check_preference_entries(
    entries: Sequence[Mapping] | None, key: str = TRAIN_KEY
) -> None:
    """Cheap checks before any model load (raises `PreferenceDataError`).

    Every local file must exist, be readable and non-empty. Local JSON/JSONL files
    of the plain types (`chatml.*`, `llama3.*`, `chat_template.*`, user-defined or
    no type) must hold rows, each with a non-empty chosen and rejected field.
    Hub and remote datasets are left to Axolotl's loader.
    """
    if not entries:
        raise PreferenceDataError(f"{key}: no preference datasets given")
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or not entry.get("path"):
            raise PreferenceDataError(f"{key}[{index}]: each entry needs a `path`")
        label = _label(index, entry, key)
        for path in _local_files(entry, label):
            if _is_json(path, entry):
                _check_json_rows(path, label, _pair_fields(entry))


def _label(index: int, entry: Mapping, key: str = TRAIN_KEY) -> str:
    return f"{key}[{index}] ({entry.get('path')})"


def _local_files(entry: Mapping, label: str) -> list[Path]:
    """The entry's local files, each checked to exist, be readable and non-empty."""
    raw = str(entry["path"])
    path = Path(raw).expanduser()
    if "://" in raw:
        return []
    if path.is_dir():
        data_files = entry.get("data_files") or []
        if isinstance(data_files, str):
            data_files = [data_files]
        files = [Path(f).expanduser() for f in data_files]
    elif raw.startswith(_LOCAL_PREFIXES) or raw.endswith(_FILE_SUFFIXES):
        files = [path]
    elif path.exists():
        files = [path]  # an existing file with an unusual suffix
    else:  # a hub dataset id
        return []
    for file in files:
        if not file.is_file():
            raise PreferenceDataError(f"{label}: {file} does not exist")
        try:
            with file.open("rb") as handle:
                empty = not handle.read(1)
        except OSError as exc:
            raise PreferenceDataError(f"{label}: cannot read {file}: {exc}") from exc
        if empty:
            raise PreferenceDataError(f"{label}: {file} is empty (no rows)")
    return files


def _is_json(path: Path, entry: Mapping) -> bool:
    return path.suffix in (".json", ".jsonl") or entry.get("ds_type") == "json"


def _pair_fields(entry: Mapping) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """Columns holding chosen / rejected for types whose rows can be checked."""
    kind = entry.get("type")
    if isinstance(kind, Mapping):  # user-defined
        chosen = kind.get("field_chosen") or "chosen"
        return (chosen,), (kind.get("field_rejected") or "rejected",)
    module = str(kind).split(".")[0] if kind else "passthrough"
    if module == "chat_template":
        chosen = entry.get("field_chosen") or "chosen"
        return (chosen,), (entry.get("field_rejected") or "rejected",)
    if module in ("chatml", "llama3", "passthrough"):
        return ("chosen", "chosen_response"), ("rejected", "rejected_response")
    return None


def _check_json_rows(
    path: Path, label: str, fields: tuple[tuple[str, ...], tuple[str, ...]] | None
) -> None:
    count = 0
    for where, row in _json_rows(path, label):
        count += 1
        if fields is None or row is None:
            continue
        if not isinstance(row, Mapping):
            raise PreferenceDataError(f"{label}: {where} of {path} is not an object")
        for names in fields:
            if all(_blank(row.get(name)) for name in names):
                raise PreferenceDataError(
                    f"{label}: {where} of {path} has no non-empty `{names[0]}`"
                )
    if count == 0:
        raise PreferenceDataError(f"{label}: {path} holds no rows")


def _json_rows(path: Path, label: str) -> Iterator[tuple[str, Any]]:
    """(`row N`, row) of a JSON Lines file or a JSON array; a single JSON object
    (columns or `field:` data) gives one unchecked `None` row."""
    try:
        with path.open(encoding="utf-8-sig") as handle:
            text_start = handle.read(4096).lstrip()
            handle.seek(0)
            if text_start.startswith("["):
                rows = json.load(handle)
                yield from ((f"row {n}", r) for n, r in enumerate(rows, start=1))
                return
            count = 0
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    if count == 0:  # a pretty-printed JSON object
                        handle.seek(0)
                        json.load(handle)
                        yield "row 1", None
                        return
                    raise PreferenceDataError(
                        f"{label}: {path} line {line_no} is not valid JSON: {exc}"
                    ) from exc
                count += 1
                yield f"row {count} (line {line_no})", row
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PreferenceDataError(
            f"{label}: cannot read {path} as JSON: {exc}"
        ) from exc


def _blank(value: Any) -> bool:
    if isinstance(value, str):
        return not value.strip()
    return value is None or (isinstance(value, (list, dict)) and not value)
