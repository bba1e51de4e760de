"""The simulator speaks Bedrock's and Vertex's Messages paths to the SDK's own platform clients."""

from __future__ import annotations

import json

import anthropic
import httpx2

from tests.sim.test_server import SCENARIO

OPUS_ON_BEDROCK = "us.anthropic.claude-opus-4-7"


def bedrock(server, monkeypatch) -> anthropic.AnthropicBedrock:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDSIMULATED")  # the AWS chain, as in production
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "simulated-secret")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    return anthropic.AnthropicBedrock(base_url=server.base_url, max_retries=0)


def requests(server) -> list[dict]:
    return httpx2.get(server.base_url + "/_sim/requests").json()["requests"]


def test_bedrock_json_and_event_stream(simulator, monkeypatch):
    server = simulator(**SCENARIO)
    client = bedrock(server, monkeypatch)
    kw = {"model": OPUS_ON_BEDROCK, "max_tokens": 32, "system": "invoice: extract",
          "messages": [{"role": "user", "content": "bill 7"}]}
    plain = client.messages.create(**kw)
    with client.messages.stream(**kw) as stream:  # botocore decodes the event-stream frames
        final = stream.get_final_message()
    assert final.content[0].text == plain.content[0].text and json.loads(plain.content[0].text)
    assert final.usage.output_tokens == plain.usage.output_tokens
    # Opus answers as the reference it is, whatever the id's region prefix.
    direct = anthropic.Anthropic(base_url=server.base_url, api_key="k").messages.create(
        **{**kw, "model": "claude-opus-4-7"})
    assert direct.content[0].text == plain.content[0].text
    seen = requests(server)[:2]
    assert [r["path"] for r in seen] == [f"/model/{OPUS_ON_BEDROCK}/invoke",
                                         f"/model/{OPUS_ON_BEDROCK}/invoke-with-response-stream"]
    assert {r["auth"] for r in seen} == {"AWS4-HMAC-SHA256"} and {r["model_id"] for r in seen} == {
        OPUS_ON_BEDROCK}


def service_account_file(path, token_uri: str) -> str:
    """A service-account key file (a fresh RSA key) whose tokens come from ``token_uri``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.write_text(json.dumps({"type": "service_account", "project_id": "proj", "private_key_id": "k1",
                                "private_key": key.decode(), "client_email": "sa@proj.iam.example",
                                "client_id": "1", "token_uri": token_uri}))
    return str(path)


def test_vertex_sse_with_adc_from_the_token_endpoint(simulator, monkeypatch, tmp_path):
    """Google's Application Default Credentials (a service-account file) get their token from the
    simulator's token endpoint; the SDK then sends it as a bearer."""
    server = simulator(**SCENARIO)
    adc = service_account_file(tmp_path / "adc.json", server.base_url + "/_sim/oauth/token")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", adc)
    monkeypatch.setenv("ANTHROPIC_VERTEX_PROJECT_ID", "proj")
    monkeypatch.setenv("CLOUD_ML_REGION", "us-east5")
    monkeypatch.setenv("ANTHROPIC_VERTEX_BASE_URL", server.base_url + "/v1")
    client = anthropic.AnthropicVertex(max_retries=0)
    kw = {"model": "claude-haiku-4-5@20251001", "max_tokens": 16, "system": "sentiment: classify",
          "messages": [{"role": "user", "content": "lovely"}]}
    plain = client.messages.create(**kw)
    with client.messages.stream(**kw) as stream:
        final = stream.get_final_message()
    assert final.content[0].text == plain.content[0].text
    paths = [r["path"] for r in requests(server)]
    base = "/v1/projects/proj/locations/us-east5/publishers/anthropic/models/claude-haiku-4-5@20251001"
    assert paths == [base + ":rawPredict", base + ":streamRawPredict"]
    assert {r["auth"] for r in requests(server)} == {"Bearer"}
