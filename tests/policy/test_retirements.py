"""The policy's ``retirements`` and ``retirement_warning_days``: read as dates, errors naming the field,
and a policy without them unchanged."""

import datetime as dt

import pytest

from tierguard.errors import ConfigError
from tierguard.policy import load_policy, parse_policy


def test_dates_from_yaml_or_iso_strings(tmp_path):
    path = tmp_path / "tierguard.yaml"
    path.write_text("retirements:\n  claude-haiku-3-5: 2026-02-19\n  claude-sonnet-4-5: '2026-09-29'\n"
                    "retirement_warning_days: 14\n")
    policy = load_policy(path)
    assert policy.retirements == {"claude-haiku-3-5": dt.date(2026, 2, 19),
                                  "claude-sonnet-4-5": dt.date(2026, 9, 29)}
    assert policy.retirement_warning_days == 14


def test_a_policy_without_them_is_as_before():
    policy, empty = parse_policy({"categories": {"a": {}}}), parse_policy({"retirements": None})
    assert (policy.retirements, policy.retirement_warning_days) == ({}, 30)
    assert empty.retirements == {}
    assert policy.category("a") == parse_policy({"categories": {"a": {}}, "retirements": {}}).category("a")


@pytest.mark.parametrize(("data", "problem"), [
    ({"retirements": {"claude-haiku-3-5": "soon"}},
     "retirements.claude-haiku-3-5: 'soon' is not an ISO date (YYYY-MM-DD, e.g. 2026-10-01)"),
    ({"retirements": {"claude-haiku-3-5": "2026-02-30"}},
     "retirements.claude-haiku-3-5: '2026-02-30' is not an ISO date (YYYY-MM-DD, e.g. 2026-10-01)"),
    ({"retirements": {"m": dt.datetime(2026, 2, 19, 12)}},
     "retirements.m: datetime.datetime(2026, 2, 19, 12, 0) is not an ISO date"),
    ({"retirements": {"m": 20260219}}, "retirements.m: 20260219 is not an ISO date"),
    ({"retirements": {"m": {"date": "2026-02-19"}}},
     "retirements.m: {'date': '2026-02-19'} is not an ISO date"),
    ({"retirements": ["claude-haiku-3-5"]},
     "retirements: must be a mapping of model to its retirement date (MODEL: YYYY-MM-DD)"),
    ({"retirement_warning_days": -1}, "retirement_warning_days: Input should be greater than or equal to 0"),
])
def test_bad_values_name_the_field(data, problem):
    with pytest.raises(ConfigError) as err:
        parse_policy(data)
    assert any(p.startswith(problem) for p in err.value.problems), err.value.problems


def test_the_new_events_can_be_routed():
    policy = parse_policy({"alerts": {"channels": [
        {"type": "slack", "webhook_url_env": "SLACK_URL", "events": ["model_retiring", "model_retired"]}]}})
    assert policy.alerts.severity("model_retiring") == policy.alerts.severity("model_retired") == "warning"
    assert policy.alerts.channels[0].wants("model_retiring", "warning")
