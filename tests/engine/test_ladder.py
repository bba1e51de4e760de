"""Ladders: one state per rung, decisions at the same sample as the two-model engine, targets by rung."""

import dataclasses
import random

from tierguard.engine.detector import STATE_VERSION, Engine, EngineConfig, Situation
from tierguard.engine.ladder import Ladder, rung_state

H, S, OPUS = "haiku", "sonnet", "opus"
CONFIG = EngineConfig(min_samples=50, promote_min_samples=200, cooldown_s=0)


def ladder(demote_to="reference", auto_promote=False):
    config = dataclasses.replace(CONFIG, auto_promote=auto_promote)
    return Ladder((H, S, OPUS), Engine(config), Engine(dataclasses.replace(config, auto_promote=False)),
                  demote_to)


def stream(seed, n, p):
    rng = random.Random(seed)
    return [rng.random() < p for _ in range(n)]


def first_move(lad, states, serving, rung, outcomes, t0=0.0):
    for i, agree in enumerate(outcomes):
        states, move = lad.update(states, serving, rung, agree, False, t0 + i)
        if move.decision.action != "hold":
            return i, states, move
    return None, states, None


def two_model_index(outcomes):
    engine, state = Engine(CONFIG), {}
    for i, agree in enumerate(outcomes):
        state, decision = engine.update(state, agree, Situation("candidate", False, float(i)))
        if decision.action != "hold":
            return i
    return None


def test_the_serving_rung_fails_at_the_same_sample_as_the_two_model_engine():
    outcomes = stream(3, 2000, 0.80)
    index, states, move = first_move(ladder(), {}, H, H, outcomes)
    assert index == two_model_index(outcomes) == 81
    assert (move.decision.action, move.rung, move.target) == ("demote", H, OPUS)
    assert move.decision.reason.startswith("haiku fails against the reference, so the reference serves")
    assert states[H]["failed"] and rung_state(states, OPUS, H) == "demoted"


def test_demote_to_next_goes_to_the_cheapest_eligible_rung_above():
    lad = ladder("next")
    # Sonnet, not in service, gathers evidence by probes: eligible at its 200th agreement.
    index, states, move = first_move(lad, {}, H, S, [True] * 400)
    assert (index, move.decision.action, move.target) == (199, "eligible", None)
    assert rung_state(states, H, S) == "eligible"
    _, states, move = first_move(lad, states, H, H, stream(3, 2000, 0.80), t0=1000)
    assert (move.decision.action, move.target) == ("demote", S)
    assert "so sonnet, the cheapest rung above it eligible" in move.decision.reason
    # Without an eligible rung above it, the reference.
    _, _, move = first_move(lad, {}, H, H, stream(3, 2000, 0.80))
    assert move.target == OPUS


def test_promotion_moves_one_rung_cheaper_at_a_time():
    lad = ladder(auto_promote=True)
    states: dict = {}
    # The reference serves; haiku's evidence (probes) makes it eligible only: it is two rungs down.
    index, states, move = first_move(lad, states, OPUS, H, [True] * 400)
    assert (index, move.decision.action, move.target) == (199, "eligible", None)
    # Sonnet, just below the reference, is promoted at its 200th agreement.
    index, states, move = first_move(lad, states, OPUS, S, [True] * 400)
    assert (index, move.decision.action, move.target) == (199, "promote", S)
    # With sonnet serving, haiku is the rung just below: its next outcome promotes it.
    _, move = lad.update(states, S, H, True, False, 10_000.0)
    assert (move.decision.action, move.target) == ("promote", H)


def test_rung_states_and_the_primary_rung():
    lad = ladder()
    assert lad.primary(OPUS) == S and lad.primary(H) == H
    states = {S: {"eligible": True}, H: {"failed": True}}
    assert [rung_state(states, S, m) for m in (H, S)] == ["demoted", "serving"]
    assert rung_state({S: {"eligible": True}}, H, S) == "eligible"
    assert lad.mirror({"rungs": {S: {"ewma": 0.9}}}, OPUS) == {"ewma": 0.9, "rungs": {S: {"ewma": 0.9}}}


def test_a_change_starts_every_rungs_cooldown():
    config = dataclasses.replace(CONFIG, auto_promote=True, cooldown_s=3600)
    lad = Ladder((H, S, OPUS), Engine(config), Engine(dataclasses.replace(config, auto_promote=False)),
                 "reference")
    _, states, move = first_move(lad, {}, H, S, [True] * 400)  # sonnet eligible by probes
    assert move.decision.action == "eligible"
    _, states, move = first_move(lad, states, H, H, stream(3, 2000, 0.80), t0=10_000)
    assert move.target == OPUS
    demoted_at = 10_000 + 81
    states, move = lad.update(states, OPUS, S, True, False, demoted_at + 60)
    assert move.decision.action == "hold" and "cooldown" in move.decision.reason  # not at once
    states, move = lad.update(states, OPUS, S, True, False, demoted_at + 3601)
    assert (move.decision.action, move.target) == ("promote", S)


def test_bench_ladder_runs_the_real_engine_on_every_setup():
    from tierguard.bench.ladder import ladder_figures

    fig = ladder_figures(seed=3, days=12)  # the sharp drift (day 10.5) included
    assert set(fig["setups"]) == {"two_tier", "ladder", "ladder_next"}
    for s in fig["setups"].values():
        assert set(s) >= {"production_usd", "vs_all_reference", "watching_share", "detection_hours",
                          "false_flips", "hours_below_threshold"}
        assert s["detection_hours"]["median"] is not None  # the drift is caught in every set-up
    two = fig["setups"]["two_tier"]
    for name in ("ladder", "ladder_next"):  # group B moves to Sonnet: cheaper than Opus
        assert fig["setups"][name]["production_usd"] < 0.9 * two["production_usd"]
        assert fig["setups"][name]["false_flips"] <= two["false_flips"]


def test_a_promotion_that_would_flap_pins_the_route_where_it_is():
    config = dataclasses.replace(CONFIG, auto_promote=True, flap_limit=2)
    lad = Ladder((H, S, OPUS), Engine(config), Engine(dataclasses.replace(config, auto_promote=False)),
                 "reference")
    states = {H: {"v": STATE_VERSION, "changes": [0.0], "last_change": 0.0}}  # one change in the window
    index, states, move = first_move(lad, states, S, H, [True] * 400, t0=10.0)
    assert (move.decision.action, move.target) == ("pin", S)  # sonnet serves on, pinned: not opus


def test_every_rung_is_promoted_by_the_betting_test_at_the_two_model_sample():
    outcomes = stream(8, 3000, 0.985)
    engine, state, expected = Engine(dataclasses.replace(CONFIG, auto_promote=True)), {}, None
    for i, agree in enumerate(outcomes):
        state, decision = engine.update(state, agree, Situation("reference", False, float(i)))
        if decision.action != "hold":
            expected = i
            break
    # Sonnet, just below the reference in service, moves at the same sample, on the same test.
    index, _, move = first_move(ladder(auto_promote=True), {}, OPUS, S, outcomes)
    assert index == expected is not None and move.decision.action == "promote" and move.target == S
    assert move.decision.numbers["e_value"] >= 1 / CONFIG.promote_error_rate
    # Haiku, two rungs below, is only marked eligible, on its own betting evidence.
    index, states, move = first_move(ladder(auto_promote=True), {}, OPUS, H, outcomes)
    assert index == expected and move.decision.action == "eligible" and states[H]["w"] >= 460518
