"""The PostgreSQL application registry against a real, throwaway server (see conftest.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import psycopg
import pytest

from cetd_phase1.__main__ import main
from cetd_phase1.data.postgres import (DatabaseError, PostgresRegistry, apply_schema, list_apps,
                                       register_apps)
from cetd_phase1.data.apps import App, DirectoryRegistry, RegistryError
from cetd_phase1.data.sections import extract_sections

pytestmark = pytest.mark.postgres


def write_app(root: Path, name: str, functions: int = 2) -> Path:
    """A tiny app: one module with documented functions and a class."""
    app = root / name
    app.mkdir(parents=True)
    body = "".join(f'def f{i}(x):\n    """Return x plus {i} for the caller."""\n    return x + {i}\n\n\n'
                   for i in range(functions))
    (app / "main.py").write_text(
        body + f'class {name.capitalize()}Store:\n    """Keep the records of {name} in memory."""\n\n'
        '    def add(self, item):\n        """Append one item to the store."""\n'
        '        self.items.append(item)\n')
    return app


def app(name: str, path: Path, split: str = "train") -> App:
    return App(app_id=f"pg/{name}", name=name, split=split, source_path=path)


def rows(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT id, name, source_path, split, created_at FROM applications "
                            "ORDER BY id").fetchall()


@pytest.fixture
def db(database_url: str) -> str:
    apply_schema(database_url)
    return database_url


def test_schema_applies_twice_and_enforces_splits(database_url):
    apply_schema(database_url)
    apply_schema(database_url)
    with psycopg.connect(database_url) as conn:
        columns = {r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s",
            ("applications",))}
        assert columns == {"id", "name", "source_path", "split", "created_at"}
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("INSERT INTO applications (name, source_path, split) "
                         "VALUES (%s, %s, %s)", ("x", "/x", "test"))


def test_register_then_list_with_section_counts(db, tmp_path):
    a, b = write_app(tmp_path, "alpha", 2), write_app(tmp_path, "beta", 3)
    done = register_apps(db, [app("alpha", a, "train"), app("beta", b, "holdout")])
    assert done.added == ["alpha", "beta"] and done.unchanged == []

    listed = {x.name: x for x in list_apps(db)}
    assert {n: (x.split, x.source_path, x.problem) for n, x in listed.items()} == {
        "alpha": ("train", a.resolve(), None), "beta": ("holdout", b.resolve(), None)}
    assert listed["beta"].sections == len(extract_sections(b)[0]) == 5
    assert [x.name for x in list_apps(db, split="holdout")] == ["beta"]

    registry = PostgresRegistry(db)
    assert [(x.name, x.split) for x in registry.apps()] == [("alpha", "train"),
                                                            ("beta", "holdout")]
    assert [x.name for x in registry.apps("train")] == ["alpha"]
    assert registry.apps("validation") == []
    with pytest.raises(RegistryError, match="unknown split 'dev'"):
        registry.apps("dev")


def test_reregistering_is_a_no_op(db, tmp_path):
    apps = [app("alpha", write_app(tmp_path, "alpha")), app("beta", write_app(tmp_path, "beta"))]
    register_apps(db, apps)
    before = rows(db)
    done = register_apps(db, apps)
    assert done.added == [] and done.unchanged == ["alpha", "beta"]
    assert rows(db) == before  # same ids and timestamps: nothing rewritten


def test_same_name_with_another_path_is_refused(db, tmp_path):
    register_apps(db, [app("alpha", write_app(tmp_path, "alpha"))])
    before = rows(db)
    with pytest.raises(DatabaseError, match="'alpha' is already registered with source_path"):
        register_apps(db, [app("alpha", write_app(tmp_path / "other", "alpha"))])
    with pytest.raises(DatabaseError, match="already registered .* split train"):
        register_apps(db, [app("alpha", tmp_path / "alpha", "holdout")])
    assert rows(db) == before


@pytest.mark.parametrize("second", ["bad split", "duplicate name"])
def test_failure_half_way_rolls_everything_back(db, tmp_path, second):
    register_apps(db, [app("kept", write_app(tmp_path, "kept"))])
    before = rows(db)
    first = app("first", write_app(tmp_path, "first"))
    bad = (app("second", write_app(tmp_path, "second"), "testing") if second == "bad split"
           else app("first", write_app(tmp_path / "elsewhere", "first")))
    with pytest.raises(DatabaseError, match="nothing was registered"):
        register_apps(db, [first, bad])
    assert rows(db) == before


def test_name_with_quotes_and_sql_is_stored_verbatim(db, tmp_path):
    name = "O'Brien\"s app'); DROP TABLE applications; -- ünïcode"
    register_apps(db, [app(name, write_app(tmp_path, "quoted"))])
    assert [x.name for x in PostgresRegistry(db).apps()] == [name]
    assert [r[1] for r in rows(db)] == [name]


def test_manifest_registration(db, tmp_path):
    write_app(tmp_path / "apps", "alpha")
    write_app(tmp_path / "apps", "beta")
    manifest = tmp_path / "apps.yaml"
    manifest.write_text("- {name: alpha, source_path: apps/alpha, split: train}\n"
                        "- {name: beta, source_path: apps/beta, split: validation}\n")
    assert register_apps(db, manifest).added == ["alpha", "beta"]
    assert [(r[1], r[2], r[3]) for r in rows(db)] == [
        ("alpha", str((tmp_path / "apps/alpha").resolve()), "train"),
        ("beta", str((tmp_path / "apps/beta").resolve()), "validation")]


def test_bad_source_paths_are_reported_and_the_others_still_listed(db, tmp_path):
    roots = tmp_path / "roots"
    good, gone, file_ = (write_app(roots, n) for n in ("good", "gone", "file"))
    outside = write_app(tmp_path / "elsewhere", "outside")
    register_apps(db, [app(n, p) for n, p in
                       [("good", good), ("gone", gone), ("file", file_), ("outside", outside)]])
    shutil.rmtree(gone)
    shutil.rmtree(file_)
    file_.write_text("not a folder")

    registry = PostgresRegistry(db, source_roots=[roots])
    assert [x.name for x in registry.apps()] == ["good"]
    reasons = dict(registry.problems)
    assert reasons["gone"].startswith("missing:") and str(gone) in reasons["gone"]
    assert reasons["file"].startswith("not_a_directory:")
    assert reasons["outside"].startswith("outside_roots:")
    assert len(reasons) == 3

    listed = {x.name: x for x in list_apps(db, source_roots=[roots])}
    assert listed["good"].sections == 4 and listed["good"].problem is None
    assert listed["gone"].sections is None and listed["gone"].problem == reasons["gone"]
    # without roots only the missing and non-folder sources are problems
    assert [x.name for x in PostgresRegistry(db).apps()] == ["good", "outside"]


def test_empty_table_and_missing_table_messages(database_url):
    with pytest.raises(DatabaseError, match="no applications table.*db-init"):
        PostgresRegistry(database_url).apps()
    apply_schema(database_url)
    with pytest.raises(DatabaseError, match="no applications registered in .*register"):
        PostgresRegistry(database_url).apps()


def test_unreachable_server_is_one_line_without_password():
    url = "postgresql://alice:hunter2secret@127.0.0.1:1/apps"
    with pytest.raises(DatabaseError) as err:
        PostgresRegistry(url).apps()
    message = str(err.value)
    assert "\n" not in message and "hunter2secret" not in message
    assert "127.0.0.1:1" in message and "server is running" in message


def test_wrong_password_is_one_line_without_password(postgres_server):
    url = postgres_server.url(password="wrong-pass-word")
    with pytest.raises(DatabaseError) as err:
        apply_schema(url)
    message = str(err.value)
    assert "\n" not in message and "wrong-pass-word" not in message
    assert f"127.0.0.1:{postgres_server.port}" in message and "password" in message


def test_describe_hides_the_password(database_url):
    described = PostgresRegistry(database_url).describe()
    assert "secret" not in described and described.startswith("postgres:postgresql://postgres@")


def test_cli_init_register_list(database_url, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", database_url)
    alpha = write_app(tmp_path, "alpha")
    assert main(["db-init"]) == 0
    assert main(["db-init"]) == 0
    assert main(["register", "--app", str(alpha), "--split", "validation"]) == 0
    assert main(["register", "--app", str(alpha), "--split", "validation"]) == 0
    out = capsys.readouterr().out
    assert "registered alpha" in out and "0 added, 1 already registered" in out
    assert "secret" not in out

    assert main(["register", "--app", str(alpha), "--name", "other", "--split", "holdout"]) == 0
    assert main(["list-apps"]) == 0
    out = capsys.readouterr().out
    assert "alpha" in out and "validation" in out and "2 apps" in out

    assert main(["register", "--app", str(alpha), "--split", "train"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already registered" in err


def test_cli_unreachable_database_exits_non_zero(capsys):
    code = main(["list-apps", "--database-url", "postgresql://bob:pw-xyz-123@127.0.0.1:1/db"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "pw-xyz-123" not in err
    assert "Traceback" not in err and "127.0.0.1:1" in err


def test_dataset_from_postgres_matches_the_directory_registry(db, tmp_path):
    from cetd_phase1.data.dataset import build_dataset

    splits = {"alpha": "train", "beta": "train", "delta": "validation", "gamma": "holdout"}
    for name in splits:
        write_app(tmp_path / "apps", name)
    manifest = tmp_path / "apps.yaml"
    manifest.write_text("".join(f"- {{name: {n}, source_path: apps/{n}, split: {s}}}\n"
                                for n, s in splits.items()))
    register_apps(db, manifest)
    options = dict(label_sources=("docstring",), hard_negatives=1, random_negatives=1)
    from_db = build_dataset(registry=PostgresRegistry(db), cache_dir=tmp_path / "c1", **options)
    from_dir = build_dataset(registry=DirectoryRegistry(manifest), cache_dir=tmp_path / "c2",
                             **options)

    assert set(from_db) == set(from_dir)
    assert all(from_db[s].num_rows > 0 for s in ("train", "validation", "holdout"))
    for split in from_db:
        db_rows, dir_rows = from_db[split].to_list(), from_dir[split].to_list()
        assert len(db_rows) == len(dir_rows)
        pairs = set()
        for a, b in zip(db_rows, dir_rows):
            # ids name their registry (pg/... vs dir/...); everything else must be identical
            assert a.pop("app_id") == f"pg/{a['app_name']}"
            assert b.pop("app_id") == f"dir/{b['app_name']}"
            pairs.add((a.pop("query_id"), b.pop("query_id")))
            if a["origin"] == "random":
                # drawn with a seed from query_id, which differs with app_id: same query and
                # label, but maybe another section
                for row in (a, b):
                    for key in ("file", "qualname", "kind", "line_start", "line_end", "code"):
                        row.pop(key)
            assert a == b
        # the query ids pair up one to one
        assert len(pairs) == len({q for q, _ in pairs}) == len({q for _, q in pairs})
