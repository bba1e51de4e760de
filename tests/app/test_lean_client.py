"""The gateway's lean upstream client (app/lean_client): TLS reached directly, kept-alive connections
reused, a connection whose answer was not read to its end never reused; through the gateway and alone,
against the real simulator."""

import asyncio
import json

import httpx2
import pytest

from tests.app.gatewayparts import BODY, HEADERS, POLICY, ROUTED, SCENARIO
from tests.app.netparts import TLSFront, make_ca
from tierguard.app import lean_client

ASK = [(b"content-type", b"application/json"), (b"x-api-key", b"sk-test"),
       (b"anthropic-version", b"2023-06-01")]


def test_an_https_upstream_reached_directly_is_verified_against_ssl_cert_file(stack, simulator, sqlite_url,
                                                                              tmp_path):
    sim = simulator(**SCENARIO)
    ca, cert, key = make_ca(tmp_path)
    front = TLSFront(cert, key, ("127.0.0.1", int(sim.base_url.rsplit(":", 1)[1])))
    try:
        stack.configure(policy=POLICY, database_url=sqlite_url, base_url=sim.base_url)
        base = stack.start_gateway(TIERGUARD_UPSTREAM_URL=front.url, SSL_CERT_FILE=str(ca))
        with httpx2.Client(base_url=base) as client:
            for stream in (False, True):  # one kept-alive TLS connection for both
                answer = client.post("/v1/messages", json={**BODY, "stream": stream}, headers=HEADERS)
                assert answer.status_code == 200, answer.text
                assert ROUTED in answer.text
        untrusting = stack.start_gateway(TIERGUARD_UPSTREAM_URL=front.url)  # the machine's CAs only
        refused = httpx2.post(untrusting + "/v1/messages", json=BODY, headers=HEADERS)
        assert refused.status_code == 502 and "ConnectError" in refused.json()["error"]["message"]
    finally:
        front.stop()


def test_connections_are_kept_alive_and_one_left_unread_is_closed(simulator):
    sim = simulator(**SCENARIO, stream_event_ms=50)  # a stream still coming when it is left
    body = json.dumps(BODY).encode()

    async def run() -> tuple[int, int, int]:
        pool = lean_client.Pool(sim.base_url, 8, 10.0, None)
        made = 0
        connect = pool.loop.create_connection

        async def counted(*args, **kwargs):
            nonlocal made
            made += 1
            return await connect(*args, **kwargs)

        pool.loop.create_connection = counted  # type: ignore[method-assign]
        for stream in (False, True) * 3:
            response = await pool.send("POST", "/v1/messages", ASK, body[:-1] + b', "stream": %s}' % (
                b"true" if stream else b"false"))
            assert response.status_code == 200
            assert response.headers.get("Content-Type").startswith(
                "text/event-stream" if stream else "application/json")
            read = b"".join([chunk async for chunk in response.aiter_raw()])
            assert (b"message_stop" in read) if stream else json.loads(read)["type"] == "message"
            await response.aclose()
        reused = made
        response = await pool.send("POST", "/v1/messages", ASK, body[:-1] + b', "stream": true}')
        assert not response.complete
        await response.aclose()  # its body not read: the connection cannot carry another request
        after_unread = len(pool.idle)
        response = await pool.send("POST", "/v1/messages", ASK, body)
        await response.aclose()
        await pool.aclose()
        return reused, after_unread, made

    reused, after_unread, made = asyncio.run(run())
    assert reused == 1 and after_unread == 0 and made == 2


def test_an_upstream_that_is_not_there_is_a_connect_error():
    async def run() -> None:
        pool = lean_client.Pool("http://127.0.0.1:9", 8, 10.0, None)  # the discard port: closed here
        with pytest.raises(httpx2.ConnectError):
            await pool.send("POST", "/v1/messages", ASK, b"{}")
        assert pool.slots.free == 8  # its place given back

    asyncio.run(run())
