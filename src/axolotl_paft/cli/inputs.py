"""The console scripts' inputs, checked before any model loads: argparse types
(a bad value is refused naming its flag and what it allows) and the checks
between flags, on files and on adapters (`check_inputs`), which the config keys
have too (`config.checks`, `merging.scoring.check_held_out_file`)."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from axolotl_paft.config.checks import adapter_fits_base, adapter_outside
from axolotl_paft.merging.configs import DEFAULT_SEARCH_METHODS, METHOD_LAYOUTS
from axolotl_paft.merging.scoring import check_held_out_file

# Candidate names the commands give their own rows.
RESERVED_NAMES = ("base",)


def _at_least(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None:
        raise argparse.ArgumentTypeError(f"a whole number >= {least}, not {text!r}")
    if value < least:
        raise argparse.ArgumentTypeError(f"a whole number >= {least}, not {text}")
    return value


def positive(text: str) -> int:
    """A whole number >= 1 (counts, limits, ranks, budgets)."""
    return _at_least(text, 1)


def count(text: str) -> int:
    """A whole number >= 0 (few-shot examples)."""
    return _at_least(text, 0)


def error_bound(text: str) -> float:
    """A relative error bound: a number in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number in (0, 1], not {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"a number in (0, 1], not {text}")
    return value


def _unique_list(text: str) -> list[str]:
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"a comma-separated list, not {text!r}")
    repeated = sorted({i for i in items if items.count(i) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(f"{repeated} given twice")
    return items


def methods(text: str) -> list[str]:
    """Comma-separated mergekit methods, each known once."""
    items = _unique_list(text)
    unknown = [m for m in items if m not in METHOD_LAYOUTS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown {unknown}; methods: {','.join(METHOD_LAYOUTS)}"
        )
    return items


def densities(text: str) -> list[float]:
    """Comma-separated densities, each in (0, 1], once."""
    values = []
    for item in _unique_list(text):
        try:
            value = float(item)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r} is not a number") from None
        if not 0 < value <= 1:
            raise argparse.ArgumentTypeError(f"{item} is not in (0, 1]")
        values.append(value)
    if len({f"{v:g}" for v in values}) != len(values):
        raise argparse.ArgumentTypeError(f"a density given twice in {text!r}")
    return values


def candidate(text: str) -> tuple[str, Path]:
    """NAME=FOLDER: a name of its own (not a reserved one), an existing folder."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"use NAME=FOLDER, not {text!r}")
    if name in RESERVED_NAMES:
        raise argparse.ArgumentTypeError(
            f"{name!r} is reserved (the base is always evaluated as it): rename it"
        )
    if not Path(path).is_dir():
        raise argparse.ArgumentTypeError(f"{path!r} is not a folder")
    return name, Path(path)


def lm_eval_tasks(text: str) -> list:
    """A task name or a YAML list of names and {name, weight, metric}."""
    from axolotl_paft.merging.lm_eval_objective import task_configurations

    try:
        tasks = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise argparse.ArgumentTypeError(f"not YAML: {err}") from None
    tasks = [tasks] if isinstance(tasks, str | dict) else tasks
    if not isinstance(tasks, list) or not tasks:
        raise argparse.ArgumentTypeError(f"a task name or a list of tasks: {text!r}")
    try:
        task_configurations(tasks)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).splitlines()[0]) from None
    return tasks


def check_data(parser: argparse.ArgumentParser, opts: argparse.Namespace) -> None:
    """The held-out files, as the config keys' are checked."""
    for flag, side in (("--sft-data", "skill"), ("--preference-data", "preference")):
        try:
            check_held_out_file(getattr(opts, flag[2:].replace("-", "_")), side)
        except ValueError as err:
            parser.error(f"{flag}: {err}")


def check_adapter(
    parser: argparse.ArgumentParser,
    flag: str,
    folder: Path,
    base: str,
    out: Path | None = None,
) -> None:
    """An adapter flag: a PEFT folder trained on `base`, outside `out` (which
    the command writes)."""
    try:
        if out is not None:
            adapter_outside("--out", out, folder)
        adapter_fits_base(folder, base)
    except ValueError as err:
        parser.error(f"{flag}: {err}")


def check_candidates(
    parser: argparse.ArgumentParser, items: list[tuple[str, Path]], base: str
) -> dict[str, Path]:
    """`--candidate`s: names given once; an adapter trained on `base`, or a full
    model folder (config.json) with the base's vocabulary (it is scored with the
    base's tokenizer)."""
    names = [name for name, _ in items]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        parser.error(f"--candidate: the name(s) {repeated} given twice")
    for name, path in items:
        flag = f"--candidate {name}={path}"
        if (path / "adapter_config.json").is_file():
            check_adapter(parser, flag, path, base)
        elif not (path / "config.json").is_file():
            parser.error(
                f"{flag}: neither a PEFT adapter (adapter_config.json) nor a model "
                "folder (config.json)"
            )
        else:
            _check_vocabulary(parser, flag, path, base)
    return dict(items)


def _check_vocabulary(parser, flag: str, path: Path, base: str) -> None:
    from transformers import AutoConfig

    try:
        base_config = AutoConfig.from_pretrained(base)
    except OSError:
        return  # the base's own loading names it
    model_config = AutoConfig.from_pretrained(path)
    sizes = [
        getattr(c.get_text_config(), "vocab_size", None)
        for c in (base_config, model_config)
    ]
    if sizes[0] != sizes[1]:
        parser.error(
            f"{flag}: its vocabulary ({sizes[1]} tokens) is not the base's "
            f"({sizes[0]}): it is scored with the base's tokenizer"
        )


def check_searchable(parser: argparse.ArgumentParser, chosen: list[str]) -> None:
    unfit = [m for m in chosen if m not in DEFAULT_SEARCH_METHODS]
    if unfit:
        parser.error(
            f"--methods: {unfit} cannot be searched; searchable: "
            f"{','.join(DEFAULT_SEARCH_METHODS)}"
        )
