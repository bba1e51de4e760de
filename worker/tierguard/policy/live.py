"""The policy file, followed while a process runs: a valid edit applies within the reload period.

A background thread looks at the file every ``TIERGUARD_POLICY_RELOAD_S``
seconds (its size and mtime first, then its content's hash). A new file that
validates replaces the policy and ``on_change(old, new)`` runs; one that does not
is never applied: the old policy stays, every problem is logged with its path,
and ``on_invalid(error, digest)`` runs once per distinct bad content.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from tierguard.errors import ConfigError
from tierguard.policy.schema import Policy, load_policy

log = logging.getLogger(__name__)
THREAD = "tierguard-policy"  # its watching thread's name (bench hotpath reads its CPU time by it)


class LivePolicy:
    def __init__(self, path: str | Path, reload_s: float,
                 on_change: Callable[[Policy, Policy], None] | None = None,
                 on_invalid: Callable[[ConfigError, str], None] | None = None):
        self.path = Path(path)
        self.reload_s = reload_s
        self.on_change, self.on_invalid = on_change, on_invalid
        self._stamp = self._stat()
        self._digest = self._hash()
        self.current: Policy = load_policy(self.path)  # a bad file at start-up is an error
        self._reported: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
            return st.st_size, st.st_mtime_ns
        except OSError:
            return None

    def _hash(self) -> str | None:
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest()
        except OSError:
            return None

    def check(self) -> bool:
        """Look at the file now; True if a new policy was applied."""
        stamp = self._stat()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        if stamp is None:  # gone (a config map being swapped, a typo): keep what runs
            log.warning("policy %s is missing; keeping the current policy", self.path)
            return False
        digest = self._hash()
        if digest == self._digest:
            return False
        try:
            new = load_policy(self.path)
        except ConfigError as err:
            if digest not in self._reported:
                self._reported.add(digest or "")
                for problem in err.problems:
                    log.error("policy %s not applied: %s", self.path, problem)
                if self.on_invalid is not None:
                    self.on_invalid(err, digest or "missing")
            return False
        old, self.current, self._digest = self.current, new, digest
        log.warning("policy %s changed; applied (%d categories)", self.path, len(new.categories))
        if self.on_change is not None:
            try:
                self.on_change(old, new)
            except Exception:
                log.exception("applying the new policy failed after it was loaded")
        return True

    def start(self) -> LivePolicy:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=THREAD, daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def restart_after_fork(self) -> None:
        """In a forked child: a watcher of its own (the parent's thread did not come along)."""
        if self._thread is not None and not self._stop.is_set():
            self._stop, self._thread = threading.Event(), None
            self.start()

    def _run(self) -> None:
        while not self._stop.wait(self.reload_s):
            try:
                self.check()
            except Exception:  # never let the watcher die
                log.exception("checking the policy file failed")
