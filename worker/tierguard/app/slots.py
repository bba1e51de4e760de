"""A counting semaphore for the lean client's pool that can also be taken without waiting."""

from __future__ import annotations

import asyncio
import collections


class Slots:
    """The pool's places: a counting semaphore that can also be taken without waiting
    (:meth:`try_take`, which ``asyncio.Semaphore`` lacks); waiters served in order."""

    def __init__(self, places: int):
        self.free = places
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    def try_take(self) -> bool:
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return True
        return False

    async def take(self) -> None:
        if self.try_take():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # handed a place as it was cancelled
                self.give()
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def give(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the place goes to it directly
                return
        self.free += 1
