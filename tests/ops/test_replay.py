"""Replay (policy backtest): both line shapes, exact trigger line, clear errors, the CLI's JSON."""

import json
import random

import pytest

from tests.helpers import last_json, tg
from tierguard.db import make_engine, upgrade
from tierguard.engine.detector import Engine, EngineConfig, Situation, fresh_state
from tierguard.ops.replay import ReplayError, replay
from tierguard.policy import parse_policy


def memory_db():
    engine = make_engine("sqlite://")
    upgrade(engine)
    return engine


def prejudged(seed=1, n=6000, drift_at=3000):
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        cat = "steady" if i % 2 == 0 else "drifting"
        p = 0.97 if cat == "steady" or i < drift_at else 0.82
        lines.append(json.dumps({"category": cat, "agree": rng.random() < p}))
    return lines


def test_trigger_index_is_the_line_the_engine_flips_on():
    lines = prejudged()
    result = replay(lines, parse_policy({}), memory_db())
    [change] = result["changes"]
    # The same stream fed straight to the engine flips on the same sample.
    engine, state = Engine(EngineConfig()), fresh_state()
    drifting = [i for i, line in enumerate(lines) if '"drifting"' in line]
    for i in drifting:
        state, d = engine.update(state, json.loads(lines[i])["agree"], Situation("candidate", False, 0))
        if d.action == "demote":
            break
    assert change["index"] == i and change["category"] == "drifting"
    assert (change["from"], change["to"]) == ("claude-haiku-4-5", "claude-opus-4-7")
    cats = result["categories"]
    assert cats["steady"]["route"] == "claude-haiku-4-5" and cats["steady"]["samples"] == 3000
    assert cats["drifting"]["route"] == "claude-opus-4-7"


def test_full_lines_use_the_real_comparator():
    policy = parse_policy({"defaults": {"min_samples": 5},
                           "categories": {"inv": {"comparator": {"type": "json", "ignore_keys": ["notes"]}}}})
    good = {"category": "inv", "ts": "2026-11-01T10:00:00Z",
            "primary": {"model": "claude-haiku-4-5", "output": {"total": 10, "notes": "x"}},
            "shadow": {"model": "claude-opus-4-7", "output": '{"total": 10, "notes": "y"}'}}
    bad = {**good, "primary": {"model": "claude-haiku-4-5", "output": '{"total": 11}'}}
    lines = [json.dumps(good)] * 10 + [""] + [json.dumps(bad)] * 30
    result = replay(lines, policy, memory_db())
    assert result["categories"]["inv"]["samples"] == 40
    assert [c["index"] for c in result["changes"]] == [11 + 19]  # blank line 10 keeps numbering


@pytest.mark.parametrize(("line", "message"), [
    ("not json", "line 2: not JSON"),
    ('{"agree": true}', "line 2: category: required"),
    ('{"category": "x", "agree": "yes"}', "line 2: agree: must be true or false"),
    ('{"category": "x"}', "line 2: needs 'agree', or 'primary' and 'shadow'"),
    ('{"category": "x", "agree": true, "ts": "yesterday"}', "line 2: ts: not an ISO 8601 time"),
])
def test_bad_lines_name_the_line(line, message):
    with pytest.raises(ReplayError, match=message):
        replay(['{"category": "x", "agree": true}', line], parse_policy({}), memory_db())


def test_cli_replay_json_round_trip(tmp_path):
    import os

    path = tmp_path / "traffic.jsonl"
    path.write_text("\n".join(prejudged()) + "\n")
    policy = tmp_path / "observe.yaml"
    policy.write_text("defaults: {mode: observe}\n")
    env = {**os.environ}
    enforce = last_json(tg("replay", str(path), "--json", env=env, cwd=tmp_path).stdout)
    observe = last_json(tg("replay", str(path), "--policy", str(policy), "--json", env=env,
                           cwd=tmp_path).stdout)
    assert [c["category"] for c in enforce["changes"]] == ["drifting"]
    assert observe["changes"] == []
    assert observe["would_change"][0]["index"] == enforce["changes"][0]["index"]
    assert observe["categories"]["drifting"]["route"] == "claude-haiku-4-5"
    assert set(enforce["categories"]["drifting"]) == {"samples", "agreement", "route"}
