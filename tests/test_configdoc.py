"""docs/config.md is generated from `PAFTArgs` and the registries, and current."""

from __future__ import annotations

import pytest

from axolotl_paft.config.args import PAFTArgs
from axolotl_paft.config.doc import DOC_PATH, config_reference, main


def test_config_reference_is_current():
    assert DOC_PATH.read_text() == config_reference(), (
        "docs/config.md is stale: run `python -m axolotl_paft.config.doc`"
    )


def test_config_reference_lists_every_key_once_in_one_section():
    text = config_reference()
    for key in PAFTArgs.model_fields:
        assert text.count(f"| `{key}` |") == 1, key
    sections = [line for line in text.splitlines() if line.startswith("## ")]
    assert sections[:4] == [
        "## Parallel mode",
        "## L1 and sparsity",
        "## Report",
        "## Merging",
    ]


def test_check_mode_finds_a_stale_file(tmp_path, capsys):
    stale = tmp_path / "config.md"
    stale.write_text("# Config keys\n")
    with pytest.raises(SystemExit) as stale_exit:
        main(["--check", "--out", str(stale)])
    assert stale_exit.value.code == 1
    assert "python -m axolotl_paft.config.doc" in capsys.readouterr().out
    main(["--out", str(stale)])
    with pytest.raises(SystemExit) as fresh_exit:
        main(["--check", "--out", str(stale)])
    assert fresh_exit.value.code == 0
