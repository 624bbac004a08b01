"""What every registry shares: the splits, an application record, the registry interface, and
the one source that reads the file system itself, :class:`DirectoryRegistry` (a folder of apps,
one app, or a YAML manifest). ``registry.py`` chooses among the sources; ``postgres.py`` keeps
apps in PostgreSQL and registers them from a folder or manifest read here."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

SPLITS = ("train", "validation", "holdout")


class RegistryError(Exception):
    """A registry could not be read; the message is meant for the terminal."""


@dataclass(frozen=True)
class App:
    """One application: a stable id, a unique name, its split and its source location."""

    app_id: str
    name: str
    split: str
    source_path: Path
    #: which of the run's label sources apply to this app (None: all of them)
    label_sources: tuple[str, ...] | None = None


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


def select_split(apps: list[App], split: str | None) -> list[App]:
    """``apps`` of ``split`` (all when ``None``) sorted by name; an unknown split is an error."""
    if split is not None and split not in SPLITS:
        raise RegistryError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    return sorted((a for a in apps if split is None or a.split == split), key=lambda a: a.name)


class DirectoryRegistry:
    """A folder of applications (each subfolder one app), one application (a folder with .py
    files directly in it, or a single .py file), or a YAML manifest of them.

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
        if self.root.is_file() and self.root.suffix in (".yaml", ".yml"):
            found = self._from_manifest()
        elif self.root.is_file() and self.root.suffix != ".py":
            raise RegistryError(f"{self.root}: not an app source; give a folder of apps (one "
                                f"subfolder each), one app's folder or .py file, or a YAML "
                                f"manifest (.yaml)")
        elif self.root.is_file() or any(self.root.glob("*.py")):
            # .py files directly inside: the folder (or file) is itself one application
            name = self.root.stem if self.root.is_file() else self.root.resolve().name
            found = [App(app_id=f"dir/{name}", name=name,
                         split=self.fixed_split or hash_split(name), source_path=self.root)]
        else:
            found = [App(app_id=f"dir/{p.name}", name=p.name,
                         split=self.fixed_split or hash_split(p.name), source_path=p)
                     for p in sorted(self.root.iterdir())
                     if p.is_dir() and not p.name.startswith((".", "_"))]
            if not found and (split is None or split in SPLITS):  # else: the split is named
                raise RegistryError(f"{self.root}: no app here (neither .py files nor "
                                    f"subfolders, one an app)")
        return select_split(found, split)

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
