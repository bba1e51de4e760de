"""tierguard's exceptions, one tree.

    TierguardError
    ├── ConfigError            a bad policy file or setting (names the field)
    ├── SchemaNotReady         the database is not migrated to head
    ├── RouteConflict          a flip lost the optimistic version race
    ├── PayloadInvalid         a sealed shadow job failed authentication (never executed)
    ├── StoreUnavailable       the database or the payload store cannot be reached: the
    │                          message of jobs waits and runs again (nothing lost)
    ├── SentinelError          a sentinel file cannot be used (names the file and line), or a
    │                          category has no sentinels, or its run is already under way
    ├── ShadowCallError        the shadow model call failed
    │   ├── RetryableCallError     429, 529, 5xx, timeouts, connection errors
    │   └── PermanentCallError     4xx other than 408/409/429, bad responses
    └── DeliveryError          an alert channel did not accept an alert
        ├── RetryableDelivery      network error, timeout, 408/425/429/5xx, a secret not set yet
        └── PermanentDelivery      the receiver rejects the payload (other 4xx)

Whether a failed call or delivery is retried is decided by its type alone.
"""

from __future__ import annotations


class TierguardError(Exception):
    """Base class of every error tierguard raises on purpose."""


class ConfigError(TierguardError):
    """A policy file or setting is invalid; ``str()`` is ready to show a user."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = problems
        self.source = source
        head = f"invalid policy {source}" if source else "invalid configuration"
        super().__init__(head + ":\n" + "\n".join(f"  {p}" for p in problems))


class SchemaNotReady(TierguardError):
    """The database has no tierguard tables or an old revision."""


class RouteConflict(TierguardError):
    """Another writer changed the category first (version mismatch)."""


class PayloadInvalid(TierguardError):
    """A shadow job's sealed payload cannot be opened with any configured key."""


class StoreUnavailable(TierguardError):
    """A store the worker needs is unreachable; ``str()`` names it and why."""


class SentinelError(TierguardError):
    """A category's sentinels cannot run; ``str()`` names the file, line or field."""


class ShadowCallError(TierguardError):
    """The call to the shadow model failed."""

    def __init__(self, message: str, *, kind: str, status: int | None = None,
                 retry_after: float | None = None):
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.retry_after = retry_after


class RetryableCallError(ShadowCallError):
    """Transient: rate limit, overload, server error, timeout, connection."""


class PermanentCallError(ShadowCallError):
    """Will fail again: bad request, auth, not found, unusable response."""


class DeliveryError(TierguardError):
    """A channel did not accept an alert."""


class RetryableDelivery(DeliveryError):
    """Network error, timeout, 408/429/5xx: try again later."""


class PermanentDelivery(DeliveryError):
    """The receiver rejects the payload (4xx): retrying will not help."""
