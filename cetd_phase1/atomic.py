"""Write output files and folders so that a killed command leaves the previous version intact.

Every file is written to a temporary sibling and ``os.replace``-d over its final name (atomic on
POSIX within one filesystem); a folder is written beside its final name and swapped in. A reader
therefore sees either the old complete output or the new complete output, never a half-written
one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: ``mkstemp`` creates files 0600; results are meant to be shared like any other output file.
_FILE_MODE = 0o666 & ~_current_umask()


@contextmanager
def _named(path: Path) -> Iterator[None]:
    """An OSError raised inside names ``path``, the output asked for, not the hidden staging
    name beside it that the user never typed (a read-only ``--out``)."""
    try:
        yield
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(path)) from None


def atomic_write(path: str | Path, write: Callable[[object], None], mode: str = "wb") -> None:
    """Write ``path`` through ``write(file)`` into a temporary sibling, then ``os.replace`` it,
    so a reader never sees a half-written file and an interrupted run leaves the old one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _named(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as f:
            write(f)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write` for text."""
    atomic_write(path, lambda f: f.write(text), mode="w")


def final_path(path: str | Path) -> Path:
    """Where ``path`` ends up: a staging folder of :func:`atomic_directory` (``.NAME.<random>
    .tmp``) names the folder it will be renamed to; any other path is itself. Model cards
    written while staging name the published folder with it."""
    path = Path(path)
    name = path.name
    if name.startswith(".") and name.endswith(".tmp") and name.count(".") >= 3:
        return path.with_name(name[1:].rsplit(".", 2)[0])
    return path


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path``.

    The old folder (if any) is renamed aside first and deleted only once the new one is in
    place, so a kill at any point leaves a complete old or new folder (at worst under its
    ``.old`` name, which the next successful write removes). On an exception the temporary
    folder is deleted and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _named(path):
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~_current_umask())
    old = path.parent / f".{path.name}.old"
    try:
        yield tmp
        for written in tmp.rglob("*"):  # safetensors writes its files 0600; outputs are shared
            if written.is_file() and not written.is_symlink():
                os.chmod(written, _FILE_MODE)
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
