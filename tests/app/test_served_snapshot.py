"""The publisher's job names the snapshot that served the call: the answer's ``model``, whatever
form the answer took (JSON from the tap or the gateway, an assembled stream, an SDK object)."""

import datetime as dt
from types import SimpleNamespace

from tierguard.app.publisher import Sampled, build_job


def job_for(message):
    return build_job(Sampled("sentiment", "claude-haiku-4-5", "claude-opus-4-7",
                             '{"max_tokens": 8, "messages": []}', None, message, 1.0,
                             dt.datetime.now(dt.UTC)))


def test_the_served_snapshot_is_the_answers_model():
    usage = {"input_tokens": 3, "output_tokens": 1}
    as_json = {"model": "claude-haiku-4-5-20251001", "content": [{"type": "text", "text": "OK"}],
               "usage": usage}
    assert job_for(as_json).served_snapshot == "claude-haiku-4-5-20251001"
    sdk = SimpleNamespace(model="claude-haiku-4-5-20251001", content=[], usage=SimpleNamespace(**usage))
    assert job_for(sdk).served_snapshot == "claude-haiku-4-5-20251001"
    assembled = {"type": "message", "model": None, "content": [], "usage": usage}  # no message_start
    assert job_for(assembled).served_snapshot is None
    assert job_for({"content": [], "usage": usage}).served_snapshot is None
