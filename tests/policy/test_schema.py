import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tierguard.errors import ConfigError
from tierguard.policy import load_policy, parse_policy

ISSUE_EXAMPLE = """
models: {candidate: claude-haiku-4-5, reference: claude-opus-4-7}
pricing: {claude-haiku-4-5: {input: 1.0, output: 5.0}, claude-opus-4-7: {input: 5.0, output: 25.0}}
defaults: {sample_rate: 0.05, threshold: 0.90, comparator: exact, min_samples: 50}
categories:
  sentiment: {comparator: {type: label, labels: [POSITIVE, NEGATIVE, NEUTRAL]}, sample_rate: 0.1}
  invoice-extraction: {comparator: {type: json, ignore_keys: [notes]}}
  summaries: {candidate: claude-sonnet-4-5, reference: claude-opus-4-7}
"""


def test_issue_example_loads_and_merges_defaults(tmp_path):
    path = tmp_path / "tierguard.yaml"
    path.write_text(ISSUE_EXAMPLE)
    policy = load_policy(path)
    s = policy.category("sentiment")
    assert (s.sample_rate, s.threshold, s.min_samples) == (0.1, 0.90, 50)
    assert s.compare.compare("POSITIVE", "positive!").agree
    assert policy.category("summaries").candidate == "claude-sonnet-4-5"
    unknown = policy.category("never-configured")
    assert (unknown.sample_rate, unknown.comparator, unknown.candidate) == (0.05, "exact",
                                                                            "claude-haiku-4-5")
    assert policy.cost_usd("claude-opus-4-7", 1_000_000, 1_000_000) == pytest.approx(30.0)
    assert policy.cost_usd("unpriced-model", 10, 10) is None


def test_missing_file_gives_builtin_default(tmp_path):
    policy = load_policy(tmp_path / "absent.yaml")
    assert policy.defaults.sample_rate == 0.05
    assert policy.defaults.threshold == 0.90


@pytest.mark.parametrize(("data", "problem"), [
    ({"categories": {"sentiment": {"sample_rate": 1.5}}},
     "categories.sentiment.sample_rate: must be between 0 and 1"),
    ({"defaults": {"threshold": -0.1}}, "defaults.threshold: must be between 0 and 1"),
    ({"categories": {"x": {"sampel_rate": 0.1}}}, "categories.x.sampel_rate: unknown field"),
    ({"categories": {"x": {"comparator": {"type": "label"}}}},
     "categories.x.comparator: labels: required for label comparator"),
    ({"categories": {"x": {"comparator": "fuzzy"}}},
     "categories.x.comparator: type: unknown comparator 'fuzzy'"),
    ({"defaults": {"min_samples": 0}}, "defaults.min_samples: Input should be greater than or equal to 1"),
    ({"pricing": {"m": {"input": "cheap", "output": 1}}}, "pricing.m.input: Input should be a valid number"),
    ({"categories": {"x": {"candidate": "claude-opus-4-7"}}},
     "categories.x: candidate and reference are both 'claude-opus-4-7'"),
    (["not", "a", "mapping"], "top level: must be a mapping, not list"),
])
def test_bad_policy_names_field_and_reason(data, problem):
    with pytest.raises(ConfigError) as err:
        parse_policy(data, "tierguard.yaml")
    assert any(p.startswith(problem) for p in err.value.problems), err.value.problems
    assert "invalid policy tierguard.yaml" in str(err.value)


def test_yaml_syntax_error_names_line(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("defaults:\n  sample_rate: [0.1\n")
    with pytest.raises(ConfigError) as err:
        load_policy(path)
    assert "line 3" in str(err.value) and "not valid YAML" in str(err.value)


RATE_FIELDS = st.sampled_from(["sample_rate", "threshold"])
BAD_RATES = st.one_of(st.floats(min_value=1.0001, max_value=1e9), st.floats(max_value=-0.0001,
                                                                           min_value=-1e9))


@settings(max_examples=100, deadline=None)
@given(name=st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True), field=RATE_FIELDS,
       value=BAD_RATES)
def test_any_out_of_range_rate_is_named(name, field, value):
    with pytest.raises(ConfigError) as err:
        parse_policy({"categories": {name: {field: value}}})
    assert err.value.problems == [f"categories.{name}.{field}: must be between 0 and 1"]


def test_urls_are_shown_with_their_password_masked():
    from tierguard.config import mask_url

    assert mask_url("postgresql://tg:s3cr%40t@db:5432/tierguard") == "postgresql://tg:***@db:5432/tierguard"
    assert mask_url("redis://:hunter2@redis:6379/0") == "redis://:***@redis:6379/0"
    assert mask_url("rediss://default:pw@cache/1") == "rediss://default:***@cache/1"
    assert mask_url("sqlite:///tierguard.db") == "sqlite:///tierguard.db"
    assert mask_url("http://127.0.0.1:8765") == "http://127.0.0.1:8765"


def test_prices_cover_cache_tokens_and_the_batch_discount():
    policy = parse_policy({"pricing": {
        "claude-opus-4-7": {"input": 5.0, "output": 25.0},
        "custom": {"input": 2.0, "output": 8.0, "cache_write": 3.0, "cache_read": 0.5,
                   "batch_discount": 0.4}}})
    # Opus: 1,000 in × $5 + 200 out × $25 + 4,000 cache-write × $6.25 + 10,000 cache-read × $0.50
    assert policy.cost_usd("claude-opus-4-7", 1000, 200, 4000, 10_000) == pytest.approx(
        (5_000 + 5_000 + 25_000 + 5_000) / 1e6)
    assert policy.cost_usd("claude-opus-4-7", 1000, 200, batch=True) == pytest.approx(10_000 / 1e6 * 0.5)
    assert policy.cost_usd("custom", 1000, 100, 1000, 1000, batch=True) == pytest.approx(
        (2_000 + 800 + 3_000 + 500) / 1e6 * 0.4)
    assert policy.cost_usd("unknown-model", 1, 1) is None
    with pytest.raises(ConfigError, match="pricing.custom.batch_discount"):
        parse_policy({"pricing": {"custom": {"input": 1, "output": 1, "batch_discount": 0}}})


def test_a_route_to_a_model_the_policy_no_longer_lists_goes_to_the_reference(tmp_path):
    from sqlmodel import select

    from tierguard.routing.routes import ensure_categories
    from tierguard.store.db import make_engine, session, upgrade
    from tierguard.store.tables import Category, RouteChange

    engine = make_engine(f"sqlite:///{tmp_path}/t.db")
    upgrade(engine)
    ladder = ["claude-haiku-4-5", "claude-sonnet-4-6", "claude-opus-4-7"]
    ensure_categories(engine, parse_policy({"models": {"ladder": ladder},
                                            "categories": {"a": {"start_on": "claude-sonnet-4-6"}}}))
    ensure_categories(engine, parse_policy({"categories": {"a": {}}}))  # back to Haiku/Opus
    with session(engine) as s:
        assert s.get(Category, "a").routed_model == "claude-opus-4-7"
        [change] = s.exec(select(RouteChange)).all()
    assert (change.from_model, change.to_model, change.rule) == ("claude-sonnet-4-6", "claude-opus-4-7",
                                                                 "policy")
