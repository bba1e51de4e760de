"""The judge comparator's pure half: the question it asks and how it reads the answer."""

import pytest

from tierguard.compare import resolve
from tierguard.compare.judge import VERDICT_TOOL, Judge, JudgeAnswerError

REQUEST = {"system": "Summarise the ticket.", "messages": [{"role": "user", "content": "The box was wet."}]}


def tool(verdict, reason="because"):
    return [{"type": "tool_use", "name": VERDICT_TOOL, "input": {"verdict": verdict, "reason": reason}}]


def test_the_order_is_chosen_per_job_and_the_same_on_redelivery():
    judge = Judge()
    orders = [judge.reference_first(f"job-{i}") for i in range(200)]
    assert orders == [judge.reference_first(f"job-{i}") for i in range(200)]
    assert 70 < sum(orders) < 130  # both orders occur
    assert Judge(swap=True).orders("job-1") == [orders[1], not orders[1]]


@pytest.mark.parametrize("reference_first", [True, False])
def test_the_request_forces_the_verdict_tool_and_shows_both_answers(reference_first):
    body = Judge(criteria="Same facts.").request("claude-opus-4-7", REQUEST, "REF ANSWER", "CAND ANSWER",
                                                 reference_first)
    assert body["tool_choice"] == {"type": "tool", "name": VERDICT_TOOL}
    assert body["tools"][0]["input_schema"]["properties"]["verdict"]["enum"] == [
        "equivalent", "candidate_worse", "candidate_better"]
    prompt = body["messages"][0]["content"]
    assert "The box was wet." in prompt and "Summarise the ticket." in prompt and "Same facts." in prompt
    assert (prompt.index("REF ANSWER") < prompt.index("CAND ANSWER")) is reference_first


def test_reading_the_answer():
    assert Judge.read(tool("candidate_better", " shorter ")) == ("candidate_better", "shorter")
    with pytest.raises(JudgeAnswerError, match="did not call tierguard_verdict"):
        Judge.read([{"type": "text", "text": "they look the same"}])
    with pytest.raises(JudgeAnswerError, match="'better' is not one of"):
        Judge.read(tool("better"))
    with pytest.raises(JudgeAnswerError):
        Judge.read([{"type": "tool_use", "name": VERDICT_TOOL, "input": "equivalent"}])


def test_verdicts_agree_unless_candidate_worse():
    judge = Judge(swap=True)
    same = judge.verdict([("equivalent", "same"), ("candidate_better", "terser")], [True, False])
    assert same.agree and same.score == 1.0 and same.reason == "judge: equivalent: same"
    assert same.detail["judge"][1] == {"order": "candidate_first", "verdict": "candidate_better",
                                       "reason": "terser"}
    split = judge.verdict([("equivalent", "same"), ("candidate_worse", "misses the refund")],
                          [False, True])
    assert not split.agree and split.score == 0.5
    assert split.reason == "judge: candidate_worse: misses the refund"


def test_the_policy_names_it_and_bad_options_are_named():
    judge = resolve({"type": "judge", "model": "claude-opus-4-7", "criteria": "facts", "swap": True})
    assert isinstance(judge, Judge) and judge.swap and judge.model == "claude-opus-4-7"
    with pytest.raises(ValueError, match="criteria"):
        resolve({"type": "judge", "criteria": "  "})
    with pytest.raises(ValueError, match="temperature: unknown option"):
        resolve({"type": "judge", "temperature": 0})
    with pytest.raises(JudgeAnswerError, match="pre-judged"):
        judge.compare("a", "b")
