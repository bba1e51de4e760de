"""Simulated models: a local HTTP server that speaks the Messages API.

The *reference* models answer each request with its deterministic truth; every
other model (a candidate) returns the truth with a scripted probability per
category, which can drift after a number of candidate requests. Outcomes are a
pure function of (seed, model, request), so a retried request gets the same
answer. Errors (429/529/500, slow answers) are injected at a rate or on demand
through ``POST /_sim/fail``. ``GET /_sim/stats`` counts requests. Message Batches
are answered by the same logic (``ops.sim_batches``); per-(API key, model) rate-limit
buckets live in ``ops.sim_buckets``; ``ops.sim_server`` lists every endpoint.

A scenario file (YAML)::

    seed: 7
    latency_ms: 0
    reference_models: [claude-opus-4-7]
    error_rates: {429: 0.0, 529: 0.0, 500: 0.0}
    retry_after: 1
    categories:
      sentiment: {kind: label, labels: [POSITIVE, NEGATIVE, NEUTRAL], agreement: 0.98,
                  drift: {after: 400, agreement: 0.6},
                  broken: {rate: 0.05, kinds: [invalid, refusal, truncated, empty]},
                  models: {claude-haiku-4-5: {agreement: 0.80, drift: {after: 300, agreement: 0.6},
                                              broken: {rate: 0.2, kinds: [invalid]}},
                           claude-sonnet-4-6: {agreement: 0.97}}}
    snapshots: {claude-haiku-4-5: claude-haiku-4-5-20251001}  # the ``model`` answers report
    models: [claude-haiku-4-5, claude-sonnet-4-6]  # GET /v1/models lists these (and the above's)
    batch_delay_s: 0.5          # Message Batches end this long after creation
    batch_cancel_delay_s: 0.1   # a canceled batch is "canceling" this long
    batch_error_rate: 0.0       # share of batch requests that end errored
    time_scale: 1.0             # 60: a rate-limit "minute" lasts one real second
    rate_limits:                # token buckets per (API key, model); none: unlimited
      claude-haiku-4-5: {requests_per_minute: 50, input_tokens_per_minute: 50000,
                         output_tokens_per_minute: 10000,
                         keys: {sk-ant-other: {requests_per_minute: 5}}}

A request belongs to the category whose ``match`` (default: the name) occurs in
its system prompt. A candidate listed under a category's ``models`` uses its own
``agreement`` (default: the category's) and ``drift``, whose ``after`` counts
that model's requests in the category; other candidates share the category's,
whose ``after`` counts every candidate request in the category. A *reference* listed under
``models`` answers right with its ``agreement`` (deterministic per request, like a candidate)
instead of its ``reference_noise``. ``POST /_sim/script`` changes snapshots, agreements and
broken answers mid-run (:meth:`Simulator.script`).

Broken answers (``sim.broken``): a category's ``broken: {rate, kinds}`` makes that share of its
candidates' answers come back broken (``invalid``, ``refusal``, ``truncated`` or ``empty``: the
answer checks' reasons; ``kinds`` default: all four), deterministic per (model, request) like
agreement; a model's own ``models.MODEL.broken`` overrides it. The reference never breaks unless
``models`` gives it a ``broken`` of its own (a model listed with nothing but ``broken`` keeps the
category's agreement, and a reference its ``reference_noise``). Streams carry the same answer
(the stop reason in ``message_delta``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
import re
import threading
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tierguard.contract.messages import content_text
from tierguard.sim import catalog
from tierguard.sim.broken import Broken, Reply, broken_reply

VENDORS = ["Acme GmbH", "Globex Ltd", "Initech SA", "Umbrella BV", "Stark Industries",
           "Wayne Enterprises", "Hooli Inc", "Vandelay Imports"]
WORDS = ("the customer reports that the order was delayed and asks for a refund or a "
         "replacement while the agent confirms shipping details and offers a discount").split()


@dataclass
class ModelSim:
    """One model's own script in a category (``categories.X.models.MODEL``); ``agreement`` None:
    the category's (a model listed only for its ``broken``)."""

    agreement: float | None
    drift_after: int | None = None
    drift_agreement: float | None = None
    broken: Broken | None = None

    def agreement_at(self, calls: int) -> float:
        assert self.agreement is not None  # agreement_for reads the category's when it is None
        if self.drift_after is not None and calls > self.drift_after:
            return self.drift_agreement if self.drift_agreement is not None else self.agreement
        return self.agreement


@dataclass
class CategorySim:
    name: str
    kind: str = "label"  # label | json | text
    labels: list[str] = field(default_factory=lambda: ["YES", "NO"])
    agreement: float = 0.97
    drift_after: int | None = None
    drift_agreement: float | None = None
    match: str | None = None
    reference_noise: float = 0.0  # chance per call that the reference itself answers wrongly
    paraphrase: float = 0.0  # text: share of a candidate's right answers put in other words
    models: dict[str, ModelSim] = field(default_factory=dict)  # candidates with their own script
    broken: Broken | None = None  # a share of the candidates' answers broken on purpose (sim.broken)
    pad: int = 0  # json: answers padded (their ``notes``) to about this many bytes

    def agreement_at(self, candidate_calls: int) -> float:
        if self.drift_after is not None and candidate_calls > self.drift_after:
            return self.drift_agreement if self.drift_agreement is not None else self.agreement
        return self.agreement

    def agreement_for(self, model: str, candidate_calls: int, model_calls: int) -> float:
        """``model``'s agreement after ``candidate_calls`` in the category, ``model_calls`` its own."""
        own = self.models.get(model)
        return own.agreement_at(model_calls) if self.scripted(model) else self.agreement_at(candidate_calls)

    def scripted(self, model: str) -> bool:
        """Whether ``model`` answers with an agreement of its own (a reference: not its noise)."""
        own = self.models.get(model)
        return own is not None and own.agreement is not None

    def broken_for(self, model: str, reference: bool) -> Broken | None:
        """How ``model``'s answers break: its own ``broken``, else (not the reference) the category's."""
        own = self.models.get(model)
        if own is not None and own.broken is not None:
            return own.broken
        return None if reference else self.broken


@dataclass
class Scenario:
    seed: int = 0
    latency_ms: float = 0.0
    reference_models: list[str] = field(default_factory=lambda: ["claude-opus-4-7"])
    error_rates: dict[int, float] = field(default_factory=dict)
    retry_after: float | None = 1.0
    stream_event_ms: float = 0.0  # pause before each streamed event
    judge_malformed: float = 0.0  # share of judge requests answered without the verdict tool
    categories: dict[str, CategorySim] = field(default_factory=dict)
    batch_delay_s: float = 0.5  # a Message Batch ends this long after creation
    batch_cancel_delay_s: float = 0.1  # how long a canceled batch stays ``canceling``
    batch_error_rate: float = 0.0  # share of batch requests that end errored (api_error)
    rate_limits: dict[str, dict[str, Any]] = field(default_factory=dict)  # see ops.sim_buckets
    time_scale: float = 1.0  # rate-limit minutes last 60/time_scale real seconds
    snapshots: dict[str, str] = field(default_factory=dict)  # model -> the snapshot its answers name
    models: list[str] | None = None  # listed by GET /v1/models besides the scripted (sim.catalog)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scenario:
        cats = {}
        for name, c in (data.get("categories") or {}).items():
            c = dict(c or {})
            drift = c.pop("drift", None) or {}
            models = c.pop("models", None) or {}
            broken = Broken.parse(c.pop("broken", None), f"categories.{name}.broken")
            cat = cats[name] = CategorySim(name=name, drift_after=drift.get("after"),
                                           drift_agreement=drift.get("agreement"), broken=broken, **c)
            for model, m in models.items():
                m = dict(m or {})
                only_broken = set(m) == {"broken"}
                own = m.pop("drift", None) or {}
                broken = Broken.parse(m.pop("broken", None), f"categories.{name}.models.{model}.broken")
                agreement = None if only_broken else float(m.pop("agreement", cat.agreement))
                cat.models[model] = ModelSim(agreement=agreement, drift_after=own.get("after"),
                                             drift_agreement=own.get("agreement"), broken=broken, **m)
        return cls(seed=int(data.get("seed", 0)), latency_ms=float(data.get("latency_ms", 0)),
                   reference_models=list(data.get("reference_models", ["claude-opus-4-7"])),
                   error_rates={int(k): float(v) for k, v in (data.get("error_rates") or {}).items()},
                   retry_after=data.get("retry_after", 1.0),
                   stream_event_ms=float(data.get("stream_event_ms", 0)),
                   judge_malformed=float(data.get("judge_malformed", 0)), categories=cats,
                   batch_delay_s=float(data.get("batch_delay_s", 0.5)),
                   batch_cancel_delay_s=float(data.get("batch_cancel_delay_s", 0.1)),
                   batch_error_rate=float(data.get("batch_error_rate", 0)),
                   rate_limits=dict(data.get("rate_limits") or {}),
                   time_scale=float(data.get("time_scale", 1.0)),
                   snapshots={str(k): str(v) for k, v in (data.get("snapshots") or {}).items()},
                   models=None if data.get("models") is None else [str(m) for m in data["models"]])

    @classmethod
    def load(cls, path: str | Path) -> Scenario:
        return cls.from_dict(yaml.safe_load(Path(path).read_text()) or {})


def _scripted(cat: CategorySim) -> dict[str, Any]:
    """A category's script as ``POST /_sim/script`` answers it."""
    def broken(b: Broken | None) -> dict[str, Any] | None:
        return None if b is None else {"rate": b.rate, "kinds": list(b.kinds)}
    return {"agreement": cat.agreement, "broken": broken(cat.broken),
            "models": {m: s.agreement for m, s in cat.models.items()},
            "broken_models": {m: broken(s.broken) for m, s in cat.models.items() if s.broken}}


_JUDGED = re.compile(r"<(reference_answer|candidate_answer)>\n(.*?)\n</\1>", re.S)


def _bag(text: str) -> list[str]:
    return sorted(re.findall(r"\w+", text.casefold()))


def _unit(*parts: object) -> float:
    h = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64


class Simulator:
    """The answering logic, independent of HTTP."""

    def __init__(self, scenario: Scenario):
        self.scenario = scenario
        self.lock = threading.Lock()
        self.candidate_calls: Counter[str] = Counter()
        self.requests: Counter[tuple[str, str]] = Counter()
        self.forced: list[tuple[int, float, float | None]] = []  # (status, delay, retry_after)
        self.forced_judge: list[tuple[int, float, float | None]] = []  # only for judge requests
        self.ratelimits: dict[str, tuple[int, int, float]] = {}  # model -> (limit, remaining, reset in s)
        self.judge_calls = 0
        self.in_flight = 0
        self.in_flight_max = 0
        self.streams: Counter[str] = Counter()  # completed / aborted (the client went away)
        self.recent_headers: deque[dict[str, str]] = deque(maxlen=32)  # of /v1/messages requests
        # The latest /v1/messages requests as received: {"headers": {anthropic-beta, x-tierguard-*},
        # "body": the raw body as text} (GET /_sim/requests): what tests compare shadows with.
        self.recent_requests: deque[dict[str, Any]] = deque(maxlen=2000)
        self.rng = random.Random(scenario.seed)

    def category_of(self, body: dict[str, Any]) -> CategorySim | None:
        system = content_text(body.get("system", "")).casefold()
        for cat in self.scenario.categories.values():
            if (cat.match or cat.name).casefold() in system:
                return cat
        return None

    def answer(self, body: dict[str, Any]) -> tuple[str, str]:
        """(category name or '', answer text) for one request."""
        name, reply = self.reply(body)
        return name, reply.text

    def reply(self, body: dict[str, Any]) -> tuple[str, Reply]:
        """(category name or '', the answer: text, stop reason, content) for one request."""
        model = str(body.get("model", ""))
        messages = body.get("messages") or []
        prompt = content_text(messages[-1].get("content", "")) if messages else ""
        cat = self.category_of(body)
        key = hashlib.sha256(json.dumps([body.get("system"), messages], sort_keys=True,
                                        default=str).encode()).hexdigest()
        if cat is None:
            return "", Reply(f"Echo: {prompt[:200]}")
        truth_u = _unit(self.scenario.seed, "truth", key)
        is_reference = model in self.scenario.reference_models
        with self.lock:
            self.requests[(model, cat.name)] += 1
            if not is_reference:
                self.candidate_calls[cat.name] += 1
            n, own = self.candidate_calls[cat.name], self.requests[(model, cat.name)]
        noisy = is_reference and not cat.scripted(model)  # a scripted reference: as a candidate
        if noisy:
            with self.lock:
                correct = self.rng.random() >= cat.reference_noise
        else:
            correct = _unit(self.scenario.seed, model, key) < cat.agreement_for(model, n, own)
        wrong_u = _unit(self.scenario.seed, "wrong", model, key, self.rng.random() if noisy else 0)
        reword = not is_reference and _unit(self.scenario.seed, "reword", model, key) < cat.paraphrase
        text = self._render(cat, truth_u, None if correct else wrong_u, key, reword)
        broken = cat.broken_for(model, is_reference)
        if broken is None or _unit(self.scenario.seed, "broken", model, key) >= broken.rate:
            return cat.name, Reply(text)
        kind = broken.kind(_unit(self.scenario.seed, "broken-kind", model, key))
        return cat.name, broken_reply(kind, cat.kind, cat.labels, text,
                                      _unit(self.scenario.seed, "broken-shape", model, key))

    def snapshot(self, model: str) -> str:
        """The name answers of ``model`` report (its snapshot; the model itself unless scripted)."""
        return self.scenario.snapshots.get(model, model)

    def script(self, body: dict[str, Any]) -> dict[str, Any]:
        """Change snapshots, agreements and broken answers from now on (``POST /_sim/script``);
        what is scripted. ``broken: null`` stops a category's or a model's broken answers."""
        with self.lock:
            for model, name in (body.get("snapshots") or {}).items():
                self.scenario.snapshots[str(model)] = str(name)
            if body.get("models"):
                self.scenario.models = [*self._listed(), *map(str, body["models"])]
            for name, spec in (body.get("categories") or {}).items():
                cat = self.scenario.categories[name]
                if "agreement" in spec:
                    cat.agreement, cat.drift_after = float(spec["agreement"]), None
                if "broken" in spec:
                    cat.broken = Broken.parse(spec["broken"], f"categories.{name}.broken")
                for model, own in (spec.get("models") or {}).items():
                    self._script_model(cat, str(model), own)
            return {"snapshots": dict(self.scenario.snapshots), "models": self._listed(),
                    "categories": {n: _scripted(c) for n, c in self.scenario.categories.items()}}

    def listed(self) -> list[str]:
        """The models ``GET /v1/models`` lists (sim.catalog)."""
        with self.lock:
            return self._listed()

    def _listed(self) -> list[str]:
        s = self.scenario
        return catalog.known(s.reference_models, s.categories, s.models)

    @staticmethod
    def _script_model(cat: CategorySim, model: str, own: dict[str, Any]) -> None:
        was = cat.models.get(model)
        if "agreement" in own or was is None:
            agreement = float(own["agreement"]) if "agreement" in own else None
            was = cat.models[model] = ModelSim(agreement=agreement, broken=was.broken if was else None)
        if "broken" in own:
            was.broken = Broken.parse(own["broken"], f"categories.{cat.name}.models.{model}.broken")

    def judge(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """A judge's answer: equivalent when both answers hold the same words, else candidate_worse."""
        messages = body.get("messages") or []
        prompt = content_text(messages[-1].get("content", "")) if messages else ""
        found = dict(_JUDGED.findall(prompt))
        with self.lock:
            self.judge_calls += 1
            malformed = self.rng.random() < self.scenario.judge_malformed
        if malformed:
            return [{"type": "text", "text": "Both answers look fine to me."}]
        same = _bag(found.get("reference_answer", "")) == _bag(found.get("candidate_answer", ""))
        verdict, reason = (("equivalent", "the same content in other words") if same else
                           ("candidate_worse", "the candidate says something the reference does not"))
        return [{"type": "tool_use", "id": "toolu_" + uuid.uuid4().hex[:20], "name": "tierguard_verdict",
                 "input": {"verdict": verdict, "reason": reason}}]

    def _render(self, cat: CategorySim, u: float, wrong: float | None, key: str,
                reword: bool = False) -> str:
        if cat.kind == "label":
            i = int(u * len(cat.labels))
            if wrong is not None and len(cat.labels) > 1:
                i = (i + 1 + int(wrong * (len(cat.labels) - 1))) % len(cat.labels)
            return cat.labels[i]
        if cat.kind == "json":
            r = random.Random(u)
            doc = {"vendor": r.choice(VENDORS), "invoice_number": f"INV-{r.randint(1000, 99999)}",
                   "total": round(r.uniform(10, 5000), 2), "currency": r.choice(["EUR", "USD", "GBP"]),
                   "notes": f"extracted {_unit(key, wrong):.6f}"}
            if wrong is not None:
                field_ = ["vendor", "total", "currency"][int(wrong * 3)]
                doc[field_] = {"vendor": "Unknown vendor", "total": round(doc["total"] * 1.1, 2),
                               "currency": "JPY"}[field_]
            text = json.dumps(doc)
            if cat.pad > len(text):
                doc["notes"] += " " + (" ".join(WORDS) * (cat.pad // 100 + 1))[:cat.pad - len(text) - 1]
                text = json.dumps(doc)
            return text
        r = random.Random(u)
        words = [r.choice(WORDS) for _ in range(20)]
        if wrong is not None:
            words = [random.Random(wrong).choice(WORDS) for _ in range(8)] + words[8:12]
        elif reword:
            random.Random(key).shuffle(words)
        return " ".join(words).capitalize() + "."

    def ratelimit_headers(self, model: str) -> dict[str, str] | None:
        """The ``anthropic-ratelimit-*`` headers scripted for ``model`` (every family alike)."""
        with self.lock:
            scripted = self.ratelimits.get(model)
        if scripted is None:
            return None
        limit, remaining, reset_in = scripted
        reset = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=reset_in)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {f"anthropic-ratelimit-{family}-{name}": value
                for family in ("requests", "tokens", "input-tokens", "output-tokens")
                for name, value in (("limit", str(limit)), ("remaining", str(remaining)),
                                    ("reset", reset))}

    def next_failure(self, judge: bool = False) -> tuple[int, float, float | None] | None:
        with self.lock:
            if judge and self.forced_judge:
                return self.forced_judge.pop(0)
            if self.forced:
                return self.forced.pop(0)
            for status, rate in self.scenario.error_rates.items():
                if rate and self.rng.random() < rate:
                    return status, 0.0, self.scenario.retry_after
        return None
