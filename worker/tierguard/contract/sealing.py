"""Authenticated shadow jobs: sealed (encrypted) whole, or signed, between producer and worker.

With ``TIERGUARD_PAYLOAD_KEYS`` set (Fernet keys, comma-separated, newest first) the
publisher seals each whole job (request, production answer, and every field that says what
to do with them: id, category, models, headers, tokens) with the newest key (an
authenticated cipher: AES-128-CBC with HMAC-SHA256); workers open it with any listed key,
so keys rotate by adding the new one in front, then removing the old once no job sealed
with it can be waiting. The fields a broker needs stay readable beside the seal, and a
worker refuses a job whose readable fields differ from its sealed ones (replayed into
another category, re-aimed at another model).

With ``TIERGUARD_JOB_SIGNING_KEY`` (and no payload keys) jobs travel in clear but signed
whole (HMAC-SHA256). A worker holding either refuses a job that is not sealed or signed.
Every refusal raises :class:`~tierguard.errors.PayloadInvalid`: the job is recorded as
``payload_invalid`` and never run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from tierguard.config import Settings
from tierguard.contract.job import ShadowJob
from tierguard.errors import ConfigError, PayloadInvalid

# Set while the job travels (by the worker, by the payload store): outside the seal and the signature.
TRAVEL_FIELDS = frozenset({"sealed", "signature", "payload_ref", "deferred_since"})
# Fields added after signing began: left out of the signed bytes while unset, so a job from a
# producer that predates them still verifies on a newer worker.
ADDED_FIELDS = frozenset({"served_snapshot"})


class Sealer:
    """Seals (``keys``) or signs (``signing_key``) jobs, and checks them."""

    def __init__(self, keys: list[str], signing_key: str | None = None):
        listed = [k.strip() for k in keys if k.strip()]
        try:
            self._fernet = MultiFernet([Fernet(k.encode()) for k in listed]) if listed else None
        except (ValueError, TypeError):
            raise ConfigError(["TIERGUARD_PAYLOAD_KEYS: each key must be a urlsafe base64 Fernet "
                               "key (Fernet.generate_key())"]) from None
        if signing_key is not None and len(signing_key.strip()) < 32:
            raise ConfigError(["TIERGUARD_JOB_SIGNING_KEY: at least 32 characters (a random secret)"])
        self._signing = signing_key.strip().encode() if signing_key else None

    @property
    def seals(self) -> bool:
        return self._fernet is not None

    def seal(self, payload: dict[str, Any]) -> str:
        return self.seal_text(json.dumps(payload))

    def seal_text(self, text: str) -> str:
        """``text`` (a JSON object already serialised) sealed as :meth:`seal` seals a payload."""
        assert self._fernet is not None
        return self._fernet.encrypt(text.encode()).decode()

    def open(self, token: str) -> dict[str, Any]:
        if self._fernet is None:
            raise PayloadInvalid("the job is sealed but this worker has no TIERGUARD_PAYLOAD_KEYS")
        try:
            return json.loads(self._fernet.decrypt(token.encode()))
        except (InvalidToken, ValueError, TypeError, AttributeError):
            raise PayloadInvalid("the job's sealed payload does not open with any "
                                 "TIERGUARD_PAYLOAD_KEYS key (tampered, or sealed with a key "
                                 "no longer listed)") from None

    def sign(self, job: ShadowJob) -> str | None:
        return self.mac(canonical(job))

    def mac(self, data: bytes) -> str | None:
        """HMAC-SHA256 of ``data`` with the signing key (None without one)."""
        if self._signing is None:
            return None
        return hmac.new(self._signing, data, hashlib.sha256).hexdigest()


def canonical(job: ShadowJob) -> bytes:
    """The job's signed bytes: every field but those set while it travels, in a stable form."""
    fields = {k: v for k, v in job.to_dict().items()
              if k not in TRAVEL_FIELDS and not (k in ADDED_FIELDS and v is None)}
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def seal_job(job: ShadowJob, s: Sealer | None) -> ShadowJob:
    """The job as it travels: sealed whole, or signed (unchanged without a key)."""
    if s is None or job.sealed is not None:
        return job
    if not s.seals:
        return dataclasses.replace(job, signature=s.sign(job))
    inside = {k: v for k, v in job.to_dict().items() if k not in TRAVEL_FIELDS}
    return dataclasses.replace(job, request={}, primary_text="", signature=None, sealed=s.seal(inside))


def open_job(job: ShadowJob, s: Sealer | None) -> ShadowJob:
    """The job as a worker runs it; :class:`PayloadInvalid` when it is not what was sent."""
    if job.sealed is not None:
        if s is None:
            raise PayloadInvalid("the job is sealed but this worker has no TIERGUARD_PAYLOAD_KEYS")
        return _unsealed(job, s.open(job.sealed))
    if s is None:
        return job
    if job.signature is None or s.sign(job) is None:
        raise PayloadInvalid("an unsealed, unsigned job refused: this worker only runs jobs "
                             "sealed (TIERGUARD_PAYLOAD_KEYS) or signed (TIERGUARD_JOB_SIGNING_KEY)")
    given = job.signature.encode("ascii", "replace") if isinstance(job.signature, str) else b""
    if not hmac.compare_digest(given, (s.sign(job) or "").encode()):
        raise PayloadInvalid("the job's signature does not match it (altered in transit, or "
                             "signed with another TIERGUARD_JOB_SIGNING_KEY)")
    return dataclasses.replace(job, signature=None)


def _unsealed(job: ShadowJob, inside: dict[str, Any]) -> ShadowJob:
    if not isinstance(inside.get("request"), dict) or not isinstance(inside.get("primary_text"), str):
        raise PayloadInvalid("the job's sealed payload is not a request and an answer")
    if "job_id" not in inside:
        raise PayloadInvalid("the job was sealed by an older tierguard, whose seal leaves its category "
                             "and models out: upgrade the producer")
    outside = job.to_dict()
    for key, value in inside.items():  # keys this version does not know: a newer producer's
        if key in outside and key not in ("request", "primary_text") and outside[key] != value:
            raise PayloadInvalid(f"the job's {key} does not match its seal (altered in transit)")
    return dataclasses.replace(job, request=inside["request"], primary_text=inside["primary_text"],
                               sealed=None)


def sealer(settings: Settings) -> Sealer | None:
    """The process's sealer from its settings (None: jobs travel as they are)."""
    keys = settings.payload_keys.get_secret_value() if settings.payload_keys else ""
    signing = settings.job_signing_key.get_secret_value() if settings.job_signing_key else ""
    if not keys.strip() and not signing.strip():
        return None
    return Sealer(keys.split(","), signing or None)
