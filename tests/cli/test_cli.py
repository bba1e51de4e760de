"""The ``tierguard`` command as a user runs it: a subprocess, JSON on the last line, clear errors."""

from pathlib import Path

import pytest

from tests.helpers import last_json, tg, write_policy


@pytest.fixture
def cli_env(tmp_path, redis_url, monkeypatch):
    import os

    policy = write_policy(tmp_path / "tierguard.yaml", {"categories": {
        "sentiment": {"comparator": {"type": "label", "labels": ["POSITIVE", "NEGATIVE"]}}}})
    return {**os.environ, "TIERGUARD_POLICY": str(policy), "TIERGUARD_REDIS_URL": redis_url,
            "TIERGUARD_DATABASE_URL": f"sqlite:///{tmp_path / 'tg.db'}"}


def test_status_pin_unpin_history(cli_env, tmp_path):
    before = tg("status", env=cli_env, cwd=tmp_path, check=False)
    assert before.returncode == 2 and "run `tierguard db upgrade`" in before.stderr
    assert "Traceback" not in before.stderr
    tg("db", "upgrade", env=cli_env, cwd=tmp_path)
    status = last_json(tg("status", "--json", env=cli_env, cwd=tmp_path).stdout)
    assert status["categories"] == {"sentiment": {
        **status["categories"]["sentiment"], "route": "claude-haiku-4-5", "samples": 0,
        "agreement": None, "pinned": False}}
    assert set(status["headroom"]) == {"claude-haiku-4-5", "claude-opus-4-7"}  # nothing seen yet
    assert status["headroom"]["claude-opus-4-7"]["paused_until"] is None
    pinned = last_json(tg("pin", "sentiment", "reference", "--reason", "incident 42", "--actor",
                          "ana", "--json", env=cli_env, cwd=tmp_path).stdout)
    assert pinned == {"category": "sentiment", "route": "claude-opus-4-7", "pinned": True, "until": None}
    status = last_json(tg("status", "--json", env=cli_env, cwd=tmp_path).stdout)
    assert status["categories"]["sentiment"]["pinned"] is True
    assert status["categories"]["sentiment"]["route"] == "claude-opus-4-7"
    tg("unpin", "sentiment", "--actor", "ana", env=cli_env, cwd=tmp_path)
    changes = last_json(tg("history", "--json", env=cli_env, cwd=tmp_path).stdout)["changes"]
    assert [(c["rule"], c["actor"], c["to"]) for c in changes] == [
        ("unpin", "ana", "claude-opus-4-7"), ("pin", "ana", "claude-opus-4-7")]
    human = tg("history", env=cli_env, cwd=tmp_path).stdout
    assert "incident 42" in human


def test_pin_until_expires_and_refuses_the_past(cli_env, tmp_path):
    tg("db", "upgrade", env=cli_env, cwd=tmp_path)
    pinned = last_json(tg("pin", "sentiment", "reference", "--until", "2099-01-01T00:00Z", "--json",
                          env=cli_env, cwd=tmp_path).stdout)
    assert pinned["until"] == "2099-01-01T00:00:00+00:00"
    status = last_json(tg("status", "--json", env=cli_env, cwd=tmp_path).stdout)
    assert status["categories"]["sentiment"]["pinned_until"].startswith("2099-01-01T00:00:00")
    past = tg("pin", "sentiment", "reference", "--until", "2000-01-01", env=cli_env, cwd=tmp_path,
              check=False)
    assert past.returncode == 2 and "is in the past" in past.stderr and "Traceback" not in past.stderr
    bad = tg("pin", "sentiment", "reference", "--until", "soon", env=cli_env, cwd=tmp_path, check=False)
    assert bad.returncode == 2 and "not an ISO 8601 time" in bad.stderr


def test_broken_policy_is_one_clear_error(cli_env, tmp_path):
    (tmp_path / "tierguard.yaml").write_text("categories:\n  sentiment: {sample_rate: 7}\n")
    done = tg("status", env=cli_env, cwd=tmp_path, check=False)
    assert done.returncode == 2
    assert "categories.sentiment.sample_rate: must be between 0 and 1" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_demo_flips_the_drifting_category_and_cleans_up(tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERGUARD_")}
    done = tg("demo", "--seconds", "25", "--json", env=env, cwd=tmp_path)
    result = last_json(done.stdout)
    assert [(c["category"], c["from"], c["to"]) for c in result["changes"]] == [
        ("ticket-routing", "claude-haiku-4-5", "claude-opus-4-7")]
    assert isinstance(result["changes"][0]["index"], int)
    cats = result["categories"]
    assert set(cats) == {"sentiment", "invoice-extraction", "ticket-routing"}
    assert cats["sentiment"]["route"] == cats["invoice-extraction"]["route"] == "claude-haiku-4-5"
    assert all(c["samples"] > 100 for c in cats.values())
    assert (tmp_path / "tierguard-demo" / "tierguard.db").exists()
    assert [(a["event"], a["severity"]) for a in result["alerts"]] == [("demoted", "critical")]
    assert result["report"].endswith("report.png") and Path(result["report"]).stat().st_size > 10_000
    for pid in result["processes"].values():  # every process the demo started is gone
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
