"""The reads phase (job_manager/phases/reads.py): an admin's reads of another's job audited
as what they were, whether memory knows a job's final status, and what a job queued again
is told (docs/audit.md; docs/job-rules.md, rule 7).

Driven over tests/unit/test_job_rules.py's Harness; each test was seen failing on the
mutants it was written for (docs/mutation.md, "Issue 29: the phases").
"""

from __future__ import annotations

from job_manager.model import JobStatus
from tests.unit.test_job_rules import ALICE, BOB, GRACE_S, Harness, h
from tests.unit.test_phases_owner_changes import ROOT, Entry, audited

__all__ = ["audited", "h"]  # the fixtures, shared with test_job_rules and owner changes


async def test_an_admins_reads_of_anothers_job_are_audited_as_status_and_result(
        h: Harness, audited: list[Entry]) -> None:
    job_id = await h.submit()
    await h.assign()
    await h.complete(job_id)
    await h.manager.status(ALICE, job_id)  # the owner's own: not audited
    await h.manager.status(ROOT, job_id)
    await h.manager.result(ROOT, job_id)
    await h.manager.status(ROOT, job_id, audit_as=None)  # its caller audits what it does
    assert audited == [("job.status", job_id, "ok", None), ("job.result", job_id, "ok", None)]


async def test_memory_knows_the_final_status_of_its_owners_finished_jobs_only(
        h: Harness) -> None:
    finished, queued = await h.submit(), await h.submit()
    await h.manager.cancel(ALICE, finished)
    assert h.manager.knows_final(finished, ALICE.fingerprint)
    assert not h.manager.knows_final(finished, BOB.fingerprint)  # told as one unknown
    assert not h.manager.knows_final(queued, ALICE.fingerprint)
    h.manager.shutdown()
    h.manager = h.new_manager()  # a memory that never held it
    assert not h.manager.knows_final(finished, ALICE.fingerprint)


async def test_a_job_queued_again_is_told_where_it_stands_and_how_often(h: Harness) -> None:
    h.manager = h.new_manager(max_requeues=2)
    job_id = await h.submit(timeout_s=30)
    await h.assign()
    h.clock.advance(30 + GRACE_S)
    await h.manager.check_deadlines()
    record = await h.manager.status(ALICE, job_id)
    assert record.status is JobStatus.QUEUED
    detail = h.manager.status_detail(record)
    assert detail.startswith("queued: 1st of 1 on emulator")
    assert detail.endswith("; queued again 1 times after its node vanished")
