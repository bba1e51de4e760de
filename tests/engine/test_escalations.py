"""The escalation CUSUM: its design, minutes applied as one step, the exact minute it demotes."""

from tierguard.engine.escalations import Watch, escalation_design


def test_the_design_mirrors_the_agreement_one():
    d = escalation_design(0.05, 0.01, 10_000)
    assert (d.healthy, d.detect) == (0.975, 0.94) and d.false_flip_rate <= 0.01
    assert d.m > d.k and d.h > d.m  # one escalation weighs many passes; one alone never flips


def test_a_step_to_thirty_percent_broken_demotes_within_minutes():
    watch = Watch(0.05)
    state, found = None, None
    for minute in range(60):  # 1,000 calls an hour: 17 a minute, 5 of them broken from minute 10
        broken = 5 if minute >= 10 else 0
        state, decision = watch.feed(state, 60.0 * minute, 17, broken, serving=True)
        if decision is not None:
            found = (minute, decision)
            break
    minute, decision = found
    assert minute == 10 + MINUTES_TO_DEMOTE and decision.rule == "escalations"
    assert decision.numbers["minute_escalated"] == 5 and "max_escalation_rate 5%" in decision.reason
    assert state == {"s": 0, "n": 0, "e": 0, "upto": 60.0 * minute}  # restarted after the decision


def test_a_healthy_rung_never_flips_and_a_minute_is_fed_once():
    watch = Watch(0.05)
    state = None
    for minute in range(600):  # 2 % broken, in bursts of one
        state, decision = watch.feed(state, 60.0 * minute, 50, 1, serving=True)
        assert decision is None
    again, decision = watch.feed(state, 60.0 * 599, 50, 50, serving=True)
    assert again == state and decision is None


def test_a_rung_not_serving_gathers_evidence_without_deciding():
    watch = Watch(0.05)
    state, decision = watch.feed(None, 0.0, 100, 60, serving=False)
    assert decision is None and watch.statistic(state) >= 1.0


MINUTES_TO_DEMOTE = 2


def test_shadow_checks_hold_a_rung_from_promotion_until_its_answers_pass():
    from tierguard.engine.escalations import SHADOW_BLOCK, shadow_checked

    watch = Watch(0.05)
    assert "only 0 of its shadow answers" in watch.held(None)
    state = None
    for i in range(400):  # 10 % of its answers fail their checks: two full blocks
        state = shadow_checked(state, i % 10 == 0)
    assert state["shadow"] == [0, 0, SHADOW_BLOCK, 20]
    assert watch.held(state) == ("20 of its last 200 shadow answers fail the category's checks "
                                 "(10.0% > max_escalation_rate 5%)")
    for _ in range(SHADOW_BLOCK):  # a clean block: the older one is forgotten
        state = shadow_checked(state, False)
    assert watch.held(state) is None and state["shadow"] == [0, 0, SHADOW_BLOCK, 0]


def test_a_held_rung_is_not_made_eligible_however_well_it_agrees():
    from tierguard.engine.detector import Engine, EngineConfig, Situation

    engine = Engine(EngineConfig(promote_min_samples=50))
    held = Situation("reference", False, 0.0, held="3 of its last 50 shadow answers fail")
    free = Situation("reference", False, 0.0)
    a = b = {}
    for _ in range(2000):
        a, decision = engine.update(a, True, held)
        assert decision.action == "hold"
        b, found = engine.update(b, True, free)
        if found.action == "eligible":
            break
    assert found.action == "eligible" and not a["eligible"]
    assert decision.reason.startswith("agreement holds (e-value") and decision.reason.endswith(
        "but 3 of its last 50 shadow answers fail")
    a, decision = engine.update(a, True, free)  # the other stream healthy again: eligible at once
    assert decision.action == "eligible"
