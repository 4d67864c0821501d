"""The submission phase (job_manager/phases/submission.py): what a new job is stored with, a
keyed retry of one request answered with its first job and a key sent with another
request refused in words, also when two processes race (docs/protocol.md), and the size
of the hand-over a job will need, measured as a node will be sent it.

Driven over tests/unit/test_job_rules.py's Harness; each test was seen failing on the
mutants it was written for (docs/mutation.md, "Issue 29: the phases").
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from job_manager.manager import JobManager, JobSpec
from job_manager.model import new_job_id
from job_manager.phases.core import UPLOAD_URL_LIFETIME
from job_manager.phases.submission import ASSIGNMENT_FRAMING_BYTES
from tests.helpers import refused_as
from tests.unit.test_job_rules import ALICE, Harness, h, limits, spec

__all__ = ["h"]  # the fixture, shared with test_job_rules

TAGS = (("team", "optics"),)


def keyed(digest: str, program: bytes = b"program") -> JobSpec:
    return replace(spec(key="K", program=program), request_digest=digest)


async def test_a_submission_is_stored_with_its_key_digest_and_tags(h: Harness) -> None:
    job_id = await h.manager.submit(ALICE, replace(keyed("d1"), tags=TAGS))
    stored = await h.stored(job_id)
    assert (stored.idempotency_key, stored.request_digest, stored.tags) == ("K", "d1", TAGS)
    assert h.manager.live(job_id) == stored


async def test_a_keyed_retry_of_one_request_is_answered_with_its_first_job(h: Harness) -> None:
    job_id = await h.manager.submit(ALICE, keyed("d1"))
    assert await h.manager.submit(ALICE, keyed("d1")) == job_id
    h.manager.shutdown()
    h.manager = h.new_manager()  # a process that never held it reads the key's job
    assert await h.manager.submit(ALICE, keyed("d1")) == job_id
    assert len(await h.records()) == 1


async def test_a_key_sent_with_another_request_is_refused_naming_the_first_job(
        h: Harness) -> None:
    job_id = await h.manager.submit(ALICE, keyed("d1"))
    await refused_as(h.manager.submit(ALICE, keyed("d2", b"another program")),
                     "idempotency_key_reused", sent=repr("K"), job_id=job_id)
    assert len(await h.records()) == 1


async def test_a_key_an_earlier_version_stored_without_a_digest_matches_any_request(
        h: Harness) -> None:
    job_id = await h.manager.submit(ALICE, keyed(""))
    assert await h.manager.submit(ALICE, keyed("d2", b"another program")) == job_id


async def test_two_processes_racing_one_request_answer_with_one_job(h: Harness) -> None:
    other: JobManager = h.new_manager()
    release = h.jobs.gate("create")
    mine = asyncio.create_task(h.manager.submit(ALICE, keyed("d1")))
    theirs = asyncio.create_task(other.submit(ALICE, keyed("d1")))
    await h.jobs.held("create")
    await asyncio.sleep(0.01)
    release.set()
    answers = await asyncio.gather(mine, theirs)
    [record] = await h.records()
    assert list(answers) == [record.job_id, record.job_id]


# --- the hand-over's size -----------------------------------------------------------------
LIMIT = 40_000  # above the overhead a job is first checked with (16 KB)


async def test_a_jobs_settings_count_towards_the_size_of_its_hand_over(h: Harness) -> None:
    h.manager = h.new_manager(limits=replace(limits(), max_assignment_bytes=LIMIT))
    settings = b"s" * 10_000
    url = len(h.payloads.upload_url(new_job_id(), UPLOAD_URL_LIFETIME).url)
    fits = LIMIT - len(settings) - url - ASSIGNMENT_FRAMING_BYTES

    def sized(program_bytes: int) -> JobSpec:
        return replace(spec(program=b"p" * program_bytes), settings=settings)

    await refused_as(h.manager.submit(ALICE, sized(fits + 1)), "job_too_large_to_assign",
                     size=LIMIT + 1, limit=LIMIT)
    assert (await h.stored(await h.manager.submit(ALICE, sized(fits)))).input_size_bytes == fits


async def test_with_requeues_a_hand_over_is_measured_with_its_last_hand_overs_url(
        h: Harness) -> None:
    h.manager = h.new_manager(limits=replace(limits(), max_assignment_bytes=LIMIT),
                              max_requeues=3)
    settings = b"s" * 300
    last = h.payloads.upload_url(new_job_id(), UPLOAD_URL_LIFETIME, 3).url
    assert len(last) > len(h.payloads.upload_url(new_job_id(), UPLOAD_URL_LIFETIME).url)
    fits = LIMIT - len(settings) - len(last) - ASSIGNMENT_FRAMING_BYTES

    def sized(program_bytes: int) -> JobSpec:
        return replace(spec(program=b"p" * program_bytes), settings=settings)

    await refused_as(h.manager.submit(ALICE, sized(fits + 1)), "job_too_large_to_assign",
                     size=LIMIT + 1, limit=LIMIT)
    assert (await h.stored(await h.manager.submit(ALICE, sized(fits)))).input_size_bytes == fits
