"""The fingerprint tracker, to the sample: which sample resets the evidence, and what it names."""

import json

from tierguard.engine.fingerprints import KEY, Change, Tracker, kept, summary

T = Tracker()
HAIKU, OPUS = "claude-haiku-4-5", "claude-opus-4-7"


def run(prompts, snapshots=None, state=None, tracker=T):
    """Feed the prompts in order (snapshots: a list of {model: snapshot} alike, or none); the state
    (through JSON each time, as the database keeps it) and the (index, reset) pairs."""
    resets = []
    for i, prompt in enumerate(prompts):
        snaps = snapshots[i] if snapshots else {}
        state, reset = tracker.feed(json.loads(json.dumps(state)), prompt, snaps, 1_000_000.0 + i)
        if reset is not None:
            resets.append((i, reset))
    return state, resets


def test_the_first_value_is_adopted_without_a_reset():
    state, resets = run(["a"])
    assert resets == []
    assert state["prompt"]["current"] == "a" and state["since"] == "1970-01-12T13:46:40+00:00"


def test_a_new_prompt_resets_at_the_sample_that_fills_80_percent_of_a_full_window():
    state, resets = run(["a"] * 50 + ["b"] * 60)
    assert [i for i, _ in resets] == [50 + 39]  # the 40th "b": 40 of the last 50
    reset = resets[0][1]
    assert reset.changes == (Change(None, "a", "b"),)
    assert reset.what == "prompt fingerprint a -> b"
    assert state["prompt"]["current"] == "b" and state["since"] == reset.since
    assert reset.since == "1970-01-12T13:48:09+00:00"  # the 90th sample's time


def test_a_window_not_yet_full_waits_until_it_is():
    _, resets = run(["a"] * 10 + ["b"] * 45)
    assert [i for i, _ in resets] == [49]  # 10 a + 40 b: full, and b holds 40


def test_a_few_odd_calls_and_a_50_50_mix_never_reset():
    odd = ["a"] * 50 + (["a"] * 4 + ["b"]) * 40  # one in five: 10 of any 50
    assert run(odd)[1] == []
    assert run(["a"] * 50 + ["a", "b"] * 500)[1] == []
    assert run(["a"] * 50 + (["b"] * 39 + ["a"] * 11) * 5)[1] == []  # 39 of 50 at most


def test_nulls_never_count():
    state, resets = run([None] * 5 + ["a"] + [None] * 100 + ["b"] * 39)
    assert resets == [] and state["prompt"]["current"] == "a"
    assert sum(n for _, n in state["prompt"]["window"]) == 40
    state, resets = run(["b"], state=state)
    assert [i for i, _ in resets] == []  # 1 a + 40 b: the window is not full yet
    state, resets = run(["b"] * 9, state=state)
    assert [i for i, _ in resets] == [8]  # 1 a + 49 b: full, b holds 49


def test_a_value_that_comes_back_must_win_a_full_window_again():
    state, resets = run(["a"] * 50 + ["b"] * 40)
    assert len(resets) == 1
    state, resets = run(["a"] * 40, state=state)
    assert [i for i, _ in resets] == [39] and resets[0][1].what == "prompt fingerprint b -> a"


def test_snapshots_are_tracked_per_model_and_name_the_model():
    served = [{HAIKU: "haiku-1", OPUS: "opus-1"}] * 50 + [{HAIKU: "haiku-2", OPUS: "opus-1"}] * 40
    state, resets = run(["p"] * 90, served)
    assert [i for i, _ in resets] == [89]
    assert resets[0][1].what == "claude-haiku-4-5 snapshot haiku-1 -> haiku-2"
    assert summary(state, HAIKU) == {"prompt": "p", "served_snapshot": "haiku-2",
                                     "since": resets[0][1].since}
    assert summary(state, OPUS)["served_snapshot"] == "opus-1"


def test_a_model_first_seen_later_is_adopted_and_changes_together_are_one_reset():
    state, _ = run(["p"] * 50, [{HAIKU: "haiku-1"}] * 50)
    state, resets = run(["p"], [{HAIKU: "haiku-1", "claude-sonnet-4-6": "sonnet-1"}], state=state)
    assert resets == [] and state["snapshots"]["claude-sonnet-4-6"]["current"] == "sonnet-1"
    state, resets = run(["q"] * 40, [{HAIKU: "haiku-2"}] * 40, state=state)
    assert [i for i, _ in resets] == [39]
    assert resets[0][1].changes == (Change(None, "p", "q"), Change(HAIKU, "haiku-1", "haiku-2"))


def test_the_window_is_kept_as_runs_and_bounded():
    state, _ = run(["a", "b"] * 100)
    assert sum(n for _, n in state["prompt"]["window"]) == 50 and len(state["prompt"]["window"]) == 50
    state, _ = run(["a"] * 500)
    assert state["prompt"]["window"] == [["a", 50]]


def test_a_smaller_window_and_share():
    _, resets = run(["a"] * 10 + ["b"] * 10, tracker=Tracker(window=10, share=0.6))
    assert [i for i, _ in resets] == [15]  # the 6th b


def test_summary_before_any_sample_and_kept():
    assert summary(None, HAIKU) == {"prompt": None, "served_snapshot": None, "since": None}
    assert summary({}, HAIKU) == {"prompt": None, "served_snapshot": None, "since": None}
    old = {"n": 3, KEY: {"since": "x"}}
    assert kept(old, {"n": 0}) == {"n": 0, KEY: {"since": "x"}}
    assert kept({"n": 3}, {"n": 0}) == {"n": 0}
    assert kept(None, {"n": 0}) == {"n": 0}


def test_the_last_reset_is_remembered():
    from tierguard.engine.fingerprints import last_reset

    state, _ = run(["a"] * 50)
    assert last_reset(state) is None and "reset" not in state
    state, resets = run(["b"] * 40, state=state)
    assert last_reset(state) == (1_000_039.0, "prompt fingerprint a -> b")
    assert state["reset"] == {"at": resets[0][1].since, "what": "prompt fingerprint a -> b"}
