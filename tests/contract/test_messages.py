"""``contract/messages``: what is read from a Messages API answer."""

import json

from tierguard.contract.messages import body_usage


def test_an_unsampled_answers_usage_is_read_from_its_last_key_else_from_the_whole():
    usage = {"input_tokens": 3, "output_tokens": 1}
    quoted = {"content": [{"type": "text", "text": '"usage": {"input_tokens": 9}'}], "usage": usage}
    assert body_usage(json.dumps(quoted).encode()) == usage
    later = {"content": [], "usage": usage, "context_management": {"usage": "n/a"}}  # a later "usage"
    assert body_usage(json.dumps(later).encode()) == usage
    assert body_usage(b'{"usage": {"input_tokens": "x"}}') == {"input_tokens": "x"}  # as the API said
    assert body_usage(b"not json") is None
