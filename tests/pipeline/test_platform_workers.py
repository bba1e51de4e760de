"""Workers shadowing through Bedrock or Vertex (TIERGUARD_SHADOW_PLATFORM): a real Celery worker,
the SDK's own platform clients, the simulator speaking the platforms' paths."""

from __future__ import annotations

import anthropic
import httpx2
import pytest
from sqlmodel import select

import tierguard
from tests.helpers import LABELS, samples, wait_until
from tests.sim.test_platforms import service_account_file
from tierguard.config import get_settings
from tierguard.store.db import make_engine, session
from tierguard.store.tables import Sample

JUDGE = {"type": "judge", "criteria": "Same facts as the reference, in any words."}
SIM = {"seed": 5, "categories": {"sentiment": {"kind": "label", "labels": LABELS, "agreement": 1.0},
                                 "notes": {"kind": "text", "agreement": 1.0},
                                 "invoices": {"kind": "json", "agreement": 1.0}}}
POLICY = {"defaults": {"sample_rate": 1.0},
          "categories": {"sentiment": {"comparator": {"type": "label", "labels": LABELS}},
                         "notes": {"comparator": JUDGE},
                         "invoices": {"comparator": "json", "shadow_via": "batch"}},
          "model_ids": {"vertex": {"claude-opus-4-7": "claude-opus-4-7@20260416"}},
          "platform_pricing": {"bedrock": {"claude-opus-4-7": {"input": 5.5, "output": 27.5}}}}
SHADOW_PATH = {"bedrock": "/model/global.anthropic.claude-opus-4-7/invoke",
               "vertex": "/v1/projects/proj/locations/us-east5/publishers/anthropic/models/"
                         "claude-opus-4-7@20260416:rawPredict"}


def platform_env(platform: str, sim, monkeypatch, tmp_path) -> None:
    """Credentials and endpoints as each SDK reads them: the AWS chain, Google's ADC."""
    if platform == "bedrock":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDSIMULATED")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "simulated-secret")
        monkeypatch.setenv("AWS_REGION", "us-west-2")
        monkeypatch.setenv("ANTHROPIC_BEDROCK_BASE_URL", sim.base_url)
    else:
        adc = service_account_file(tmp_path / "adc.json", sim.base_url + "/_sim/oauth/token")
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", adc)
        monkeypatch.setenv("ANTHROPIC_VERTEX_PROJECT_ID", "proj")
        monkeypatch.setenv("CLOUD_ML_REGION", "us-east5")
        monkeypatch.setenv("ANTHROPIC_VERTEX_BASE_URL", sim.base_url + "/v1")


@pytest.mark.parametrize("platform", ["bedrock", "vertex"])
def test_shadows_and_judges_go_through_the_platform(platform, stack, simulator, sqlite_url, monkeypatch,
                                                    tmp_path):
    sim = simulator(**SIM)
    platform_env(platform, sim, monkeypatch, tmp_path)
    stack.configure(policy=POLICY, database_url=sqlite_url, base_url=sim.base_url, shadow_platform=platform)
    stack.start_worker(concurrency=4)
    client = tierguard.ShadowedAnthropic(anthropic.Anthropic(max_retries=0))
    for i in range(4):
        for category in ("sentiment", "notes", "invoices"):
            client.messages.create(category=category, max_tokens=32, system=f"{category}: answer",
                                   messages=[{"role": "user", "content": f"{category} {i}"}])
    assert client.tierguard_flush(10)
    wait_until(lambda: samples(sqlite_url) == 12, 60, "12 samples")
    with session(make_engine(sqlite_url)) as s:
        rows = list(s.exec(select(Sample)))
    assert {r.error for r in rows} == {None} and all(r.agree for r in rows)
    assert {(r.served_model, r.shadow_model) for r in rows} == {("claude-haiku-4-5", "claude-opus-4-7")}
    # Batch categories are called directly: Bedrock and Vertex have no Message Batches API.
    assert {r.shadow_via for r in rows if r.category == "invoices"} == {None}
    seen = httpx2.get(sim.base_url + "/_sim/requests").json()["requests"]
    production = [r for r in seen if r["path"] == "/v1/messages"]
    shadows = [r for r in seen if r["path"] == SHADOW_PATH[platform]]
    assert len(production) == 12 and {r["model_id"] for r in production} == {"claude-haiku-4-5"}
    judged = sum(len(r.detail["judge"]) for r in rows if r.category == "notes")
    assert judged >= 4 and len(shadows) == 12 + judged  # every shadow, and every question to the judge
    assert len(seen) == len(production) + len(shadows)  # nothing else reached any other path
    assert {r["auth"] for r in shadows} == {"AWS4-HMAC-SHA256" if platform == "bedrock" else "Bearer"}
    opus = [r for r in rows if r.category == "sentiment"]
    price = 5.5 if platform == "bedrock" else 5.0  # platform_pricing where it differs
    assert all(r.shadow_cost_usd == pytest.approx(r.shadow_input_tokens * price / 1e6
                                                  + r.shadow_output_tokens * price * 5 / 1e6) for r in opus)
    client.tierguard_close()


def test_an_unknown_platform_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TIERGUARD_SHADOW_PLATFORM", "azure")
    with pytest.raises(ValueError, match="TIERGUARD_SHADOW_PLATFORM: 'azure' is not anthropic, bedrock"):
        get_settings()
