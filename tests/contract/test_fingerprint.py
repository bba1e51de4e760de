"""The prompt fingerprint: what defines the task counts, the messages never do."""

import dataclasses
import hashlib

import pytest

from tierguard.contract.fingerprint import prompt_fingerprint, task_of
from tierguard.contract.job import ShadowJob
from tierguard.contract.sealing import Sealer, canonical, open_job, seal_job
from tierguard.errors import PayloadInvalid

BASE = {"model": "claude-haiku-4-5", "max_tokens": 64, "system": "classify the ticket",
        "messages": [{"role": "user", "content": "hello"}]}
TOOL = {"name": "route", "description": "pick a queue", "input_schema": {"type": "object"}}


def test_only_the_task_counts():
    fp = prompt_fingerprint(BASE)
    assert len(fp) == 16 and int(fp, 16) >= 0
    same = {**BASE, "messages": [{"role": "user", "content": "another"}], "max_tokens": 9,
            "temperature": 0.2, "model": "claude-opus-4-7", "metadata": {"user_id": "u"}, "stream": True}
    assert prompt_fingerprint(same) == fp
    assert prompt_fingerprint({**BASE, "system": "classify the ticket!"}) != fp
    for key, value in (("tools", [TOOL]), ("tool_choice", {"type": "any"}),
                       ("output_format", {"type": "json_schema", "schema": {}}),
                       ("output_config", {"format": {"type": "json_schema", "schema": {}}})):
        assert prompt_fingerprint({**BASE, key: value}) != fp, key


def test_canonical_forms_are_one_task():
    blocks = [{"type": "text", "text": "classify the ticket", "cache_control": {"type": "ephemeral"}}]
    assert prompt_fingerprint({**BASE, "system": blocks}) == prompt_fingerprint(BASE)
    reordered = {"tool_choice": {"type": "auto"}, "tools": [dict(reversed(list(TOOL.items())))], **BASE}
    assert prompt_fingerprint(reordered) == prompt_fingerprint({**BASE, "tools": [TOOL],
                                                                "tool_choice": {"type": "auto"}})
    assert prompt_fingerprint({**BASE, "tools": None}) == prompt_fingerprint(BASE)


def test_no_task_keys_is_the_hash_of_the_empty_set():
    empty = hashlib.sha256(b"{}").hexdigest()[:16]
    assert prompt_fingerprint({"messages": [{"role": "user", "content": "x"}]}) == empty
    assert prompt_fingerprint({}) == empty and task_of({"max_tokens": 1}) == {}


JOB = ShadowJob(job_id="j1", category="sentiment", served_model="claude-haiku-4-5",
                shadow_model="claude-opus-4-7", request={"messages": []}, primary_text="POSITIVE",
                served_snapshot="claude-haiku-4-5-20251001")


def test_served_snapshot_travels_sealed_and_signed():
    from cryptography.fernet import Fernet

    sealer = Sealer([Fernet.generate_key().decode()])
    sealed = seal_job(JOB, sealer)
    assert open_job(sealed, sealer).served_snapshot == "claude-haiku-4-5-20251001"
    forged = dataclasses.replace(sealed, served_snapshot="other")
    with pytest.raises(PayloadInvalid, match="served_snapshot"):
        open_job(forged, sealer)
    signer = Sealer([], "k" * 32)
    signed = seal_job(JOB, signer)
    assert open_job(signed, signer) == JOB


def test_a_job_signed_by_an_older_producer_still_verifies():
    signer = Sealer([], "k" * 32)
    old = dataclasses.replace(JOB, served_snapshot=None)
    wire = seal_job(old, signer).to_dict()
    del wire["served_snapshot"]  # an older producer never sent the field
    assert b"served_snapshot" not in canonical(old)
    assert open_job(ShadowJob.from_dict(wire), signer) == old
