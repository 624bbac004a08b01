"""A tiny JSON parser written for the cetd-phase1 examples."""

from json_parser.parser import parse_json

__all__ = ["parse_json"]
