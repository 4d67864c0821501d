"""A job handed over through a follower whose node never received it comes back.

When a node's own call to the leader ends before the answer reaches it, the leader
gives the job back itself (JobManager.give_back). Through a follower the leader's call
can end well, and the follower's then fail: the node left while the answer was on its
way. The follower knows that much, not which job it was, so each AssignNextJob it passes
on carries an id of its own (``x-mqc3-forwarded-call``); the leader remembers the job it
handed over under that id and that replica, and gives it back when the follower says the
call was never delivered (NodeService.ReturnUndelivered; docs/replicas.md, docs/job-rules.md
rule 12).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import grpc

from job_manager.manager import Assignment, JobManager
from message_manager.errors import SchedulerError
from pb.mqc3_scheduler.extension.v1 import nodes_pb2
from scheduler.messages.metadata import metadata_value
from scheduler.replication.forwarding import FORWARDED_BY, FORWARDED_CALL, Forwarder

log = logging.getLogger(__name__)

ASSIGN_PATH = "/mqc3_cloud.scheduler.v1.ExecutionService/AssignNextJob"
RETURN_PATH = "/mqc3_scheduler.extension.v1.NodeService/ReturnUndelivered"
KEPT = 10_000  # hand-overs through followers remembered at most
RETURN_TIMEOUT_S = 10.0
# A follower's word comes within RETURN_TIMEOUT_S of its node's call ending; a hand-over
# is kept a few times that long, so that memory holds only the last minute's programs.
KEPT_S = 6 * RETURN_TIMEOUT_S


class UndeliveredHandOvers:
    """The leader's memory of hand-overs passed on, and the follower's word that one
    never arrived."""

    def __init__(self, monotonic: Callable[[], float]) -> None:
        self._monotonic = monotonic
        # (sender, call id) → (when, manager, assignment), oldest first
        self._handed: OrderedDict[tuple[str, str], tuple[float, JobManager, Assignment]] = (
            OrderedDict())
        self._returns: set[asyncio.Task[None]] = set()  # the follower's, under way

    # --- on the leader -----------------------------------------------------------------
    @staticmethod
    def forwarded_call(context: grpc.aio.ServicerContext) -> tuple[str, str] | None:
        """The (follower, call id) an AssignNextJob was passed on as; None when it came
        from its node. Read before the hand-over: a refusal of the headers changes nothing."""
        return _key(context)

    def handed_over(self, key: tuple[str, str] | None, manager: JobManager,
                    assignment: Assignment) -> None:
        """Remember ``assignment`` if its call was passed on by a follower (``key``)."""
        if key is None:
            return
        now = self._monotonic()
        self._handed[key] = (now, manager, assignment)
        while self._handed and (len(self._handed) > KEPT
                                or next(iter(self._handed.values()))[0] < now - KEPT_S):
            self._handed.popitem(last=False)

    def give_back(self, call_id: str, context: grpc.aio.ServicerContext) -> None:
        """The follower that passed ``call_id`` on says its node never received the job."""
        sender = metadata_value(context, FORWARDED_BY) or ""
        handed = self._handed.pop((sender, call_id), None)
        if handed is None:
            raise SchedulerError("forwarded_call_unknown", call_id=repr(call_id[:64]))
        _, manager, assignment = handed
        log.info("job %s: the replica that passed its hand-over on says the node never "
                 "received it", assignment.record.job_id)
        manager.give_back(assignment)  # nothing, if the job has moved on meanwhile

    # --- on a follower -----------------------------------------------------------------
    @staticmethod
    def call_metadata(path: str, metadata: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """The metadata of a call passed on; an AssignNextJob gets its own id."""
        if path != ASSIGN_PATH:
            return metadata
        return [*metadata, (FORWARDED_CALL, uuid.uuid4().hex)]

    def not_delivered(self, forwarder: Forwarder, address: str,
                      metadata: list[tuple[str, str]]) -> None:
        """The passed-on call of ``metadata`` ended before its node had the answer: tell
        the leader at ``address``, in the background (the node's call is over)."""
        call_id = dict(metadata).get(FORWARDED_CALL)
        if call_id is None:
            return
        sent = [(name, value) for name, value in metadata if name != FORWARDED_CALL]
        task = asyncio.ensure_future(self._tell(forwarder, address, call_id, sent))
        self._returns.add(task)
        task.add_done_callback(self._returns.discard)

    def after_answer(self, context: grpc.aio.ServicerContext, forwarder: Forwarder,
                     address: str, metadata: list[tuple[str, str]]) -> None:
        """The leader answered; should the node's call end without it, tell the leader."""
        if dict(metadata).get(FORWARDED_CALL) is None:
            return
        context.add_done_callback(
            lambda done: self.not_delivered(forwarder, address, metadata)
            if done.cancelled() else None)

    @staticmethod
    async def _tell(forwarder: Forwarder, address: str, call_id: str,
                    metadata: list[tuple[str, str]]) -> None:
        try:
            answer: Any = await forwarder.call(
                address, RETURN_PATH, nodes_pb2.ReturnUndeliveredRequest(call_id=call_id),
                nodes_pb2.ReturnUndeliveredResponse, metadata, RETURN_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - the job then ends as any lost node's
            log.warning("the leader at %s could not be told that a job it handed over "
                        "never reached its node (%s)", address, exc)
            return
        if answer.error.code and answer.error.code != "NOT_FOUND":
            log.warning("the leader did not take back an undelivered job: %s",
                        answer.error.description)


def _key(context: grpc.aio.ServicerContext) -> tuple[str, str] | None:
    sender = metadata_value(context, FORWARDED_BY)
    call_id = metadata_value(context, FORWARDED_CALL)
    if sender is None or call_id is None:
        return None
    return sender, call_id
