"""The retirement decisions, pure: who is retiring, the replacement, the moves, every verdict's reason."""

import datetime as dt

from tierguard.engine.retirements import (
    Usage,
    check,
    iso_week,
    listed,
    replacement,
    retired_on,
    retiring,
    rung_states,
)

HAIKU, SONNET, OPUS = "claude-haiku-4-5", "claude-sonnet-4-6", "claude-opus-4-7"
OLD = "claude-haiku-3-5"
TODAY = dt.date(2026, 11, 20)
LADDER = (OLD, HAIKU, SONNET, OPUS)


def ladder(routed=OLD, pinned=False, **states):
    base = {OLD: "watching", HAIKU: "watching", SONNET: "watching"}
    base.update({m: "serving" for m in (routed,) if m != OPUS})
    return Usage("support", LADDER, routed, pinned, {**base, **{k.replace("_", "-"): v
                                                                 for k, v in states.items()}})


def test_a_model_is_listed_by_itself_or_a_dated_snapshot():
    ids = {"claude-haiku-4-5-20251001", OPUS}
    assert listed(HAIKU, ids) and listed(OPUS, ids)
    assert not listed("claude-haiku-4", ids)  # a prefix of another name is not the model
    assert not listed(SONNET, ids) and not listed("claude-haiku-4-5-2025", ids)


def test_the_replacement_is_the_cheapest_usable_eligible_rung_else_the_reference():
    states = {OLD: "serving", HAIKU: "watching", SONNET: "eligible"}
    assert replacement(LADDER, states, {OLD}) == (SONNET, "the cheapest usable rung eligible on its "
                                                          "own evidence")
    assert replacement(LADDER, {**states, HAIKU: "eligible"}, {OLD, HAIKU})[0] == SONNET  # retiring too
    assert replacement(LADDER, {**states, SONNET: "demoted"}, {OLD}) == (
        OPUS, "the reference: no cheaper usable rung serves or is eligible")
    assert replacement(LADDER, {OLD: "watching", HAIKU: "serving"}, {OLD})[0] == HAIKU  # serves already
    target, why = replacement(LADDER, states, {OLD, SONNET, OPUS})
    assert target is None and why.startswith(f"none: the reference {OPUS} is retiring or unlisted too")


def test_two_models_read_the_candidate_from_the_detector_state():
    assert rung_states((HAIKU, OPUS), OPUS, {"eligible": True}, False) == {HAIKU: "eligible"}
    assert rung_states((HAIKU, OPUS), HAIKU, {}, False) == {HAIKU: "serving"}
    states = {"rungs": {OLD: {"eligible": True}, HAIKU: {"failed": True}}}
    assert rung_states(LADDER, SONNET, states, True) == {OLD: "eligible", HAIKU: "demoted",
                                                          SONNET: "serving"}


def test_within_the_warning_a_notice_names_the_categories_and_replacements_and_moves_nothing():
    notices, moves = check([ladder(claude_sonnet_4_6="eligible")], {OLD: dt.date(2026, 12, 1)}, 30, TODAY)
    assert moves == []
    [n] = notices
    assert (n.model, n.date, n.days_left, n.unlisted) == (OLD, dt.date(2026, 12, 1), 11, False)
    assert n.uses == {"support": {"roles": ["route"], "replacement": SONNET,
                                  "why": "the cheapest usable rung eligible on its own evidence"}}
    assert n.reason == (f"{OLD} retires on 2026-12-01 (11 days left); used by support (route; replacement: "
                        f"{SONNET}, the cheapest usable rung eligible on its own evidence)")


def test_outside_the_warning_nothing_is_said():
    assert check([ladder()], {OLD: dt.date(2026, 12, 21)}, 30, TODAY) == ([], [])  # 31 days left
    assert check([ladder()], {OLD: dt.date(2026, 12, 20)}, 30, TODAY)[0]  # 30: the first day
    assert check([ladder()], {OLD: dt.date(2026, 11, 21)}, 0, TODAY) == ([], [])  # warning_days 0


def test_on_the_date_the_route_moves_and_a_pin_is_lifted():
    notices, [move] = check([ladder(pinned=True)], {OLD: TODAY}, 30, TODAY)
    assert (move.category, move.model, move.target, move.unpin) == ("support", OLD, OPUS, True)
    assert move.reason == (f"{OLD} retires today (2026-11-20): {OPUS} serves instead, the reference: no "
                           "cheaper usable rung serves or is eligible; the pin on it is lifted")
    assert notices[0].uses["support"]["roles"] == ["pin"]
    _, [later] = check([ladder()], {OLD: dt.date(2026, 11, 17)}, 30, TODAY)
    assert later.reason.startswith(f"{OLD} retired on 2026-11-17 (3 days ago): ")


def test_a_retired_rung_not_serving_is_noticed_but_moves_nothing():
    notices, moves = check([ladder(routed=SONNET)], {HAIKU: dt.date(2026, 11, 1)}, 30, TODAY)
    assert moves == [] and notices[0].uses["support"]["roles"] == ["rung"]
    assert notices[0].uses["support"]["replacement"] == SONNET  # it serves already


def test_with_no_replacement_nothing_moves_and_the_notice_says_so():
    usage = Usage("pair", (HAIKU, OPUS), HAIKU, False, {HAIKU: "serving"})
    notices, moves = check([usage], {HAIKU: TODAY, OPUS: TODAY}, 30, TODAY)
    assert moves == [] and [n.model for n in notices] == [HAIKU, OPUS]
    assert "replacement: none: the reference" in notices[0].reason


def test_a_model_the_api_does_not_list_is_reported_never_moved():
    usage = Usage("pair", (HAIKU, OPUS), HAIKU, False, {HAIKU: "serving"})
    notices, moves = check([usage], {}, 30, TODAY, ids={OPUS}, read_at="2026-11-20T06:00:00+00:00")
    assert moves == []
    [n] = notices
    assert (n.model, n.date, n.unlisted) == (HAIKU, None, True)
    assert n.reason == (f"{HAIKU} is not listed by the API (its model list as read at "
                        f"2026-11-20T06:00:00+00:00); used by pair (route; replacement: {OPUS}, the "
                        "reference: no cheaper usable rung serves or is eligible)")
    assert check([usage], {}, 30, TODAY, ids={"claude-haiku-4-5-20251001", OPUS}) == ([], [])
    assert check([usage], {}, 30, TODAY, ids=None) == ([], [])  # never read: nothing claimed
    _, [move] = check([usage], {HAIKU: TODAY}, 30, TODAY, ids={OPUS})  # retired and unlisted: moves
    assert move.target == OPUS


def test_one_notice_per_model_across_categories():
    a = Usage("a", (HAIKU, OPUS), HAIKU, False, {HAIKU: "serving"})
    b = Usage("b", (HAIKU, SONNET, OPUS), SONNET, False, {HAIKU: "watching", SONNET: "serving"})
    [n], moves = check([a, b], {HAIKU: dt.date(2026, 12, 1)}, 30, TODAY)
    assert set(n.uses) == {"a", "b"} and moves == []
    assert "used by a (route; replacement: claude-opus-4-7" in n.reason and "; b (rung; " in n.reason


def test_status_lists_what_retires_and_retired_rungs_are_held():
    dates = {OLD: dt.date(2026, 12, 1), OPUS: dt.date(2027, 6, 1), HAIKU: dt.date(2026, 11, 1)}
    assert retiring([OLD, OLD, HAIKU, OPUS], dates, 30, TODAY) == [
        {"model": OLD, "date": "2026-12-01", "days_left": 11},
        {"model": HAIKU, "date": "2026-11-01", "days_left": -19}]
    assert retired_on(dates, HAIKU, TODAY) == f"{HAIKU} retired on 2026-11-01"
    assert retired_on(dates, OLD, TODAY) is None and retired_on(dates, None, TODAY) is None
    assert iso_week(dt.date(2026, 11, 20)) == "2026-W47" and iso_week(dt.date(2027, 1, 1)) == "2026-W53"


def test_an_eligible_challenger_is_named_beside_the_rung_moved_to_and_a_retiring_one_is_noticed():
    import dataclasses

    usage = dataclasses.replace(ladder(), challengers=("claude-haiku-5", "claude-old-1"),
                                eligible_challengers=("claude-haiku-5",))
    retirements = {OLD: TODAY, "claude-old-1": TODAY + dt.timedelta(days=3)}
    notices, moves = check([usage], retirements, 30, TODAY)
    by_model = {n.model: n for n in notices}
    assert by_model[OLD].uses["support"]["challenger"] == "claude-haiku-5"
    assert ("or the challenger claude-haiku-5, eligible against the reference (add it to the ladder "
            "and roll it out)") in by_model[OLD].reason
    assert [m.target for m in moves] == [OPUS]  # moved to a rung (the reference), never a challenger
    assert by_model["claude-old-1"].uses["support"]["roles"] == ["challenger"]
