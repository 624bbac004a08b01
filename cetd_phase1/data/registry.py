"""Which applications exist, which split each belongs to, and where its source lives.

These sources share one small interface (:class:`Registry`):

* :class:`StdlibRegistry` - the embedded default: the running interpreter's standard library,
  one application per top-level module or package;
* :class:`~cetd_phase1.data.apps.DirectoryRegistry` - a folder whose subfolders are
  applications, one application, or a YAML manifest (``apps.py``, with the types every
  registry shares);
* :class:`~cetd_phase1.data.postgres.PostgresRegistry` - the seed's ``applications`` table
  (``postgres.py``, which also creates the table and registers apps in it);
* :class:`PyPIRegistry` - pinned PyPI source distributions with changelogs (``pypi.py``), all
  in the train split; ``stdlib+pypi-changelog`` is the stdlib with them added
  (:class:`CombinedRegistry`), their changelog requirements only;
* :class:`CommitRegistry` - the PyPI releases of the mined commit labels (``commit_labels.py``),
  train split, their ``git`` labels only (``stdlib+pypi-changelog+git``).

:func:`registry_from` picks one from a config key or command-line option.
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path
from typing import Iterable

from cetd_phase1 import default_cache_dir
from cetd_phase1.data.apps import (App, DirectoryRegistry, Registry, RegistryError, hash_split,
                                   select_split)
from cetd_phase1.errors import CETDError

#: Standard-library entries that are not applications: test suites, GUI demos, installers and
#: deprecated tooling (the data-pipeline issue lists them).
STDLIB_EXCLUDED = {"test", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip", "venv",
                   "site-packages", "__pycache__", "lib-dynload", "__phello__",
                   "this", "antigravity", "__hello__"}


class StdlibRegistry:
    """The Python standard library of the running interpreter, split by app-name hash."""

    def __init__(self, root: Path | None = None,
                 label_sources: tuple[str, ...] | None = None) -> None:
        self.root = Path(root or sysconfig.get_paths()["stdlib"])
        self.label_sources = label_sources

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
                             source_path=entry, label_sources=self.label_sources))
        return select_split(found, split)

    def describe(self) -> str:
        only = f"[{','.join(self.label_sources)}]" if self.label_sources else ""
        return f"stdlib{only}:{self.root}"


class PyPIRegistry:
    """The packages of a pinned list (``data/pypi_packages.yaml``), fetched from PyPI once into
    ``cache`` and used for training only: their changelogs are the feature-level requirements
    that docstrings are not."""

    def __init__(self, packages_file: Path | None = None, cache: Path | None = None,
                 label_sources: tuple[str, ...] | None = None) -> None:
        from cetd_phase1.data.pypi import PACKAGES_FILE

        self.packages_file = Path(packages_file or PACKAGES_FILE)
        self.label_sources = label_sources
        self.cache = Path(cache) if cache else default_cache_dir() / "pypi"
        self._apps: list[App] | None = None

    def apps(self, split: str | None = None) -> list[App]:
        if split not in (None, "train"):  # nothing to fetch for evaluation
            return []
        if self._apps is None:
            from cetd_phase1.data.pypi import prepare_apps, read_packages

            specs = read_packages(self.packages_file)
            self._apps = [App(app_id=f"pypi/{spec}", name=spec, split="train", source_path=path,
                              label_sources=self.label_sources)
                          for spec, path in zip(specs, prepare_apps(specs, self.cache))]
        return select_split(self._apps, split)

    def describe(self) -> str:
        only = f"[{','.join(self.label_sources)}]" if self.label_sources else ""
        return f"pypi{only}:{self.packages_file.resolve()}"


class CommitRegistry:
    """The releases the mined commit labels point at (``data/commit_labels.jsonl.gz``), each
    laid out from its PyPI source distribution with its labels beside the code
    (``commit_labels.json``, read by the ``git`` label source); train split only.

    ``per_repo`` keeps that many releases of each repository, those with the most labels (None:
    ``commit_labels.RELEASES_PER_REPO``): each release is one source distribution to fetch.
    """

    def __init__(self, labels_file: Path | None = None, cache: Path | None = None,
                 per_repo: int | None = None,
                 label_sources: tuple[str, ...] | None = ("git",)) -> None:
        from cetd_phase1.data.commit_labels import LABELS_FILE, RELEASES_PER_REPO

        self.labels_file = Path(labels_file or LABELS_FILE)
        self.cache = Path(cache) if cache else default_cache_dir() / "pypi"
        self.per_repo = per_repo or RELEASES_PER_REPO
        self.label_sources = label_sources
        self._apps: list[App] | None = None

    def apps(self, split: str | None = None) -> list[App]:
        if split not in (None, "train"):  # nothing to fetch for evaluation
            return []
        if self._apps is None:
            from cetd_phase1.data.commit_labels import prepare_releases, read_labels

            releases = prepare_releases(read_labels(self.labels_file), self.cache, self.per_repo)
            self._apps = [App(app_id=f"git/{name}", name=f"git:{name}", split="train",
                              source_path=path, label_sources=self.label_sources)
                          for name, path in releases]
        return select_split(self._apps, split)

    def describe(self) -> str:
        return f"git-labels[{self.per_repo}]:{self.labels_file.resolve()}"


class CombinedRegistry:
    """Several registries as one (app names must not repeat)."""

    def __init__(self, *registries: Registry) -> None:
        self.registries = registries

    def apps(self, split: str | None = None) -> list[App]:
        found = [a for r in self.registries for a in r.apps(split)]
        names = [a.name for a in found]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise RegistryError(f"app names in several sources: {repeated}")
        return select_split(found, split)

    def describe(self) -> str:
        return "+".join(r.describe() for r in self.registries)


#: the source that adds the pinned PyPI packages to the stdlib (train split), and the one label
#: source their apps give (never their docstrings)
PYPI_SOURCE = "stdlib+pypi-changelog"
#: ... and the releases of the mined commit labels, their ``git`` labels only
COMMITS_SOURCE = "stdlib+pypi-changelog+git"
_PYPI_LABEL_SOURCES = ("changelog",)


def registry_from(source: str | Path | None, database_url: str | None = None,
                  source_roots: Iterable[str | Path] = (),
                  pypi_packages: str | Path | None = None,
                  commit_releases_per_repo: int | None = None) -> Registry:
    """The registry that a config key or command-line option names.

    * ``"stdlib"`` -> :class:`StdlibRegistry`;
    * ``"stdlib+pypi-changelog"`` -> the stdlib plus :class:`PyPIRegistry` (train split), whose
      apps give only their changelog requirements (where the config lists ``changelog``), never
      their docstrings;
    * ``"stdlib+pypi-changelog+git"`` -> the same plus :class:`CommitRegistry` (at most
      ``commit_releases_per_repo`` releases a repository), whose apps give their ``git`` labels
      only;
    * ``"postgres"`` / ``"postgresql"`` -> :class:`PostgresRegistry` on ``database_url``, else
      ``$DATABASE_URL``;
    * a ``postgres://`` or ``postgresql://`` URL -> :class:`PostgresRegistry` on that URL;
    * ``None`` -> :class:`PostgresRegistry` when ``database_url`` or ``$DATABASE_URL`` is set,
      else :class:`StdlibRegistry`;
    * anything else (a folder of apps or a YAML manifest) -> :class:`DirectoryRegistry`; a
      ``stdlib...`` name that is neither of the above nor an existing path is a CETDError naming
      it, not a missing folder.

    ``source_roots`` applies to the PostgreSQL registry only; ``pypi_packages`` (a pinned list,
    default ``data/pypi_packages.yaml``) to the PyPI ones.
    """
    # postgres.py imports this module: import it here, not at the top
    from cetd_phase1.data.postgres import DatabaseError, PostgresRegistry

    if isinstance(source, Path):
        return DirectoryRegistry(source)
    url = database_url or os.environ.get("DATABASE_URL")
    if source is None:
        return PostgresRegistry(url, source_roots) if url else StdlibRegistry()
    if source == "stdlib":
        return StdlibRegistry()
    if source in (PYPI_SOURCE, COMMITS_SOURCE):
        if source == PYPI_SOURCE:
            return CombinedRegistry(StdlibRegistry(),
                                    PyPIRegistry(pypi_packages, label_sources=_PYPI_LABEL_SOURCES))
        # the stdlib's own folder may sit in some git work tree (a pyenv clone): never mine it
        from cetd_phase1.data.labels import LABEL_SOURCES
        return CombinedRegistry(
            StdlibRegistry(label_sources=tuple(s for s in LABEL_SOURCES if s != "git")),
            PyPIRegistry(pypi_packages, label_sources=_PYPI_LABEL_SOURCES),
            CommitRegistry(per_repo=commit_releases_per_repo))
    if source in ("postgres", "postgresql"):
        if not url:
            raise DatabaseError(f"registry {source!r} needs a database: pass --database-url "
                                "or set DATABASE_URL")
        return PostgresRegistry(url, source_roots)
    if source.startswith(("postgres://", "postgresql://")):
        return PostgresRegistry(source, source_roots)
    if source.startswith("stdlib") and not Path(source).exists():
        raise CETDError(f"unknown data source {source!r}: expected 'stdlib', {PYPI_SOURCE!r}, "
                        f"{COMMITS_SOURCE!r}, a "
                        "folder or YAML manifest of apps, 'postgres' or a postgresql:// URL")
    return DirectoryRegistry(Path(source))
