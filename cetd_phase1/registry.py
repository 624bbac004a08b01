"""Which applications exist, which split each belongs to, and where its source lives.

These sources share one small interface (:class:`Registry`):

* :class:`StdlibRegistry` - the embedded default: the running interpreter's standard library,
  one application per top-level module or package;
* :class:`DirectoryRegistry` - a folder whose subfolders are applications, or a YAML manifest;
* :class:`PostgresRegistry` - the seed's ``applications`` table (see ``data/schema.sql``);
* :class:`PyPIRegistry` - pinned PyPI source distributions with changelogs (``pypi.py``), all
  in the train split; ``stdlib+pypi-changelog`` is the stdlib with them added
  (:class:`CombinedRegistry`), their changelog requirements only.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, NamedTuple, Protocol

from cetd_phase1 import default_cache_dir, resource
from cetd_phase1.errors import CETDError

if TYPE_CHECKING:
    import psycopg

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


class PyPIRegistry:
    """The packages of a pinned list (``data/pypi_packages.yaml``), fetched from PyPI once into
    ``cache`` and used for training only: their changelogs are the feature-level requirements
    that docstrings are not."""

    def __init__(self, packages_file: Path | None = None, cache: Path | None = None,
                 label_sources: tuple[str, ...] | None = None) -> None:
        from cetd_phase1.pypi import PACKAGES_FILE

        self.packages_file = Path(packages_file or PACKAGES_FILE)
        self.label_sources = label_sources
        self.cache = Path(cache) if cache else default_cache_dir() / "pypi"
        self._apps: list[App] | None = None

    def apps(self, split: str | None = None) -> list[App]:
        if self._apps is None:
            from cetd_phase1.pypi import prepare_apps, read_packages

            specs = read_packages(self.packages_file)
            self._apps = [App(app_id=f"pypi/{spec}", name=spec, split="train", source_path=path,
                              label_sources=self.label_sources)
                          for spec, path in zip(specs, prepare_apps(specs, self.cache))]
        return _filter(self._apps, split)

    def describe(self) -> str:
        only = f"[{','.join(self.label_sources)}]" if self.label_sources else ""
        return f"pypi{only}:{self.packages_file.resolve()}"


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
        return _filter(found, split)

    def describe(self) -> str:
        return "+".join(r.describe() for r in self.registries)


# --- PostgreSQL -----------------------------------------------------------------------------

#: The schema of the ``applications`` table, shipped in the package.
SCHEMA_PATH = resource("data", "schema.sql")

#: Seconds to wait for the server, so a wrong host fails fast instead of hanging (a URL's own
#: ``connect_timeout`` wins).
CONNECT_TIMEOUT_S = 10

_REGISTER_HINT = "register apps with `python -m cetd_phase1 register`"


class DatabaseError(RegistryError, CETDError):
    """The application database is unreachable, not set up, or refuses a change.

    Both a :class:`RegistryError` (for code reading registries) and a :class:`CETDError` (the
    command line prints it as one line). Messages never contain the password.
    """


class PostgresRegistry:
    """The seed's ``applications`` table (``data/schema.sql``), read with psycopg 3.

    ``database_url`` is a libpq URL or ``key=value`` string, e.g.
    ``postgresql://user:password@host:5432/dbname``; :meth:`describe` shows it without the
    password.

    A bad row does not stop the others: an app whose ``source_path`` lies outside
    ``source_roots`` (when roots are given), does not exist, or is not a directory is left out
    of :meth:`apps` and recorded in :attr:`problems` as ``(app name, reason)``, so the dataset
    builder can put it in the extraction report while the other apps still build. Each reason
    starts with a code in the style of :class:`~cetd_phase1.sections.ExtractionReport`
    (``outside_roots:``, ``missing:``, ``not_a_directory:``). :attr:`problems` is reset by
    every :meth:`apps` call and covers the requested split only. A relative ``source_path`` is
    resolved against the current directory. An empty table raises :class:`DatabaseError`.
    """

    def __init__(self, database_url: str, source_roots: Iterable[str | Path] = ()) -> None:
        self.database_url = database_url
        self.source_roots = [Path(r).resolve() for r in source_roots]
        self.problems: list[tuple[str, str]] = []

    def apps(self, split: str | None = None) -> list[App]:
        rows = fetch_applications(self.database_url)
        found, self.problems = [], []
        for row in rows:
            if split is not None and row.split != split:
                continue
            problem = source_problem(row.source_path, self.source_roots)
            if problem:
                self.problems.append((row.name, problem))
            else:
                found.append(App(app_id=f"pg/{row.name}", name=row.name, split=row.split,
                                 source_path=row.source_path))
        return _filter(found, split)

    def describe(self) -> str:
        return f"postgres:{redact_url(self.database_url)}"


class RegisteredApp(NamedTuple):
    """One row of the ``applications`` table; ``sections``/``problem`` are filled by
    :func:`list_apps` (``None`` when not computed or when there is no problem)."""

    id: int
    name: str
    split: str
    source_path: Path
    created_at: datetime
    sections: int | None = None
    problem: str | None = None


class Registration(NamedTuple):
    """What :func:`register_apps` did: names newly added, names already registered as given."""

    added: list[str]
    unchanged: list[str]


def source_problem(path: Path, source_roots: Iterable[Path]) -> str | None:
    """Why the app source at ``path`` cannot be built, or ``None`` when it can.

    The roots are checked first (links resolved) so nothing outside them is even looked at.
    """
    resolved = path.resolve()
    source_roots = [Path(r).resolve() for r in source_roots]
    if source_roots and not any(resolved.is_relative_to(root) for root in source_roots):
        roots = ", ".join(str(r) for r in source_roots)
        return f"outside_roots: source_path {path} is not under the source roots ({roots})"
    if not resolved.exists():
        return f"missing: source_path {path} does not exist"
    if not resolved.is_dir():
        return f"not_a_directory: source_path {path} is not a directory"
    return None


def _conninfo(database_url: str) -> dict[str, str]:
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        return {k: str(v) for k, v in conninfo_to_dict(database_url).items()}
    except ProgrammingError:
        # libpq's message may quote the string, password included: do not repeat it
        raise DatabaseError("invalid database URL: expected "
                            "postgresql://USER:PASSWORD@HOST:PORT/DBNAME") from None


def _endpoint(info: dict[str, str]) -> tuple[str, str, str, str]:
    """(host, port, user, dbname) as libpq will use them, environment defaults included."""
    host = info.get("host") or os.environ.get("PGHOST") or "the default local socket"
    port = info.get("port") or os.environ.get("PGPORT") or "5432"
    user = info.get("user") or os.environ.get("PGUSER") or ""
    dbname = info.get("dbname") or os.environ.get("PGDATABASE") or user
    return host, port, user, dbname


def redact_url(database_url: str) -> str:
    """``postgresql://user@host:port/dbname``: where the database is, never the password."""
    host, port, user, dbname = _endpoint(_conninfo(database_url))
    return f"postgresql://{user + '@' if user else ''}{host}:{port}/{dbname}"


def _connect_failure(err: Exception, info: dict[str, str]) -> str:
    """One line for a failed connection: where, libpq's reason, and what to check."""
    host, port, user, dbname = _endpoint(info)
    # libpq: 'connection failed: connection to server at "h", port p failed: REASON\n\tHINT'
    reason = str(err).rsplit(" failed: ", 1)[-1].split("\n", 1)[0]
    reason = " ".join(reason.replace("FATAL:", "").split())
    if info.get("password"):
        reason = reason.replace(info["password"], "***")
    lowered = reason.lower()
    if "password" in lowered or "authentication" in lowered or "role" in lowered:
        check = "check the user name and password in --database-url / DATABASE_URL"
    elif "database" in lowered and "does not exist" in lowered:
        check = "check the database name, or create it with createdb"
    else:
        check = "check that the server is running and accepts connections on that host and port"
    return (f"cannot connect to PostgreSQL at {host}:{port} (user {user!r}, database "
            f"{dbname!r}): {reason}; {check}")


@contextmanager
def connect(database_url: str) -> Iterator[psycopg.Connection]:
    """An open connection whose block is one transaction: committed when it succeeds,
    rolled back when it raises.

    Raises :class:`DatabaseError` naming host and port when the server cannot be reached or
    refuses the credentials.
    """
    import psycopg

    info = _conninfo(database_url)
    timeout = {} if "connect_timeout" in info else {"connect_timeout": CONNECT_TIMEOUT_S}
    try:
        conn = psycopg.connect(database_url, **timeout)
    except psycopg.OperationalError as err:
        raise DatabaseError(_connect_failure(err, info)) from None
    with conn:
        yield conn


def _query_failure(err: Exception, database_url: str) -> DatabaseError:
    import psycopg

    where = redact_url(database_url)
    if isinstance(err, psycopg.errors.UndefinedTable):
        return DatabaseError(f"{where} has no applications table: create it with "
                             "`python -m cetd_phase1 db-init`")
    first_line = str(err).strip().split("\n", 1)[0]
    return DatabaseError(f"{where}: {type(err).__name__}: {first_line}")


def apply_schema(database_url: str, schema: Path = SCHEMA_PATH) -> None:
    """Create the ``applications`` table and its index if missing; harmless to repeat."""
    import psycopg

    try:
        sql = Path(schema).read_text(encoding="utf-8")
    except OSError as err:
        raise DatabaseError(f"{schema}: cannot read the schema: {err.strerror or err}") from None
    try:
        with connect(database_url) as conn:
            # two concurrent `CREATE ... IF NOT EXISTS` can still collide in the catalog
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('cetd_phase1.schema'))")
            conn.execute(sql)
    except psycopg.Error as err:
        raise _query_failure(err, database_url) from None


def fetch_applications(database_url: str) -> list[RegisteredApp]:
    """Every row of the ``applications`` table, sorted by name; raises when it is empty."""
    import psycopg

    try:
        with connect(database_url) as conn:
            rows = conn.execute("SELECT id, name, split, source_path, created_at "
                                "FROM applications ORDER BY name").fetchall()
    except psycopg.Error as err:
        raise _query_failure(err, database_url) from None
    if not rows:
        raise DatabaseError(f"no applications registered in {redact_url(database_url)}: "
                            f"{_REGISTER_HINT}")
    return [RegisteredApp(id=i, name=n, split=s, source_path=Path(p), created_at=c)
            for i, n, s, p, c in rows]


def register_apps(database_url: str, apps: Iterable[App] | str | Path) -> Registration:
    """Register ``apps`` in one transaction: all of them, or (on any error) none.

    ``apps`` are :class:`App` records, or the path of a YAML manifest (or folder of apps) read
    as :class:`DirectoryRegistry` reads it. Paths are stored absolute. Registering an app again
    with the same name, path and split changes nothing. An unknown split, a source that is not
    a directory, or a registered name with a different path or split raises
    :class:`DatabaseError` and leaves the table as it was.
    """
    import psycopg

    if isinstance(apps, (str, Path)):
        apps = DirectoryRegistry(Path(apps)).apps()
    added, unchanged = [], []
    try:
        with connect(database_url) as conn:
            for app in apps:
                _check_new_app(app)
                path = str(app.source_path.resolve())
                # ON CONFLICT keeps concurrent registrations of one name from failing
                inserted = conn.execute(
                    "INSERT INTO applications (name, source_path, split) VALUES (%s, %s, %s) "
                    "ON CONFLICT (name) DO NOTHING RETURNING id",
                    (app.name, path, app.split)).fetchone()
                if inserted:
                    added.append(app.name)
                    continue
                old_path, old_split = conn.execute(
                    "SELECT source_path, split FROM applications WHERE name = %s",
                    (app.name,)).fetchone()
                if (old_path, old_split) != (path, app.split):
                    raise DatabaseError(
                        f"app name {app.name!r} is already registered with source_path "
                        f"{old_path} and split {old_split} (not {path}, {app.split}): choose "
                        "another name; nothing was registered")
                unchanged.append(app.name)
    except psycopg.Error as err:
        raise _query_failure(err, database_url) from None
    return Registration(added, unchanged)


def _check_new_app(app: App) -> None:
    if app.split not in SPLITS:
        raise DatabaseError(f"app {app.name!r} has unknown split {app.split!r}: expected one of "
                            f"{', '.join(SPLITS)}; nothing was registered")
    if not app.name:
        raise DatabaseError(f"app at {app.source_path} has an empty name; nothing was registered")
    if not app.source_path.is_dir():
        raise DatabaseError(f"app {app.name!r}: source {app.source_path} is not a directory; "
                            "nothing was registered")


def list_apps(database_url: str, split: str | None = None,
              source_roots: Iterable[str | Path] = ()) -> list[RegisteredApp]:
    """Registered apps (of ``split``) with their section counts, or the problem that keeps an
    app from being built (see :class:`PostgresRegistry`)."""
    from tqdm.auto import tqdm

    from cetd_phase1.sections import extract_sections

    if split is not None and split not in SPLITS:
        raise DatabaseError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    roots = [Path(r).resolve() for r in source_roots]
    rows = [r for r in fetch_applications(database_url) if split is None or r.split == split]
    listed = []
    for row in tqdm(rows, desc="counting sections", unit="app", leave=False):
        problem = source_problem(row.source_path, roots)
        sections = None if problem else len(extract_sections(row.source_path, row.name)[0])
        listed.append(row._replace(sections=sections, problem=problem))
    return listed


#: the source that adds the pinned PyPI packages to the stdlib (train split), and the one label
#: source their apps give (never their docstrings)
PYPI_SOURCE = "stdlib+pypi-changelog"
_PYPI_LABEL_SOURCES = ("changelog",)


def registry_from(source: str | Path | None, database_url: str | None = None,
                  source_roots: Iterable[str | Path] = (),
                  pypi_packages: str | Path | None = None) -> Registry:
    """The registry that a config key or command-line option names.

    * ``"stdlib"`` -> :class:`StdlibRegistry`;
    * ``"stdlib+pypi-changelog"`` -> the stdlib plus :class:`PyPIRegistry` (train split), whose
      apps give only their changelog requirements (where the config lists ``changelog``), never
      their docstrings;
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
    if isinstance(source, Path):
        return DirectoryRegistry(source)
    url = database_url or os.environ.get("DATABASE_URL")
    if source is None:
        return PostgresRegistry(url, source_roots) if url else StdlibRegistry()
    if source == "stdlib":
        return StdlibRegistry()
    if source == PYPI_SOURCE:
        return CombinedRegistry(StdlibRegistry(),
                                PyPIRegistry(pypi_packages, label_sources=_PYPI_LABEL_SOURCES))
    if source in ("postgres", "postgresql"):
        if not url:
            raise DatabaseError(f"registry {source!r} needs a database: pass --database-url "
                                "or set DATABASE_URL")
        return PostgresRegistry(url, source_roots)
    if source.startswith(("postgres://", "postgresql://")):
        return PostgresRegistry(source, source_roots)
    if source.startswith("stdlib") and not Path(source).exists():
        raise CETDError(f"unknown data source {source!r}: expected 'stdlib', {PYPI_SOURCE!r}, a "
                        "folder or YAML manifest of apps, 'postgres' or a postgresql:// URL")
    return DirectoryRegistry(Path(source))
