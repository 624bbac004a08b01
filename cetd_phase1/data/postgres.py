"""The PostgreSQL application registry: the seed's ``applications`` table (``data/schema.sql``).

:class:`PostgresRegistry` lists the registered apps (a
:class:`~cetd_phase1.data.registry.Registry`); the functions behind the ``db-init``,
``register`` and ``list-apps`` commands create the table (:func:`apply_schema`), add apps in one
transaction (:func:`register_apps`) and list them with their section counts (:func:`list_apps`).
Connections use psycopg 3 (:func:`connect`); every failure is a :class:`DatabaseError` whose
message never contains the password.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, NamedTuple

from cetd_phase1 import resource
from cetd_phase1.errors import CETDError
from cetd_phase1.data.apps import SPLITS, App, DirectoryRegistry, RegistryError, select_split

if TYPE_CHECKING:
    import psycopg


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
    starts with a code in the style of :class:`~cetd_phase1.data.sections.ExtractionReport`
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
        return select_split(found, split)

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

    from cetd_phase1.data.sections import extract_sections

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
