"""The policy's Bedrock and Vertex model ids: defaults, overrides, reverse lookup, errors by field."""

from __future__ import annotations

import pytest

from tierguard.errors import ConfigError
from tierguard.policy import Policy, parse_policy
from tierguard.policy.platform_ids import DEFAULT_MODEL_IDS


def problems(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_policy(data)
    return err.value.problems


def test_defaults_cover_the_default_models_both_ways() -> None:
    policy = Policy()
    for platform in ("bedrock", "vertex"):
        for model in policy.known_models:
            model_id = policy.model_id(platform, model)
            assert model_id == DEFAULT_MODEL_IDS[platform][model]
            assert policy.model_name(platform, model_id) == model
    assert policy.model_id("anthropic", "claude-haiku-4-5") == "claude-haiku-4-5"
    assert policy.model_name("bedrock", "us.anthropic.claude-opus-4-7") == "claude-opus-4-7"
    assert policy.model_name("bedrock", "eu.anthropic.claude-haiku-4-5-20251001-v1:0") == "claude-haiku-4-5"
    assert policy.model_name("vertex", "claude-haiku-4-5") == "claude-haiku-4-5"
    assert policy.model_name("vertex", "claude-opus-4-7@20260101") == "claude-opus-4-7"
    assert policy.model_name("vertex", "gemini-2.5-pro") is None


def test_the_policys_ids_win_and_read_back() -> None:
    arn = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3"
    policy = parse_policy({"models": {"candidate": "claude-haiku-4-5", "reference": "claude-opus-4-7"},
                           "model_ids": {"bedrock": {"claude-haiku-4-5": arn},
                                         "vertex": {"claude-opus-4-7": "claude-opus-4-7@20260416"}}})
    assert policy.model_id("bedrock", "claude-haiku-4-5") == arn
    assert policy.model_name("bedrock", arn) == "claude-haiku-4-5"
    assert policy.model_id("bedrock", "claude-opus-4-7") == DEFAULT_MODEL_IDS["bedrock"]["claude-opus-4-7"]
    assert policy.model_id("vertex", "claude-opus-4-7") == "claude-opus-4-7@20260416"
    assert policy.model_name("vertex", "claude-opus-4-7") == "claude-opus-4-7"


def test_a_model_without_an_id_names_the_field_to_set() -> None:
    policy = parse_policy({"models": {"candidate": "claude-haiku-3-9", "reference": "claude-opus-4-7"},
                           "pricing": {"claude-haiku-3-9": {"input": 1, "output": 1},
                                       "claude-opus-4-7": {"input": 5, "output": 25}}})
    with pytest.raises(LookupError, match="model_ids.bedrock.claude-haiku-3-9"):
        policy.model_id("bedrock", "claude-haiku-3-9")
    with pytest.raises(ValueError, match="platform"):
        policy.model_id("azure", "claude-opus-4-7")


@pytest.mark.parametrize("data, problem", [
    ({"model_ids": {"azure": {"claude-haiku-4-5": "x"}}}, "model_ids.azure: unknown platform"),
    ({"model_ids": {"anthropic": {}}}, "model_ids.anthropic: unknown platform"),
    ({"model_ids": {"bedrock": {"claude-haiku-9": "x"}}}, "model_ids.bedrock.claude-haiku-9: not a model"),
    ({"model_ids": {"vertex": {"claude-haiku-4-5": " "}}}, "model_ids.vertex.claude-haiku-4-5: an empty id"),
    ({"model_ids": {"bedrock": {"claude-haiku-4-5": "us.anthropic.x", "claude-opus-4-7": "eu.anthropic.x"}}},
     "model_ids.bedrock.claude-opus-4-7: eu.anthropic.x is claude-haiku-4-5's id too"),
    ({"model_ids": {"bedrock": ["x"]}}, "model_ids.bedrock"),
    ({"platform_pricing": {"vertex": {"claude-nope": {"input": 1, "output": 2}}}},
     "platform_pricing.vertex.claude-nope: not a model"),
    ({"platform_pricing": {"gcp": {}}}, "platform_pricing.gcp: unknown platform"),
    ({"platform_pricing": {"bedrock": {"claude-haiku-4-5": {"input": -1, "output": 2}}}},
     "platform_pricing.bedrock.claude-haiku-4-5.input"),
])
def test_bad_platform_sections_name_the_field(data: dict, problem: str) -> None:
    found = problems(data)
    assert any(p.startswith(problem) for p in found), found


def test_platform_prices_where_they_differ() -> None:
    geo = {"claude-opus-4-7": {"input": 5.5, "output": 27.5}}  # e.g. a us. inference profile: +10 %
    policy = parse_policy({"platform_pricing": {"bedrock": geo}})
    assert policy.cost_usd("claude-opus-4-7", 1_000_000, 0) == 5.0
    assert policy.cost_usd("claude-opus-4-7", 1_000_000, 0, platform="vertex") == 5.0
    assert policy.cost_usd("claude-opus-4-7", 1_000_000, 1_000_000, platform="bedrock") == 33.0
    assert policy.cost_usd("claude-haiku-4-5", 1_000_000, 0, platform="bedrock") == 1.0
