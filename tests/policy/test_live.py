"""Policy changes without restarts: valid edits apply, invalid ones never do and reach on-call once."""

import logging
import os
import time

import anthropic
import yaml
from sqlmodel import select

import tierguard
from tests.helpers import samples, wait_until
from tierguard.policy.live import LivePolicy
from tierguard.store.db import make_engine, session
from tierguard.store.tables import Category, Event

LABELS = ["POSITIVE", "NEGATIVE"]


def write(path, data):
    path.write_text(yaml.safe_dump(data))
    st = path.stat()  # a second edit within the same mtime tick must still be seen
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def test_a_valid_edit_applies_an_invalid_one_never_does(tmp_path, caplog):
    path = tmp_path / "policy.yaml"
    write(path, {"defaults": {"sample_rate": 0.1}})
    changes, invalid = [], []
    live = LivePolicy(path, 60, lambda old, new: changes.append((old, new)),
                      lambda err, digest: invalid.append((err.problems, digest)))
    assert live.check() is False and live.current.defaults.sample_rate == 0.1
    caplog.set_level(logging.ERROR)
    write(path, {"defaults": {"sample_rate": 7}})
    assert live.check() is False and live.check() is False
    assert live.current.defaults.sample_rate == 0.1
    assert [p for p, _ in invalid] == [["defaults.sample_rate: must be between 0 and 1"]]
    assert "defaults.sample_rate: must be between 0 and 1" in caplog.text
    write(path, {"defaults": {"sample_rate": 0.2}})
    assert live.check() is True and live.current.defaults.sample_rate == 0.2
    assert [new.defaults.sample_rate for _, new in changes] == [0.2]
    path.unlink()  # a file that disappears keeps what runs
    assert live.check() is False and live.current.defaults.sample_rate == 0.2
    assert len(invalid) == 1


def test_workers_and_wrappers_follow_the_file(stack, simulator, sqlite_url):
    sim = simulator(categories={"sentiment": {"kind": "label", "labels": LABELS, "agreement": 1.0}})
    policy = {"defaults": {"sample_rate": 1.0, "threshold": 0.9},
              "categories": {"sentiment": {"comparator": {"type": "label", "labels": LABELS}}}}
    settings = stack.configure(policy=policy, database_url=sqlite_url, base_url=sim.base_url,
                               policy_reload_s=0.3)
    stack.start_worker(concurrency=4)
    client = tierguard.ShadowedAnthropic(anthropic.Anthropic(max_retries=0))

    def send(n, start):
        for i in range(start, start + n):
            client.messages.create(category="sentiment", max_tokens=8, system="sentiment: classify",
                                   messages=[{"role": "user", "content": f"r{i}"}])
        client.tierguard_flush(10)

    send(20, 0)
    wait_until(lambda: samples(sqlite_url) == 20, 60, "20 samples")
    engine = make_engine(sqlite_url)
    # An invalid edit: nothing changes, one policy_invalid event (the worker reports it).
    write(settings.policy, {**policy, "defaults": {"sample_rate": "often"}})
    time.sleep(1.5)

    def invalid_events():
        with session(engine) as s:
            return [e for e in s.exec(select(Event)) if e.kind == "policy_invalid"]

    wait_until(lambda: len(invalid_events()) == 1, 15, "one policy_invalid event")
    assert "defaults.sample_rate" in invalid_events()[0].summary
    send(5, 100)  # the old policy (rate 1.0) still holds in the wrapper
    wait_until(lambda: samples(sqlite_url) == 25, 60, "25 samples")
    # A valid edit: a new threshold. The database's copy follows, the evidence restarts.
    write(settings.policy, {**policy, "defaults": {"sample_rate": 1.0, "threshold": 0.8}})

    def threshold():
        with session(engine) as s:
            return s.exec(select(Category).where(Category.name == "sentiment")).one().threshold

    wait_until(lambda: threshold() == 0.8, 15, "the category's copy of the threshold")
    send(5, 200)
    wait_until(lambda: samples(sqlite_url) == 30, 60, "30 samples")
    assert "sentiment: detector settings changed (policy); its evidence restarts" in stack.logs()[0]
    with session(engine) as s:
        state = s.exec(select(Category).where(Category.name == "sentiment")).one().detector_state
    assert state["n"] == 5  # counted since the change only
    # Another: no shadowing at all; the wrapper follows within the reload period.
    write(settings.policy, {**policy, "defaults": {"sample_rate": 0.0, "threshold": 0.8}})
    wait_until(lambda: client.tierguard_core.policy.defaults.sample_rate == 0.0, 10, "the wrapper to reload")
    send(10, 300)
    time.sleep(1)
    assert samples(sqlite_url) == 30 and client.tierguard_stats()["submitted"] == 30
    assert len(invalid_events()) == 1
    client.tierguard_close()
