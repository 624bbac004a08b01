from json_parser import parse_json


def test_parse():
    assert parse_json('{"a": [1, 2]}') == {"a": [1, 2]}
