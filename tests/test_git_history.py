"""The git label source, checked exactly on small repositories built in a temporary folder."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from cetd_phase1.errors import CETDError
from cetd_phase1.data.commits import classify_subject, commit_text
from cetd_phase1.data.git_history import MinedPair, MiningReport, mine_commits

UPLOAD = '''"""Upload helpers."""

import time


def upload(data, retries=0):
    """Send data to the server."""
    return _send(data)


def _send(data):
    return len(data)


class Client:
    """A client."""

    timeout = 10

    def send(self, data):
        # send it
        return upload(data)

    def close(self):
        return None
'''

DOWNLOAD = '''def download(url):
    def clean(u):
        return u.strip()

    return clean(url)


def _fetch(url, timeout=None):
    return url
'''

HELPERS = "".join(f"def h{i}():\n    return {i}\n\n\n" for i in range(1, 10))


class Repo:
    """A git repository whose commits get increasing dates (so the log order is fixed)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tick = 0
        self.sha: dict[str, str] = {}
        root.mkdir()
        self.git("init", "-q", "-b", "main")

    def git(self, *args: str) -> str:
        self.tick += 1
        date = f"{1_700_000_000 + 60 * self.tick} +0000"
        env = {"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
        out = subprocess.run(["git", *args], cwd=self.root, check=True, capture_output=True,
                             text=True, env={**_git_env(), **env})
        return out.stdout.strip()

    def write(self, path: str, text: str) -> None:
        (self.root / path).parent.mkdir(parents=True, exist_ok=True)
        (self.root / path).write_text(text)

    def edit(self, path: str, old: str, new: str) -> None:
        text = (self.root / path).read_text()
        assert text.count(old) == 1, (path, old)
        self.write(path, text.replace(old, new))

    def commit(self, name: str, message: str) -> str:
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        self.sha[name] = self.git("rev-parse", "HEAD")
        return self.sha[name]


def _git_env() -> dict[str, str]:
    return {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_AUTHOR_NAME": "Dev", "GIT_AUTHOR_EMAIL": "dev@example.com",
            "GIT_COMMITTER_NAME": "Dev", "GIT_COMMITTER_EMAIL": "dev@example.com"}


@pytest.fixture(autouse=True)
def _isolated_git(monkeypatch):
    # The miner's own git calls must not see the host's git configuration either.
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> Repo:
    r = Repo(tmp_path_factory.mktemp("hist") / "repo")
    r.write("pkg/__init__.py", '__version__ = "1.1"\n')
    r.write("pkg/upload.py", UPLOAD)
    r.write("pkg/download.py", DOWNLOAD)
    r.write("pkg/helpers.py", HELPERS)
    r.write("tests/test_upload.py", "def test_upload():\n    assert True\n")
    r.write("README.md", "# pkg\n")
    r.commit("root", "Initial import of the uploader package")

    # a feature touching two functions in two files
    r.edit("pkg/upload.py", "    return _send(data)\n", "    return _send(data) or _send(data)\n")
    r.edit("pkg/download.py", "    return clean(url)\n", "    return clean(url) or clean(url)\n")
    r.commit("feature", "Add retry support to uploads and downloads\n\n"
                        "Failed transfers are retried up to three times.\n\n"
                        "This second paragraph is not part of the requirement.\n")
    # a branch, a commit on main meanwhile, and a merge
    r.git("checkout", "-q", "-b", "side")
    r.edit("pkg/upload.py", "    return len(data)\n", '    return len(data or b"")\n')
    r.commit("branch", "Handle empty payloads in the send helper")
    r.git("checkout", "-q", "main")
    r.edit("pkg/upload.py", "    timeout = 10\n", "    timeout = 30\n")  # class body line
    r.commit("class_attr", "Use a longer default timeout for the client")
    # a message that reads like a requirement: only the two parents make it a merge
    r.git("merge", "-q", "--no-ff", "side", "-m", "Bring the empty payload handling into main")
    r.sha["merge"] = r.git("rev-parse", "HEAD")

    r.edit("pkg/__init__.py", '"1.1"', '"1.2"')
    r.commit("bump", "Bump version to 1.2")
    r.write("README.md", "# pkg\n\nRetries: three.\n")
    r.commit("readme", "Describe the retry options in the user guide")
    r.write("README.md", "# pkg\n\nRetries: three, with backoff.\n")
    r.commit("docs", "docs: explain the retry options in more detail")
    for i in range(1, 10):
        r.edit("pkg/helpers.py", f"    return {i}\n", f"    return {i} * 2\n")
    r.commit("nine", "Make every helper return twice its value")
    # same text as the next commit once its references and trailer are gone: the newer one wins
    r.edit("pkg/download.py", "    return clean(url) or clean(url)\n", "    return clean(url)\n")
    r.commit("dup", "Fix the timeout handling when downloading files\n\n"
                    "Timeouts were ignored by the fetch helper.\n")
    r.edit("pkg/download.py", "    return url\n", "    return (url, timeout)\n")
    r.commit("fixes", "Fix the timeout handling when downloading files (#45)\n\n"
                      "Timeouts were ignored by the fetch helper. Fixes #12.\n\n"
                      "Signed-off-by: Dev <dev@example.com>\n")
    r.edit("pkg/upload.py", "# send it", "# reuse the retries of upload")
    r.commit("comment", "Explain why the client sends data through upload")
    r.edit("pkg/upload.py", '"""Send data to the server."""',
           '"""Send data to the server, retrying on failure."""')
    r.commit("docstring", "Mention the retry behaviour in the upload description")
    r.write("tests/test_upload.py", "def test_upload():\n    assert True\n\n\n"
                                    "def test_retry():\n    assert True\n")
    r.commit("tests", "Add regression tests for the retry behaviour")
    r.write("pkg/upload.py", (r.root / "pkg/upload.py").read_text()
            + "\n\ndef progress(done, total):\n    return done / total\n")
    r.commit("new_only", "Add a progress callback hook for uploads")
    r.edit("pkg/upload.py", "        return None\n", '        return self.send(b"")\n')
    r.commit("conventional", "feat(client): ✨ close the client connection on exit")
    r.edit("pkg/download.py", "        return u.strip()\n",
           '        return u.strip().rstrip("/")\n')
    r.commit("nested", "Strip trailing slashes from download addresses")
    r.edit("pkg/upload.py", "    return _send(data) or _send(data)\n", "    return _send(data)\n")
    r.commit("short", "Fix bug")
    r.edit("pkg/upload.py", '\n    def close(self):\n        return self.send(b"")\n', "")
    r.commit("deleted", "Remove the unused close method from the client")
    # a rename with one changed line: only that function is touched, keyed at the parent's path
    r.git("mv", "pkg/download.py", "pkg/transfer.py")
    r.edit("pkg/transfer.py", "    return (url, timeout)\n", "    return (url, timeout or 5)\n")
    r.commit("renamed", "Give the fetch helper a default timeout of five seconds")
    return r


def _pairs(pairs: list[MinedPair]) -> list[tuple]:
    return [(p.text, p.relevant, p.relevant_at_head) for p in pairs]


def test_mined_pairs_and_skip_reasons_exact(history: Repo) -> None:
    report = MiningReport(app="repo")
    pairs = mine_commits(history.root, report=report)
    s = history.sha
    assert _pairs(pairs) == [
        ("Give the fetch helper a default timeout of five seconds",
         ("pkg/download.py::_fetch",), ()),
        ("Remove the unused close method from the client", ("pkg/upload.py::Client.close",), ()),
        ("Strip trailing slashes from download addresses",
         ("pkg/download.py::download.clean",), ()),
        ("close the client connection on exit", ("pkg/upload.py::Client.close",), ()),
        ("Fix the timeout handling when downloading files Timeouts were ignored by the fetch "
         "helper.", ("pkg/download.py::_fetch",), ()),
        ("Use a longer default timeout for the client", ("pkg/upload.py::Client",),
         ("pkg/upload.py::Client",)),
        ("Handle empty payloads in the send helper", ("pkg/upload.py::_send",),
         ("pkg/upload.py::_send",)),
        ("Add retry support to uploads and downloads Failed transfers are retried up to three "
         "times.", ("pkg/download.py::download", "pkg/upload.py::upload"),
         ("pkg/upload.py::upload",)),
    ]
    names = ["renamed", "deleted", "nested", "conventional", "fixes", "class_attr", "branch",
             "feature"]
    assert [(p.commit, p.parent) for p in pairs] == [
        (s[n], history.git("rev-parse", f"{s[n]}^")) for n in names]
    assert dict(report.skipped) == {
        s["root"]: "root_commit", s["merge"]: "merge", s["bump"]: "version_bump",
        s["readme"]: "no_python_change", s["docs"]: "docs", s["nine"]: "too_many_sections",
        s["dup"]: "duplicate_text", s["comment"]: "no_sections", s["docstring"]: "no_sections",
        s["tests"]: "tests_only", s["new_only"]: "no_parent_sections",
        s["short"]: "short_subject",
    }
    assert len(report.skipped) == 12 and report.commits == 20 and report.pairs == 8
    assert report.counts_by_reason()["no_sections"] == 2
    assert "20 commits, 8 pairs; skipped 12" in report.summary()


def test_max_sections_is_the_boundary(history: Repo) -> None:
    pairs = mine_commits(history.root, max_sections=9)
    nine = [p for p in pairs if p.commit == history.sha["nine"]]
    assert _pairs(nine) == [("Make every helper return twice its value",
                             tuple(f"pkg/helpers.py::h{i}" for i in range(1, 10)),
                             tuple(f"pkg/helpers.py::h{i}" for i in range(1, 10)))]


def test_max_commits_and_revision_range(history: Repo) -> None:
    report = MiningReport(app="repo")
    pairs = mine_commits(history.root, max_commits=3, report=report)
    assert [p.commit for p in pairs] == [history.sha["renamed"], history.sha["deleted"]]
    assert dict(report.skipped) == {history.sha["short"]: "short_subject"}

    report = MiningReport(app="repo")
    pairs = mine_commits(history.root, rev_range=f"{history.sha['nine']}..{history.sha['tests']}",
                         report=report)
    assert [p.commit for p in pairs] == [history.sha["fixes"]]
    assert report.commits == 5  # dup, fixes, comment, docstring, tests


def test_app_subdir_keys_are_relative_to_the_app(tmp_path: Path) -> None:
    r = Repo(tmp_path / "mono")
    r.write("setup.py", "def setup():\n    return 1\n")
    r.write("src/app/mod.py", "def run(cmd):\n    return cmd\n")
    r.write("src/app/tests/test_mod.py", "def test_run():\n    assert True\n")
    r.write("src/app/my \"modulé\".py", "def helper():\n    return 0\n")  # git quotes such names
    r.commit("root", "Initial import of the mono repository")
    r.edit("setup.py", "return 1", "return 2")
    r.edit("src/app/mod.py", "    return cmd\n", "    return [cmd, '-v']\n")
    r.edit("src/app/my \"modulé\".py", "return 0", "return 1")
    r.commit("verbose", "Add a verbose flag to the command runner")
    r.edit("setup.py", "return 2", "return 3")
    r.commit("outside", "Update the packaging metadata for the project")
    r.edit("src/app/tests/test_mod.py", "assert True", "assert 1")
    r.commit("app_tests", "Check the command runner output in its tests")
    r.edit("src/app/mod.py", "def run(cmd):", "def run(cmd:")
    r.commit("broken", "Start a keyword argument for the runner")
    r.edit("src/app/mod.py", "def run(cmd:", "def run(cmd, verbose=False):")
    r.commit("repaired", "Finish the keyword argument for the runner")

    report = MiningReport(app="app")
    pairs = mine_commits(r.root, "src/app", report=report)
    assert [(p.text, p.relevant, p.relevant_at_head, p.parent) for p in pairs] == [
        ("Add a verbose flag to the command runner", ("mod.py::run", "my \"modulé\".py::helper"),
         ("mod.py::run", "my \"modulé\".py::helper"), r.sha["root"])]
    # the commit outside the app folder is not examined at all; a side that does not parse
    # cannot be mapped to sections
    assert dict(report.skipped) == {r.sha["root"]: "root_commit",
                                    r.sha["app_tests"]: "tests_only",
                                    r.sha["broken"]: "syntax_error",
                                    r.sha["repaired"]: "syntax_error"}
    assert report.commits == 5


def test_user_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(CETDError, match="not a git repository"):
        mine_commits(tmp_path)
    with pytest.raises(CETDError, match="does not exist"):
        mine_commits(tmp_path, "missing")
    r = Repo(tmp_path / "empty")
    with pytest.raises(CETDError, match="no commits"):
        mine_commits(r.root)
    r.write("a.py", "def f():\n    return 1\n")
    r.commit("root", "Initial import of the module")
    with pytest.raises(CETDError, match="max_commits must be at least 1"):
        mine_commits(r.root, max_commits=0)
    with pytest.raises(CETDError, match="cannot start with '-'"):
        mine_commits(r.root, rev_range="--all")
    with pytest.raises(CETDError, match="git log failed"):
        mine_commits(r.root, rev_range="no-such-tag..HEAD")


@pytest.mark.parametrize("message, text", [
    ("Fix timeout handling in download (#45)\n\nTimeouts were ignored when the server stalled,"
     " fixes #12.\n\nSigned-off-by: A B <a@b.c>\nCo-authored-by: C <c@d.e>\n",
     "Fix timeout handling in download Timeouts were ignored when the server stalled."),
    ("feat(upload)!: ✨ add a progress callback", "add a progress callback"),
    (":sparkles: Allow custom styles for commands", "Allow custom styles for commands"),
    ("♻️ Reuse the session between requests", "Reuse the session between requests"),
    ("Autoescape .svg files too\n\nSee https://github.com/o/r/issues/4000 and gh-17.",
     "Autoescape .svg files too"),
    ("Autoescape .svg files\n\nThey are XML (https://github.com/o/r/pull/9), see gh-17.",
     "Autoescape .svg files They are XML."),
    ("Add X to the parser (#45)\n\n* Add X\n\n* fix tests\n\n---------\n\n"
     "Co-authored-by: Z <z@z>", "Add X to the parser"),
    ("Fix #12: handle empty input\nin the parser\n\nCloses o/r#13 and #14",
     "handle empty input in the parser"),
    ("Support [#12](https://github.com/o/r/pull/12) `Path` options", "Support `Path` options"),
    ("Fixed: empty input crashed the parser\n\nFixes: #3\nCloses: #4\n\nThe input is now checked.",
     "Fixed: empty input crashed the parser The input is now checked."),
    ("Add the x" + " word" * 200, ("Add the x" + " word" * 200)[:400].rsplit(" ", 1)[0]),
])
def test_commit_text(message: str, text: str) -> None:
    assert commit_text(message) == text


@pytest.mark.parametrize("subject, reason", [
    ("Bump version to 1.2", "version_bump"),
    ("Release 2.0.1", "version_bump"),
    ("🔖 2.0.1 is out now for everyone", "version_bump"),
    ("Bump click from 8.0 to 8.1", "dependency"),
    ("⬆ Upgrade Rich to 13", "dependency"),
    ("docs: explain the retry options", "docs"),
    ("Update README with the new options", "docs"),
    ("📝 Update the tutorial for the rich mode", "docs"),
    ("ci: run the tests on Python 3.13", "ci"),
    ("[pre-commit.ci] pre-commit autoupdate", "ci"),
    ("Fix a typo in the error message", "typo"),
    ("Run black on the whole code base", "style"),
    ("Fix types for the retry decorator", "typing"),
    ("Add type hints to the public API", "typing"),
    ("Revert \"Add retry support\"", "revert"),
    ("Refactor the retry loop into helpers", "refactor"),
    ("Merge pull request #12 from o/branch", "merge"),
    ("Fix bug", "short_subject"),
    ("Fix crash (#12)", "short_subject"),
    # ordinary feature subjects that share words with the skip patterns
    ("Release the lock when the connection closes", None),
    ("Add support for a custom date format", None),
    ("Add type coercion for query params", None),
    ("Support typing.Annotated for parameters in commands", None),
    ("Allow whitespace in requirement markers", None),
    ("Add dependency injection for request handlers", None),
    ("`Retry` accepts a custom wait strategy", None),
])
def test_classify_subject(subject: str, reason: str | None) -> None:
    assert classify_subject(subject) == reason
