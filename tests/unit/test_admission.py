"""A service's calls in progress (scheduler/access/admission.py, docs/errors.md "Calls in
progress"): past the limit, calls wait their turn in arrival order, up to the waiting
room; only past it is a call refused, at once. A waiting caller who leaves gives up its
place, and a slot handed to one who just left goes on to the next."""

from __future__ import annotations

import asyncio

import pytest

from message_manager import SchedulerError
from scheduler.access.admission import Admission


async def _settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_past_the_limit_calls_wait_in_arrival_order_and_get_the_slots_given_back() -> None:
    admission = Admission(limit=2, max_waiting=3)
    assert admission.try_enter() and admission.try_enter()
    admitted: list[int] = []

    async def call(n: int) -> None:
        await admission.enter()
        admitted.append(n)

    waiting = [asyncio.ensure_future(call(n)) for n in range(3)]
    await _settle()
    assert admitted == [] and admission.waiting == 3 and admission.in_flight == 2
    assert not admission.try_enter()
    admission.leave()
    await _settle()
    assert admitted == [0] and admission.in_flight == 2  # the slot changed hands
    admission.leave()
    admission.leave()
    await asyncio.gather(*waiting)
    assert admitted == [0, 1, 2] and admission.waiting == 0 and admission.in_flight == 2
    for _ in range(2):
        admission.leave()
    assert admission.in_flight == 0 and admission.try_enter()


async def test_past_the_waiting_room_a_call_is_refused_at_once() -> None:
    admission = Admission(limit=1, max_waiting=1)
    assert admission.try_enter()
    first = asyncio.ensure_future(admission.enter())
    await _settle()
    with pytest.raises(SchedulerError) as refused:
        await admission.enter()
    assert refused.value.key == "overloaded" and admission.waiting == 1
    admission.leave()
    await first
    assert admission.in_flight == 1


async def test_with_no_waiting_room_past_the_limit_is_refused_at_once() -> None:
    admission = Admission(limit=1)
    await admission.enter()
    with pytest.raises(SchedulerError, match="1"):
        await admission.enter()


async def test_a_caller_who_leaves_while_waiting_gives_up_its_place() -> None:
    admission = Admission(limit=1, max_waiting=2)
    assert admission.try_enter()
    gone = asyncio.ensure_future(admission.enter())
    stays = asyncio.ensure_future(admission.enter())
    await _settle()
    gone.cancel()
    await _settle()
    assert admission.waiting == 1
    admission.leave()
    await stays
    assert admission.in_flight == 1 and admission.waiting == 0


async def test_a_slot_handed_to_a_caller_as_it_leaves_goes_on_to_the_next() -> None:
    admission = Admission(limit=1, max_waiting=2)
    assert admission.try_enter()
    gone = asyncio.ensure_future(admission.enter())
    stays = asyncio.ensure_future(admission.enter())
    await _settle()
    admission.leave()  # the slot is handed to the first waiter...
    gone.cancel()  # ...whose caller leaves before it runs
    with pytest.raises(asyncio.CancelledError):
        await gone
    await stays
    assert admission.in_flight == 1 and admission.waiting == 0
    admission.leave()
    assert admission.in_flight == 0
