"""What the recorder records reaches a real Phoenix as GenAI spans with evaluation events; an endpoint
that is down, silent or slow costs recording nothing and is dropped and counted."""

from __future__ import annotations

import logging
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid

import pytest
from prometheus_client import REGISTRY
from sqlmodel import select

from tests.helpers import wait_until
from tierguard.compare import Verdict
from tierguard.contract.job import ShadowJob
from tierguard.otlp import exporter as otlp
from tierguard.otlp.exporter import Exporter
from tierguard.pipeline.calls import Answer
from tierguard.pipeline.recorder import record_many
from tierguard.pipeline.results import Result
from tierguard.policy import parse_policy
from tierguard.sim.servers import free_port
from tierguard.store.db import make_engine, session, upgrade
from tierguard.store.tables import RouteChange, Sample

HAIKU, OPUS = "claude-haiku-4-5", "claude-opus-4-7"
LABELS = ["POSITIVE", "NEGATIVE", "NEUTRAL"]
POLICY = parse_policy({"defaults": {"sample_rate": 1.0, "threshold": 0.9, "min_samples": 20},
                       "categories": {"sentiment": {"comparator": {"type": "label", "labels": LABELS}},
                                      "tickets": {"comparator": {"type": "label", "labels": LABELS}}}})


@pytest.fixture
def engine(tmp_path):
    e = make_engine(f"sqlite:///{tmp_path / 'tierguard.db'}")
    upgrade(e)
    yield e
    e.dispose()


@pytest.fixture
def exporting():
    """Install an exporter as this process's for the test; the environment's again after it."""
    made: list[Exporter] = []

    def use(endpoint: str, **kwargs) -> Exporter:
        made.append(Exporter(endpoint, **kwargs))
        otlp.use(made[-1])
        return made[-1]

    yield use
    otlp.reset()


def result(verdict: Verdict | None = None, error: tuple[str, str] | None = None, category="sentiment",
           served=HAIKU, shadow=OPUS) -> Result:
    job = ShadowJob(job_id=uuid.uuid4().hex, category=category, served_model=served, shadow_model=shadow,
                    request={"max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
                    primary_text="POSITIVE", primary_input_tokens=12, primary_output_tokens=2,
                    served_snapshot=served + "-20251001")
    answer = None if error else Answer("NEGATIVE" if verdict and not verdict.agree else "POSITIVE",
                                       30, 4, 250.0, snapshot=shadow + "-20260101")
    return Result(job, answer, verdict, error, 1)


AGREE = Verdict(True, 1.0, "labels equal: POSITIVE")
DISAGREE = Verdict(False, 0.0, "label POSITIVE vs NEGATIVE")


def by_job(spans: list[dict]) -> dict[str, dict]:
    return {s["attributes"]["tierguard.job_id"]: s for s in spans if "tierguard.job_id" in s["attributes"]}


def test_recorded_comparisons_reach_phoenix_with_their_evaluations(engine, phoenix, project, exporting):
    exporter = exporting(phoenix.url, service_name=project)
    agree, disagree = result(AGREE), result(DISAGREE)
    failed = result(error=("server_error", "HTTP 500 after 6 attempts"))
    skipped = result(error=("skipped", "request too large for claude-haiku-4-5"))
    record_many(engine, None, POLICY, [agree, disagree, failed, skipped])
    record_many(engine, None, POLICY, [agree, disagree])  # redelivered: duplicates, not exported again
    assert exporter.flush(10) and exporter.counts == {"exported": 4}

    spans = by_job(phoenix.wait_spans(project, 4))
    time.sleep(1)
    assert len(phoenix.spans(project)) == 4
    for x, label, score in ((agree, "agree", 1.0), (disagree, "disagree", 0.0)):
        span = spans[x.job.job_id]
        assert span["name"] == f"chat {OPUS}" and span["status_code"] == "UNSET"
        a = span["attributes"]
        assert (a["gen_ai.operation.name"], a["gen_ai.provider.name"], a["gen_ai.system"]) == (
            "chat", "anthropic", "anthropic")
        assert a["gen_ai.request.model"] == OPUS and a["gen_ai.response.model"] == OPUS + "-20260101"
        assert a["tierguard.served_snapshot"] == HAIKU + "-20251001"
        assert len(a["tierguard.prompt_fingerprint"]) == 16
        assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (30, 4)
        assert (a["tierguard.category"], a["tierguard.served_model"], a["tierguard.shadow_model"]) == (
            "sentiment", HAIKU, OPUS)
        assert a["tierguard.agreement"] is x.verdict.agree and a["tierguard.kind"] == "shadow"
        assert a["tierguard.served.input_tokens"] == 12
        [event] = span["events"]
        assert event["name"] == "gen_ai.evaluation.result"
        assert event["attributes"] == {
            "gen_ai.evaluation.name": "tierguard.agreement", "gen_ai.evaluation.score.value": score,
            "gen_ai.evaluation.score.label": label, "gen_ai.evaluation.explanation": x.verdict.reason,
            "gen_ai.request.model": OPUS, "tierguard.category": "sentiment"}
        assert span["context"]["trace_id"] == x.job.job_id  # the job id is the trace id
    error = spans[failed.job.job_id]
    assert error["status_code"] == "ERROR" and "server_error" in error["status_message"]
    assert error["events"] == [] and error["attributes"]["error.type"] == "server_error"
    assert "tierguard.agreement" not in error["attributes"]  # an error is never a disagreement
    assert spans[skipped.job.job_id]["status_code"] == "UNSET" and spans[skipped.job.job_id]["events"] == []


def test_a_flip_is_a_route_change_span_under_the_comparison_that_caused_it(engine, phoenix, project,
                                                                           exporting):
    exporter = exporting(phoenix.url, service_name=project)
    for _ in range(40):
        record_many(engine, None, POLICY, [result(DISAGREE, category="tickets")])
    with session(engine) as s:
        [change] = s.exec(select(RouteChange)).all()
        n = len(s.exec(select(Sample.job_id)).all())
    assert (change.from_model, change.to_model, change.applied) == (HAIKU, OPUS, True)
    assert exporter.flush(10)
    spans = phoenix.wait_spans(project, n + 1)
    [flip] = [s for s in spans if s["name"] == "tierguard.route_change"]
    assert flip["attributes"]["tierguard.route.agreement"] == pytest.approx(change.agreement)
    assert flip["attributes"]["tierguard.route.applied"] is True
    assert flip["context"]["trace_id"] == change.trigger_job_id
    assert flip["parent_id"] == by_job(spans)[change.trigger_job_id]["context"]["span_id"]
    [event] = flip["events"]
    assert event["name"] == "tierguard.route_change"
    assert event["attributes"] == {"tierguard.category": "tickets", "tierguard.route.from": HAIKU,
                                   "tierguard.route.to": OPUS, "tierguard.route.rule": change.rule,
                                   "tierguard.route.reason": change.reason}


class Silent:
    """A TCP port that accepts connections and never answers (a hung collector)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.accepted.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


def dropped(reason: str) -> float:
    return REGISTRY.get_sample_value("tierguard_otlp_dropped_total", {"reason": reason}) or 0.0


def timed_recording(engine, n: int, size: int) -> list[float]:
    times = []
    for _ in range(n):
        batch = [result(AGREE) for _ in range(size)]
        began = time.perf_counter()
        record_many(engine, None, POLICY, batch)
        times.append(time.perf_counter() - began)
    return times


@pytest.mark.parametrize("endpoint", ["refusing", "silent"])
def test_an_unreachable_endpoint_drops_and_counts_and_recording_does_not_wait(engine, exporting, caplog,
                                                                              endpoint):
    silent = Silent()
    url = silent.url if endpoint == "silent" else f"http://user:hunter2@127.0.0.1:{free_port()}"
    otlp.use(None)
    baseline = timed_recording(engine, 20, 25)
    before = dropped("unreachable")
    exporter = exporting(url, headers={"authorization": "Bearer sekrit-token"}, timeout=1.0)
    with caplog.at_level(logging.INFO, logger="tierguard.otlp"):
        exporting_times = timed_recording(engine, 20, 25)
        assert exporter.flush(30)
    silent.close()
    # Recording with a dead collector takes what it takes without one: a one-second timeout per
    # export would add 20 s if the recording thread waited for it (bounds with room for a busy host).
    print(f"\n{endpoint}: record_many of 25 results, median {statistics.median(baseline) * 1e3:.1f} ms "
          f"without export, {statistics.median(exporting_times) * 1e3:.1f} ms exporting")
    assert sum(exporting_times) < sum(baseline) * 2 + 2
    assert statistics.median(exporting_times) < 0.5  # a waited export: every round ≥ 1 s
    assert exporter.counts == {"dropped:unreachable": 500}
    assert dropped("unreachable") - before == 500
    warnings = [r for r in caplog.records
                if r.levelno == logging.WARNING and r.name.startswith("tierguard.otlp")]
    assert len(warnings) == 1 and "dropping spans until it works again" in warnings[0].getMessage()
    assert "sekrit" not in caplog.text and "hunter2" not in caplog.text


def test_the_queue_bound_holds_while_the_collector_hangs(exporting):
    silent = Silent()
    exporter = exporting(silent.url, queue_max=10, timeout=30)
    rows = [{"job_id": uuid.uuid4().hex, "category": "c", "served_model": HAIKU, "shadow_model": OPUS}
            for _ in range(101)]
    before = dropped("queue_full")
    exporter.submit(rows[:1])
    wait_until(lambda: silent.accepted, 10, "the export thread to be stuck sending")
    began = time.perf_counter()
    exporter.submit(rows[1:])
    took = time.perf_counter() - began
    assert exporter.queue.qsize() == 10
    assert exporter.counts == {"dropped:queue_full": 90}
    assert dropped("queue_full") - before == 90
    assert took < 0.05, f"submitting 100 spans to a full queue took {took:.3f}s"
    silent.close()


def test_a_forked_child_exports_through_a_thread_of_its_own(phoenix, project):
    exporter = Exporter(phoenix.url, service_name=project)
    parent, child = ({"job_id": uuid.uuid4().hex, "category": "c", "served_model": HAIKU,
                      "shadow_model": OPUS, "agree": True, "score": 1.0, "reason": "same"} for _ in range(2))
    exporter.submit([parent])
    assert exporter.flush(10)
    pid = os.fork()
    if pid == 0:  # the child: the parent's thread is not here; submitting starts the child's own
        code = 1
        try:
            exporter.submit([child])
            code = 0 if exporter.flush(10) and exporter.counts == {"exported": 1} else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    spans = phoenix.wait_spans(project, 2)
    assert set(by_job(spans)) == {parent["job_id"], child["job_id"]}
    assert exporter.counts == {"exported": 1}  # the parent's own count, untouched by the child


def test_what_is_queued_when_the_process_exits_is_sent_first(phoenix, project):
    job_id = uuid.uuid4().hex
    code = (f"from tierguard.otlp.exporter import Exporter\n"
            f"Exporter({phoenix.url!r}, service_name={project!r}).submit([{{'job_id': {job_id!r}, "
            f"'category': 'c', 'served_model': {HAIKU!r}, 'shadow_model': {OPUS!r}}}])\n")
    began = time.monotonic()
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)  # exits while the batch gathers
    assert time.monotonic() - began < 15
    assert set(by_job(phoenix.wait_spans(project, 1, timeout=10))) == {job_id}


def test_operator_pins_and_their_expiry_are_route_change_spans(engine, phoenix, project, exporting):
    import datetime as dt

    from tierguard.alerts.monitors import check
    from tierguard.ops.actions import pin

    exporter = exporting(phoenix.url, service_name=project)
    until = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    pin(engine, None, POLICY, "sentiment", "reference", reason="incident 42", actor="alice", until=until)
    check(engine, None, POLICY, "tierguard", now=until + dt.timedelta(seconds=1))  # beat's pin expiry
    assert exporter.flush(10)
    spans = phoenix.wait_spans(project, 2)
    seen = sorted((s["attributes"]["tierguard.route.rule"], s["attributes"]["tierguard.route.actor"],
                   s["attributes"]["tierguard.route.to"]) for s in spans)
    assert seen == [("pin", "alice", OPUS), ("pin_expired", "auto", OPUS)]
    assert all(s["parent_id"] is None and s["events"][0]["name"] == "tierguard.route_change" for s in spans)
