"""What a non-editable install gets: the package data the code reads, the console script and
the licence, from a wheel built the way pip builds one."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_code_reads_its_data_from_inside_the_package():
    import cetd_phase1
    from cetd_phase1 import train
    from cetd_phase1.config import config_path
    from cetd_phase1.data import postgres, pypi

    package = Path(cetd_phase1.__file__).resolve().parent
    for path in (config_path(train.DEFAULT_CONFIG), postgres.SCHEMA_PATH, pypi.PACKAGES_FILE):
        assert path.is_file() and package in path.resolve().parents


@pytest.mark.slow
def test_the_wheel_ships_configs_data_console_script_and_licence(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(ROOT)], check=True, cwd=tmp_path)
    wheel = next(tmp_path.glob("cetd_phase1-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in ("cetd_phase1/configs/phase1_minilm_cpu.yaml",
                    "cetd_phase1/configs/phase1_qwen_coder_1.5b.yaml",
                    "cetd_phase1/configs/accelerate/cpu.yaml",
                    "cetd_phase1/data/pypi_packages.yaml", "cetd_phase1/data/schema.sql",
                    "cetd_phase1/train.py"):
        assert shipped in names, shipped
    info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    entry_points = zipfile.ZipFile(wheel).read(f"{info}/entry_points.txt").decode()
    assert "cetd-phase1 = cetd_phase1.__main__:console" in entry_points
    assert any(n.startswith(f"{info}/") and "LICENSE" in n for n in names)
    metadata = zipfile.ZipFile(wheel).read(f"{info}/METADATA").decode()
    # a GPU user chooses their torch build; the README's commands pin the CPU wheel
    assert "Requires-Dist: torch==" not in metadata


def test_no_import_circle_between_modules():
    """Data flows one way: no module imports one that imports it back, directly or through
    others, not even from inside a function."""
    import ast

    package = ROOT / "cetd_phase1"
    graph: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        # a relative import counts from the module's package (its own name for an __init__)
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = here[:len(here) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            imported.add(module)
        graph[name] = {m for m in imported if m.startswith("cetd_phase1.") and m != name}

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == target or (nxt not in seen and reaches(nxt, target, seen | {nxt})):
                return True
        return False

    circles = sorted(m for m in graph if reaches(m, m, {m}))
    assert not circles, f"modules in an import circle: {circles}"
