"""A Message Batch create whose answer was lost is found at the API, not bought twice
(pipeline/batch_creates): the process killed, the create timed out, or the database down between
the API taking a batch and its id being stored; and a create that never reached the API is sent once
it can no longer land, without adopting another batch of the same size; and end to end, a real
worker and beat killed while a proxy holds the API's answer to their create."""

import datetime as dt
import itertools
import time
from collections import Counter

import anthropic
import httpx2
import pytest
import sqlalchemy as sa

from tests.helpers import API_KEY
from tests.pipeline.test_batches import OPUS, POLICY, _job, _settle, produced, rows_of
from tierguard.pipeline import batch_creates, message_batches
from tierguard.pipeline.context import Context
from tierguard.policy import parse_policy
from tierguard.store import batch_jobs
from tierguard.store.db import make_engine, upgrade, utcnow
from tierguard.store.tables import Sample, ShadowBatch

CATS = {"a": {"kind": "label", "labels": ["POSITIVE", "NEGATIVE", "NEUTRAL"], "agreement": 1.0}}


class Killed(BaseException):
    """The process dying (SIGKILL): none of the cycle's own handling runs."""


def _setup(simulator, url: str, jobs: int) -> tuple[object, Context, anthropic.Anthropic]:
    sim = simulator(categories=CATS, batch_delay_s=0.2)
    engine = make_engine(url)
    upgrade(engine)
    policy = parse_policy({**POLICY, "categories": {"a": {**POLICY["categories"]["a"], "batch_max_jobs": 10,
                                                          "batch_max_wait_minutes": 0.0001}}})
    ctx = Context(policy=policy, engine=engine)
    message_batches.enqueue(ctx, [_job(sim.base_url, i) for i in range(jobs)])
    time.sleep(0.01)  # (waited its 6 ms)
    return sim, ctx, anthropic.Anthropic(base_url=sim.base_url, api_key=API_KEY, max_retries=0)


def _dying(sim, error: BaseException, sent: bool, spared: int = 0) -> anthropic.Anthropic:
    """A client whose batch creates raise ``error`` (after the API took the batch when ``sent``),
    but for the first ``spared`` of them."""
    client = anthropic.Anthropic(base_url=sim.base_url, api_key=API_KEY, max_retries=0)
    real, calls = client.messages.batches.create, itertools.count(1)

    def create(**kwargs):
        if next(calls) <= spared:
            return real(**kwargs)
        if sent:
            real(**kwargs)
        raise error

    client.messages.batches.create = create  # type: ignore[method-assign]
    return client


def _at_the_api(sim) -> tuple[int, int]:
    stats = httpx2.get(sim.base_url + "/_sim/stats").json()["batches"]
    return stats["created"], stats["requests"]


def _timed_out(sim) -> anthropic.APITimeoutError:
    return anthropic.APITimeoutError(request=httpx2.Request("POST", sim.base_url))


def _status_error(sim, cls: type, status: int) -> anthropic.APIStatusError:
    response = httpx2.Response(status, request=httpx2.Request("POST", sim.base_url))
    return cls(f"HTTP {status}", response=response, body=None)


@pytest.mark.parametrize("lost", ["killed", "timed_out", "database_down", "gateway_timeout"])
def test_a_batch_the_api_took_before_its_id_was_stored_is_found_not_sent_again(
        simulator, sqlite_url, monkeypatch, lost):
    sim, ctx, client = _setup(simulator, sqlite_url, 10)
    if lost == "database_down":  # the create answered, the id's store refused
        def refused(*args):
            raise sa.exc.OperationalError("UPDATE shadow_batch", {}, Exception("server closed"))

        with monkeypatch.context() as m:
            m.setattr(batch_jobs, "submitted", refused)
            with pytest.raises(sa.exc.OperationalError):
                message_batches.cycle(ctx, client, 2)
    elif lost == "killed":
        with pytest.raises(Killed):
            message_batches.cycle(ctx, _dying(sim, Killed(), sent=True), 2)
    else:  # no answer, or a proxy's 504 after the API took it: either may have landed
        error = _timed_out(sim) if lost == "timed_out" else \
            _status_error(sim, anthropic.InternalServerError, 504)
        counts, _ = message_batches.cycle(ctx, _dying(sim, error, sent=True), 2)
        assert counts["create_unanswered"] == 1 and counts["submitted"] == 0
    assert _at_the_api(sim) == (1, 10)
    [batch] = rows_of(sqlite_url, ShadowBatch)
    assert (batch.status, batch.api_id, batch.jobs) == ("creating", None, 10)
    total = _settle(ctx, client, 2)
    assert total["create_found"] == 1 and total["submitted"] == 0 and total["create_unseen"] == 0
    assert _at_the_api(sim) == (1, 10)  # paid once
    assert len({s.job_id for s in rows_of(sqlite_url, Sample)}) == len(rows_of(sqlite_url, Sample)) == 10
    assert [b.status for b in rows_of(sqlite_url, ShadowBatch)] == ["recorded"]


def test_a_create_that_never_reached_the_api_is_sent_once_it_cannot_land(simulator, sqlite_url):
    sim, ctx, client = _setup(simulator, sqlite_url, 20)
    # Two batches of 10: the first is created and stored, the second's process dies before its create.
    with pytest.raises(Killed):
        message_batches.cycle(ctx, _dying(sim, Killed(), sent=False, spared=1), 2)
    assert _at_the_api(sim) == (1, 10)
    statuses = Counter(b.status for b in rows_of(sqlite_url, ShadowBatch))
    assert statuses == {"in_progress": 1, "creating": 1}
    # Not found at the API (the first batch, as large, is another's: its id is held here): it waits.
    counts, _ = message_batches.cycle(ctx, client, 2, unseen_after=60)
    assert (counts["create_found"], counts["create_unseen"], counts["submitted"]) == (0, 0, 0)
    assert _at_the_api(sim) == (1, 10)
    later = utcnow() + dt.timedelta(seconds=61)  # past the time its create could have landed
    counts, _ = message_batches.cycle(ctx, client, 2, now=later, unseen_after=60)
    assert (counts["create_unseen"], counts["submitted"]) == (1, 1)
    _settle(ctx, client, 2)
    assert _at_the_api(sim) == (2, 20)  # each job paid once
    assert len({s.job_id for s in rows_of(sqlite_url, Sample)}) == 20
    assert Counter(b.status for b in rows_of(sqlite_url, ShadowBatch)) == {"recorded": 2}


def test_while_a_lost_create_is_unresolved_no_batch_as_large_is_sent(simulator, sqlite_url):
    """Two lost creates of one size could not be told apart at the API: the second waits."""
    sim, ctx, client = _setup(simulator, sqlite_url, 20)
    cut_off = anthropic.APIConnectionError(request=httpx2.Request("POST", sim.base_url))
    counts, _ = message_batches.cycle(ctx, _dying(sim, cut_off, sent=False), 2)
    assert (counts["create_unanswered"], counts["waits_for_lost_create"]) == (1, 1)
    assert Counter(b.status for b in rows_of(sqlite_url, ShadowBatch)) == {"creating": 1, "submitting": 1}
    counts, _ = message_batches.cycle(ctx, client, 2, unseen_after=60)  # still unresolved: both wait
    assert (counts["waits_for_lost_create"], counts["submitted"]) == (1, 0) and _at_the_api(sim) == (0, 0)
    later = utcnow() + dt.timedelta(seconds=61)
    counts, _ = message_batches.cycle(ctx, client, 2, now=later, unseen_after=60)
    assert (counts["create_unseen"], counts["submitted"]) == (1, 2)
    _settle(ctx, client, 2)
    assert _at_the_api(sim) == (2, 20)
    assert len({s.job_id for s in rows_of(sqlite_url, Sample)}) == 20


def test_a_key_that_may_not_list_batches_sends_a_lost_create_again_once_it_cannot_land(
        simulator, sqlite_url, caplog):
    sim, ctx, client = _setup(simulator, sqlite_url, 10)
    with pytest.raises(Killed):
        message_batches.cycle(ctx, _dying(sim, Killed(), sent=True), 2)
    unlisted = anthropic.Anthropic(base_url=sim.base_url, api_key=API_KEY, max_retries=0)
    forbidden = _status_error(sim, anthropic.PermissionDeniedError, 403)

    def refuse(**kwargs):
        raise forbidden

    unlisted.messages.batches.list = refuse  # type: ignore[method-assign]
    counts, _ = message_batches.cycle(ctx, unlisted, 2, unseen_after=60)
    assert counts["create_lookup_refused"] == 1 and counts["submitted"] == 0
    assert "cannot be listed" in caplog.text and "possibly paid twice" in caplog.text
    later = utcnow() + dt.timedelta(seconds=61)
    counts, _ = message_batches.cycle(ctx, unlisted, 2, now=later, unseen_after=60)
    assert (counts["create_unseen"], counts["submitted"]) == (1, 1)  # not stuck: sent again
    _settle(ctx, client, 2)
    assert _at_the_api(sim) == (2, 20)  # the price of not being able to look
    assert len({s.job_id for s in rows_of(sqlite_url, Sample)}) == len(rows_of(sqlite_url, Sample)) == 10


def test_a_create_the_api_refused_with_an_answer_is_sent_again_at_once(simulator, sqlite_url):
    sim, ctx, client = _setup(simulator, sqlite_url, 10)
    overloaded = _status_error(sim, anthropic.InternalServerError, 529)
    counts, _ = message_batches.cycle(ctx, _dying(sim, overloaded, sent=False), 2)
    assert counts["submit_retry"] == 1
    assert [b.status for b in rows_of(sqlite_url, ShadowBatch)] == ["submitting"]  # not looked for
    counts, _ = message_batches.cycle(ctx, client, 2)
    assert counts["submitted"] == 1 and _at_the_api(sim) == (1, 10)


def test_a_list_that_keeps_failing_leaves_no_batch_creating_for_ever(simulator, sqlite_url):
    sim, ctx, client = _setup(simulator, sqlite_url, 10)
    message_batches.cycle(ctx, _dying(sim, _timed_out(sim), sent=False), 2)  # never landed
    failing = anthropic.Anthropic(base_url=sim.base_url, api_key=API_KEY, max_retries=0)
    down = _status_error(sim, anthropic.InternalServerError, 500)

    def fail(**kwargs):
        raise down

    failing.messages.batches.list = fail  # type: ignore[method-assign]
    soon = utcnow() + dt.timedelta(seconds=61)  # past the wait, but a 5xx may pass: looked for again
    counts, _ = message_batches.cycle(ctx, failing, 2, now=soon, unseen_after=60)
    assert (counts["step_failed"], counts["create_unseen"], counts["submitted"]) == (1, 0, 0)
    assert [b.status for b in rows_of(sqlite_url, ShadowBatch)] == ["creating"]
    patience = utcnow() + dt.timedelta(seconds=60 * batch_creates.PATIENCE + 1)
    counts, _ = message_batches.cycle(ctx, failing, 2, now=patience, unseen_after=60)
    assert (counts["create_lookup_refused"], counts["create_unseen"], counts["submitted"]) == (1, 1, 1)
    _settle(ctx, client, 2)
    assert _at_the_api(sim) == (1, 10)
    assert len(rows_of(sqlite_url, Sample)) == 10


def test_a_rate_limited_list_is_waited_out_not_taken_for_a_refusal(simulator, sqlite_url):
    sim, ctx, client = _setup(simulator, sqlite_url, 10)
    message_batches.cycle(ctx, _dying(sim, _timed_out(sim), sent=True), 2)  # taken, answer lost
    limited = anthropic.Anthropic(base_url=sim.base_url, api_key=API_KEY, max_retries=0)
    too_many = _status_error(sim, anthropic.RateLimitError, 429)

    def refuse(**kwargs):
        raise too_many

    limited.messages.batches.list = refuse  # type: ignore[method-assign]
    later = utcnow() + dt.timedelta(seconds=61)  # past the wait: a 429 there must not send it again
    counts, _ = message_batches.cycle(ctx, limited, 2, now=later, unseen_after=60)
    assert (counts["step_failed"], counts["create_lookup_refused"], counts["submitted"]) == (1, 0, 0)
    total = _settle(ctx, client, 2)
    assert total["create_found"] == 1 and _at_the_api(sim) == (1, 10)


def test_the_batch_created_nearest_the_send_is_adopted_not_an_older_one_as_large(simulator, sqlite_url):
    sim, ctx, client = _setup(simulator, sqlite_url, 10)
    other = [{"custom_id": f"other-{i}", "params": {"model": OPUS, "max_tokens": 8,
                                                     "messages": [{"role": "user", "content": "x"}]}}
             for i in range(10)]
    theirs = client.messages.batches.create(requests=other).id  # another's, as large, just before
    time.sleep(0.05)
    with pytest.raises(Killed):
        message_batches.cycle(ctx, _dying(sim, Killed(), sent=True), 2)
    counts, _ = message_batches.cycle(ctx, client, 2)
    [batch] = rows_of(sqlite_url, ShadowBatch)
    assert counts["create_found"] == 1 and batch.api_id not in (None, theirs)
    _settle(ctx, client, 2)
    assert _at_the_api(sim) == (2, 20)  # theirs and ours, each once
    assert len(rows_of(sqlite_url, Sample)) == 10


class HoldingProxy:
    """The simulator behind a proxy that holds the API's answer to a batch create until released:
    the window between the API taking a batch and its id being stored, held open for a kill."""

    def __init__(self, upstream: str):
        import http.server
        import threading

        self.upstream = upstream
        self.took, self.release = threading.Event(), threading.Event()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _forward(self):
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "content-length", "connection")}
                answer = httpx2.request(self.command, proxy.upstream + self.path, headers=headers,
                                        content=body, timeout=30)
                if self.command == "POST" and self.path.startswith("/v1/messages/batches"):
                    proxy.took.set()  # the API has taken it; its answer waits
                    proxy.release.wait(60)
                try:
                    self.send_response(answer.status_code)
                    for k, v in answer.headers.items():
                        if k.lower() not in ("content-length", "transfer-encoding", "connection",
                                             "content-encoding"):
                            self.send_header(k, v)
                    self.send_header("content-length", str(len(answer.content)))
                    self.end_headers()
                    self.wfile.write(answer.content)
                except OSError:  # the caller was killed meanwhile
                    pass

            do_GET = do_POST = do_DELETE = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def test_a_worker_and_beat_killed_before_the_batch_id_was_stored_pay_for_it_once(
        stack, simulator, postgres_url):
    import os
    import signal

    from tests.helpers import samples, wait_until

    sim = simulator(categories=CATS, batch_delay_s=1)
    proxy = HoldingProxy(sim.base_url)
    try:
        quick = {**POLICY, "categories": {"a": {**POLICY["categories"]["a"], "batch_max_jobs": 10}}}
        stack.configure(policy=quick, database_url=postgres_url, base_url=proxy.base_url,
                        batch_poll_seconds=0.5)
        client, worker, beat = produced(stack, 10)
        assert proxy.took.wait(60), "no batch create reached the API"
        wait_until(lambda: [b.status for b in rows_of(postgres_url, ShadowBatch)] == ["creating"], 10,
                   "the batch creating, its id not stored")
        for proc in (worker, beat):  # both die with the API's answer on its way
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proxy.release.set()
        assert _at_the_api(sim) == (1, 10)
        stack.start_worker(concurrency=4)
        stack.start_beat()
        wait_until(lambda: samples(postgres_url) == 10, 60, "all 10 recorded from the one batch")
        assert _at_the_api(sim) == (1, 10)  # found at the API, not bought again
        [batch] = rows_of(postgres_url, ShadowBatch)
        assert batch.status == "recorded" and batch.api_id
        client.tierguard_close()
    finally:
        proxy.stop()
