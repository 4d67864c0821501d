"""The recovery phase (job_manager/phases/recovery.py): a term's fence raised once, jobs of a
newer record format passed over without losing those after them, and the count of
programs read ahead when reads fail or a hand-over comes first (docs/replicas.md, "Fence";
docs/records.md).

Driven over tests/unit/test_job_rules.py's Harness and tests/unit/test_manager_recovery.py's
standalone stores; each test was seen failing on the mutants it was written for
(docs/mutation.md, "Issue 29: the phases").
"""

from __future__ import annotations

import asyncio

import pytest

from job_manager.stores import Fence
from tests.unit.test_job_rules import ALICE, Harness, h, spec
from tests.unit.test_manager_recovery import BesideRecordsHarness, _submitted, beside
from tests.unit.test_newer_records import newer

__all__ = ["beside", "h"]  # the fixtures, shared with test_job_rules and test_manager_recovery

TERM = Fence("me", 3)


# --- the fence ------------------------------------------------------------------------------
async def test_a_leaders_recovery_raises_its_fence_once_and_a_standalone_one_none(
        h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    raised: list[Fence] = []

    async def raise_fence(fence: Fence) -> None:
        raised.append(fence)

    monkeypatch.setattr(h.jobs, "raise_fence", raise_fence)
    leader = h.new_manager(fence=TERM)
    await leader.recover()
    await leader.recover()  # the replicas' second look: the fence stands
    standalone = h.new_manager()
    await standalone.recover()
    assert raised == [TERM]


# --- a newer format's jobs -------------------------------------------------------------------
async def test_a_newer_formats_queued_job_is_passed_over_and_the_rest_recovered(
        h: Harness) -> None:
    # Keyed jobs are read whole, in the order of their ids: the newer one comes first.
    jobs = sorted([await h.manager.submit(ALICE, spec(key=f"k{n}")) for n in range(3)])
    newer(h, jobs[0])
    await h.restart()
    assert h.manager.queue_length("emulator") == 2
    assert {(await h.assign()).record.job_id for _ in range(2)} == set(jobs[1:])


async def test_a_keyed_retry_of_a_newer_formats_queued_job_does_not_queue_it(
        h: Harness) -> None:
    job_id = await h.manager.submit(ALICE, spec(key="k"))
    newer(h, job_id)
    await h.restart()
    assert await h.manager.submit(ALICE, spec(key="k")) == job_id
    assert h.manager.queue_length("emulator") == 0
    assert await h.manager.assign("emulator") is None


# --- programs read ahead ------------------------------------------------------------------
async def test_a_program_whose_read_failed_is_not_counted_as_read_ahead(h: Harness) -> None:
    for _ in range(3):
        await h.submit()
    await h.restart()
    h.payloads.fail_on("get_input")
    assert await h.manager.prefetch_programs() == 2


async def test_a_job_handed_over_while_its_program_is_read_ahead_is_not_counted(
        h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    job_id = await h.submit()
    await h.restart()
    get_input, held, release = h.payloads.get_input, asyncio.Event(), asyncio.Event()

    async def first_held(wanted: str) -> bytes | None:
        if not held.is_set():  # read ahead's: held until the hand-over read its own
            held.set()
            await release.wait()
        return await get_input(wanted)

    monkeypatch.setattr(h.payloads, "get_input", first_held)
    reading = asyncio.ensure_future(h.manager.prefetch_programs())
    await held.wait()
    assert (await h.assign()).record.job_id == job_id
    release.set()
    assert await reading == 0


async def test_a_batch_of_one_is_read_alone(beside: BesideRecordsHarness) -> None:
    await _submitted(beside, 5)  # batches of 4 and 1
    manager = await beside.restart()
    assert await manager.prefetch_programs() == 5
    assert (beside.payloads.calls["get_inputs"], beside.payloads.calls["get_input"]) == (1, 1)
