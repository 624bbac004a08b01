"""Recursive-descent parser over the tokens."""

import json

from json_parser.errors import format_error
from json_parser.tokenizer import Token, tokenize

LITERALS = {"true": True, "false": False, "null": None}


class Parser:
    """Consume tokens and build Python values."""

    def __init__(self, tokens: list[Token]):
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> Token:
        if self.pos >= len(self.tokens):
            raise ValueError(format_error("unexpected end of input", self.pos))
        return self.tokens[self.pos]

    def expect(self, text: str) -> None:
        tok = self.peek()
        if tok.text != text:
            raise ValueError(format_error(f"expected {text!r}, got {tok.text!r}", tok.offset))
        self.pos += 1

    def value(self):
        """Parse one JSON value: object, array, string, number or literal."""
        tok = self.peek()
        if tok.text == "{":
            return self.obj()
        if tok.text == "[":
            return self.array()
        self.pos += 1
        if tok.kind == "string":
            return json.loads(tok.text)
        if tok.text in LITERALS:
            return LITERALS[tok.text]
        return float(tok.text) if any(c in tok.text for c in ".eE") else int(tok.text)

    def obj(self) -> dict:
        self.expect("{")
        out = {}
        while self.peek().text != "}":
            key = self.value()
            self.expect(":")
            out[key] = self.value()
            if self.peek().text == ",":
                self.pos += 1
        self.expect("}")
        return out

    def array(self) -> list:
        self.expect("[")
        out = []
        while self.peek().text != "]":
            out.append(self.value())
            if self.peek().text == ",":
                self.pos += 1
        self.expect("]")
        return out


def parse_json(json_str: str):
    """Parse a JSON document into Python dicts, lists, strings, numbers and literals."""
    return Parser(tokenize(json_str)).value()
