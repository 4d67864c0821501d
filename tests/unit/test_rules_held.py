"""Rules that once had no test: each test here fails when its rule's line breaks.

Found by changing the core one line at a time (docs/mutation.md); each test names the
change that made the whole suite pass before it existed.
"""

from __future__ import annotations

import asyncio

from common.identity import Principal, Role, fingerprint
from job_manager.model import JobStatus
from tests.unit.test_job_rules import ALICE, Harness, h, refused, spec

__all__ = ["h"]  # the fixture, shared with test_job_rules


async def test_a_cancel_answers_what_the_store_holds_when_memory_is_stale(h: Harness) -> None:
    # Broke when: a cancel whose compare-and-set found the job no longer QUEUED still
    # answered CANCELLED. Another process (or a failover) handed the job over: memory
    # here still says QUEUED, the store says RUNNING.
    job = await h.submit()
    other = h.new_manager()
    await other.recover()
    assert (await other.assign("emulator")) is not None
    error = await refused(h.manager.cancel(ALICE, job), "FAILED_PRECONDITION")
    assert "RUNNING" in str(error)
    assert (await h.stored(job)).status is JobStatus.RUNNING
    # And memory now believes the store: the job is gone from this queue and quota.
    assert h.manager.queue_length("emulator") == 0
    assert h.manager.quotas.active_jobs(ALICE.fingerprint) == 0


async def test_two_tokens_with_one_name_never_see_each_others_jobs(h: Harness) -> None:
    # Broke when: ownership compared the token's display name, not its fingerprint. In
    # AWS mode names come from the token database, and two people may share one.
    namesake = Principal(ALICE.name, Role.DEVELOPER, fingerprint("another token"))
    job = await h.submit(ALICE)
    for call in (h.manager.status(namesake, job), h.manager.result(namesake, job),
                 h.manager.cancel(namesake, job)):
        await refused(call, "NOT_FOUND")
    assert (await h.stored(job)).status is JobStatus.QUEUED


async def test_one_key_raced_by_two_owners_makes_a_job_for_each(h: Harness) -> None:
    # Broke when: concurrent keyed submissions were de-duplicated by the key alone, so
    # the second owner shared (and could read) the first owner's job.
    bob = Principal("bob", Role.DEVELOPER, fingerprint("token-bob"))
    release = h.jobs.gate("create")
    alices = asyncio.create_task(h.manager.submit(ALICE, spec(key="shared")))
    bobs = asyncio.create_task(h.manager.submit(bob, spec(key="shared")))
    await h.jobs.held("create")
    await asyncio.sleep(0.01)
    release.set()
    first, second = await asyncio.gather(alices, bobs)
    assert first != second
    assert (await h.stored(first)).owner_fingerprint == ALICE.fingerprint
    assert (await h.stored(second)).owner_fingerprint == bob.fingerprint
