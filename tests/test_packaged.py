"""Backbones from PyPI packages: a split model assembled from synthetic part distributions
(the real parts are 400 MB), its hash check, missing and corrupt parts, and alias resolution."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from cetd_phase1.errors import CETDError
from cetd_phase1.modeling import packaged
from cetd_phase1.modeling.backbone import resolve_backbone
from cetd_phase1.modeling.packaged import SplitModel, assemble

WEIGHTS = b"not really safetensors, but bytes with a known hash " * 50


def _zip_bytes(folder: str, members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{folder}/", b"")
        for name, data in members.items():
            zf.writestr(f"{folder}/{name}", data)
    return buffer.getvalue()


def _install_part(site: Path, dist: str, piece_name: str, data: bytes) -> None:
    """A distribution as pip lays it out: the piece in a package folder, and a dist-info
    whose RECORD lists it (what importlib.metadata reads)."""
    package = site / f"{dist.replace('-', '_')}_pkg"
    (package / "input").mkdir(parents=True)
    (package / "input" / piece_name).write_bytes(data)
    info = site / f"{dist.replace('-', '_')}-0.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.0.1\n")
    (info / "RECORD").write_text(f"{package.name}/input/{piece_name},,\n{info.name}/METADATA,,\n")


@pytest.fixture
def split_model(tmp_path, monkeypatch) -> tuple[SplitModel, Path]:
    """A three-part split model installed into a folder on sys.path."""
    folder = "tiny-model"
    archive = _zip_bytes(folder, {"model.safetensors": WEIGHTS, "config.json": b"{}",
                                  "desktop.ini": b"[junk]", "1_Pooling/config.json": b"{}",
                                  "1_Pooling/Desktop.ini": b"[junk]"})
    model = SplitModel(folder=folder,
                       parts=tuple(f"cetd-test-part-{n:03d}" for n in range(1, 4)),
                       piece="tiny-model.zip.{n:03d}", weights="model.safetensors",
                       sha256=hashlib.sha256(WEIGHTS).hexdigest(), extra="tiny")
    site = tmp_path / "site"
    third = len(archive) // 3 + 1
    for n, dist in enumerate(model.parts, start=1):
        _install_part(site, dist, model.piece.format(n=n), archive[(n - 1) * third:n * third])
    monkeypatch.syspath_prepend(str(site))
    return model, site


def test_parts_are_joined_in_order_unzipped_without_junk_and_hash_checked(split_model, tmp_path):
    model, _ = split_model
    out = assemble(model, tmp_path / "cache")
    assert out == tmp_path / "cache" / "tiny-model"
    assert (out / "model.safetensors").read_bytes() == WEIGHTS
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == [".assembled", "1_Pooling/config.json", "config.json", "model.safetensors"]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["tiny-model"]  # no leftovers
    # a second call reads the assembled folder instead of joining again
    (out / "config.json").write_text('{"kept": true}')
    assert (assemble(model, tmp_path / "cache") / "config.json").read_text() == '{"kept": true}'


def test_a_wrong_hash_is_one_line_naming_what_to_reinstall(split_model, tmp_path):
    model, _ = split_model
    wrong = SplitModel(**{**model.__dict__, "sha256": "0" * 64})
    with pytest.raises(CETDError, match=r"sha256 .* reinstall them: pip install 'cetd-phase1\[tiny\]'"):
        assemble(wrong, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []  # nothing half-assembled is left


def test_a_missing_part_names_the_package_and_the_extra(split_model, tmp_path):
    model, site = split_model
    for info in site.glob("cetd_test_part_002-*.dist-info"):
        for f in info.iterdir():
            f.unlink()
        info.rmdir()
    with pytest.raises(CETDError) as err:
        assemble(model, tmp_path / "cache")
    message = str(err.value)
    assert "needs the package cetd-test-part-002:" in message and "[tiny]" in message
    assert "\n" not in message


def test_a_corrupt_part_is_an_error_not_a_model(split_model, tmp_path):
    model, site = split_model
    piece = next(site.glob("cetd_test_part_002_pkg/input/*"))
    data = bytearray(piece.read_bytes())
    data[len(data) // 2] ^= 0xFF
    piece.write_bytes(bytes(data))
    with pytest.raises(CETDError, match="reinstall them"):
        assemble(model, tmp_path / "cache")
    assert not (tmp_path / "cache" / "tiny-model").exists()


def test_a_member_outside_the_model_folder_is_refused(tmp_path, monkeypatch):
    archive = _zip_bytes("tiny-model", {"model.safetensors": WEIGHTS})
    buffer = io.BytesIO(archive)
    with zipfile.ZipFile(buffer, "a") as zf:
        zf.writestr("tiny-model/../escape.txt", b"x")
    model = SplitModel(folder="tiny-model", parts=("cetd-test-escape-001",),
                       piece="tiny-model.zip.{n:03d}", weights="model.safetensors",
                       sha256=hashlib.sha256(WEIGHTS).hexdigest(), extra="tiny")
    _install_part(tmp_path / "site", model.parts[0], "tiny-model.zip.001", buffer.getvalue())
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    with pytest.raises(CETDError, match="outside tiny-model/"):
        assemble(model, tmp_path / "cache")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "cache" / "escape.txt").exists()


def test_the_mpnet_aliases_resolve_into_the_cache(split_model, tmp_path, monkeypatch):
    model, _ = split_model
    monkeypatch.setenv("CETD_CACHE", str(tmp_path / "cetd"))
    monkeypatch.setitem(packaged.SPLIT_ALIASES, "all-mpnet-base-v2", model)
    monkeypatch.setitem(packaged.SPLIT_ALIASES, "sentence-transformers/all-mpnet-base-v2", model)
    expected = str(tmp_path / "cetd" / "models" / "tiny-model")
    assert resolve_backbone("all-mpnet-base-v2") == expected
    assert resolve_backbone("sentence-transformers/all-MPNet-base-v2") == expected
    assert resolve_backbone("some/other-model") == "some/other-model"


def test_mpnet_without_the_extra_is_one_line_saying_what_to_install(tmp_path, monkeypatch):
    absent = SplitModel(**{**packaged.MPNET.__dict__,
                           "parts": tuple(f"cetd-absent-part-{n:03d}" for n in range(1, 6))})
    monkeypatch.setenv("CETD_CACHE", str(tmp_path))
    monkeypatch.setitem(packaged.SPLIT_ALIASES, "all-mpnet-base-v2", absent)
    with pytest.raises(CETDError, match=r"pip install 'cetd-phase1\[mpnet\]'"):
        resolve_backbone("all-mpnet-base-v2")

