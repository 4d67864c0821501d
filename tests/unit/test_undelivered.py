"""The leader remembers hand-overs passed on through a follower only as long as the
follower's word can come (scheduler/replication/undelivered.py): each holds the job's program."""

from __future__ import annotations

from typing import Any, cast

import pytest

from job_manager.manager import Assignment, JobManager
from message_manager import SchedulerError
from scheduler.replication.forwarding import FORWARDED_BY, FORWARDED_CALL
from scheduler.replication.undelivered import KEPT_S, UndeliveredHandOvers


class Call:
    def __init__(self, call_id: str) -> None:
        self.metadata = ((FORWARDED_BY, "follower"), (FORWARDED_CALL, call_id))

    def invocation_metadata(self) -> Any:
        return self.metadata


class Handed:
    class record:
        job_id = "job"


class Manager:
    def __init__(self) -> None:
        self.given_back: list[Any] = []

    def give_back(self, assignment: Any) -> None:
        self.given_back.append(assignment)


def test_a_hand_over_is_forgotten_once_its_followers_word_can_no_longer_come() -> None:
    now = [100.0]
    memory = UndeliveredHandOvers(lambda: now[0])
    manager = Manager()
    old, recent = cast(Assignment, Handed()), cast(Assignment, Handed())
    leader = cast(JobManager, manager)

    def hand(call_id: str, assignment: Assignment) -> None:
        memory.handed_over(memory.forwarded_call(cast(Any, Call(call_id))), leader, assignment)

    hand("old", old)
    now[0] += KEPT_S / 2
    hand("recent", recent)
    now[0] += KEPT_S / 2 + 0.001
    hand("newest", recent)
    with pytest.raises(SchedulerError) as forgotten:
        memory.give_back("old", cast(Any, Call("old")))
    assert forgotten.value.key == "forwarded_call_unknown"
    memory.give_back("recent", cast(Any, Call("recent")))
    assert manager.given_back == [recent]
