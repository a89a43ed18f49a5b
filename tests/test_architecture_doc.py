"""docs/architecture.md's tree of modules names every module under
src/axolotl_paft/ and nothing else, each with its one-line purpose."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "src" / "axolotl_paft"
DOC = ROOT / "docs" / "architecture.md"
TREE_ROOT = "src/axolotl_paft/"
INDENT = 4  # characters per level: "├── ", "│   ", "    "


def tree_block(text: str) -> list[str]:
    """The lines of the fenced block under "## The modules", its root line first."""
    section = text.split("## The modules", 1)[1]
    block = re.search(r"```\n(.*?)```", section, re.S)
    assert block, "no fenced tree under '## The modules'"
    lines = block.group(1).splitlines()
    assert lines[0].strip() == TREE_ROOT, f"the tree starts at {TREE_ROOT}"
    return lines[1:]


def parse_tree(lines: list[str]) -> dict[str, str]:
    """Each entry's path below the package ("config/", "config/args.py") -> its
    description. A folder ends with "/"; its depth is set by its indentation."""
    entries: dict[str, str] = {}
    folders: list[str] = []  # the open folder at each depth
    for line in lines:
        match = re.match(r"^([│├└─\s]*)(\S+)\s*(.*)$", line)
        assert match, f"unreadable tree line: {line!r}"
        prefix, name, description = match.groups()
        depth, rest = divmod(len(prefix), INDENT)
        assert rest == 0 and depth >= 1, f"bad indentation: {line!r}"
        del folders[depth - 1 :]
        assert len(folders) == depth - 1, f"entry outside a listed folder: {line!r}"
        path = "".join(folders) + name
        assert path not in entries, f"listed twice: {path}"
        entries[path] = description.strip()
        if name.endswith("/"):
            folders.append(name)
    return entries


def documented() -> dict[str, str]:
    return parse_tree(tree_block(DOC.read_text()))


def on_disk() -> tuple[set[str], set[str]]:
    """(module files, subpackage folders) below the package, as the tree writes them."""
    files = {
        p.relative_to(PACKAGE).as_posix()
        for p in PACKAGE.rglob("*.py")
        if "__pycache__" not in p.parts
    }
    folders = {f.rsplit("/", 1)[0] + "/" for f in files if "/" in f}
    return files, folders


def test_every_entry_has_a_one_line_purpose():
    missing = [path for path, text in documented().items() if not text]
    assert not missing, f"tree entries without a description: {missing}"


def test_the_tree_names_every_module_on_disk():
    """A subpackage's `__init__.py` may be listed by its folder alone."""
    entries = documented()
    files, folders = on_disk()
    absent = sorted(
        f
        for f in files | folders
        if f not in entries
        and not (f.endswith("/__init__.py") and f[: -len("__init__.py")] in entries)
    )
    assert not absent, f"docs/architecture.md's tree lacks: {absent}"


def test_the_tree_names_nothing_that_is_not_on_disk():
    files, folders = on_disk()
    stale = sorted(set(documented()) - files - folders)
    assert not stale, f"docs/architecture.md's tree names what does not exist: {stale}"


def test_the_parser_reads_nesting():
    tree = [
        "├── a.py      one",
        "├── pkg/      two",
        "│   ├── b.py  three",
        "│   └── sub/  four",
        "│       └── c.py  five",
        "└── d.py      six",
    ]
    assert parse_tree(tree) == {
        "a.py": "one",
        "pkg/": "two",
        "pkg/b.py": "three",
        "pkg/sub/": "four",
        "pkg/sub/c.py": "five",
        "d.py": "six",
    }
