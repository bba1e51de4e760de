"""The capability guard: a request the routed model cannot take goes to the reference, and is never
shadowed to the smaller model."""

import base64
import datetime as dt
import io
import os
import zlib

import anthropic
import httpx2
import pytest
import redis
from sqlmodel import select

import tierguard
from tests.helpers import API_KEY, last_json, samples, tg, wait_until
from tierguard.app.core import Core
from tierguard.config import get_settings
from tierguard.policy import parse_policy
from tierguard.policy.model_limits import estimate_input_tokens, too_big
from tierguard.store.db import make_engine, session
from tierguard.store.tables import Sample
from tierguard.store.traffic import fold

LABELS = ["POSITIVE", "NEGATIVE"]
POLICY = {"defaults": {"sample_rate": 1.0},
          "limits": {"claude-haiku-4-5": {"context_tokens": 2000, "max_output_tokens": 256}},
          "categories": {"sentiment": {"comparator": {"type": "label", "labels": LABELS}}}}


def test_the_estimate_and_the_limits_follow_their_documented_rules():
    request = {"system": "s" * 35, "max_tokens": 10,
               "messages": [{"role": "user", "content": [{"type": "text", "text": "t" * 35},
                                                         {"type": "image", "source": {"data": "x" * 9999}}]}]}
    assert estimate_input_tokens(request) == 20 + 1600  # ⌈70 / 3.5⌉ + one attachment
    policy = parse_policy({"limits": {"claude-haiku-4-5": {"context_tokens": 1000,
                                                           "max_output_tokens": 64}}})
    assert policy.limits_for("claude-haiku-4-5") == (1000, 64)
    assert policy.limits_for("claude-haiku-3-5") == (200_000, 64_000)
    assert policy.limits_for("claude-sonnet-4-6") == (1_000_000, 64_000)
    assert policy.limits_for("claude-opus-4-7") == (1_000_000, 128_000)
    assert policy.limits_for("my-fine-tune") is None
    assert too_big((1000, 64), {**request, "max_tokens": 65}) == ("max_tokens 65 > the model's 64 "
                                                                  "output tokens")
    assert "do not fit its 1,000-token context" in too_big((1000, 64), request)
    assert too_big((200_000, 64_000), request) is None
    with pytest.raises(Exception, match="limits.m.context_tokens"):
        parse_policy({"limits": {"m": {"context_tokens": 0, "max_output_tokens": 1}}})


def test_an_oversized_request_is_served_by_the_reference_counted_and_never_shadowed_to_the_candidate(
        stack, simulator, sqlite_url, redis_url, tmp_path):
    sim = simulator(categories={"sentiment": {"kind": "label", "labels": LABELS, "agreement": 1.0}})
    stack.configure(policy=POLICY, database_url=sqlite_url, base_url=sim.base_url)
    stack.start_worker(concurrency=4)
    client = tierguard.ShadowedAnthropic(anthropic.Anthropic(max_retries=0))
    body = {"category": "sentiment", "system": "sentiment: classify",
            "messages": [{"role": "user", "content": "fits"}], "max_tokens": 16}
    assert client.messages.create(**body).model == "claude-haiku-4-5"
    long_answer = client.messages.create(**{**body, "max_tokens": 1000})
    long_prompt = client.messages.create(**{**body, "messages": [{"role": "user", "content": "x" * 8000}]})
    assert long_answer.model == long_prompt.model == "claude-opus-4-7"
    base = stack.start_gateway()
    api_body = {k: v for k, v in body.items() if k != "category"}
    through = httpx2.post(base + "/v1/messages", json={**api_body, "model": "any", "max_tokens": 999},
                          headers={"x-api-key": API_KEY, "x-tierguard-category": "sentiment"})
    assert through.json()["model"] == "claude-opus-4-7"
    client.tierguard_close()  # flushes the traffic counters
    wait_until(lambda: samples(sqlite_url) == 4, 60, "4 samples")
    with session(make_engine(sqlite_url)) as s:
        rows = sorted(s.exec(select(Sample)), key=lambda r: r.error or "")
    assert [(r.served_model, r.shadow_model, r.error) for r in rows] == [
        ("claude-haiku-4-5", "claude-opus-4-7", None)] + [
        ("claude-opus-4-7", "claude-haiku-4-5", "skipped")] * 3
    assert all(r.reason.startswith("limits: claude-haiku-4-5: ") and r.agree is None for r in rows[1:])
    haiku_calls = sum(r["count"] for r in httpx2.get(sim.base_url + "/_sim/stats").json()["requests"]
                      if r["model"] == "claude-haiku-4-5")
    assert haiku_calls == 1  # only the request that fits
    # Beat folds the counters; status shows what was guarded (the gateway's process counts too).
    wait_until(lambda: sum(int(v) for k in redis.Redis.from_url(redis_url).keys("tierguard:traffic:*")
                           for f, v in redis.Redis.from_url(redis_url).hgetall(k).items()
                           if f.endswith(b"|guarded")) == 3, 15, "3 guarded calls counted")
    fold(make_engine(sqlite_url), redis.Redis.from_url(redis_url),
         now=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=3))
    status = last_json(tg("status", "--json", env=stack.env_for_cli(), cwd=tmp_path).stdout)
    assert status["categories"]["sentiment"]["guarded"] == 3
    assert status["categories"]["sentiment"]["skipped"] == 3
    assert status["categories"]["sentiment"]["errors"] == 0


# Attachments: estimated from what they are (tierguard.policy.model_limits), routed through Core.route.

LADDER = ["claude-haiku-4-5", "claude-sonnet-4-6", "claude-opus-4-7"]
DOCS = parse_policy({"categories": {"invoices": {"ladder": LADDER}, "pair": {}}})  # both on Haiku


def pdf_of(pages: int) -> str:
    """A real PDF of ``pages`` pages of text (matplotlib's PDF backend), as base64."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    out = io.BytesIO()
    with PdfPages(out) as book:
        for n in range(pages):
            figure = plt.figure(figsize=(8.5, 11))
            figure.text(0.1, 0.9, f"Page {n + 1}: the quarterly figures, line by line.")
            book.savefig(figure)
            plt.close(figure)
    return base64.b64encode(out.getvalue()).decode()


def png_of(width: int, height: int, padding: int = 0) -> str:
    """A PNG's signature and header for ``width`` × ``height``, then ``padding`` bytes of data."""
    ihdr = b"IHDR" + width.to_bytes(4, "big") + height.to_bytes(4, "big") + b"\x08\x02\x00\x00\x00"
    head = b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + ihdr + zlib.crc32(ihdr).to_bytes(4, "big")
    return base64.b64encode(head + os.urandom(padding)).decode()


@pytest.fixture(scope="module")
def pdf_150() -> str:
    return pdf_of(150)


@pytest.fixture
def core(redis_url, sqlite_url):
    core = Core(get_settings(redis_url=redis_url, database_url=sqlite_url), DOCS, start_routes=False)
    yield core
    core.close()


def served(core: Core, category: str, *blocks: dict) -> str:
    content = [*blocks, {"type": "text", "text": "What does this say?"}]
    _, request = core.route(category, {"max_tokens": 1024,
                                       "messages": [{"role": "user", "content": content}]})
    return request["model"]


def pdf_block(data: str) -> dict:
    return {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": data}}


def test_a_150_page_pdf_in_a_haiku_category_is_served_by_the_rung_above(core, pdf_150):
    assert served(core, "invoices", pdf_block(pdf_150)) == "claude-sonnet-4-6"
    assert served(core, "pair", pdf_block(pdf_150)) == "claude-opus-4-7"  # two rungs: the reference
    assert served(core, "invoices", pdf_block(pdf_of(5))) == "claude-haiku-4-5"


def test_a_150_page_pdf_is_too_big_for_haiku_by_its_pages_and_its_tokens(pdf_150):
    request = {"max_tokens": 1024, "messages": [{"role": "user", "content": [pdf_block(pdf_150)]}]}
    assert estimate_input_tokens(request) == 150 * 3000
    assert too_big(DOCS.limits_for("claude-haiku-4-5"), request).startswith("150 PDF pages > the 100")
    assert too_big(DOCS.limits_for("claude-sonnet-4-6"), request) is None


def test_a_pdf_of_unknown_size_is_not_left_on_haiku(core):
    url = {"type": "document", "source": {"type": "url", "url": "https://example.com/annual-report.pdf"}}
    assert served(core, "invoices", url) == "claude-sonnet-4-6"


def test_a_20_mb_image_in_a_haiku_category_stays_on_haiku(core):
    huge = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                        "data": png_of(6000, 4000, 20 * 1024 * 1024)}}
    assert served(core, "invoices", huge) == "claude-haiku-4-5"  # one image: ~1,600 tokens resized
    text = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "w" * 800_000}}
    assert served(core, "invoices", huge, text) == "claude-sonnet-4-6"  # 228,572 tokens of text
