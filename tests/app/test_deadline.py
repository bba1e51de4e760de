"""``app/deadline.Deadline`` means what ``asyncio.timeout`` means, on asyncio's loop and uvloop's."""

import asyncio
import time

import pytest
import uvloop

from tierguard.app.deadline import Deadline

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture(params=sorted(LOOPS))
def run(request):
    def run(coro):
        loop = LOOPS[request.param]()
        try:
            return loop.run_until_complete(coro)
        finally:
            loop.close()
    return run


def test_a_block_past_its_deadline_raises_timeout_error_then(run):
    async def late() -> float:
        start = time.monotonic()
        with pytest.raises(TimeoutError), Deadline.after(0.05):
            await asyncio.sleep(5)
        return time.monotonic() - start

    assert 0.04 < run(late()) < 1.0


def test_a_block_within_its_deadline_is_untouched_and_leaves_no_timer(run):
    async def early() -> tuple:
        deadline = Deadline.after(0.2)
        with deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)  # past the deadline: nothing fires after the block
        return deadline.expired, deadline.handle, asyncio.current_task().cancelling()

    assert run(early()) == (False, None, 0)


def test_a_deadline_already_passed_raises_at_the_first_await(run):
    async def passed() -> list[str]:
        steps = []
        with pytest.raises(TimeoutError), Deadline(asyncio.get_running_loop().time() - 1):
            steps.append("entered")
            await asyncio.sleep(1)
            steps.append("not reached")
        return steps

    assert run(passed()) == ["entered"]


def test_another_cancellation_goes_on_as_it_came_even_when_the_deadline_fired_too(run):
    async def both() -> str:
        deadline = Deadline.after(0.05)

        async def inner() -> None:
            with deadline:
                await asyncio.sleep(1)

        task = asyncio.ensure_future(inner())
        await asyncio.sleep(0)  # the block entered: its timer set
        asyncio.get_running_loop().call_at(deadline.when, task.cancel)  # due in the same turn
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled" if deadline.expired else "cancelled before the deadline"
        except TimeoutError:
            return "timeout"
        return "finished"

    assert run(both()) == "cancelled"


def test_a_cancel_from_outside_within_the_deadline_is_a_cancel_not_a_timeout(run):
    async def outside() -> str:
        async def inner() -> None:
            with Deadline.after(5):
                await asyncio.sleep(5)

        task = asyncio.ensure_future(inner())
        await asyncio.sleep(0.02)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        return "other"

    assert run(outside()) == "cancelled"


def test_outside_a_task_it_says_so():
    with pytest.raises(RuntimeError, match="running"), Deadline(0):
        pass
