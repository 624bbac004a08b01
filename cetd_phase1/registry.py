"""Which applications exist, which split each belongs to, and where its source lives.

Three sources share one small interface (:class:`Registry`):

* :class:`StdlibRegistry` - the embedded default: the running interpreter's standard library,
  one application per top-level module or package;
* :class:`DirectoryRegistry` - a folder whose subfolders are applications, or a YAML manifest;
* :class:`PostgresRegistry` - the seed's ``applications`` table (see ``data/schema.sql``).
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

SPLITS = ("train", "validation", "holdout")

#: Standard-library entries that are not applications: test suites, GUI demos, installers and
#: deprecated tooling (the data-pipeline issue lists them).
STDLIB_EXCLUDED = {"test", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip", "venv",
                   "site-packages", "__pycache__", "lib-dynload", "__phello__",
                   "this", "antigravity", "__hello__"}


class RegistryError(Exception):
    """A registry could not be read; the message is meant for the terminal."""


@dataclass(frozen=True)
class App:
    """One application: a stable id, a unique name, its split and its source location."""

    app_id: str
    name: str
    split: str
    source_path: Path


def hash_split(name: str, train: int = 70, validation: int = 10) -> str:
    """Deterministic split from a hash of the app name (about 70/10/20 by default)."""
    bucket = int(hashlib.sha256(name.encode("utf-8")).hexdigest(), 16) % 100
    if bucket < train:
        return "train"
    if bucket < train + validation:
        return "validation"
    return "holdout"


class Registry(Protocol):
    """Anything that lists applications."""

    def apps(self, split: str | None = None) -> list[App]:
        """Applications of ``split`` (all when ``None``), sorted by name."""
        ...

    def describe(self) -> str:
        """A short, password-free description for logs and cache keys."""
        ...


def _filter(apps: list[App], split: str | None) -> list[App]:
    if split is not None and split not in SPLITS:
        raise RegistryError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    return sorted((a for a in apps if split is None or a.split == split), key=lambda a: a.name)


class StdlibRegistry:
    """The Python standard library of the running interpreter, split by app-name hash."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root or sysconfig.get_paths()["stdlib"])

    def apps(self, split: str | None = None) -> list[App]:
        found = []
        for entry in sorted(self.root.iterdir()):
            name = entry.name[:-3] if entry.name.endswith(".py") else entry.name
            if name in STDLIB_EXCLUDED or name.startswith((".", "_sysconfigdata")):
                continue
            if entry.is_dir() and not (entry / "__init__.py").exists():
                continue
            if not entry.is_dir() and entry.suffix != ".py":
                continue
            found.append(App(app_id=f"stdlib/{name}", name=name, split=hash_split(name),
                             source_path=entry))
        return _filter(found, split)

    def describe(self) -> str:
        return f"stdlib:{self.root}"


class DirectoryRegistry:
    """A folder of applications (each subfolder one app) or a YAML manifest of them.

    The manifest is a list of ``{name, source_path, split}`` mappings; ``source_path`` is
    resolved relative to the manifest. Apps of a plain folder are split by name hash unless
    ``split`` is given, which then applies to every app.
    """

    def __init__(self, root: Path, split: str | None = None) -> None:
        self.root = Path(root)
        self.fixed_split = split

    def apps(self, split: str | None = None) -> list[App]:
        if not self.root.exists():
            raise RegistryError(f"{self.root}: no such file or directory")
        if self.root.is_file():
            found = self._from_manifest()
        else:
            found = [App(app_id=f"dir/{p.name}", name=p.name,
                         split=self.fixed_split or hash_split(p.name), source_path=p)
                     for p in sorted(self.root.iterdir())
                     if p.is_dir() and not p.name.startswith((".", "_"))]
        return _filter(found, split)

    def _from_manifest(self) -> list[App]:
        import yaml

        try:
            entries = yaml.safe_load(self.root.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            raise RegistryError(f"{self.root}: cannot read manifest: {err}") from None
        if not isinstance(entries, list):
            raise RegistryError(f"{self.root}: a manifest is a YAML list of apps")
        apps, names = [], set()
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or "name" not in entry or "source_path" not in entry:
                raise RegistryError(f"{self.root}: entry {i} needs name and source_path")
            name = str(entry["name"])
            split = entry.get("split") or hash_split(name)
            if split not in SPLITS:
                raise RegistryError(f"{self.root}: app {name!r} has unknown split {split!r}; "
                                    f"expected one of {', '.join(SPLITS)}")
            if name in names:
                raise RegistryError(f"{self.root}: duplicate app name {name!r}")
            names.add(name)
            path = Path(entry["source_path"])
            apps.append(App(app_id=f"dir/{name}", name=name, split=split,
                            source_path=path if path.is_absolute() else self.root.parent / path))
        return apps

    def describe(self) -> str:
        return f"dir:{self.root.resolve()}"
