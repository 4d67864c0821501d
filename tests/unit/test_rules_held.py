"""Rules that once had no test: each test here fails when its rule's line breaks.

Found by changing the core one line at a time (docs/mutation.md); each test names the
change that made the whole suite pass before it existed.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from common.identity import Principal, Role, fingerprint
from job_manager.manager import ExecutionReport
from job_manager.model import BackendTimestamps, JobStatus
from tests.unit.test_job_rules import ALICE, Harness, h, refused, report, spec

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
    # And memory now believes the store: the job is gone from this queue.
    assert h.manager.queue_length("emulator") == 0
    # It is RUNNING now, watched here as any running job (it counts as one of hers).
    assert h.manager.usage(ALICE.fingerprint, ALICE.role).live_jobs == 1


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


async def test_a_report_for_a_job_another_process_started_completes_it(h: Harness) -> None:
    # Broke when: ending a job assumed this process held it in memory.
    job = await h.submit()
    other = h.new_manager()
    await other.recover()
    assert (await other.assign("emulator")) is not None  # RUNNING in the store, not here
    finished = await h.complete(job)
    assert finished.status is JobStatus.COMPLETED
    assert (await h.stored(job)).status is JobStatus.COMPLETED
    # Its stale copy left this process's queue, with its bytes.
    assert h.manager.queue_length("emulator") == 0
    assert h.manager.usage(ALICE.fingerprint, ALICE.role).queued_bytes == 0
    assert h.manager.usage(ALICE.fingerprint, ALICE.role).live_jobs == 0


async def test_a_keyed_job_found_running_at_restart_ends_cleanly(h: Harness) -> None:
    # Broke when: a job's end assumed its idempotency key was indexed in memory, which a
    # job recovered RUNNING never is.
    job = await h.submit(key="k")
    await h.assign()
    await h.restart()
    assert (await h.complete(job)).status is JobStatus.COMPLETED


async def test_a_new_job_wakes_a_node_that_waits_for_work(h: Harness) -> None:
    # Broke when: queueing a job did not wake the node parked on its queue.
    waiting = asyncio.create_task(h.manager.assign("emulator", wait_s=30))
    await asyncio.sleep(0.01)
    job = await h.submit()
    assignment = await asyncio.wait_for(waiting, 2.0)
    assert assignment is not None and assignment.record.job_id == job


async def test_a_cancelled_job_gives_its_bytes_back_to_its_owners_share(h: Harness) -> None:
    job = await h.submit(program=b"x" * 100)
    assert h.manager.usage(ALICE.fingerprint, ALICE.role).queued_bytes == 100
    await h.manager.cancel(ALICE, job)
    assert h.manager.usage(ALICE.fingerprint, ALICE.role).queued_bytes == 0
    assert h.manager.usage(ALICE.fingerprint, ALICE.role).all_queued_bytes == 0


async def test_a_queued_job_is_told_about_how_long_it_will_wait(h: Harness) -> None:
    # Broke when: hand-overs were not timed, so the estimate never appeared.
    jobs = [await h.submit(timeout_s=30.0 + i) for i in range(4)]
    for _ in range(2):
        await h.assign()
        h.clock.advance(10)
    detail = h.manager.status_detail(await h.manager.status(ALICE, jobs[3]))
    assert detail.startswith("queued: 2nd of 2 on emulator") and "about 20 s" in detail


async def test_a_report_is_kept_as_the_node_sent_it(h: Harness) -> None:
    # Broke when any of a report's fields was dropped on its way to the store.
    job = await h.submit()
    await h.assign()
    stamps = BackendTimestamps(*(h.clock.now() + timedelta(seconds=i) for i in range(4)))
    h.clock.advance(5)
    report = ExecutionReport(job_id=job, outcome=JobStatus.FAILED, detail="laser drifted",
                             timestamps=stamps, actual_backend="emulator-2",
                             physical_lab_version="lab-3", simulator_version="sim-9",
                             raw_size_bytes=10, encoded_size_bytes=7)
    await h.manager.report(report)
    stored = await h.stored(job)
    assert (stored.status, stored.status_detail, stored.backend_timestamps) == (
        JobStatus.FAILED, "laser drifted", stamps)
    assert (stored.actual_backend, stored.physical_lab_version, stored.simulator_version) == (
        "emulator-2", "lab-3", "sim-9")
    assert (stored.result_raw_size_bytes, stored.result_encoded_size_bytes) == (10, 7)
    assert stored.finished_at == h.clock.now()


async def test_a_failure_reported_without_a_reason_is_given_one(h: Harness) -> None:
    job = await h.submit()
    await h.assign()
    await h.manager.report(ExecutionReport(job_id=job, outcome=JobStatus.FAILED))
    assert (await h.stored(job)).status_detail == "the backend reported a failure"


async def test_refused_reports_name_the_job_and_both_statuses(h: Harness) -> None:
    job = await h.submit()
    error = await refused(h.manager.report(ExecutionReport(job, JobStatus.FAILED)),
                          "FAILED_PRECONDITION")
    assert job in str(error) and "QUEUED" in str(error)  # never handed out: not RUNNING
    await h.assign()
    missing = await refused(h.manager.report(ExecutionReport(job, JobStatus.COMPLETED)),
                            "FAILED_PRECONDITION")
    assert job in str(missing)
    await h.manager.report(ExecutionReport(job, JobStatus.FAILED))
    conflict = await refused(h.manager.report(ExecutionReport(job, JobStatus.TIMEOUT)),
                             "FAILED_PRECONDITION")
    assert job in str(conflict) and "FAILED" in str(conflict) and "TIMEOUT" in str(conflict)


async def test_a_report_for_a_job_this_process_never_held_frees_none_of_its_owners_slots(
        h: Harness) -> None:
    # Broke when: ending a job gave its owner a slot back though this process had never
    # counted the job (another process submitted and started it): one more than the
    # role's limit of live jobs (10) was then let in.
    for _ in range(9):
        await h.submit()
    other = h.new_manager()
    tenth = await other.submit(ALICE, spec())
    assert (await other.assign("emulator")) is not None
    assert (await h.manager.report(report(tenth, JobStatus.FAILED))).status is JobStatus.FAILED
    assert h.manager.usage(ALICE.fingerprint, ALICE.role).live_jobs == 9
    await h.submit()  # the tenth live job again
    await refused(h.submit(), "RESOURCE_EXHAUSTED")


async def test_a_keyed_job_recovered_running_and_ended_elsewhere_is_answered_from_the_store(
        h: Harness) -> None:
    # Broke when: dropping a job memory was wrong about assumed its key was indexed,
    # which a job recovered RUNNING never is.
    job = await h.submit(key="K")
    await h.assign()
    await h.restart()
    other = h.new_manager()
    await other.recover()
    await h.upload_result(job)
    await other.report(report(job))
    assert (await h.manager.report(report(job))).status is JobStatus.COMPLETED
    assert h.manager.usage(ALICE.fingerprint, ALICE.role).live_jobs == 0


async def test_a_job_put_back_after_a_failed_cancel_wakes_a_waiting_node(h: Harness) -> None:
    # Broke when: a job put back in its queue woke no node, so a node that had parked
    # while the job was out of the queue waited for the next submission.
    job = await h.submit()
    h.jobs.fail_on("transition")
    release = h.jobs.gate("transition")
    cancelling = asyncio.create_task(h.manager.cancel(ALICE, job))
    await h.jobs.held("transition")  # out of its queue while the cancel is written
    node = asyncio.create_task(h.manager.assign("emulator", wait_s=30))
    while h.manager.waiting_nodes("emulator") == 0:
        await asyncio.sleep(0)
    release.set()
    await refused(cancelling, "INTERNAL")
    assignment = await asyncio.wait_for(node, 2.0)
    assert assignment is not None and assignment.record.job_id == job


async def test_the_queue_metrics_count_jobs_bytes_and_waiting_nodes(h: Harness) -> None:
    await h.submit(program=b"x" * 10)
    await h.submit(backend="qpu", program=b"y" * 3)
    await h.submit(backend="qpu", program=b"z" * 4)
    waiting = asyncio.create_task(h.manager.assign("emulator", wait_s=30))
    await asyncio.sleep(0)
    assert (await waiting) is not None  # took the emulator's job at once
    node = asyncio.create_task(h.manager.assign("emulator", wait_s=30))
    while h.manager.waiting_nodes("emulator") == 0:
        await asyncio.sleep(0)
    assert h.manager.queue_snapshot() == [("emulator", 0, 0, 1), ("qpu", 2, 7, 0)]
    h.manager.shutdown()
    assert await node is None
