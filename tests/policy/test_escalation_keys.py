"""The answer-check keys: escalate_on, escalate_to, buffer_streams, max_escalation_rate, and the
comparator's pattern and schema, per category or in defaults; an old policy resolves as before."""

import pytest

from tierguard.compare import Checks
from tierguard.errors import ConfigError
from tierguard.policy import parse_policy

OLD = {"defaults": {"sample_rate": 0.05, "comparator": "exact"},
       "categories": {"sentiment": {"comparator": {"type": "label", "labels": ["POSITIVE", "NEGATIVE"]}},
                      "invoice": {"comparator": {"type": "json", "ignore_keys": ["notes"]}},
                      "steps": {"ladder": ["claude-haiku-4-5", "claude-sonnet-4-6", "claude-opus-4-7"]}}}
NEW_KEYS = {"escalate_on", "escalate_to", "buffer_streams", "max_escalation_rate"}


def test_a_policy_without_the_keys_checks_nothing_and_resolves_as_before():
    old = parse_policy(OLD)
    spelled = parse_policy({**OLD, "defaults": {**OLD["defaults"], "escalate_on": [], "escalate_to":
                                                "reference", "buffer_streams": False,
                                                "max_escalation_rate": 0.05}})
    for name in ("sentiment", "invoice", "steps", "never-listed"):
        c = old.category(name)
        assert (c.escalate_on, c.escalate_to, c.buffer_streams, c.max_escalation_rate) == \
            ((), "reference", False, 0.05)
        assert isinstance(c.checks, Checks) and not c.checks
        assert c.checks.check({"content": [], "stop_reason": "refusal"}) is None
        assert c == spelled.category(name)
        assert c.model_dump(exclude=NEW_KEYS) == spelled.category(name).model_dump(exclude=NEW_KEYS)


def test_categories_override_the_defaults_key_by_key():
    policy = parse_policy({
        "defaults": {"escalate_on": ["empty", "refusal"], "max_escalation_rate": 0.1},
        "categories": {
            "sentiment": {"comparator": {"type": "label", "labels": ["POSITIVE", "NEGATIVE"]},
                          "escalate_on": ["invalid", "truncated", "empty"], "escalate_to": "next",
                          "buffer_streams": True},
            "plain": {}}})
    s, plain, unlisted = policy.category("sentiment"), policy.category("plain"), policy.category("x")
    assert s.escalate_on == ("invalid", "truncated", "empty")
    assert s.checks.reasons == ("empty", "truncated", "invalid")
    assert (s.escalate_to, s.buffer_streams, s.max_escalation_rate) == ("next", True, 0.1)
    assert plain.escalate_on == unlisted.escalate_on == ("empty", "refusal")
    assert (plain.escalate_to, plain.buffer_streams) == ("reference", False)
    assert s.checks.check({"content": [{"type": "text", "text": "MAYBE"}]}).reason == "invalid"
    assert plain.checks.check({"content": [{"type": "text", "text": "MAYBE"}]}) is None
    assert s.checks is s.checks  # compiled once per category policy


def test_pattern_and_schema_reach_the_checks():
    schema = {"type": "object", "required": ["total"]}
    policy = parse_policy({"categories": {
        "invoice": {"comparator": {"type": "json", "schema": schema}, "escalate_on": ["invalid"]},
        "ticket": {"comparator": {"type": "exact", "pattern": r"\AT-[0-9]+\Z"}, "escalate_on": ["invalid"]}}})
    invoice, ticket = policy.category("invoice"), policy.category("ticket")
    assert invoice.checks.check({"content": [{"type": "text", "text": '{"total": 1}'}]}) is None
    assert invoice.checks.check({"content": [{"type": "text", "text": '{"sum": 1}'}]}).detail == \
        "schema: data must contain ['total'] properties"
    assert ticket.checks.check({"content": [{"type": "text", "text": "T-42"}]}) is None
    assert ticket.checks.check({"content": [{"type": "text", "text": "ticket 42"}]}).reason == "invalid"
    assert ticket.compare.compare("T-42", "t-42").agree  # the comparator itself is unchanged


@pytest.mark.parametrize(("data", "problem"), [
    ({"defaults": {"escalate_on": ["invalid", "slow"]}},
     "defaults.escalate_on.1: Input should be 'invalid', 'refusal', 'truncated' or 'empty'"),
    ({"categories": {"x": {"escalate_on": ["empty", "refusal", "empty"]}}},
     "categories.x.escalate_on: 'empty' is listed twice"),
    ({"categories": {"x": {"escalate_on": "empty"}}},
     "categories.x.escalate_on: Input should be a valid list"),
    ({"categories": {"x": {"escalate_to": "top"}}},
     "categories.x.escalate_to: Input should be 'reference' or 'next'"),
    ({"categories": {"x": {"buffer_streams": "sometimes"}}},
     "categories.x.buffer_streams: Input should be a valid boolean"),
    ({"defaults": {"max_escalation_rate": 0}}, "defaults.max_escalation_rate: must be above 0 and below 0.5"),
    ({"categories": {"x": {"max_escalation_rate": 0.5}}},
     "categories.x.max_escalation_rate: must be above 0 and below 0.5"),
    ({"categories": {"x": {"comparator": {"type": "json", "schema": {"type": "strnig"}}}}},
     "categories.x.comparator: schema: not a valid JSON Schema"),
    ({"categories": {"x": {"comparator": {"type": "json", "schema": "object"}}}},
     "categories.x.comparator: schema: must be a mapping"),
    ({"categories": {"x": {"comparator": {"type": "numeric", "schema": {"type": "number"}}}}},
     "categories.x.comparator: schema: unknown option for numeric comparator"),
    ({"defaults": {"comparator": {"type": "exact", "pattern": "[a-"}}},
     "defaults.comparator: pattern: not a valid regular expression"),
])
def test_bad_values_name_the_field(data, problem):
    with pytest.raises(ConfigError) as err:
        parse_policy(data, "tierguard.yaml")
    assert any(p.startswith(problem) for p in err.value.problems), err.value.problems
