"""The `paft_` keys: the pydantic fields (`args`), the rules between keys and
against Axolotl's own config (`checks`), and docs/config.md generated from both
(`doc`)."""
