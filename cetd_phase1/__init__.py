"""CET-D Phase 1: requirement -> code retrieval.

The folders are the data flow, one way:

* ``data/`` - app sources -> sections (``sections``) -> labelled requirements (``labels``,
  ``changelog``, ``git_history``) -> Arrow tables (``dataset``); ``registry``/``postgres``/
  ``pypi`` say which applications exist and where their source is;
* ``modeling/`` - the bi-encoder (``model``), its config, backbone loading, pooling, tokens;
  ``losses`` - its training objective;
* ``training/`` - sampler, collator, Trainer, checkpoints; ``train`` is the driver;
* ``ranking/`` - ranking a whole app: section texts, encoding, late interaction, BM25, fusion,
  and the settings saved beside a checkpoint;
* ``evaluation/`` - metrics, the evaluate command and its report;
* ``retrieve`` - the served retriever; ``export``/``hub`` - sentence-transformers and the hub.

The names a user needs are importable from here: :class:`CETDRetriever`, :class:`CETDConfig`,
:class:`Retriever`, :class:`RankingConfig`.
"""

__version__ = "0.1.0"

def __getattr__(name: str):
    # imported on first use: `import cetd_phase1` stays light (no torch) for the command line
    if name == "CETDRetriever":
        from cetd_phase1.modeling.model import CETDRetriever
        return CETDRetriever
    if name == "CETDConfig":
        from cetd_phase1.modeling.config import CETDConfig
        return CETDConfig
    if name == "Retriever":
        from cetd_phase1.retrieve import Retriever
        return Retriever
    if name == "RankingConfig":
        from cetd_phase1.ranking.settings import RankingConfig
        return RankingConfig
    raise AttributeError(f"module 'cetd_phase1' has no attribute {name!r}")


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
