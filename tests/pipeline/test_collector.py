"""The worker's garbage collector settings (pipeline/collector)."""

from __future__ import annotations

import gc
import sys

import pytest
from celery.signals import worker_process_init, worker_ready

from tierguard.config import get_settings
from tierguard.pipeline import collector


@pytest.fixture
def restored():
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)
    gc.unfreeze()
    for signal in (worker_ready, worker_process_init):
        signal.disconnect(collector._settled)


def test_the_young_threshold_is_raised_and_the_older_ones_stay_pythons(restored):
    assert collector.tune(50_000) == (50_000, 10, 10)
    assert gc.get_threshold() == (50_000, 10, 10)


def test_zero_keeps_pythons_own_thresholds(restored):
    gc.set_threshold(700, 10, 10)
    assert collector.tune(0) == (700, 10, 10)


def test_settling_freezes_what_start_up_made_and_says_so(restored, caplog):
    caplog.set_level("INFO", "tierguard.pipeline.collector")
    interval = sys.getswitchinterval()
    sys.setswitchinterval(60)  # another test's background thread freeing a frozen object meanwhile
    try:  # (a wrapper's publisher releasing held answers) would change the count between the two
        frozen = collector.settle()
        now = gc.get_freeze_count()
    finally:
        sys.setswitchinterval(interval)
    assert frozen == now > 1000
    assert f"{frozen} start-up objects frozen" in caplog.text


def test_installed_the_worker_and_each_prefork_child_freeze_once_ready(restored):
    collector.install(50_000)
    assert gc.get_threshold() == (50_000, 10, 10)
    worker_process_init.send(sender=None)
    assert gc.get_freeze_count() > 1000
    gc.unfreeze()
    worker_ready.send(sender=None)
    assert gc.get_freeze_count() > 1000


def test_installed_with_zero_nothing_changes(restored):
    gc.set_threshold(700, 10, 10)
    frozen = gc.get_freeze_count()
    collector.install(0)
    worker_ready.send(sender=None)
    worker_process_init.send(sender=None)
    assert gc.get_threshold() == (700, 10, 10) and gc.get_freeze_count() == frozen


def test_the_setting_defaults_to_fifty_thousand_and_refuses_what_would_collect_more(monkeypatch):
    assert get_settings().worker_gc_threshold == 50_000
    monkeypatch.setenv("TIERGUARD_WORKER_GC_THRESHOLD", "0")
    assert get_settings().worker_gc_threshold == 0
    for bad, why in (("-1", "greater than or equal to 0"), ("500", "below Python's own 700"),
                     ("2000000", "less than or equal to 1000000")):
        monkeypatch.setenv("TIERGUARD_WORKER_GC_THRESHOLD", bad)
        with pytest.raises(Exception, match=f"(?s)worker_gc_threshold.*{why}"):
            get_settings()
