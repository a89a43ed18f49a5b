"""A local model folder named by a hub id, offline: the Hugging Face cache layout.

Users name their base model by its hub id (`base_model: mistralai/Mistral-7B-v0.1`),
resolved from the HF cache; no hub is reachable here, so tests place a folder
in that layout themselves (`place(folder, hub_id, hf_home)`, files linked, not
copied) and load it with `HF_HOME=hf_home HF_HUB_OFFLINE=1`, as a user's cached
model loads. The layout is huggingface_hub's: `hub/models--ORG--NAME/snapshots/
REV/<files>` and `refs/main` naming REV.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_REVISION = "local"


def place(
    folder: Path, hub_id: str, hf_home: Path, revision: str = DEFAULT_REVISION
) -> Path:
    """Link `folder`'s files into `hf_home`'s hub cache under `hub_id` (idempotent);
    returns the snapshot folder."""
    repo = Path(hf_home) / "hub" / f"models--{hub_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    for path in Path(folder).iterdir():
        link = snapshot / path.name
        if not link.exists():
            link.symlink_to(path.resolve())
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot
