"""The PAFT report: sparsity of each saved delta and, for two deltas, their overlap.

Written to `output_dir` as `paft_report.json` (every number), `paft_report.md`
(tables for people) and `paft_report.png` (sparsity per layer and module type).

Interference, per module present in both adapters: `overlap` is the Jaccard index
of the two masks of kept entries (`|d| > threshold * max|d|`), `sign_conflicts` the
fraction of entries kept in both whose signs differ (what TIES' sign election has
to resolve).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from axolotl_paft.training.sparsity import (
    SUMMARY_MEASURES,
    LoraFactors,
    as_records,
    grouped,
    layer_index,
    measure,
    saved_lora_factors,
    summarize,
)

REPORT_STEM = "paft_report"


def adapter_section(adapter_dir: Path, threshold: float) -> dict:
    """Sparsity of one saved adapter: overall, per layer, per module type, module."""
    modules = measure(saved_lora_factors(adapter_dir), threshold)
    return {
        "path": str(Path(adapter_dir).resolve()),
        "overall": summarize(modules),
        "by_layer": grouped(modules, "layer"),
        "by_module_type": grouped(modules, "module_type"),
        "modules": as_records(modules),
    }


def _kept(factors: LoraFactors, threshold: float) -> torch.Tensor:
    delta = factors.delta()
    return torch.where(delta.abs() > threshold * delta.abs().max(), delta.sign(), 0)


def interference(sft_dir: Path, preference_dir: Path, threshold: float) -> dict:
    """Overlap and sign conflicts of two saved deltas, overall and per layer."""
    preference = {f.name: f for f in saved_lora_factors(preference_dir)}
    rows = []
    with torch.no_grad():
        for sft in saved_lora_factors(sft_dir):
            if sft.name not in preference:
                continue
            a, b = _kept(sft, threshold), _kept(preference[sft.name], threshold)
            both = (a != 0) & (b != 0)
            rows.append(
                {
                    "name": sft.name,
                    "union": int(((a != 0) | (b != 0)).sum()),
                    "both": int(both.sum()),
                    "conflicts": int((both & (a != b)).sum()),
                }
            )
    return {
        "overall": _interference_summary(rows),
        "by_layer": {
            layer: _interference_summary(group)
            for layer, group in _by_layer(rows).items()
        },
    }


def _interference_summary(rows: list[dict]) -> dict:
    union, both = sum(r["union"] for r in rows), sum(r["both"] for r in rows)
    return {
        "modules": len(rows),
        "overlap": both / union if union else 0.0,
        "sign_conflicts": sum(r["conflicts"] for r in rows) / both if both else 0.0,
    }


def _by_layer(rows: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(str(layer_index(row["name"])), []).append(row)
    return groups


def build_report(
    adapters: dict[str, Path], threshold: float, merge: dict | None = None
) -> dict:
    """The whole report as a JSON-ready dict (`adapters`: role -> folder)."""
    report = {
        "threshold": threshold,
        "definition": (
            "sparsity = fraction of entries of each delta scale*B@A with "
            "|d| <= threshold * max|d| of its module"
        ),
        "adapters": {
            role: adapter_section(path, threshold) for role, path in adapters.items()
        },
    }
    if {"sft", "preference"} <= adapters.keys():
        report["interference"] = interference(
            adapters["sft"], adapters["preference"], threshold
        )
    if merge is not None:
        report["merge"] = merge
    return report


def write_report(report: dict, out_dir: Path) -> list[Path]:
    """Write JSON, Markdown and PNG renderings of `report` into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{REPORT_STEM}.json"
    json_path.write_text(json.dumps(report, indent=2))
    md_path = out_dir / f"{REPORT_STEM}.md"
    md_path.write_text(render_markdown(report))
    png_path = out_dir / f"{REPORT_STEM}.png"
    render_png(report, png_path)
    return [json_path, md_path, png_path]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _table(title: str, groups: dict[str, dict], label: str) -> list[str]:
    columns = [label, *(m.label for m in SUMMARY_MEASURES.values())]
    lines = [
        f"#### {title}",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for key, s in groups.items():
        cells = [
            _pct(s[name]) if measure.fraction else f"{s[name]:.4g}"
            for name, measure in SUMMARY_MEASURES.items()
        ]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def render_markdown(report: dict) -> str:
    """Markdown tables of the report."""
    lines = [
        "# PAFT delta report",
        "",
        f"_{report['definition']}; threshold {report['threshold']}_",
        "",
    ]
    if report.get("traps"):
        lines += ["## Check this run's setup", ""]
        lines += [f"- {trap}" for trap in report["traps"]] + [""]
    for role, section in report["adapters"].items():
        lines += [f"## {role} delta", "", f"`{section['path']}`", ""]
        lines += _table("Overall", {"all": section["overall"]}, "modules")
        lines += _table("Per layer", section["by_layer"], "layer")
        lines += _table("Per module type", section["by_module_type"], "module")
    if "interference" in report:
        lines += [
            "## Interference between the deltas",
            "",
            "| layer | overlap of kept entries | sign conflicts |",
            "|---|---|---|",
        ]
        inter = report["interference"]
        for key, s in {"all": inter["overall"], **inter["by_layer"]}.items():
            lines.append(
                f"| {key} | {_pct(s['overlap'])} | {_pct(s['sign_conflicts'])} |"
            )
        lines.append("")
    if "merge" in report:
        merge = report["merge"]
        lines += ["## mergekit configs", ""]
        lines += [f"- `{m}`: `{p}`" for m, p in merge["written"].items()]
        lines += [f"- {m}: skipped ({why})" for m, why in merge["skipped"].items()]
        lines += ["", "Run one with:", "", "```", merge["command"], "```", ""]
    return "\n".join(lines)


def render_png(report: dict, path: Path) -> None:
    """Heatmaps of sparsity (layer x module type), one panel per delta."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    roles = list(report["adapters"])
    fig, axes = plt.subplots(
        1, len(roles), figsize=(5.5 * len(roles), 4), squeeze=False
    )
    for ax, role in zip(axes[0], roles, strict=True):
        modules = report["adapters"][role]["modules"]
        layers = sorted({m["layer"] for m in modules}, key=lambda x: (x is None, x))
        types = sorted({m["module_type"] for m in modules})
        grid = torch.full((len(layers), len(types)), float("nan"))
        for m in modules:
            grid[layers.index(m["layer"]), types.index(m["module_type"])] = (
                m["near_zero"] / m["numel"]
            )
        image = ax.imshow(grid.numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for (row, col), value in zip(
            torch.cartesian_prod(torch.arange(len(layers)), torch.arange(len(types))),
            grid.flatten(),
            strict=True,
        ):
            if len(layers) * len(types) <= 64 and not value.isnan():
                color = "black" if value > 0.6 else "white"
                ax.text(col, row, f"{value:.0%}", ha="center", va="center", color=color)
        ax.set_xticks(range(len(types)), types, rotation=45, ha="right")
        ax.set_yticks(range(len(layers)), [str(x) for x in layers])
        ax.set_xlabel("module")
        ax.set_ylabel("layer")
        overall = report["adapters"][role]["overall"]["sparsity"]
        ax.set_title(f"{role} delta sparsity (overall {_pct(overall)})")
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    """`python -m axolotl_paft.merging.report OUTPUT_DIR ROLE=FOLDER ...`: the
    report of a run's saved adapters alone (what a run whose report failed
    names to redo it)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("adapters", nargs="+", metavar="ROLE=FOLDER")
    parser.add_argument("--threshold", type=float, required=True)
    opts = parser.parse_args(argv)
    adapters = {}
    for item in opts.adapters:
        role, sep, folder = item.partition("=")
        if not sep or role not in ("sft", "preference"):
            parser.error(f"{item!r}: sft=FOLDER or preference=FOLDER")
        adapters[role] = Path(folder)
    for path in write_report(build_report(adapters, opts.threshold), opts.output_dir):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
