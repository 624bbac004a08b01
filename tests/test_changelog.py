"""Changelog entries -> requirements naming sections (``changelog.py``), on a synthetic app."""

from __future__ import annotations

from pathlib import Path

import pytest

from cetd_phase1.data.changelog import changelog_pairs, clean_text, find_changelog, parse_changelog
from cetd_phase1.data.dataset import build_dataset
from cetd_phase1.data.labels import label_app
from cetd_phase1.data.apps import DirectoryRegistry
from cetd_phase1.data.sections import extract_sections

CHANGES = """\
.. currentmodule:: pkg

Version 2.0
-----------

-   ``echo()`` does not fail when no streams are attached, such as
    with ``pythonw``. :issue:`2380`
-   Add a ``timeout`` argument to :meth:`~pkg.client.Client.send` and
    :func:`pkg.client.retry`. (Issue #12, Pull #34)
-   Fix ``Formatter.width`` handling of wide characters. Thanks @someone
-   Improve :class:`Client` startup time on slow disks.
-   Rename ``get`` helpers in every module for consistency.
-   Drop support for Python 3.7 entirely now.

Version 1.0
-----------

* Add ``does_not_exist()`` that is gone now in later versions.
"""

CLIENT = '''
class Client:
    def send(self, data):
        return data

    def get(self):
        return 1


def retry(fn):
    return fn


def get():
    return 2
'''

UTIL = '''
def echo(message):
    print(message)


def get():
    return 3


class Formatter:
    def width(self):
        return 80
'''


@pytest.fixture()
def app(tmp_path: Path) -> Path:
    root = tmp_path / "apps" / "pkgapp"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("def get():\n    return 0\n")
    (root / "pkg" / "client.py").write_text(CLIENT)
    (root / "pkg" / "util.py").write_text(UTIL)
    (root / "CHANGES.rst").write_text(CHANGES)
    return root


def test_clean_text_drops_markup_and_references() -> None:
    assert clean_text("Add ``timeout`` to :meth:`~pkg.client.Client.send`. (Issue #12, Pull #34)"
                      ) == "Add timeout to send."
    assert clean_text("Fix :func:`pkg.retry` on errors gh-99 :issue:`5`. Thanks @bob") == \
        "Fix pkg.retry on errors."
    assert clean_text("See [#7](https://x/7) for ``echo()`` details") == "See for echo details"
    assert clean_text("Fixed ``Client.close()`` hanging -- by :user:`bob`.") == \
        "Fixed Client.close hanging."
    assert clean_text("Let ``publish`` prompt for input (cf. :issue:`9`, `#10 <https://x>`__)") \
        == "Let publish prompt for input"


def test_parse_changelog_joins_continuation_lines_and_collects_names() -> None:
    entries = parse_changelog(CHANGES)
    assert entries[0].text == ("echo does not fail when no streams are attached, such as with "
                               "pythonw.")
    assert entries[0].names == ("echo", "pythonw")
    assert entries[1].names == ("pkg.client.Client.send", "pkg.client.retry", "timeout")
    # the entry without any name is not an entry
    assert all("Python 3.7" not in e.text for e in entries)


def test_changelog_pairs_resolve_names_to_sections(app: Path) -> None:
    sections, _ = extract_sections(app, "pkgapp")
    pairs = dict(changelog_pairs(app, sections))
    assert pairs == {
        "echo does not fail when no streams are attached, such as with pythonw.":
            ["pkg/util.py::echo"],
        "Add a timeout argument to send and pkg.client.retry.":
            ["pkg/client.py::Client.send", "pkg/client.py::retry"],
        "Fix Formatter.width handling of wide characters.": ["pkg/util.py::Formatter.width"],
        "Improve Client startup time on slow disks.": ["pkg/client.py::Client"],
    }
    # "get" is defined three times: too ambiguous; does_not_exist is absent from the code


def test_no_changelog_gives_no_pairs(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("def f():\n    return 1\n")
    assert find_changelog(tmp_path) is None
    assert changelog_pairs(tmp_path, extract_sections(tmp_path, "m")[0]) == []


def test_changelog_is_a_label_source_of_the_dataset(app: Path, tmp_path: Path) -> None:
    sections, _ = extract_sections(app, "pkgapp")
    labels = label_app(app, sections, sources=("changelog",))
    assert {e.label_source for e in labels.examples} == {"changelog"}
    assert len(labels.examples) == 4
    dd = build_dataset(registry=DirectoryRegistry(app.parent, split="train"),
                       label_sources=("changelog",), hard_negatives=1, random_negatives=0,
                       cache_dir=tmp_path / "cache")
    rows = dd["train"].filter(lambda r: r["label"] == 1)
    assert sorted(set(rows["requirement"])) == sorted(e.requirement for e in labels.examples)
    assert set(rows["label_source"]) == {"changelog"}
    # editing the changelog invalidates the Arrow cache
    (app / "CHANGES.rst").write_text("- ``echo()`` now writes to stderr when asked to.\n")
    dd = build_dataset(registry=DirectoryRegistry(app.parent, split="train"),
                       label_sources=("changelog",), hard_negatives=1, random_negatives=0,
                       cache_dir=tmp_path / "cache")
    assert set(dd["train"]["requirement"]) == {"echo now writes to stderr when asked to."}
