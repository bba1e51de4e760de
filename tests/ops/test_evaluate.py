"""Onboarding as a team runs it: ``evaluate``, ``opportunities`` and ``judge check`` from the shell."""

import json
import math
import random

from sqlmodel import select

from tests.helpers import API_KEY, last_json, tg
from tierguard.store.db import make_engine, session, upgrade
from tierguard.store.tables import Category, RouteChange, Sample

LABELS = ["POSITIVE", "NEGATIVE", "NEUTRAL"]
PRICES = {"claude-haiku-4-5": {"input": 1.0, "output": 5.0},
          "claude-opus-4-7": {"input": 5.0, "output": 25.0}}


def wilson_by_hand(k, n, z=1.96):
    p = k / n
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return ((p + z * z / (2 * n) - half) / (1 + z * z / n), (p + z * z / (2 * n) + half) / (1 + z * z / n))


def cli_env(tmp_path, simulator, redis_url, categories, policy):
    sim = simulator(categories=categories)
    (tmp_path / "tierguard.yaml").write_text(json.dumps(policy))
    db = f"sqlite:///{tmp_path / 'tg.db'}"
    upgrade(make_engine(db))
    import os

    return sim, db, {**os.environ, "TIERGUARD_POLICY": str(tmp_path / "tierguard.yaml"),
                     "TIERGUARD_DATABASE_URL": db, "TIERGUARD_REDIS_URL": redis_url,
                     "ANTHROPIC_BASE_URL": sim.base_url, "ANTHROPIC_API_KEY": API_KEY}


def cases(tmp_path, category, n=50):
    path = tmp_path / f"{category}.jsonl"
    path.write_text("\n".join(json.dumps({"system": f"{category}: classify", "max_tokens": 8,
                                          "messages": [{"role": "user", "content": f"case {i}"}]})
                              for i in range(n)))
    return path


def test_evaluate_recommends_applies_once_and_records_evaluation_samples(tmp_path, simulator, redis_url):
    sim, db, env = cli_env(tmp_path, simulator, redis_url, {
        "steady": {"kind": "label", "labels": LABELS, "agreement": 1.0},
        "shaky": {"kind": "label", "labels": LABELS, "agreement": 0.6}}, {
        "pricing": PRICES,
        "categories": {"steady": {"comparator": {"type": "label", "labels": LABELS},
                                  "promote_threshold": 0.9, "start_on": "reference"},
                       "shaky": {"comparator": {"type": "label", "labels": LABELS}}}})
    steady = last_json(tg("evaluate", str(cases(tmp_path, "steady")), "--category", "steady",
                          "--calls-per-day", "1000", "--json", env=env, cwd=tmp_path).stdout)
    low, high = wilson_by_hand(50, 50)
    assert steady["compared"] == 50 and steady["errors"] == 0 and steady["agreement"] == 1.0
    assert abs(steady["wilson_low"] - low) < 1e-4 and steady["wilson_high"] == 1.0
    assert steady["recommendation"] == "candidate" and steady["applied"] is False
    with session(make_engine(db)) as s:
        rows = [r for r in s.exec(select(Sample)) if r.category == "steady"]
    assert len(rows) == 50 and {r.kind for r in rows} == {"evaluation"}
    ref = sum(r.primary_cost_usd for r in rows) / 50   # the reference answered as "primary"
    cand = sum(r.shadow_cost_usd for r in rows) / 50
    assert steady["projected_monthly_savings_usd"] == round((ref - cand) * 1000 * 30, 2) > 0

    shaky = last_json(tg("evaluate", str(cases(tmp_path, "shaky")), "--category", "shaky", "--json",
                         env=env, cwd=tmp_path).stdout)
    k = round(shaky["agreement"] * 50)
    assert 20 <= k <= 40 and shaky["recommendation"] == "reference"
    assert abs(shaky["wilson_low"] - wilson_by_hand(k, 50)[0]) < 1e-4
    assert abs(shaky["wilson_high"] - wilson_by_hand(k, 50)[1]) < 1e-4
    assert shaky["projected_monthly_savings_usd"] is None  # no recorded volume, none given

    applied = last_json(tg("evaluate", str(cases(tmp_path, "steady")), "--category", "steady",
                           "--apply", "--json", env=env, cwd=tmp_path).stdout)
    again = last_json(tg("evaluate", str(cases(tmp_path, "steady")), "--category", "steady",
                         "--apply", "--json", env=env, cwd=tmp_path).stdout)
    tg("evaluate", str(cases(tmp_path, "shaky")), "--category", "shaky", "--apply", env=env,
       cwd=tmp_path)
    assert applied["applied"] is True and again["applied"] is False
    with session(make_engine(db)) as s:
        changes = list(s.exec(select(RouteChange)))
        routes = {c.name: (c.routed_model, c.detector_state) for c in s.exec(select(Category))}
    assert [(c.category, c.to_model, c.actor, c.rule) for c in changes] == [
        ("steady", "claude-haiku-4-5", "evaluate", "evaluation")]
    assert "Wilson 95% lower bound" in changes[0].reason
    assert not routes.get("shaky", (None, {}))[1].get("n")  # evaluation never feeds the engine
    assert not routes["steady"][1].get("n")
    history = last_json(tg("history", "--json", env=env, cwd=tmp_path).stdout)["changes"]
    assert [c["actor"] for c in history] == ["evaluate"]

    table = last_json(tg("opportunities", "--json", env=env, cwd=tmp_path).stdout)["categories"]
    by_name = {r["category"]: r for r in table}
    assert by_name["steady"]["evaluation_agreement"] == 1.0
    assert by_name["steady"]["evaluation_cases"] == 150
    assert by_name["shaky"]["route"] == "claude-haiku-4-5"


OLD_KEYS = {"category", "cases", "compared", "errors", "agreement", "wilson_low", "wilson_high",
            "recommendation", "candidate", "reference", "promote_threshold", "calls_per_day",
            "projected_monthly_savings_usd", "run", "applied"}
LADDER = ["claude-haiku-4-5", "claude-sonnet-4-6", "claude-opus-4-7"]


def test_evaluate_tries_every_rung_and_recommends_the_cheapest_that_clears(tmp_path, simulator,
                                                                           redis_url):
    _, db, env = cli_env(tmp_path, simulator, redis_url, {
        "tiers": {"kind": "label", "labels": LABELS, "agreement": 1.0,
                  "models": {"claude-haiku-4-5": {"agreement": 0.5},
                             "claude-sonnet-4-6": {"agreement": 1.0}}},
        "pair": {"kind": "label", "labels": LABELS, "agreement": 1.0}}, {
        "pricing": {**PRICES, "claude-sonnet-4-6": {"input": 3.0, "output": 15.0}},
        "categories": {"tiers": {"ladder": LADDER, "promote_threshold": 0.9, "start_on": "reference",
                                 "comparator": {"type": "label", "labels": LABELS}},
                       "pair": {"promote_threshold": 0.9, "start_on": "reference",
                                "comparator": {"type": "label", "labels": LABELS}}}})
    out = last_json(tg("evaluate", str(cases(tmp_path, "tiers")), "--category", "tiers",
                       "--calls-per-day", "1000", "--apply", "--json", env=env, cwd=tmp_path).stdout)
    assert out["recommended_model"] == "claude-sonnet-4-6" and out["recommendation"] == "rung"
    assert list(out["rungs"]) == LADDER and out["candidate"] == "claude-haiku-4-5"
    haiku, sonnet, opus = (out["rungs"][m] for m in LADDER)
    assert 0.3 < haiku["agreement"] < 0.7 and haiku["wilson_low"] < 0.9
    assert (out["agreement"], out["wilson_low"]) == (haiku["agreement"], haiku["wilson_low"])
    assert sonnet["agreement"] == 1.0 and abs(sonnet["wilson_low"] - wilson_by_hand(50, 50)[0]) < 1e-4
    assert opus["agreement"] == 1.0 and opus["compared"] == 50
    assert 0 < haiku["cost_usd"] < sonnet["cost_usd"] < opus["cost_usd"]
    with session(make_engine(db)) as s:
        rows = [r for r in s.exec(select(Sample)) if r.category == "tiers"]
        changes = list(s.exec(select(RouteChange)))
    assert len(rows) == 100 and {r.kind for r in rows} == {"evaluation"}
    assert {r.served_model for r in rows} == {"claude-opus-4-7"}
    by_model = {m: [r for r in rows if r.shadow_model == m] for m in LADDER[:2]}
    assert all(len(v) == 50 for v in by_model.values())
    assert abs(sum(r.primary_cost_usd for r in by_model["claude-haiku-4-5"]) - opus["cost_usd"]) < 1e-6
    assert abs(sum(r.shadow_cost_usd for r in by_model["claude-sonnet-4-6"]) - sonnet["cost_usd"]) < 1e-6
    assert "claude-haiku-4-5" not in {c.to_model for c in changes}  # never the failing cheapest

    human = tg("evaluate", str(cases(tmp_path, "tiers")), "--category", "tiers", env=env,
               cwd=tmp_path).stdout
    rows = {line.split()[1]: line for line in human.splitlines() if line.startswith("│ claude-")}
    assert list(rows) == LADDER and "recommended" in rows["claude-sonnet-4-6"]
    assert "recommendation: rung (claude-sonnet-4-6" in human

    pair = last_json(tg("evaluate", str(cases(tmp_path, "pair")), "--category", "pair", "--json",
                        env=env, cwd=tmp_path).stdout)
    assert set(pair) == OLD_KEYS | {"rungs", "recommended_model"}
    assert pair["recommendation"] == "candidate" and pair["recommended_model"] == "claude-haiku-4-5"
    assert (pair["compared"], pair["errors"], pair["agreement"]) == (50, 0, 1.0)
    assert list(pair["rungs"]) == ["claude-haiku-4-5", "claude-opus-4-7"]
    assert {k: pair["rungs"]["claude-haiku-4-5"][k] for k in ("agreement", "wilson_low", "wilson_high")} \
        == {k: pair[k] for k in ("agreement", "wilson_low", "wilson_high")}


def test_a_bad_cases_file_is_one_clear_error(tmp_path, simulator, redis_url):
    _, _, env = cli_env(tmp_path, simulator, redis_url, {}, {})
    (tmp_path / "bad.jsonl").write_text('{"messages": []}\nnot json\n')
    done = tg("evaluate", str(tmp_path / "bad.jsonl"), "--category", "x", env=env, cwd=tmp_path,
              check=False)
    assert done.returncode == 2 and "line 2: not JSON" in done.stderr and "Traceback" not in done.stderr


def test_judge_check_measures_the_judge_against_human_labels(tmp_path, simulator, redis_url):
    _, _, env = cli_env(tmp_path, simulator, redis_url, {}, {})
    words = "the order arrived late and the customer wants a refund today".split()
    rng = random.Random(3)
    pairs = []
    for i in range(20):
        reference = " ".join(words)
        shuffled = words[:]
        rng.shuffle(shuffled)
        if i < 9:
            pairs.append((reference, " ".join(shuffled), "equivalent"))
        elif i < 18:
            pairs.append((reference, "the shipment is fine", "candidate_worse"))
        else:  # labelled better, but holds the same words: the simulator's judge says equivalent
            pairs.append((reference, " ".join(shuffled), "candidate_better"))
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(
        {"request": {"messages": [{"role": "user", "content": f"ticket {i}"}]}, "reference": r,
         "candidate": c, "label": label}) for i, (r, c, label) in enumerate(pairs)))
    result = last_json(tg("judge", "check", str(tmp_path / "pairs.jsonl"), "--json", env=env,
                          cwd=tmp_path).stdout)
    assert result["pairs"] == result["judged"] == 20 and result["errors"] == 0
    assert result["agreement"] == 0.9
    assert result["confusion"] == {"equivalent": {"equivalent": 9},
                                   "candidate_worse": {"candidate_worse": 9},
                                   "candidate_better": {"equivalent": 2}}
    # observed 0.9; expected (9·11 + 9·9) / 20² = 0.45; kappa = (0.9 − 0.45) / 0.55
    assert result["kappa"] == round((0.9 - 0.45) / 0.55, 4)
