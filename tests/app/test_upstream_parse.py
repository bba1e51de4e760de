"""Reading a request body for routing: the whole-body parse of a small plain body finds exactly what
the value-by-value scan finds, and the model is rewritten in place either way."""

import json

import pytest

from tierguard.app.upstream import _quick, parse_request, scan_object, with_model

PLAIN = {"model": "claude-opus-4-7", "max_tokens": 8, "system": "classify",
         "messages": [{"role": "user", "content": "The parcel arrived damaged."}]}
BODIES = [
    json.dumps(PLAIN),
    json.dumps(PLAIN, indent=2),
    '{ "max_tokens" : 8 , "model"\n:\t"claude-opus-4-7" , "messages": [] }',
    '{"max_tokens": 8, "messages": []}',  # no model
    '{}',
    '{ }',
    '{"messages": [{"role": "user", "content": "which \\"model\\" are you?"}], "model": "m"}',
    '{"messages": [{"role": "user", "content": "a\\"model"}]}',  # "model" inside a string only
    '{"tools": [{"input_schema": {"properties": {"model": {}}}}], "model": "m"}',  # nested key
    '{"tools": [{"input_schema": {"properties": {"model": {}}}}]}',
    '{"mod\\u0065l": "m", "max_tokens": 8}',  # an escaped key
    '{"model": "m", "model": "n"}',  # a duplicate key: the last wins, both rewritten
    '{"model": "caf\u00e9 \u2603", "messages": ["\u00e9t\u00e9"]}',  # non-ASCII before the rewrite
    '{"model": null, "max_tokens": 8}',
    '{"model": 7}',
    '\ufeff{"model": "m"}',  # a BOM, as json.loads(bytes) allows
    '{"note": "a\\"model", "model": "m"}',  # the key's spelling inside a string as well
]


@pytest.mark.parametrize("text", BODIES)
def test_the_quick_parse_finds_what_the_scan_finds(text):
    body = text.encode()
    parsed = parse_request(body, [], 1 << 20)
    scanned = scan_object(body.decode("utf-8"))
    assert (parsed.request, parsed.spans, parsed.first) == scanned
    assert parsed.request == json.loads(body)
    rewritten = json.loads(with_model(parsed, "claude-haiku-4-5"))
    assert rewritten == {**json.loads(body), "model": "claude-haiku-4-5"}


def test_a_plain_body_takes_the_quick_parse_and_odd_ones_the_scan():
    assert _quick(json.dumps(PLAIN).encode()) is not None
    assert _quick(b'{"max_tokens": 8}') is not None
    for odd in (BODIES[8], BODIES[10], BODIES[11], BODIES[15], BODIES[16]):
        assert _quick(odd.encode()) is None, odd


@pytest.mark.parametrize("text", ['[1, 2]', '"model"', '{"model": "m"', '{"model": "m"} x', '{"a": 1,}'])
def test_what_is_not_a_json_object_is_a_value_error(text):
    with pytest.raises(ValueError):
        parse_request(text.encode(), [], 1 << 20)
