"""A staged rollout's plan, pure: steps parsed with errors that name the problem, when a step is over,
the roll-back at the exact comparison its CUSUM crosses."""

import pytest

from tierguard.engine.detector import Engine, EngineConfig
from tierguard.engine.rollouts import due, fed, parse_steps, weight


def test_steps_are_increasing_percentages_ending_at_100():
    assert parse_steps("5,25,50,100") == (5, 25, 50, 100)
    for text, why in (("5,x", "whole percentages"), ("0,100", "above 0"), ("50,25,100", "must increase"),
                      ("5,50", "the last step must be 100")):
        with pytest.raises(ValueError, match=why):
            parse_steps(text)
    assert weight([5, 100], 0, "running") == 0.05 and weight([5, 100], 0, "paused") == 0.0


def test_a_step_is_over_after_its_minutes_and_its_comparisons():
    steps = (20, 100)
    move = due(steps, 0, 0.0, 99, 3600.0, 60, 100)
    assert move.action == "wait"
    assert move.reason == "step 1/2 (20 %): 99 of 100 comparisons, 0.0 of 60 min left"
    assert due(steps, 0, 0.0, 100, 3599.0, 60, 100).action == "wait"
    move = due(steps, 0, 0.0, 100, 3600.0, 60, 100)
    assert (move.action, move.step) == ("advance", 1) and move.reason.endswith("on to 100 %")
    assert due(steps, 1, 0.0, 100, 3600.0, 0, 100).action == "finish"
    held = due(steps, 1, 0.0, 100, 3600.0, 0, 100, listed=False)
    assert held.action == "wait" and "held at 100 % until the policy lists the new model" in held.reason


def test_the_new_models_cusum_rolls_back_at_the_comparison_it_crosses():
    engine = Engine(EngineConfig(min_samples=20))
    state, found = {}, None
    for i in range(1, 500):
        state, move = fed(engine, state, i % 2 == 0, float(i))  # half its answers disagree
        if move is not None:
            found = (i, move)
            break
    i, move = found
    assert move.action == "roll_back" and move.reason.startswith(
        "the new model's agreement CUSUM crossed on its share of the calls: CUSUM reached")
    assert i == 45  # the engine's demotion CUSUM on alternating outcomes, as for a rung in service
