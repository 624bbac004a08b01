"""How code and requirements are written out as text for the models: the encoder's section text
and the two identifier-splitting rules, the encoder's and BM25's. The ground floor: every step
(data, training, ranking, serving) reads text the same way from here."""

from __future__ import annotations

import re


def format_section(file: str, qualname: str, code: str) -> str:
    """The text the encoder reads for a section: its location up front, then its code.

    The path and qualified name come first so they survive when a long body is truncated;
    the code itself starts with the signature.
    """
    return f"# {file} :: {qualname}\n{code}"


#: A camelCase or PascalCase word boundary: ``parseJSON``, ``HTTPServer``.
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def split_camel_case(text: str) -> str:
    """``text`` with a space at every camelCase boundary (``basicConfig`` -> ``basic Config``,
    ``HTTPServer`` -> ``HTTP Server``); snake_case is left alone.

    An uncased WordPiece vocabulary (MiniLM's) lowercases first and then shreds a compound
    identifier into fragments (``basicconfig`` -> ``basic ##con ##fi ##g``); split, its words are
    whole tokens of the vocabulary. ``model.split_identifiers`` turns this on for the encoder.
    """
    return _CAMEL_BOUNDARY.sub(" ", text)


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: BM25's boundary: a lower-case letter or digit before a capital (``HTTPServer`` stays one
#: word, ``parseJSON`` -> ``parse JSON``); its words are stemmed, and the compound kept whole.
_BM25_CAMEL = re.compile(r"([a-z0-9])([A-Z])")


def bm25_text(text: str) -> str:
    """Text as BM25 reads it: identifiers split into words (``parseJSON``, ``load_file`` ->
    ``parse JSON``, ``load file``) so prose matches them, and each compound identifier also
    kept whole so a requirement naming it (``stop_after_delay``) matches it exactly. Its own
    rule beside :func:`split_camel_case`: BM25 matches whole stemmed words, the encoder reads
    word pieces (docs/experiments.md)."""
    compounds = [w for w in _IDENTIFIER.findall(text)
                 if "_" in w.strip("_") or _BM25_CAMEL.search(w)]
    return " ".join([_BM25_CAMEL.sub(r"\1 \2", text).replace("_", " "), *compounds])
