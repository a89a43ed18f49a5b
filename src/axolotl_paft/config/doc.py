"""`docs/config.md`, generated from `PAFTArgs` and the registries.

    python -m axolotl_paft.config.doc          # rewrite docs/config.md
    python -m axolotl_paft.config.doc --check  # exit 1 if it is stale

As Axolotl generates its config reference from its schema: one section per key
group of `PAFTArgs` (its docstring is the heading), one row per key with its type,
default, bounds and description, then the allowed merge methods and preference
losses with their papers and the merge search's measures. `tests/test_configdoc.py`
fails when the file is stale.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from pathlib import Path

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from axolotl_paft.config.args import PAFTArgs
from axolotl_paft.merging.answers import CHECK_KINDS
from axolotl_paft.merging.candidates import PROFILES
from axolotl_paft.merging.configs import METHOD_LAYOUTS
from axolotl_paft.merging.scoring import TEACHER_FORCED
from axolotl_paft.training.losses import LOSS_SPECS

DOC_PATH = Path(__file__).resolve().parents[3] / "docs" / "config.md"
HEADER = """\
# Config keys

<!-- Generated from axolotl_paft.config.args by `python -m axolotl_paft.config.doc`.
     Do not edit by hand: change the Field in src/axolotl_paft/config/args.py (or a
     registry) and regenerate; tests/test_configdoc.py fails while this is stale. -->

Enable the plugin with `plugins: [axolotl_paft.PAFTPlugin]` in an Axolotl LoRA or
QLoRA config. Every key is flat and starts with `paft_`; all of them are checked in
Axolotl's config validation, before any model or data set loads, and a bad value
fails with an error naming the key. A `paft_` key that is not listed here is refused
with the nearest known key ("did you mean ...").
"""
_BOUNDS = (
    (annotated_types.Gt, ">", "gt"),
    (annotated_types.Ge, ">=", "ge"),
    (annotated_types.Lt, "<", "lt"),
    (annotated_types.Le, "<=", "le"),
)


def _type(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        named = [_type(a) for a in args if a is not type(None)]
        return " or ".join(named) + (" or unset" if type(None) in args else "")
    if origin is list:
        return f"list of {_type(args[0])}" if args else "list"
    return getattr(annotation, "__name__", str(annotation))


def _value(value) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list | tuple):
        return "`[" + ", ".join(map(str, value)) + "]`" if value else "`[]`"
    return f"`{value}`"


def _bounds(field: FieldInfo) -> str:
    found = []
    for meta in field.metadata:
        for kind, symbol, attr in _BOUNDS:
            if isinstance(meta, kind):
                found.append(f"{symbol} {getattr(meta, attr)}")
    return ", ".join(found)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _table(columns: list[str], rows) -> list[str]:
    """A markdown table of `rows` (each a sequence of cells) under `columns`."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return [*lines, *("| " + " | ".join(cells) + " |" for cells in rows), ""]


def _key_row(name: str, field: FieldInfo) -> tuple[str, ...]:
    return (
        f"`{name}`",
        _type(field.annotation),
        _value(field.get_default(call_default_factory=True)),
        _bounds(field),
        _cell(field.description or ""),
    )


def _section(group: type[BaseModel]) -> list[str]:
    title, _, rest = (group.__doc__ or group.__name__).partition(":")
    lines = [f"## {title.strip()}", "", f"`{group.__name__}`: {_cell(rest)}", ""]
    rows = [_key_row(name, group.model_fields[name]) for name in group.__annotations__]
    return lines + _table(["key", "type", "default", "bounds", "meaning"], rows)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _methods() -> list[str]:
    title = "`paft_merge_methods` (from `axolotl_paft.merging.configs.METHOD_LAYOUTS`):"
    rows = [
        (f"`{m}`", _yes(lay.default), _yes(lay.min_deltas > 1), f"<{lay.paper}>")
        for m, lay in METHOD_LAYOUTS.items()
    ]
    columns = ["method", "written by default", "needs two deltas", "paper"]
    return [title, "", *_table(columns, rows)]


def _losses() -> list[str]:
    title = "`paft_preference_loss` (from `axolotl_paft.training.losses.LOSS_SPECS`):"
    rows = [
        (
            f"`{name}`",
            _yes(spec.needs_reference),
            f"`{spec.lengths}`" if spec.lengths else "no",
            _yes(spec.needs_chosen_nll),
            f"<{spec.paper}>",
        )
        for name, spec in LOSS_SPECS.items()
    ]
    columns = [
        "loss", "needs a reference", "length-normalised by", "needs the chosen NLL",
        "paper",
    ]  # fmt: skip
    return [title, "", *_table(columns, rows)]


def _measures() -> list[str]:
    title = (
        "`paft_merge_search_skill_measure` and `paft_merge_search_preference_measure` "
        "(from `axolotl_paft.merging.scoring.MEASURES`, the teacher-forced ones):"
    )
    rows = [
        (f"`{name}`", m.side, _cell(m.description))
        for name, m in TEACHER_FORCED.items()
    ]
    return [title, "", *_table(["measure", "side", "meaning"], rows)]


def _profiles() -> list[str]:
    title = (
        "`paft_merge_search_profiles`: multipliers of each delta's weight from the "
        "first layer to the last, as mergekit's per-layer lists (from "
        "`axolotl_paft.merging.candidates.PROFILES`):"
    )
    rows = [
        (
            f"`{name}`", str(list(profile.sft)), str(list(profile.preference)),
            _cell(profile.description), profile.paper or "",
        )
        for name, profile in PROFILES.items()
    ]  # fmt: skip
    columns = ["profile", "SFT", "preference", "what", "paper"]
    return [title, "", *_table(columns, rows)]


def _check_kinds() -> list[str]:
    title = (
        "`paft_merge_search_answer_checks` kinds, one `{kind: value}` per check "
        "(from `axolotl_paft.merging.answers.CHECK_KINDS`):"
    )
    rows = [(f"`{name}`", _cell(k.description)) for name, k in CHECK_KINDS.items()]
    return [title, "", *_table(["kind", "passes when"], rows)]


def _groups(model: type[BaseModel]) -> list[type[BaseModel]]:
    """The key groups of `model`, in the order its parents name them; a parent
    that only joins groups (`MergeArgs`) stands for its own parents."""
    groups = []
    for parent in model.__bases__:
        groups += [parent] if parent.__bases__ == (BaseModel,) else _groups(parent)
    return groups


def config_reference() -> str:
    """The text of `docs/config.md`."""
    lines = [HEADER]
    for group in _groups(PAFTArgs):
        lines += _section(group)
    lines += [
        "## Allowed values",
        "",
        *_methods(),
        *_losses(),
        *_measures(),
        *_profiles(),
        *_check_kinds(),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if stale")
    parser.add_argument("--out", type=Path, default=DOC_PATH)
    opts = parser.parse_args(argv)
    text = config_reference()
    if opts.check:
        stale = not opts.out.exists() or opts.out.read_text() != text
        if stale:
            print(f"{opts.out} is stale: run python -m axolotl_paft.config.doc")
        sys.exit(int(stale))
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(text)
    print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
