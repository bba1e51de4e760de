"""The simulator's Models API: the models it knows (scenario, categories, ``models``, scripted at run
time), paged as the API pages, read by the real SDK over HTTP."""

import anthropic
import httpx2

from tests.helpers import API_KEY

HAIKU, SONNET, OPUS = "claude-haiku-4-5", "claude-sonnet-4-6", "claude-opus-4-7"


def ids(server, **kw):
    with anthropic.Anthropic(base_url=server.base_url, api_key=API_KEY, max_retries=0) as client:
        return [m.id for m in client.models.list(**kw)]


def test_the_models_it_knows_paged_by_the_sdk(simulator):
    sim = simulator(reference_models=[OPUS, "claude-opus-5"],
                    categories={"a": {"models": {"claude-x-1": {"agreement": 0.5}}}})
    assert ids(sim) == ids(sim, limit=1) == sorted([HAIKU, OPUS, "claude-opus-5", SONNET, "claude-x-1"])
    assert ids(simulator(models=[])) == [OPUS]  # models: replaces the default pair


def test_models_added_at_run_time(simulator):
    sim = simulator()
    answer = httpx2.post(sim.base_url + "/_sim/script", json={"models": ["claude-haiku-5"]}).json()
    assert answer["models"] == ids(sim) == ["claude-haiku-4-5", "claude-haiku-5", OPUS, SONNET]


def test_pages_and_refusals_as_the_api_answers(simulator):
    base = simulator(models=[f"m-{i}" for i in range(5)]).base_url + "/v1/models"
    page = httpx2.get(base, params={"limit": 2, "after_id": "m-1"}).json()
    assert ([m["id"] for m in page["data"]], page["has_more"], page["first_id"], page["last_id"]) == (
        ["m-2", "m-3"], True, "m-2", "m-3")
    assert {m["type"] for m in page["data"]} == {"model"} and page["data"][0]["display_name"] == "m-2"
    before = httpx2.get(base, params={"limit": 2, "before_id": "m-3"}).json()
    assert ([m["id"] for m in before["data"]], before["has_more"]) == (["m-1", "m-2"], True)
    for query, said in (({"limit": 0}, "limit: must be between 1 and 1000, not 0"),
                        ({"after_id": "nope"}, "after_id: no model 'nope'")):
        answer = httpx2.get(base, params=query)
        assert answer.status_code == 400 and answer.json()["error"]["message"] == said
