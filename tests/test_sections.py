"""Extraction: every kind of section, test exclusion by path component, every skip reason."""

from __future__ import annotations

import os
from pathlib import Path

from cetd_phase1.data.sections import extract_sections, is_test_path
from cetd_phase1.text import format_section, split_camel_case
from pathlib import PurePosixPath

SOURCE = '''
import functools

def plain(a, b: int = 1) -> int:
    """Add two numbers together for the caller."""
    return a + b

async def fetch(url):
    return url

@functools.lru_cache
def cached():
    """Only a docstring."""

class Outer(Base, metaclass=Meta):
    """An outer class."""

    def method(self):
        def inner():
            return 1
        return inner()

    async def amethod(self):
        pass

    class Nested:
        def deep(self):
            pass

if True:
    def conditional():
        pass
'''


def _write(root: Path, rel: str, text: str | bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def test_every_section_kind_with_qualnames(tmp_path):
    _write(tmp_path, "pkg/mod.py", SOURCE)
    sections, report = extract_sections(tmp_path)
    by_name = {s.qualname: s for s in sections}
    assert list(by_name) == ["plain", "fetch", "cached", "Outer", "Outer.method",
                             "Outer.method.inner", "Outer.amethod", "Outer.Nested",
                             "Outer.Nested.deep", "conditional"]
    kinds = {q: s.kind for q, s in by_name.items()}
    assert kinds["plain"] == "function" and kinds["fetch"] == "async_function"
    assert kinds["Outer.method"] == "method" and kinds["Outer.amethod"] == "async_method"
    assert kinds["Outer"] == "class" and kinds["Outer.method.inner"] == "function"
    plain = by_name["plain"]
    assert plain.file == "pkg/mod.py" and plain.key == "pkg/mod.py::plain"
    assert plain.signature == "def plain(a, b: int=1) -> int"
    assert plain.docstring == "Add two numbers together for the caller."
    assert (plain.line_start, plain.line_end) == (4, 6)
    assert by_name["cached"].code.startswith("@functools.lru_cache")
    assert by_name["Outer"].signature == "class Outer(Base, metaclass=Meta)"
    assert by_name["Outer.method"].code.startswith("def method(self):")  # dedented
    assert report.files_parsed == 1 and report.sections == 10 and not report.skipped


def test_docstring_is_removed_from_the_code_the_encoder_reads(tmp_path):
    _write(tmp_path, "m.py", SOURCE)
    by_name = {s.qualname: s for s in extract_sections(tmp_path)[0]}
    stripped = by_name["plain"].encoder_code()
    assert "Add two numbers" not in stripped and "return a + b" in stripped
    compile(by_name["cached"].encoder_code(), "x", "exec")  # still valid Python
    assert "Only a docstring" not in by_name["cached"].encoder_code()
    assert by_name["fetch"].encoder_code() == by_name["fetch"].code
    assert format_section("m.py", "plain", stripped).startswith("# m.py :: plain\n")


NESTED_DOCSTRINGS = '''
class Cache:
    """A cache."""
    size = 3

    def get(self, key):
        """Return the value stored under key."""
        return self.data[key]

    def clear(self):
        """Drop every entry."""

    def put(self, key, value): "Store value."; self.data[key] = value

def outer():
    @wrap
    def helper():
        """Help the outer function."""
        return 1
    return helper
'''


def test_nested_docstrings_are_removed_too_each_def_still_valid(tmp_path):
    _write(tmp_path, "m.py", NESTED_DOCSTRINGS)
    by_name = {s.qualname: s for s in extract_sections(tmp_path)[0]}
    cache = by_name["Cache"].encoder_code()
    # the methods' docstrings are theirs: the class must not quote them
    assert cache == ("class Cache:\n    size = 3\n\n    def get(self, key):\n"
                     "        return self.data[key]\n\n    def clear(self):\n        ...\n\n"
                     "    def put(self, key, value): \"Store value.\"; self.data[key] = value")
    compile(cache, "x", "exec")
    assert by_name["Cache.get"].encoder_code() == "def get(self, key):\n    return self.data[key]"
    assert by_name["outer"].encoder_code() == (
        "def outer():\n    @wrap\n    def helper():\n        return 1\n    return helper")
    assert by_name["outer.helper"].encoder_code() == "@wrap\ndef helper():\n    return 1"
    assert by_name["Cache"].docstring == "A cache."  # labels still read the own docstring
    assert "Return the value" in by_name["Cache"].code  # and users still see the source


def test_tests_excluded_by_component_not_substring(tmp_path):
    for rel in ["tests/a.py", "test/b.py", "pkg/test_c.py", "pkg/d_test.py", "conftest.py",
                "contest.py", "attestation/e.py", "pkg/testing_helpers.py", "latest.py"]:
        _write(tmp_path, rel, "def f():\n    pass\n")
    files = sorted({s.file for s in extract_sections(tmp_path)[0]})
    assert files == ["attestation/e.py", "contest.py", "latest.py", "pkg/testing_helpers.py"]
    assert is_test_path(PurePosixPath("a/tests/x.py"))
    assert not is_test_path(PurePosixPath("contest.py"))


def test_bad_files_are_skipped_with_reasons_never_dropped_silently(tmp_path):
    _write(tmp_path, "good.py", "def ok():\n    return 1\n")
    _write(tmp_path, "broken.py", "def broken(:\n")
    _write(tmp_path, "latin.py", b"# -*- coding: utf-8 -*-\nx = '\xff\xfe'\n")
    _write(tmp_path, "binary.py", b"\x00\x01\x02ELF")
    _write(tmp_path, "big.py", "x = 1\n" * 200)
    _write(tmp_path, "bom_crlf.py", "\ufeffdef win():\r\n    return 2\r\n".encode("utf-8"))
    (tmp_path / "loop").mkdir()
    os.symlink(tmp_path / "loop", tmp_path / "loop" / "again")
    os.symlink(tmp_path / "gone", tmp_path / "vendored")  # a dangling link to a folder
    os.symlink(tmp_path / "gone.py", tmp_path / "linked.py")
    sections, report = extract_sections(tmp_path, max_file_bytes=1000)
    assert sorted(s.qualname for s in sections) == ["ok", "win"]
    reasons = {path: reason.split(":")[0] for path, reason in report.skipped}
    assert reasons == {"broken.py": "syntax_error", "latin.py": "undecodable",
                       "binary.py": "binary", "big.py": "too_large",
                       "loop/again": "symlink_loop", "vendored": "dangling_link",
                       "linked.py": "dangling_link"}
    assert report.counts_by_reason()["syntax_error"] == 1
    assert "broken.py" not in {s.file for s in sections}


def test_missing_directory_is_reported(tmp_path):
    sections, report = extract_sections(tmp_path / "nope")
    assert sections == [] and report.skipped[0][1].startswith("missing")


def test_single_module_app(tmp_path):
    path = _write(tmp_path, "solo.py", "def f():\n    pass\n")
    assert [s.key for s in extract_sections(path)[0]] == ["solo.py::f"]


def test_split_camel_case_separates_words_and_keeps_everything_else():
    assert split_camel_case("basicConfig(**kwargs)") == "basic Config(**kwargs)"
    assert split_camel_case("class HTTPServer(socketserver.TCPServer):") == \
        "class HTTP Server(socketserver.TCP Server):"
    assert split_camel_case("TimedRotatingFileHandler.doRollover") == \
        "Timed Rotating File Handler.do Rollover"
    assert split_camel_case("parse_json_2 ALL_CAPS plain words, IO") == \
        "parse_json_2 ALL_CAPS plain words, IO"
