"""This replica's place among the scheduler's replicas, and where each call goes.

Exactly one replica leads (docs/replicas.md): it holds the lease and the queues, in its
term's JobManager, recovered from the store when the term begins. Every replica answers
reads (status, result, service status) from the store. What only the leader may do
(submit, cancel, assign, report, refresh) runs here while this replica leads and has
recovered, is passed to the leader while another leads, and waits, bounded, while no one
can take it (an election, a recovery): a call that waits is invisible to the SDK, a
refused one fails the user's run. Standalone is the case of one replica that leads from
its start, with no lease.

A follower's JobManager is fenced by an epoch that never holds, so it can never write:
a call that met a change of term half-way is refused with Deposed, changes nothing, and
is routed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, ContextManager, TypeVar

import grpc

from backend_manager import BackendTable
from job_manager.manager import JobManager
from job_manager.stores import Deposed, Fence
from leadership.lease import Lease
from scheduler.access.admission import LeaderWaitRoom
from scheduler.messages.validation import IDEMPOTENCY_METADATA, KEY_GIVEN
from scheduler.operations.metrics import Metrics
from scheduler.replication.forwarding import (
    FORWARDED_KEY_PREFIX,
    Forwarder,
    LeaderUnreachable,
    on_execution_port,
    was_forwarded,
)
from scheduler.replication.undelivered import UndeliveredHandOvers

log = logging.getLogger(__name__)

R = TypeVar("R")

# A call that waits answers this long before its caller's deadline, so the SDK sees our
# UNAVAILABLE (which it retries) rather than its own DEADLINE_EXCEEDED.
DEADLINE_MARGIN_S = 0.25


class NoLeader(Exception):
    """No replica could take a leader's call within the wait; answered UNAVAILABLE."""


class Replicas:
    """Which JobManager serves now, and the road of each call that only a leader may make."""

    def __init__(self, make_manager: Callable[[Fence | None], JobManager], metrics: Metrics,
                 *, monotonic: Callable[[], float], lease: Lease | None = None,
                 forwarder: Forwarder | None = None, wait_s: float = 30.0,
                 settle_s: float = 2.0, room: LeaderWaitRoom | None = None) -> None:
        self._make = make_manager
        self._metrics = metrics
        self._monotonic = monotonic  # the service's clock: recoveries timed, hand-overs kept
        self._lease = lease
        self._forwarder = forwarder
        self.wait_s = wait_s
        # Calls and bytes that may wait for a leader at once (scheduler/access/admission.py).
        self.room = room or LeaderWaitRoom()
        self._settle_s = settle_s  # a new leader looks at the store again this much later
        self._table: BackendTable | None = None
        self._ready = False  # leading, and the term's recovery is over
        self._term: asyncio.Task[None] | None = None  # the term's recovery
        self._after_recovery: asyncio.Task[None] | None = None  # its reading ahead
        self._learn: asyncio.Task[None] | None = None  # a lease round asked for at once
        self._stopping_since: float | None = None  # _real_now() at stop(), if stopped
        self._changed = asyncio.Event()  # set (and replaced) on every change worth a look
        self._term_over = asyncio.Event()  # set (and replaced) when a term begins or ends
        self.manager = self._new_manager(epoch=0)
        # Hand-overs passed on through a follower, in case it says they were lost.
        self.undelivered = UndeliveredHandOvers(monotonic)
        if lease is not None:
            lease.on_change(self._leadership_changed)

    @property
    def ready(self) -> bool:
        """Whether this replica leads and serves the queues now."""
        return self._ready

    def note(self) -> str | None:
        """What /healthz says about leadership: only trouble (no leader to take calls)."""
        if self._lease is None or self._ready:
            return None
        if self._lease.leading:
            return "note: this replica leads and is recovering its queues; calls wait"
        if self._lease.leader() is None:
            return "warning: no replica leads now; calls that change jobs wait for one"
        return None

    def use_backends(self, table: BackendTable) -> None:
        """A new backend table, for this term's manager and the next ones."""
        self._table = table
        self.manager.use_backends(table)

    # --- terms ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Standalone: lead, once recovered. Among replicas: one round of the lease, and if
        this replica leads, its recovery (failing the start if that fails)."""
        if self._lease is None:
            self._begin_term()
        else:
            await self._lease.step()
            self._notify()
        if self._term is not None:
            await self._term

    async def keep_lease(self) -> None:
        """The lease's rounds, for ever (under the supervisor)."""
        assert self._lease is not None
        while True:
            await asyncio.sleep(self._lease.renew_every_s)
            await self._lease_round()

    async def watch_jobs(self) -> None:
        """Run the watchdog of the serving manager, the new one after each change of term."""
        while True:
            term_over = asyncio.ensure_future(self._term_over.wait())
            watchdog = asyncio.ensure_future(self.manager.watch_deadlines())
            try:
                await asyncio.wait({term_over, watchdog}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                term_over.cancel()
                watchdog.cancel()
            if watchdog.done() and not watchdog.cancelled():
                watchdog.result()  # it failed: raised for the supervisor to restart it

    async def stop(self) -> None:
        """Give the lease up at once (another replica leads now) and end the term.

        From now on a call waits for a leader only as long as another replica takes to
        take the released lease (two rounds): alone, there is none to wait for.
        """
        self._stopping_since = _real_now()
        if self._lease is not None:
            await self._lease.release(for_good=True)
        if self._learn is not None:
            self._learn.cancel()
        self._end_term()
        self.manager.shutdown()

    def _end_term(self) -> None:
        for task in (self._term, self._after_recovery):
            if task is not None:
                task.cancel()
        self._term = self._after_recovery = None

    def _leadership_changed(self, leading: bool) -> None:
        if leading:
            self._metrics.takeovers.inc()
            self._begin_term()
        else:
            self._follow()

    def _begin_term(self) -> None:
        manager = self._new_manager(epoch=self._lease.epoch if self._lease else None)
        self._switch(manager)
        self._term = asyncio.ensure_future(self._recover(manager))

    async def _recover(self, manager: JobManager) -> None:
        started = self._monotonic()
        try:
            await manager.recover()
        except Exception:
            if self._lease is None:
                raise  # standalone: the start fails, as it says why
            log.exception("recovery failed; giving the lease up for another replica")
            # Giving the lease up ends this term, and this task is the term: detached from
            # it first, so that ending the term does not cancel the release being written.
            self._term = None
            await self._lease.step_aside()
            return
        if self.manager is not manager:
            return  # the term ended meanwhile
        recovered_s = self._monotonic() - started
        self._metrics.recovery_seconds.set(recovered_s)
        self._ready = True
        self._metrics.leading.set(1)
        log.info("serving the queues (epoch %d) after %.2f s of recovery",
                 self._lease.epoch if self._lease else 0, recovered_s)
        self._notify()
        self._after_recovery = asyncio.ensure_future(self._read_ahead(manager))

    async def _read_ahead(self, manager: JobManager) -> None:
        """After a recovery, in the background: the recovered jobs' programs, and (among
        replicas) a second look at the store."""
        try:
            read = await manager.prefetch_programs()
            log.info("read the programs of %d recovered jobs ahead of their hand-over", read)
            if self._lease is not None and self._settle_s > 0:
                # The status index is eventually consistent: a job written by the last
                # leader just before it fell may show late. Look once more (what is known
                # is skipped) and read what that found.
                await asyncio.sleep(self._settle_s)
                await manager.recover()
                await manager.prefetch_programs()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reading ahead after the recovery failed; hand-overs read instead")

    def _follow(self) -> None:
        self._end_term()
        old = self.manager
        self._switch(self._new_manager(epoch=0))
        old.shutdown()  # its waiting nodes get an empty answer and ask again

    def _switch(self, manager: JobManager) -> None:
        self.manager = manager
        self._ready = False
        self._metrics.leading.set(0)
        self._metrics.lease_epoch.set(self._lease.epoch if self._lease else 0)
        self._term_over.set()
        self._term_over = asyncio.Event()
        self._notify()

    def _new_manager(self, epoch: int | None) -> JobManager:
        # Among replicas every manager is fenced: by its term's epoch, or (a follower's)
        # by epoch 0, which no lease ever has.
        lease = self._lease
        fence = (Fence(lease.me, epoch, holds=lambda: lease.holds(epoch))
                 if lease is not None and epoch is not None else None)
        manager = self._make(fence)
        if self._table is not None:
            manager.use_backends(self._table)
        return manager

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # --- calls only the leader may make ----------------------------------------------------
    async def call_leader(self, path: str, request: Any, response_type: Any,
                          context: grpc.aio.ServicerContext,
                          run: Callable[[JobManager], Awaitable[R]],
                          idle: Callable[[], ContextManager[None]] = contextlib.nullcontext,
                          before_waiting: Callable[[], Awaitable[None]] | None = None,
                          ) -> R:
        """``run`` on this replica's manager while it leads; else the leader's answer.

        Waits (bounded by the wait setting and the caller's deadline) while there is no
        leader to take the call; NoLeader when the wait is over. While it waits, or while
        the leader answers it, the call is ``idle``: it holds no slot of this replica's
        admission (the leader admits it there). Before its first wait ``before_waiting``
        checks the caller (a SchedulerError refuses it at once), and from then to its end
        the call holds a seat in the room of waiting calls, whose bounds refuse it at once
        when full.
        """
        seat: list[int] = []  # the bytes of the seat taken, once the call has had to wait
        try:
            return await self._call_leader(path, request, response_type, context, run, idle,
                                           before_waiting, seat)
        finally:
            if seat:
                self.room.leave(seat[0])

    async def _call_leader(self, path: str, request: Any, response_type: Any,
                           context: grpc.aio.ServicerContext,
                           run: Callable[[JobManager], Awaitable[R]],
                           idle: Callable[[], ContextManager[None]],
                           before_waiting: Callable[[], Awaitable[None]] | None,
                           seat: list[int]) -> R:
        deadline = self._deadline(context)
        waited_from = _real_now()
        forwarded = was_forwarded(context)
        metadata: list[tuple[str, str]] | None = None
        method = path.rsplit("/", 1)[-1]
        while True:
            changed = self._changed
            if self._ready:
                manager = self.manager
                given = KEY_GIVEN.set(_key_given(metadata))
                try:
                    return await run(manager)
                except Deposed:
                    self._deposed(manager)
                    continue
                finally:
                    KEY_GIVEN.reset(given)
            # A leader still recovering waits for its own recovery, never calls itself.
            following = self.following
            leader = self._lease.leader() if self._lease is not None and following else None
            if leader is not None and self._forwarder is not None and not forwarded:
                metadata = metadata or self.undelivered.call_metadata(
                    path, self._forwarder.metadata(path, context))
                address = (leader.execution_address if on_execution_port(path)
                           else leader.submission_address)
                try:
                    with idle():
                        answer: R = await self._forwarder.call(
                            address, path, request, response_type, metadata,
                            deadline - _real_now(), answer_to=context)
                except LeaderUnreachable as exc:
                    self._metrics.forwarded.labels(method, "unreachable").inc()
                    log.warning("%s could not be passed to the leader at %s (%s); waiting",
                                method, address, exc)
                except asyncio.CancelledError:
                    # The caller left: a job the leader may have handed over comes back.
                    self.undelivered.not_delivered(self._forwarder, address, metadata)
                    raise
                else:
                    self._metrics.forwarded.labels(method, "answered").inc()
                    if getattr(answer, "job_id", ""):
                        self.undelivered.after_answer(context, self._forwarder, address,
                                                      metadata)
                    return answer
            elif forwarded and following:
                # Passed on to a replica that no longer leads: its sender routes it again.
                raise NoLeader("this replica does not lead")
            if not seat:
                if before_waiting is not None:
                    await before_waiting()
                size = request.ByteSize()
                self.room.enter(size)  # refused at once when the room is full
                seat.append(size)
            with idle():
                await self._wait(changed, deadline, waited_from)

    @property
    def following(self) -> bool:
        """Whether another replica may lead (a read of a live job is then the leader's)."""
        return self._lease is not None and not self._lease.leading

    async def read_at_leader(self, path: str, request: Any, response_type: Any,
                             context: grpc.aio.ServicerContext) -> Any | None:
        """A read of a live job, answered by the leader (from its memory: no store read
        here, issue 19's request budget) while another replica leads; None when this
        replica should answer itself: it leads, no leader is known or reachable (a read
        never waits for a failover), or the call was passed on already."""
        if (self._lease is None or self._lease.leading or self._forwarder is None
                or was_forwarded(context)):
            return None
        leader = self._lease.leader()
        if leader is None:
            return None
        method = path.rsplit("/", 1)[-1]
        try:
            answer = await self._forwarder.call(
                leader.submission_address, path, request, response_type,
                self._forwarder.metadata(path, context), self._deadline(context) - _real_now())
        except LeaderUnreachable:
            self._metrics.forwarded.labels(method, "unreachable").inc()
            return None
        self._metrics.forwarded.labels(method, "answered").inc()
        return answer

    def _deposed(self, manager: JobManager) -> None:
        """A write of ``manager`` was refused: its lease has another holder now. Step down,
        and read the lease at once to learn who leads."""
        if manager is self.manager and self._lease is not None:
            self._lease.deposed()
            self._learn = asyncio.ensure_future(self._lease_round())

    async def _lease_round(self) -> None:
        assert self._lease is not None
        await self._lease.step()
        self._notify()

    def _deadline(self, context: grpc.aio.ServicerContext) -> float:
        """When a call stops waiting for a leader, on :func:`_real_now`'s clock."""
        wait_s = self.wait_s
        remaining = context.time_remaining()
        if remaining is not None:
            wait_s = min(wait_s, remaining - DEADLINE_MARGIN_S)
        deadline = _real_now() + wait_s
        if self._stopping_since is not None:
            rounds_s = 2 * self._lease.renew_every_s if self._lease is not None else 0.0
            deadline = min(deadline, self._stopping_since + rounds_s)
        return deadline

    async def _wait(self, changed: asyncio.Event, deadline: float, since: float) -> None:
        left_s = deadline - _real_now()
        if left_s > 0:
            self._metrics.waiting_calls.inc()
            try:
                await asyncio.wait_for(changed.wait(), left_s)
                return
            except TimeoutError:
                pass
            finally:
                self._metrics.waiting_calls.dec()
        raise NoLeader(f"no leader could take the call within {_real_now() - since:.1f} s")


def _real_now() -> float:
    """Now on the event loop's clock, deliberately not the injected one: a call's wait for
    a leader is bounded by its caller's gRPC deadline and spent in asyncio waits and the
    timeout of a call passed on, which all run on real time. A test's fake clock must not
    make that timeout negative, nor a wait endless."""
    return asyncio.get_running_loop().time()


def _key_given(metadata: list[tuple[str, str]] | None) -> str | None:
    """The idempotency key this replica gave a SubmitJob it passed on, if it made one."""
    if metadata is None:
        return None
    key = dict(metadata).get(IDEMPOTENCY_METADATA, "")
    return key if key.startswith(FORWARDED_KEY_PREFIX) else None
