"""What a shadow job's results are made of: a call's result compared, a skip, a probe, a challenger's
twins, a noise twin.

Pure functions of the policy and the job (no I/O): :mod:`tierguard.pipeline.fanout` calls the
models and uses them to turn answers into :class:`~tierguard.pipeline.results.Result` values.
"""

from __future__ import annotations

import logging

from tierguard.compare import Verdict
from tierguard.contract.job import ShadowJob, digest
from tierguard.errors import PayloadInvalid, PermanentCallError, RetryableCallError
from tierguard.pipeline.calls import Answer
from tierguard.pipeline.results import Result
from tierguard.policy import Policy
from tierguard.policy.model_limits import too_big

log = logging.getLogger(__name__)


def result_of(policy: Policy, job: ShadowJob, answer: Answer | None, error: Exception | None,
              attempt: int) -> Result:
    """The recordable result of one call: compared, or an error (never a disagreement)."""
    if answer is None:
        if isinstance(error, RetryableCallError):
            return Result(job, None, None, (error.kind, f"gave up after {attempt} attempts: {error}"),
                          attempt)
        assert isinstance(error, PermanentCallError)
        return Result(job, None, None, (error.kind, str(error)), attempt)
    verdict = compare(policy, job, job.primary_text, answer.text)
    failed = None if verdict else ("comparator_error", "the comparator raised; see the worker log")
    return Result(job, answer, verdict, failed, attempt)


SKIPPED = "skipped"


def runnable(policy: Policy, job: ShadowJob) -> ShadowJob:
    """``job``, if its shadow model is one the policy lists for its category; else
    :class:`PayloadInvalid` (a worker never calls a model it was not told to watch)."""
    cat = policy.category(job.category)
    if job.shadow_model not in cat.rungs:
        raise PayloadInvalid(f"shadow model {job.shadow_model!r} is not one the policy lists for "
                             f"{job.category} ({', '.join(cat.rungs)}): never called")
    return job


def skipped(policy: Policy, job: ShadowJob, attempt: int) -> Result | None:
    """A job whose request the shadow model cannot take: recorded as skipped, never sent."""
    why = too_big(policy.limits_for(job.shadow_model), job.request)
    if why is None:
        return None
    return Result(job, None, None, (SKIPPED, f"limits: {job.shadow_model}: {why}"), attempt)


def noise_sampled(policy: Policy, job: ShadowJob) -> bool:
    """Deterministic per job, so a redelivered job makes the same choice."""
    rate = policy.category(job.category).noise_floor_rate
    return rate > 0 and int(digest(job.job_id)[:8], 16) / 2**32 < rate


def probe_rung(policy: Policy, job: ShadowJob) -> str | None:
    """The rung a sampled job of a ladder also asks (``probe_rate`` of them), or None. Chosen by
    the job id (evenly spread over the rungs neither serving nor shadowed, the same on every
    delivery); never one whose limits the request exceeds."""
    cat = policy.category(job.category)
    if not cat.laddered or cat.probe_rate <= 0:
        return None
    h = digest(job.job_id + ":probe")
    if int(h[:8], 16) / 2**32 >= cat.probe_rate:
        return None
    choices = [r for r in cat.rungs[:-1] if r not in (job.served_model, job.shadow_model)]
    if not choices:
        return None
    rung = choices[int(h[8:16], 16) % len(choices)]
    return None if too_big(policy.limits_for(rung), job.request) else rung


def probe_job(policy: Policy, job: ShadowJob, rung: str, shadow_text: str,
              shadow_snapshot: str | None = None) -> ShadowJob:
    """The probe's own job: ``rung`` against the job's reference answer, recorded as its own sample
    (``shadow_snapshot``: the snapshot of the job's shadow answer, the reference's when it is one)."""
    cat = policy.category(job.category)
    return ShadowJob(**{**job.to_dict(), "job_id": f"{job.job_id}:probe", "served_model": cat.reference,
                        "shadow_model": rung, **_reference_side(cat.reference, job, shadow_text,
                                                                shadow_snapshot)})


CHALLENGE, AGAINST_SERVING = ":challenge:", ":challenge-serving:"  # the twins' job ids: JOB + this + MODEL


def challenge_jobs(policy: Policy, job: ShadowJob, model: str, shadow_text: str,
                   shadow_snapshot: str | None = None) -> tuple[ShadowJob, ShadowJob | None]:
    """A challenger's twins of a job: ``model`` against the job's reference answer, and (when a
    cheaper rung serves) against the served answer; each recorded as its own sample."""
    cat = policy.category(job.category)
    fields = {**job.to_dict(), "shadow_model": model}
    vs_reference = ShadowJob(**{**fields, "job_id": f"{job.job_id}{CHALLENGE}{model}",
                                "served_model": cat.reference,
                                **_reference_side(cat.reference, job, shadow_text, shadow_snapshot)})
    if job.served_model == cat.reference:
        return vs_reference, None
    return vs_reference, ShadowJob(**{**fields, "job_id": f"{job.job_id}{AGAINST_SERVING}{model}"})


def _reference_side(reference: str, job: ShadowJob, shadow_text: str, shadow_snapshot: str | None
                    ) -> dict:
    """The reference's answer of a job (and its snapshot) as a twin job's primary side."""
    if job.shadow_model == reference:
        return {"primary_text": shadow_text, "served_snapshot": shadow_snapshot}
    return {"primary_text": job.primary_text, "served_snapshot": job.served_snapshot}


def noise_result(policy: Policy, job: ShadowJob, shadow_text: str, second: Answer,
                 shadow_snapshot: str | None = None) -> Result | None:
    """The reference's second answer against its first: self-agreement, never a decision."""
    cat = policy.category(job.category)
    first = _reference_side(cat.reference, job, shadow_text, shadow_snapshot)
    verdict = compare(policy, job, first["primary_text"], second.text)
    if verdict is None:
        return None
    twin = ShadowJob(**{**job.to_dict(), "job_id": job.job_id + ":noise",
                        "served_model": cat.reference, "shadow_model": cat.reference, **first})
    return Result(twin, second, verdict, None, 1, kind="noise")


def compare(policy: Policy, job: ShadowJob, primary: str, shadow: str) -> Verdict | None:
    try:
        return policy.category(job.category).compare.compare(primary, shadow)
    except Exception:
        log.exception("comparator failed on job %s (%s)", job.job_id, job.category)
        return None
