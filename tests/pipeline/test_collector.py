"""The worker's garbage collector settings (pipeline/collector)."""

from __future__ import annotations

import gc

import pytest

from tierguard.config import get_settings
from tierguard.pipeline import collector


@pytest.fixture
def restored():
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)
    gc.unfreeze()


def test_the_young_threshold_is_raised_and_the_older_ones_follow(restored):
    assert collector.tune(50_000) == (50_000, 20, 100)
    assert gc.get_threshold() == (50_000, 20, 100)


def test_zero_keeps_pythons_own_thresholds(restored):
    gc.set_threshold(700, 10, 10)
    assert collector.tune(0) == (700, 10, 10)


def test_settling_freezes_what_start_up_made_and_says_so(restored, caplog):
    caplog.set_level("INFO", "tierguard.pipeline.collector")
    frozen = collector.settle()
    assert frozen == gc.get_freeze_count() > 1000
    assert f"{frozen} start-up objects frozen" in caplog.text


def test_the_setting_defaults_to_fifty_thousand_and_refuses_a_negative(monkeypatch):
    assert get_settings().worker_gc_threshold == 50_000
    monkeypatch.setenv("TIERGUARD_WORKER_GC_THRESHOLD", "-1")
    with pytest.raises(Exception, match="worker_gc_threshold"):
        get_settings()
