"""The lean pool's places (app/slots.py): taken at once or in order, never lost to a cancel."""

import asyncio

from tierguard.app.slots import Slots


def test_places_are_taken_at_once_then_in_order_and_try_take_never_jumps_the_queue():
    async def main() -> list[str]:
        slots, order = Slots(1), []
        assert slots.try_take() and not slots.try_take()

        async def waiter(name: str) -> None:
            await slots.take()
            order.append(name)

        tasks = [asyncio.create_task(waiter(n)) for n in ("a", "b")]
        await asyncio.sleep(0)
        slots.give()  # to "a", directly: not free for anyone else
        assert not slots.try_take()
        await asyncio.sleep(0)
        slots.give()
        await asyncio.gather(*tasks)
        slots.give()
        assert slots.free == 1 and slots.try_take()
        return order

    assert asyncio.run(main()) == ["a", "b"]


def test_a_place_handed_to_a_waiter_cancelled_at_that_moment_goes_to_the_next():
    async def main() -> int:
        slots = Slots(1)
        assert slots.try_take()
        first = asyncio.create_task(slots.take())
        second = asyncio.create_task(slots.take())
        await asyncio.sleep(0)
        slots.give()  # handed to "first"...
        first.cancel()  # ...which is cancelled before it runs: the place passes to "second"
        await asyncio.sleep(0)
        assert first.cancelled()
        await asyncio.wait_for(second, 1)
        slots.give()
        return slots.free

    assert asyncio.run(main()) == 1


def test_a_waiter_cancelled_while_waiting_leaves_the_count_alone():
    async def main() -> int:
        slots = Slots(1)
        assert slots.try_take()
        waiting = asyncio.create_task(slots.take())
        await asyncio.sleep(0)
        waiting.cancel()
        await asyncio.sleep(0)
        slots.give()
        return slots.free

    assert asyncio.run(main()) == 1
