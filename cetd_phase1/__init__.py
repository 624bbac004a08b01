"""CET-D Phase 1: requirement -> code retrieval.

Data flows one way: ``sections`` -> ``labels`` -> ``dataset`` -> ``model``/``trainer`` ->
``metrics``/``evaluation`` -> ``retrieve``; ``registry`` says which applications exist.
"""

__version__ = "0.1.0"


def resource(*parts: str):
    """A file shipped inside the package (configs, the pinned PyPI list, the SQL schema), so a
    non-editable install finds it as the source checkout does."""
    from pathlib import Path

    # pip installs the package as files on disk (it is never imported from a zip)
    return Path(__file__).resolve().parent.joinpath(*parts)


def default_cache_dir():
    """``$CETD_CACHE`` or ``~/.cache/cetd_phase1``: the root of the dataset, PyPI and section
    index caches (``datasets/``, ``pypi/``, ``index/``)."""
    import os
    from pathlib import Path

    return Path(os.environ.get("CETD_CACHE", Path.home() / ".cache" / "cetd_phase1"))
