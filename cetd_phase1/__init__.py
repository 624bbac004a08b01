"""CET-D Phase 1: requirement -> code retrieval.

Data flows one way: ``sections`` -> ``labels`` -> ``dataset`` -> ``model``/``trainer`` ->
``metrics``/``evaluation`` -> ``retrieve``; ``registry`` says which applications exist.
"""

__version__ = "0.1.0"
