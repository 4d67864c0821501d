"""Prometheus metrics: one registry per scheduler, no global state."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from common.identity import Role
from job_manager.bookings import Booking
from job_manager.model import JobRecord, JobStatus
from job_manager.observer import UNKNOWN_BACKEND
from job_manager.sessions import Session
from message_manager.catalogue import Catalogue, default_catalogue

_WAIT_BUCKETS_S = (0.005, 0.025, 0.1, 0.5, 1, 5, 30, 60, 300, 900, 1800, 3600, 7200)
_RPC_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30)

# Labels known before their first event. Prometheus's rate() and increase() count from a
# series' first scrape, so a series made at its first event loses that event: each of these
# exists, at 0, from the start (docs/design.md, "Metrics exist from the start").
ROLES = tuple(role.value for role in Role)
OUTCOMES = tuple(status.value for status in JobStatus if status.is_final)
# The codes a submission is refused with before it becomes a job (JobManager.submit): a bad
# field or backend, a backend closed to the role, a quota.
SUBMISSION_REFUSALS = ("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "UNAVAILABLE")
FORWARD_RESULTS = ("answered", "unreachable")
# A booked window's kind: some users' reservation, or maintenance (no one).
BOOKING_KINDS = ("user", "maintenance")
# What the leader holds of the bookings and sessions: (known backends, bookings, sessions).
ReservationsView = tuple[Sequence[str], Sequence[Booking], Sequence[Session]]


class QueueCollector(Collector):
    """Queue gauges read at scrape time from the JobManager (no bookkeeping on the hot path)."""

    def __init__(self, snapshot: Callable[[], list[tuple[str, int, int, int]]]) -> None:
        self._snapshot = snapshot  # → [(queue, jobs, bytes, waiting nodes)]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily("mqc3_queue_depth_jobs", "Jobs waiting", labels=["backend"])
        size = GaugeMetricFamily("mqc3_queue_bytes", "Program bytes held", labels=["backend"])
        nodes = GaugeMetricFamily("mqc3_waiting_nodes", "Nodes in a long poll",
                                  labels=["backend"])
        for queue, jobs, held, waiting in self._snapshot():
            depth.add_metric([queue], jobs)
            size.add_metric([queue], held)
            nodes.add_metric([queue], waiting)
        yield from (depth, size, nodes)


class NodeCollector(Collector):
    """How long each backend has had no node asking for work, read at scrape time."""

    def __init__(self, snapshot: Callable[[], list[tuple[str, float]]]) -> None:
        self._snapshot = snapshot  # → [(backend, seconds)]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        quiet = GaugeMetricFamily(
            "mqc3_node_quiet_seconds", "Seconds since a node last asked the backend for work "
            "(0 while one waits in a long poll); exported by the leader only",
            labels=["backend"])
        for backend, seconds in self._snapshot():
            quiet.add_metric([backend], seconds)
        yield quiet


class ReservationsCollector(Collector):
    """Sessions holding backends and booked windows, read at scrape time from the leader's
    bookings and sessions (docs/reservations.md); a follower exports none."""

    def __init__(self, snapshot: Callable[[], ReservationsView],
                 now: Callable[[], datetime]) -> None:
        self._snapshot = snapshot
        self._now = now

    def collect(self) -> Iterator[GaugeMetricFamily]:
        backends, bookings, sessions = self._snapshot()
        now = self._now()
        holding = GaugeMetricFamily(
            "mqc3_session_holding", "1 while a session holds the backend (its first job was "
            "handed over: its queued jobs go first), else 0; exported by the leader only",
            labels=["backend"])
        open_sessions = GaugeMetricFamily(
            "mqc3_sessions_open", "Open sessions on the backend, begun or not",
            labels=["backend"])
        window_open = GaugeMetricFamily(
            "mqc3_booking_open", "1 while a booked window of the kind (user: a reservation, "
            "maintenance) is open on the backend, else 0", labels=["backend", "kind"])
        next_start = GaugeMetricFamily(
            "mqc3_booking_next_start_seconds", "Seconds until the backend's next window of "
            "the kind opens (no series while none is booked)", labels=["backend", "kind"])
        every = sorted({*backends, *(b.backend for b in bookings), *(s.backend for s in sessions)})
        for backend in every:
            mine = [s for s in sessions if s.backend == backend]
            holding.add_metric([backend], float(any(s.holds for s in mine)))
            open_sessions.add_metric([backend], sum(s.is_open for s in mine))
            for kind in BOOKING_KINDS:
                windows = [b for b in bookings if b.backend == backend
                           and _kind(b) == kind and now < b.ends_at]
                window_open.add_metric([backend, kind], float(any(b.is_open(now)
                                                                  for b in windows)))
                coming = [b.starts_at for b in windows if now < b.starts_at]
                if coming:
                    next_start.add_metric([backend, kind], (min(coming) - now).total_seconds())
        yield from (holding, open_sessions, window_open, next_start)


def _kind(booking: Booking) -> str:
    return "maintenance" if booking.maintenance else "user"


class Metrics:
    """Every metric the scheduler exports, and the JobObserver that feeds the job ones."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.jobs_submitted = Counter("mqc3_jobs_submitted", "Jobs accepted",
                                      ["backend", "role"], registry=r)
        self.jobs_refused = Counter("mqc3_jobs_refused", "Submissions refused",
                                    ["backend", "role", "code"], registry=r)
        self.jobs_finished = Counter("mqc3_jobs_finished", "Jobs that reached a final status",
                                     ["backend", "role", "outcome"], registry=r)
        self.jobs_given_back = Counter(
            "mqc3_jobs_given_back", "Jobs whose node's call ended before it received them, "
            "put back at the head of their queue", ["backend"], registry=r)
        self.jobs_requeued = Counter(
            "mqc3_jobs_requeued", "Jobs queued again after their node vanished without a "
            "report (SCHEDULER_MAX_REQUEUES)", ["backend"], registry=r)
        self.refusals = Counter(
            "mqc3_refusals", "Calls answered RESOURCE_EXHAUSTED, by reason (docs/errors.md)",
            ["reason"], registry=r)
        self.unreadable_records = Counter(
            "mqc3_unreadable_records", "Job records the scheduler could not read and left "
            "untouched (each counted once)", registry=r)
        self.queue_wait = Histogram("mqc3_job_queue_wait_seconds", "From queued to dequeued",
                                    ["backend"], buckets=_WAIT_BUCKETS_S, registry=r)
        self.job_duration = Histogram("mqc3_job_total_seconds", "From submitted to finished",
                                      ["backend", "outcome"], buckets=_WAIT_BUCKETS_S,
                                      registry=r)
        self.rpc_latency = Histogram("mqc3_rpc_seconds", "RPC latency by method and result code",
                                     ["method", "code"], buckets=_RPC_BUCKETS_S, registry=r)
        self._rpc_children: dict[tuple[str, str], Histogram] = {}
        self.store_latency = Histogram("mqc3_store_call_seconds", "Store call latency",
                                       ["store", "operation"], buckets=_RPC_BUCKETS_S,
                                       registry=r)
        self.store_errors = Counter("mqc3_store_errors", "Store calls that failed",
                                    ["store", "operation"], registry=r)
        self.token_cache = Counter("mqc3_token_cache_lookups", "Token cache hits and misses",
                                   ["result"], registry=r)
        self.timestamps_clamped_total = Counter(
            "mqc3_node_timestamps_clamped", "Timestamps in nodes' reports that lay in the "
            "future or before the job's hand-over, clamped into its run", ["backend"],
            registry=r)
        # Replicas (docs/replicas.md).
        self.leading = Gauge("mqc3_replica_leading", "1 while this replica leads and serves "
                             "the queues, else 0", registry=r)
        self.lease_epoch = Gauge("mqc3_lease_epoch", "The epoch this replica leads at "
                                 "(0 while it follows)", registry=r)
        self.takeovers = Counter("mqc3_lease_takeovers", "Times this replica began to lead",
                                 registry=r)
        self.recovery_seconds = Gauge("mqc3_recovery_seconds", "How long the last recovery "
                                      "of the queues from the store took", registry=r)
        self.forwarded = Counter("mqc3_forwarded_calls", "Calls passed on to the leader",
                                 ["method", "result"], registry=r)
        self.waiting_calls = Gauge("mqc3_calls_waiting_for_leader", "Calls waiting for a "
                                   "leader to be elected or to finish recovering", registry=r)

    # --- series that exist from the start -----------------------------------------------
    def know_calls(self, methods: Iterable[str], catalogue: Catalogue | None = None) -> None:
        """Make each method's calls exist with OK and every code of the catalogue, each
        RESOURCE_EXHAUSTED reason, each token cache result, and refused submissions that
        name no known backend."""
        catalogue = catalogue or default_catalogue()
        entries = [catalogue.entry(key) for key in sorted(catalogue.keys())]
        codes = ["OK", *sorted({entry.code for entry in entries})]
        for method in methods:
            for code in codes:
                self._rpc_child(method, code)
        for entry in entries:
            if entry.code == "RESOURCE_EXHAUSTED":
                self.refusals.labels(entry.key)
        for result in ("hit", "miss"):
            self.token_cache.labels(result)
        self._know_refused(UNKNOWN_BACKEND)

    def know_forwarding(self, methods: Iterable[str]) -> None:
        """Among replicas: make each method's forwarded calls exist, by result."""
        for method in methods:
            for result in FORWARD_RESULTS:
                self.forwarded.labels(method, result)

    def know_store(self, store: str, operations: Iterable[str]) -> None:
        """Make each store operation's error count exist (its latency comes with its first
        call, which every operation makes soon after the start)."""
        for operation in operations:
            self.store_errors.labels(store, operation)

    def know_backends(self, backends: Iterable[str]) -> None:
        """Make every series labelled with each of ``backends`` exist: called at start and
        after each reload of the backend status, with the backends it names."""
        for backend in backends:
            for metric in (self.queue_wait, self.jobs_given_back, self.jobs_requeued,
                           self.timestamps_clamped_total):
                metric.labels(backend)
            for role in ROLES:
                self.jobs_submitted.labels(backend, role)
                for outcome in OUTCOMES:
                    self.jobs_finished.labels(backend, role, outcome)
            for outcome in OUTCOMES:
                self.job_duration.labels(backend, outcome)
            self._know_refused(backend)

    def _know_refused(self, backend: str) -> None:
        for role in ROLES:
            for code in SUBMISSION_REFUSALS:
                self.jobs_refused.labels(backend, role, code)

    def _rpc_child(self, method: str, code: str) -> Histogram:
        child = self._rpc_children.get((method, code))
        if child is None:
            child = self._rpc_children[method, code] = self.rpc_latency.labels(method, code)
        return child

    def rpc_observe(self, method: str, code: str, seconds: float) -> None:
        """Count one call's latency. Each (method, code) child is looked up once: a
        labels() lookup costs as much as the observation, on every call."""
        self._rpc_child(method, code).observe(seconds)

    def watch_waiting_calls(self, waiting: Mapping[str, Callable[[], int]]) -> None:
        """Export how many calls wait for a slot, by port (docs/errors.md, "Calls in
        progress"), from a function per port."""
        gauge = Gauge("mqc3_calls_waiting_for_slot", "Calls waiting for one of their "
                      "service's workers", ["port"], registry=self.registry)
        for port, count in waiting.items():
            gauge.labels(port).set_function(_as_float(count))

    def watch_free_space(self, free_bytes: Callable[[], int | None]) -> None:
        """Export the data directory's free space (standalone) from ``free_bytes``."""
        gauge = Gauge("mqc3_data_dir_free_bytes", "Free space of the standalone data "
                      "directory's disk", registry=self.registry)
        gauge.set_function(lambda: float(free_bytes() or 0))

    def watch_queues(self, snapshot: Callable[[], list[tuple[str, int, int, int]]]) -> None:
        """Export queue gauges from ``snapshot``."""
        self.registry.register(QueueCollector(snapshot))

    def watch_nodes(self, snapshot: Callable[[], list[tuple[str, float]]]) -> None:
        """Export how long each backend's nodes have been quiet, from ``snapshot``."""
        self.registry.register(NodeCollector(snapshot))

    def watch_reservations(self, snapshot: Callable[[], ReservationsView],
                           now: Callable[[], datetime]) -> None:
        """Export sessions holding backends and booked windows from ``snapshot``."""
        self.registry.register(ReservationsCollector(snapshot, now))

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)

    # --- JobObserver ------------------------------------------------------------------
    def submitted(self, record: JobRecord) -> None:
        self.jobs_submitted.labels(record.backend, record.role.value).inc()

    def refused(self, backend: str, role: str, code: str) -> None:
        self.jobs_refused.labels(backend, role, code).inc()

    def handed_over(self, record: JobRecord) -> None:
        if record.dequeued_at is not None:
            waited_s = (record.dequeued_at - record.queued_at).total_seconds()
            self.queue_wait.labels(record.backend).observe(waited_s)

    def given_back(self, record: JobRecord) -> None:
        self.jobs_given_back.labels(record.backend).inc()

    def requeued(self, record: JobRecord) -> None:
        self.jobs_requeued.labels(record.backend).inc()

    def finished(self, record: JobRecord) -> None:
        outcome = record.status.value
        self.jobs_finished.labels(record.backend, record.role.value, outcome).inc()
        if record.finished_at is not None:
            total_s = (record.finished_at - record.submitted_at).total_seconds()
            self.job_duration.labels(record.backend, outcome).observe(total_s)

    def timestamps_clamped(self, record: JobRecord, count: int) -> None:
        self.timestamps_clamped_total.labels(record.backend).inc(count)


def _as_float(count: Callable[[], int]) -> Callable[[], float]:
    return lambda: float(count())
