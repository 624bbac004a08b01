"""The user's guide can be followed from a fresh clone: no developer's scratch paths, and every
``outputs/...`` path it names is one that a command it shows (or a shipped config) creates."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "data" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _created_outputs(texts: list[str]) -> set[str]:
    """Output folders something makes: the shipped configs' and the config default's
    ``output_dir``, the bench scripts' defaults, and each ``--out``/``--output-dir``/
    ``output_dir:`` the docs give."""
    from cetd_phase1.config import ModelSection, shipped_configs

    created = {ModelSection().output_dir, "outputs/ablation", "outputs/fr-validation",
               "outputs/fr-report"}
    for path in shipped_configs().values():
        created.add(yaml.safe_load(path.read_text())["model"]["output_dir"])
    for text in texts:
        for match in re.finditer(r"(?:--out|--output-dir|output_dir:)[ =]+(outputs/[\w.\-/]+)",
                                 text):
            created.add(match.group(1).rstrip("/."))
    return created


def test_docs_name_no_scratch_paths_and_only_outputs_a_command_creates():
    texts = {path: path.read_text(encoding="utf-8") for path in DOCS}
    created = _created_outputs(list(texts.values()))
    stray = []
    for path, text in texts.items():
        for match in re.finditer(r"/tmp/[\w.\-/]*|(?<![\w/])outputs/[\w.\-/]+", text):
            found = match.group(0).rstrip("/.")
            if found.startswith("/tmp/") or not any(found == c or found.startswith(c + "/")
                                                    for c in created):
                stray.append(f"{path.relative_to(ROOT)}: {found}")
    assert not stray, "paths a newcomer does not have:\n" + "\n".join(stray)
