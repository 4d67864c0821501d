"""An owner's changes (job_manager/phases/owner_changes.py): tags that reach the store and
every record memory holds of the job, whatever its state; taggings that meet a change
under way, a failing store or a status changed elsewhere; and the audit of an admin's
cancels and taggings of another's jobs, as made or as refused (docs/audit.md).

Driven over tests/unit/test_job_rules.py's Harness; each test was seen failing on the
mutants it was written for (docs/mutation.md, "Issue 29: the phases").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import replace

import pytest

from common import audit
from common.identity import Principal, Role, fingerprint
from job_manager.model import JobStatus
from message_manager import SchedulerError
from tests.helpers import refused_as
from tests.unit.test_job_rules import ALICE, Harness, h

__all__ = ["h"]  # the fixture, shared with test_job_rules

ROOT = Principal("root", Role.ADMIN, fingerprint("token-root"))
TAGS = (("team", "optics"),)
OLD_TAGS = (("team", "old"),)

Entry = tuple[object, ...]


@pytest.fixture
def audited() -> Iterator[list[Entry]]:
    """The audit entries written meanwhile: (action, job, result, code)."""
    entries: list[Entry] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            entry = record.__dict__["audit"]
            entries.append((entry["action"], entry["job_id"], entry["result"],
                            entry.get("code")))

    keep = Keep()
    logger = logging.getLogger(audit.LOGGER_NAME)
    logger.addHandler(keep)
    yield entries
    logger.removeHandler(keep)


def delete_record(h: Harness, job_id: str) -> None:
    """The store lets a final record go (DynamoDB's TTL after the retention)."""
    with contextlib.closing(sqlite3.connect(h.directory / "jobs.sqlite3")) as conn:
        conn.execute("DELETE FROM jobs WHERE job_id = ?", (job_id,))
        conn.commit()


# --- tags in every state ------------------------------------------------------------------
async def test_a_queued_job_is_tagged_in_the_store_and_in_its_queue(h: Harness) -> None:
    job_id = await h.submit()
    tagged = await h.manager.set_tags(ALICE, job_id, TAGS)
    assert tagged == replace(await h.stored(job_id), tags=TAGS) == await h.stored(job_id)
    assert h.manager.live(job_id) == tagged
    assert (await h.assign()).record.tags == TAGS  # the hand-over carries them on


async def test_a_running_job_is_tagged_in_the_store_and_in_memory(h: Harness) -> None:
    job_id = await h.submit()
    await h.assign()
    tagged = await h.manager.set_tags(ALICE, job_id, TAGS)
    assert tagged.status is JobStatus.RUNNING and tagged.tags == TAGS
    assert h.manager.live(job_id) == tagged == await h.stored(job_id)
    assert (await h.complete(job_id)).tags == TAGS


async def test_a_finished_job_is_tagged_in_the_store_and_in_memory(h: Harness) -> None:
    job_id = await h.submit()
    await h.assign()
    await h.complete(job_id)
    tagged = await h.manager.set_tags(ALICE, job_id, TAGS)
    assert tagged == await h.stored(job_id)
    h.jobs.down = True  # memory answers alone
    assert await h.manager.status(ALICE, job_id) == tagged


async def test_a_tagging_during_a_hand_over_tags_the_running_job(h: Harness) -> None:
    job_id = await h.submit()
    release = h.jobs.gate("transition")
    handing_over = asyncio.ensure_future(h.manager.assign("emulator"))
    await h.jobs.held("transition")
    tagging = asyncio.ensure_future(h.manager.set_tags(ROOT, job_id, TAGS))
    await asyncio.sleep(0.01)
    release.set()
    assignment = await handing_over
    assert assignment is not None
    tagged = await tagging
    assert (tagged.status, tagged.tags) == (JobStatus.RUNNING, TAGS)
    assert h.manager.live(job_id) == tagged == await h.stored(job_id)


# --- taggings that do not land ------------------------------------------------------------
async def test_a_tagging_the_store_failed_leaves_every_record_as_it_was(
        h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    job_id = await h.submit()
    await h.manager.set_tags(ALICE, job_id, OLD_TAGS)
    h.jobs.fail_on("transition")
    await refused_as(h.manager.set_tags(ALICE, job_id, TAGS), "store_failed")
    assert h.manager.live(job_id) == await h.stored(job_id)
    assert (await h.stored(job_id)).tags == OLD_TAGS
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert line.startswith(f"tags of job {job_id} could not be stored: the store failed: ")


async def test_a_job_whose_status_changed_elsewhere_is_read_again_and_tagged(
        h: Harness) -> None:
    job_id = await h.submit()
    h.manager.shutdown()
    h.manager = h.new_manager()  # a new term's manager: the job is not in its memory
    release = h.jobs.gate("transition")
    tagging = asyncio.ensure_future(h.manager.set_tags(ALICE, job_id, TAGS))
    await h.jobs.held("transition")
    queued = await h.stored(job_id)  # another process cancels it meanwhile
    cancelled = replace(queued, status=JobStatus.CANCELLED, finished_at=h.clock.now())
    assert await h.jobs.inner.transition(queued, cancelled)
    release.set()
    tagged = await tagging
    assert tagged == replace(cancelled, tags=TAGS) == await h.stored(job_id)
    h.jobs.down = True
    assert await h.manager.status(ALICE, job_id) == tagged  # remembered as final


async def test_a_tagging_that_never_lands_is_refused_and_changes_no_record(
        h: Harness) -> None:
    job_id = await h.submit()
    await h.manager.set_tags(ALICE, job_id, OLD_TAGS)
    queued = await h.stored(job_id)  # another process hands it over; memory says QUEUED
    running = replace(queued, status=JobStatus.RUNNING, dequeued_at=h.clock.now())
    assert await h.jobs.inner.transition(queued, running)
    await refused_as(h.manager.set_tags(ALICE, job_id, TAGS), "store_failed")
    assert h.jobs.calls["transition"] == 1 + 3  # the first tagging, then three attempts
    assert h.manager.live(job_id) == queued
    assert (await h.stored(job_id)).tags == OLD_TAGS


async def test_a_final_record_the_store_let_go_is_forgotten_not_tagged(h: Harness) -> None:
    job_id = await h.submit()
    await h.manager.cancel(ALICE, job_id)
    delete_record(h, job_id)
    await refused_as(h.manager.set_tags(ALICE, job_id, TAGS), "job_not_found", job_id=job_id)
    assert h.jobs.calls["transition"] == 1 + 1  # the cancel, then one attempt


# --- an admin's changes of another's jobs, audited -------------------------------------------
async def test_an_admins_cancels_of_anothers_job_are_audited_as_made_or_refused(
        h: Harness, audited: list[Entry]) -> None:
    job_id = await h.submit()
    await h.manager.cancel(ALICE, await h.submit())  # the owner's own: not audited
    await h.manager.cancel(ROOT, job_id)
    refused = await refused_as(h.manager.cancel(ROOT, job_id), "job_not_cancellable",
                               job_id=job_id, status="CANCELLED")
    assert audited == [("job.cancel", job_id, "ok", None),
                       ("job.cancel", job_id, "refused", refused.code)]


async def test_an_admins_taggings_of_anothers_job_are_audited_as_made_or_refused(
        h: Harness, audited: list[Entry]) -> None:
    job_id = await h.submit()
    await h.manager.set_tags(ALICE, job_id, OLD_TAGS)  # the owner's own: not audited
    assert (await h.manager.set_tags(ROOT, job_id, TAGS)).tags == TAGS
    h.jobs.fail_on("transition")
    with pytest.raises(SchedulerError) as refused:
        await h.manager.set_tags(ROOT, job_id, OLD_TAGS)
    assert audited == [("job.set_tags", job_id, "ok", None),
                       ("job.set_tags", job_id, "refused", refused.value.code)]
