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


def _section(group: type[BaseModel]) -> list[str]:
    title, _, rest = (group.__doc__ or group.__name__).partition(":")
    lines = [f"## {title.strip()}", "", f"`{group.__name__}`: {_cell(rest)}", ""]
    lines += ["| key | type | default | bounds | meaning |", "|---|---|---|---|---|"]
    for name in group.__annotations__:
        field = group.model_fields[name]
        cells = (
            f"`{name}`",
            _type(field.annotation),
            _value(field.get_default(call_default_factory=True)),
            _bounds(field),
            _cell(field.description or ""),
        )
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def _methods() -> list[str]:
    lines = [
        "`paft_merge_methods` (from `axolotl_paft.merging.configs.METHOD_LAYOUTS`):",
        "",
        "| method | written by default | needs two deltas | paper |",
        "|---|---|---|---|",
    ]
    for method, layout in METHOD_LAYOUTS.items():
        two = "yes" if layout.min_deltas > 1 else "no"
        default = "yes" if layout.default else "no"
        lines.append(f"| `{method}` | {default} | {two} | <{layout.paper}> |")
    return [*lines, ""]


def _losses() -> list[str]:
    lines = [
        "`paft_preference_loss` (from `axolotl_paft.training.losses.LOSS_SPECS`):",
        "",
        "| loss | needs a reference | length-normalised by | needs the chosen NLL "
        "| paper |",
        "|---|---|---|---|---|",
    ]
    for name, spec in LOSS_SPECS.items():
        cells = (
            f"`{name}`",
            "yes" if spec.needs_reference else "no",
            f"`{spec.lengths}`" if spec.lengths else "no",
            "yes" if spec.needs_chosen_nll else "no",
            f"<{spec.paper}>",
        )
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def _measures() -> list[str]:
    lines = [
        "`paft_merge_search_skill_measure` and `paft_merge_search_preference_measure` "
        "(from `axolotl_paft.merging.scoring.MEASURES`, the teacher-forced ones):",
        "",
        "| measure | side | meaning |",
        "|---|---|---|",
    ]
    for name, measure in TEACHER_FORCED.items():
        lines.append(f"| `{name}` | {measure.side} | {_cell(measure.description)} |")
    return [*lines, ""]


def _profiles() -> list[str]:
    lines = [
        "`paft_merge_search_profiles`: multipliers of each delta's weight from the "
        "first layer to the last, as mergekit's per-layer lists (from "
        "`axolotl_paft.merging.candidates.PROFILES`):",
        "",
        "| profile | SFT | preference | what | paper |",
        "|---|---|---|---|---|",
    ]
    for name, profile in PROFILES.items():
        lines.append(
            f"| `{name}` | {list(profile.sft)} | {list(profile.preference)} "
            f"| {_cell(profile.description)} | {profile.paper or ''} |"
        )
    return [*lines, ""]


def _check_kinds() -> list[str]:
    lines = [
        "`paft_merge_search_answer_checks` kinds, one `{kind: value}` per check "
        "(from `axolotl_paft.merging.answers.CHECK_KINDS`):",
        "",
        "| kind | passes when |",
        "|---|---|",
    ]
    for name, kind in CHECK_KINDS.items():
        lines.append(f"| `{name}` | {_cell(kind.description)} |")
    return [*lines, ""]


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
