"""A challenger's evidence and verdict: paired counts against the rung in service, the promotion
rule's eligibility at the exact job, and each verdict with its reason."""

from tierguard.engine.challengers import MARGIN, Outcome, feed, verdict
from tierguard.engine.detector import Engine, EngineConfig

OPUS, HAIKU = "claude-opus-4-7", "claude-haiku-4-5"
ENGINE = Engine(EngineConfig(threshold=0.9, promote_threshold=0.9, promote_min_samples=50))


def run(outcomes, state=None):
    decisions = []
    for i, x in enumerate(outcomes):
        state, decision = feed(state, ENGINE, x, float(i))
        if decision is not None:
            decisions.append((i + 1, decision))
    return state, decisions


def test_eligible_at_the_job_the_promotion_rule_says_and_equivalent_while_the_reference_serves():
    state, decisions = run([Outcome(OPUS, True, True, True)] * 200)
    assert [i for i, _ in decisions] == [92]  # the betting e-process, as for a rung
    assert decisions[0][1].action == "eligible" and state["n"] == 200 and state["b"] == 0
    found = verdict(state, OPUS, 0.9, 30)
    assert found.name == "equivalent" and "eligible by the promotion rule" in found.reason


def test_paired_against_a_cheaper_rung_better_equivalent_worse_inconclusive():
    def against_haiku(b, c, same):  # b: Haiku agrees and it does not; c: the reverse
        xs = ([Outcome(HAIKU, False, False, True)] * b + [Outcome(HAIKU, True, False, False)] * c
              + [Outcome(HAIKU, True, True, True)] * same)
        return verdict(run(xs)[0], OPUS, 0.5, 30)

    assert against_haiku(0, 0, 400).name == "equivalent"
    better = against_haiku(2, 30, 400)
    assert better.name == "better" and "the reverse 2 times" in better.reason
    assert against_haiku(40, 2, 400).name == "worse"
    assert against_haiku(6, 0, 100).name == "inconclusive"  # -0.057 ± 0.044: neither within nor beyond
    assert MARGIN == 0.02


def test_worse_below_threshold_and_nothing_before_min_samples():
    xs = [Outcome(OPUS, i % 2 == 0, i % 2 == 0, True) for i in range(29)]
    state, _ = run(xs)
    assert verdict(state, OPUS, 0.9, 30).reason == "29 of min_samples 30 comparisons with the reference"
    state, _ = run([Outcome(OPUS, False, False, True)], state)
    found = verdict(state, OPUS, 0.9, 30)
    assert found.name == "worse" and found.reason.startswith("agreement with the reference 15/30 = 0.500")


def test_paired_counts_restart_when_another_model_serves():
    state, _ = run([Outcome(HAIKU, False, True, True)] * 10)
    assert (state["pn"], state["b"], state["sn"], state["sa"]) == (10, 10, 10, 10)
    state, _ = run([Outcome(OPUS, True, True, True)], state)
    assert (state["serving"], state["pn"], state["b"], state["n"]) == (OPUS, 1, 0, 11)


def test_a_challenger_whose_answers_fail_the_checks_is_held_from_eligibility():
    from tierguard.engine.escalations import Watch

    checks = Watch(0.05)
    failing = [Outcome(OPUS, True, True, True, failed=i % 10 == 0) for i in range(400)]
    state, decisions = None, []
    for i, x in enumerate(failing):
        state, decision = feed(state, ENGINE, x, float(i), checks)
        decisions += [decision] if decision else []
    assert decisions == [] and state["checks"] == [0, 0, 200, 20]  # 10 % > 5 %: never eligible
    state, decision = feed(state, ENGINE, Outcome(HAIKU, True, None, None, failed=False), 401.0, checks)
    assert state["serving"] == HAIKU and state["pn"] == 0  # served by another model: the reference only
