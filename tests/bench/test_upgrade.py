"""``tierguard bench upgrade`` on a short run: the JSON a user reads, and the set-ups' defining contrasts."""

import os

import pytest

from tests.helpers import last_json, tg
from tierguard.bench import upgrade
from tierguard.bench.upgrade import NEW, Category, Rollout, upgrade_figures

FIELDS = {"production_usd", "bad_calls_served", "days_to_first_saving", "rollbacks"}


def test_the_command_prints_every_setup_and_the_challenger_serves_no_bad_call(tmp_path):
    # Three days, the new model out on day 1: the largest category (on Haiku, where it holds) is
    # eligible within hours; the failing half is served by it at once in the manual set-ups.
    fig = last_json(tg("bench", "upgrade", "--days", "3", "--release-day", "1", "--json",
                       env=dict(os.environ), cwd=tmp_path).stdout)
    assert set(fig["setups"]) == {"manual", "manual_no_flap_guard", "challenger"}
    for s in fig["setups"].values():
        assert set(s) >= FIELDS
    manual, challenger = fig["setups"]["manual"], fig["setups"]["challenger"]
    assert manual["days_to_first_saving"] == 0 and manual["categories_bad_served"] == 15
    assert manual["bad_calls_served"] > 10_000 and challenger["bad_calls_served"] == 0
    assert challenger["rollouts_started"] >= 1 and challenger["rollbacks"] == 0
    assert 0 < challenger["days_to_first_saving"] < 1 and challenger["challenger_usd"] > 0
    assert challenger["production_usd"] < fig["production_usd_without_new_model"]
    assert fig["goals_met"]["bad_calls_vs_manual"] and fig["goals_met"]["days_to_first_saving"]
    assert set(fig["goals_met"]) == {"bad_calls_vs_manual", "cost_vs_manual", "days_to_first_saving"}


def test_a_rollout_to_a_failing_model_rolls_back_on_its_share():
    cat = Category("challenger", 1, 140_000, (1_000, 100), seed=5, release_h=0)  # it fails here (0.80)
    cat.hour(0)
    cat.rollout = Rollout(base=cat.serving, started=0.0, state={})
    for hour in range(1, 13):
        cat.hour(hour)
    assert cat.rollout.status == "rolled_back" and cat.out["rollbacks"] == 1
    assert cat.rollout.step <= 1  # caught at 5 or 25 %, never at half the calls
    hourly = 140_000 / 24
    assert 0 < cat.out["bad_calls"] < 0.25 * 12 * hourly  # only the share was served badly
    assert cat.rollout.share() == 0.0 and cat.serving == "claude-sonnet-4-6"  # back on its rung
    assert upgrade.level(1, NEW) < cat.cat.threshold <= upgrade.level(1, cat.serving)


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match="release_day"):
        upgrade_figures(days=3, release_day=3)
    with pytest.raises(ValueError, match="setups: nightly"):
        upgrade_figures(days=3, release_day=1, setups=("nightly",))
