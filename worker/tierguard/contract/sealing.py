"""Sealed shadow jobs: the request and the production answer encrypted while they wait in the broker.

With ``TIERGUARD_PAYLOAD_KEYS`` set (Fernet keys, comma-separated, newest first)
the publisher seals each job's ``request`` and ``primary_text`` with the newest
key (an authenticated cipher: AES-128-CBC with HMAC-SHA256); workers open it with
any listed key, so keys rotate by adding the new one in front, then removing
the old once no job sealed with it can be waiting. A job that fails
authentication raises :class:`~tierguard.errors.PayloadInvalid` and is never run.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from tierguard.config import Settings
from tierguard.contract.job import ShadowJob
from tierguard.errors import ConfigError, PayloadInvalid


class Sealer:
    def __init__(self, keys: list[str]):
        try:
            self._fernet = MultiFernet([Fernet(k.strip().encode()) for k in keys if k.strip()])
        except (ValueError, TypeError):
            raise ConfigError(["TIERGUARD_PAYLOAD_KEYS: each key must be a urlsafe base64 Fernet "
                               "key (Fernet.generate_key())"]) from None

    def seal(self, payload: dict[str, Any]) -> str:
        return self._fernet.encrypt(json.dumps(payload).encode()).decode()

    def open(self, token: str) -> dict[str, Any]:
        try:
            return json.loads(self._fernet.decrypt(token.encode()))
        except (InvalidToken, ValueError, TypeError, AttributeError):
            raise PayloadInvalid("the job's sealed payload does not open with any "
                                 "TIERGUARD_PAYLOAD_KEYS key (tampered, or sealed with a key "
                                 "no longer listed)") from None


def seal_job(job: ShadowJob, s: Sealer | None) -> ShadowJob:
    """The job as it travels: request and answer sealed (unchanged without a key)."""
    if s is None or job.sealed is not None:
        return job
    return dataclasses.replace(job, request={}, primary_text="",
                               sealed=s.seal({"request": job.request, "primary_text": job.primary_text}))


def open_job(job: ShadowJob, s: Sealer | None) -> ShadowJob:
    """The job as a worker runs it; :class:`PayloadInvalid` if its seal does not open."""
    if job.sealed is None:
        return job
    if s is None:
        raise PayloadInvalid("the job is sealed but this worker has no TIERGUARD_PAYLOAD_KEYS")
    payload = s.open(job.sealed)
    if not isinstance(payload.get("request"), dict) or not isinstance(payload.get("primary_text"), str):
        raise PayloadInvalid("the job's sealed payload is not a request and an answer")
    return dataclasses.replace(job, request=payload["request"], primary_text=payload["primary_text"],
                               sealed=None)


def sealer(settings: Settings) -> Sealer | None:
    keys = settings.payload_keys
    if keys is None or not keys.get_secret_value().strip():
        return None
    return Sealer(keys.get_secret_value().split(","))
