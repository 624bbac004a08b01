"""Split JSON text into tokens."""

from dataclasses import dataclass

PUNCTUATION = "{}[]:,"


@dataclass
class Token:
    """A lexical token with its kind, text and offset in the input."""

    kind: str
    text: str
    offset: int


def _read_string(text: str, start: int) -> int:
    i = start + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == '"':
            return i + 1
        i += 1
    raise ValueError(f"unterminated string at offset {start}")


def tokenize(text: str) -> list[Token]:
    """Turn JSON source text into a list of punctuation, string, number and literal tokens."""
    tokens, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch in PUNCTUATION:
            tokens.append(Token("punct", ch, i))
            i += 1
        elif ch == '"':
            end = _read_string(text, i)
            tokens.append(Token("string", text[i:end], i))
            i = end
        else:
            j = i
            while j < len(text) and not text[j].isspace() and text[j] not in PUNCTUATION:
                j += 1
            tokens.append(Token("atom", text[i:j], i))
            i = j
    return tokens
