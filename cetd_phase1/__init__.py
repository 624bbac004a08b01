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

import sys as _sys


def _register_auto_classes() -> None:
    """``AutoModel.from_pretrained(final)`` opens a saved retriever once ``cetd_phase1`` is
    imported, without this import loading torch: the auto classes are registered when
    transformers' ``modeling_auto`` is (at once if it already is). Written by hand because
    Python has no post-import hook: a finder wraps that one module's loader."""
    import importlib.abc
    import importlib.util

    def register() -> None:
        from cetd_phase1.modeling import model  # noqa: F401  (its import registers them)

    target = "transformers.models.auto.modeling_auto"
    if target in _sys.modules:
        register()
        return

    class RegisterAfterImport(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target_module=None):
            if name != target:
                return None
            _sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            if spec is None or spec.loader is None:
                return spec
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                # Loaded from inside one of our own modules' imports: the model module may
                # need that half-done module, and it registers itself once it is imported.
                if not any(getattr(getattr(m, "__spec__", None), "_initializing", False)
                           for n, m in list(_sys.modules.items())
                           if n.startswith("cetd_phase1.")):
                    register()

            spec.loader.exec_module = exec_module
            return spec

    _sys.meta_path.insert(0, RegisterAfterImport())


_register_auto_classes()

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
        from cetd_phase1.ranking.config import RankingConfig
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
