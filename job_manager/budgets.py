"""QPU-time budgets: QPU seconds or shots per period, per role or per user.

An operator gives a budget per role, and for some users by name (a user's own replaces
their role's); admins have none unless one is set for them. A period is a UTC day or a
UTC month; a period's use is that of the jobs handed over to a node in it: their shots,
and the QPU seconds their nodes reported (``listing.qpu_seconds``). So jobs that waited
for a reset (their owner's budget was spent) count in the period they run in.

A submission that would start past its owner's budget is refused in band, with the use,
the budget and when it resets; a queued job whose owner's budget was spent meanwhile waits
QUEUED until the reset (job_manager/turns.py). So no budget is passed by more than the
jobs already running when it was reached (docs/reservations.md, "Budgets").

The leader counts: each owner's use of the current period is read from the job store
once per term (the first time it is needed), then kept up to date in memory.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from common.clock import spoken_time
from common.identity import Principal, Role
from job_manager import listing
from job_manager.model import JobRecord
from job_manager.stores import JobStore
from message_manager import SchedulerError


class Period(StrEnum):
    DAY = "day"
    MONTH = "month"

    def start(self, now: datetime) -> datetime:
        """The start of the period holding ``now`` (UTC)."""
        now = now.astimezone(UTC)
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return day if self is Period.DAY else day.replace(day=1)

    def previous_start(self, now: datetime) -> datetime:
        """The start of the period before the one holding ``now``."""
        start = self.start(now)
        if self is Period.DAY:
            return start - timedelta(days=1)
        return (start - timedelta(days=1)).replace(day=1)

    def next_start(self, now: datetime) -> datetime:
        """When the period holding ``now`` ends and the next begins."""
        start = self.start(now)
        if self is Period.DAY:
            return start + timedelta(days=1)
        return (start + timedelta(days=32)).replace(day=1)


@dataclass(frozen=True)
class Budget:
    """What one owner may use per period: QPU seconds, shots, or both (None: no limit)."""

    period: Period
    qpu_seconds: float | None = None
    shots: int | None = None


@dataclass(frozen=True)
class BudgetRules:
    """The operator's budgets (SCHEDULER_BUDGETS_FILE): per role and per user name."""

    by_role: Mapping[Role, Budget] = field(default_factory=dict)
    by_user: Mapping[str, Budget] = field(default_factory=dict)

    def of(self, principal: Principal) -> Budget | None:
        """The budget that applies to ``principal``: their own, else their role's."""
        return self.by_user.get(principal.name) or self.by_role.get(principal.role)

    def __bool__(self) -> bool:
        return bool(self.by_role or self.by_user)


@dataclass
class Spent:
    """One owner's use of one period."""

    period_start: datetime
    shots: int = 0
    qpu_s: float = 0.0

    def used(self, *, shots: int = 0, qpu_s: float = 0.0) -> None:
        """Count more use."""
        self.shots += shots
        self.qpu_s += qpu_s


@dataclass(frozen=True)
class BudgetLeft:
    """A budget, its use this period, and when the period resets."""

    budget: Budget
    spent_shots: int
    spent_qpu_s: float
    resets_at: datetime

    @property
    def spent(self) -> bool:
        """Whether no further job may start."""
        return ((self.budget.shots is not None and self.spent_shots >= self.budget.shots)
                or (self.budget.qpu_seconds is not None
                    and self.spent_qpu_s >= self.budget.qpu_seconds))

    def refusal(self, n_shots: int) -> SchedulerError | None:
        """Why a job of ``n_shots`` would start past the budget, if it would."""
        period, resets = self.budget.period.value, spoken_time(self.resets_at)
        shots = self.budget.shots
        if shots is not None and self.spent_shots + n_shots > shots:
            return SchedulerError("budget_spent", budget=shots, unit="shots", period=period,
                                  used=self.spent_shots, reset_at=resets)
        seconds = self.budget.qpu_seconds
        if seconds is not None and self.spent_qpu_s >= seconds:
            return SchedulerError("budget_spent", budget=f"{seconds:g}", unit="QPU seconds",
                                  period=period, used=f"{self.spent_qpu_s:.1f}", reset_at=resets)
        return None


class BudgetBook:
    """Each owner's use of their budget in the current period, counted at the leader."""

    def __init__(self, rules: BudgetRules, store: JobStore,
                 shots_of: Callable[[JobRecord], int]) -> None:
        self._rules = rules
        self._store = store
        self._shots_of = shots_of
        self._spent: dict[str, Spent] = {}  # by owner fingerprint
        self._budgets: dict[str, Budget] = {}  # by owner fingerprint, as last seen

    @property
    def rules(self) -> BudgetRules:
        """The operator's budgets."""
        return self._rules

    def budget_of(self, principal: Principal) -> Budget | None:
        """The budget that applies to ``principal``, if any."""
        return self._rules.of(principal)

    async def left(self, principal: Principal, now: datetime) -> BudgetLeft | None:
        """The owner's budget and its use this period (read from the store the first time
        in a term or a period); None when no budget applies."""
        budget = self._rules.of(principal)
        if budget is None:
            return None
        self._budgets[principal.fingerprint] = budget
        start = budget.period.start(now)
        spent = self._spent.get(principal.fingerprint)
        if spent is None or spent.period_start != start:
            read = await self._read(principal, budget, now)
            spent = self._spent.get(principal.fingerprint)
            if spent is None or spent.period_start != start:
                spent = self._spent[principal.fingerprint] = read
            # else another read was kept meanwhile, and hand-overs since counted on it:
            # this read may be older than they are.
        return BudgetLeft(budget, spent.shots, spent.qpu_s, budget.period.next_start(now))

    async def _read(self, principal: Principal, budget: Budget, now: datetime) -> Spent:
        """The owner's use this period, from the store: the jobs handed over since its
        start, among those submitted since the start of the period before (a job that
        waited longer than a whole period is not found: docs/reservations.md)."""
        start = budget.period.start(now)
        spent = Spent(start)
        async for record in listing.records(self._store, principal.fingerprint,
                                            budget.period.previous_start(now), now):
            ran_now = record.dequeued_at is not None and record.dequeued_at >= start
            # A requeued job waiting for its next node: its first ran; when is not stored,
            # so it counts in the period it was submitted in.
            requeued = (record.dequeued_at is None and record.requeues > 0
                        and record.submitted_at >= start)
            if ran_now or requeued:
                spent.used(shots=self._shots_of(record))
            if ran_now:
                spent.used(qpu_s=listing.qpu_seconds(record))
        return spent

    def known_left(self, owner_fingerprint: str, now: datetime) -> BudgetLeft | None:
        """The owner's budget as last counted in this period, without reading the store;
        None when it was never counted here (no budget, or none checked yet)."""
        budget = self._budgets.get(owner_fingerprint)
        spent = self._spent.get(owner_fingerprint)
        if budget is None or spent is None or spent.period_start != budget.period.start(now):
            return None
        return BudgetLeft(budget, spent.shots, spent.qpu_s, budget.period.next_start(now))

    def handed_over(self, record: JobRecord) -> None:
        """A job began to run: its shots are used, once (a requeued job's were counted at
        its first hand-over, and it keeps that count)."""
        spent = self._counted(record)
        if spent is not None and not record.requeues:
            spent.used(shots=self._shots_of(record))

    def given_back(self, record: JobRecord) -> None:
        """A hand-over no node received was undone, as if never made: so is its count."""
        spent = self._counted(record)
        if spent is not None and not record.requeues:
            spent.used(shots=-self._shots_of(record))

    def finished(self, record: JobRecord) -> None:
        """A job ended: the QPU time its node reported is used."""
        spent = self._counted(record)
        if spent is not None:
            spent.used(qpu_s=listing.qpu_seconds(record))

    def _counted(self, record: JobRecord) -> Spent | None:
        """The owner's count this job belongs to (the period it was handed over in), if
        kept."""
        spent = self._spent.get(record.owner_fingerprint)
        budget = self._budgets.get(record.owner_fingerprint)
        if spent is None or budget is None or record.dequeued_at is None:
            return None  # counted from the store when first needed; or never ran
        if budget.period.start(record.dequeued_at) != spent.period_start:
            return None  # run in an earlier period: that period's use no longer matters
        return spent


def parse_budget_rules(text: str) -> BudgetRules:
    """The budgets of a TOML text (SCHEDULER_BUDGETS_FILE); ValueError names what is wrong.

    ``[roles.<role>]`` and ``[users."<name>"]`` tables, each with ``period`` ("day" or
    "month") and ``qpu_seconds``, ``shots`` or both::

        [roles.guest]
        period = "day"
        qpu_seconds = 600

        [users."alice"]
        period = "month"
        shots = 1_000_000
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"not TOML: {exc}") from None
    unknown = set(document) - {"roles", "users"}
    if unknown:
        raise ValueError(f"unknown tables {sorted(unknown)}: use [roles.<role>] and "
                         f"[users.\"<name>\"]")
    by_role = {}
    for name, table in _tables(document, "roles").items():
        try:
            role = Role(name)
        except ValueError:
            raise ValueError(f"[roles.{name}]: no such role (use "
                             f"{', '.join(r.value for r in Role)})") from None
        by_role[role] = _budget(f"[roles.{name}]", table)
    by_user = {name: _budget(f'[users."{name}"]', table)
               for name, table in _tables(document, "users").items()}
    return BudgetRules(by_role, by_user)


def _tables(document: dict[str, object], key: str) -> dict[str, dict[str, object]]:
    tables = document.get(key, {})
    if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
        raise ValueError(f"[{key}] must hold one table per name")
    return tables


def _budget(where: str, table: dict[str, object]) -> Budget:
    unknown = set(table) - {"period", "qpu_seconds", "shots"}
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    try:
        period = Period(str(table.get("period", "")))
    except ValueError:
        raise ValueError(f'{where}: period must be "day" or "month"') from None
    seconds, shots = table.get("qpu_seconds"), table.get("shots")
    if seconds is None and shots is None:
        raise ValueError(f"{where}: give qpu_seconds, shots or both")
    if seconds is not None and (isinstance(seconds, bool)
                                or not isinstance(seconds, int | float) or not seconds >= 0):
        raise ValueError(f"{where}: qpu_seconds must be a number of seconds, 0 or more")
    if shots is not None and (isinstance(shots, bool) or not isinstance(shots, int)
                              or shots < 0):
        raise ValueError(f"{where}: shots must be a whole number, 0 or more")
    return Budget(period, None if seconds is None else float(seconds),
                  None if shots is None else int(shots))
