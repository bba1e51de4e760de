"""A comparator that burns CPU (as a crafted answer would make a costly one): tests' stand-in."""

import time
from dataclasses import dataclass

from tierguard.compare import Verdict

FINISHED: list[str] = []  # the primary answer of each comparison that ended


@dataclass(frozen=True)
class Slow:
    seconds: float = 3.0

    def compare(self, primary: str, shadow: str) -> Verdict:
        end = time.thread_time() + self.seconds
        while time.thread_time() < end:  # CPU, holding the GIL between switches
            pass
        FINISHED.append(primary)
        return Verdict(True, 1.0, "slow but same")
