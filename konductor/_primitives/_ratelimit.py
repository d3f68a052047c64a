"""The cluster-wide rate limiter: shares of one rate, spent from local token buckets.

``async with client.rate_limit("provider-api", rate="100/s") as limiter:`` joins
the limit as a *member*; ``await limiter.acquire()`` then spends from this
member's local token bucket, which fills at the member's *share* of the rate.
A call costs no API request: the member's entry (its share and its recent
demand) is written on the renewal cadence only (about every ttl/3), by the
client's :class:`~konductor._engine._renewal.Renewer`, so 1,000 calls per
second cost the control plane what one call per second does.

The guarantee (the argument is in :mod:`._ratelimit_state` and
docs/rate-limit.md): the shares in force never sum above the rate, so over
any window of T seconds the whole fleet spends at most ``burst + rate * T``.
This module keeps its half of it:

- the share in force (``_cap``) is lowered *before* a write of a lower share
  is sent (in the decision itself), and raised only *after* the store
  confirmed the write of the higher one (the join's answer, or
  ``Entry.on_renewed``), never from a cached or watched copy;
- an observed change that lowers this member's fair target (a newcomer's
  demand, ``kubectl edit`` of the rate) lowers the share in force at once,
  before the renewal writes it;
- nothing is spent once the member's own deadline has passed (90 % of the TTL
  after its last confirmed write was sent), which is before anyone else may
  judge its entry stale and reuse its share; the member then rejoins with a
  new entry and an empty bucket;
- an object whose state does not parse admits nothing (``CorruptState`` is
  raised to the caller, and the membership lapses at its deadline).

Losing the membership (an outage longer than the deadline) does not end the
``async with`` block: spending stops, the member rejoins in the background and
``acquire`` waits until it has a share again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import uuid
import weakref
from dataclasses import dataclass
from types import TracebackType
from typing import TypeAlias

from konductor._backoff import Backoff
from konductor._engine import _validate as check
from konductor._engine._clock import micro_time
from konductor._engine._hub import WRITE_FLOOR, Hub, NewState, Sends
from konductor._engine._parse import Where
from konductor._engine._renewal import NEVER, Entry, RenewFn
from konductor._engine._runtime import DEFAULT_TTL, HasRuntime, Runtime
from konductor._engine._validate import Duration, Ttl
from konductor._errors import (
    AcquireTimeout,
    AlreadyExists,
    ClientClosed,
    CorruptState,
    InvalidArgument,
    KonductorError,
    NotFound,
)
from konductor._limits import MAX_BURST, MAX_RATE
from konductor._names import validate_name
from konductor._primitives import _ratelimit_state as state
from konductor._store._base import JSON, StoredObject
from konductor._store._kinds import RATELIMIT

log = logging.getLogger("konductor")

Rate: TypeAlias = float | str
"""What a caller passes for a rate: tokens per second, or ``"N/s"``, ``"N/m"``, ``"N/h"``."""

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
#: A member not limited in its last window reports this multiple of its use as
#: its demand, so that a growing load can grow its share before it is limited.
HEADROOM = 1.5
#: A member reports the most it needed over this many renewal windows (this one included).
WINDOWS = 2


def parse_rate(value: Rate, what: str = "rate") -> float:
    """Tokens per second from a number (per second) or ``"N/s"``, ``"N/m"``, ``"N/h"``.

    Raises:
        InvalidArgument: anything else, or not in (0, 1e9] per second
            (``argument=what``).
    """
    if isinstance(value, str):
        number, _, unit = value.strip().partition("/")
        per = _UNITS.get(unit.strip())
        try:
            amount = float(number)
        except ValueError:
            amount = math.nan
        if per is None or not math.isfinite(amount):
            raise InvalidArgument(
                f'{what} must be "N/s", "N/m", "N/h" or a number per second, got {value!r}',
                argument=what,
            )
        result = amount / per
    elif isinstance(value, int | float) and not isinstance(value, bool):
        result = float(value)
    else:
        raise InvalidArgument(
            f'{what} must be "N/s", "N/m", "N/h" or a number per second, got {value!r}',
            argument=what,
        )
    if not math.isfinite(result) or result <= 0 or result > MAX_RATE:
        raise InvalidArgument(
            f"{what} must be more than 0 and at most {MAX_RATE:g} per second, got {value!r}",
            argument=what,
        )
    return result


def _amount(value: float, what: str, maximum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(f"{what} must be a number, got {value!r}", argument=what)
    result = float(value)
    if not math.isfinite(result) or result <= 0 or result > maximum:
        raise InvalidArgument(
            f"{what} must be more than 0 and at most {maximum:g}, got {value!r}", argument=what
        )
    return result


def parse_cost(value: float) -> float:
    """Tokens one call spends: a number in (0, MAX_BURST].

    Raises:
        InvalidArgument: not a positive finite number (``argument="cost"``).
    """
    return _amount(value, "cost", MAX_BURST)


@dataclass(frozen=True)
class RateLimitRequest:
    """A rate-limit membership request, parsed once at the entry point."""

    name: str
    rate: float
    burst: float | None
    ttl: Ttl

    @classmethod
    def parse(
        cls, name: str, rate: Rate, burst: float | None = None, ttl: Duration = DEFAULT_TTL
    ) -> RateLimitRequest:
        """Raises: InvalidArgument / InvalidName: an argument is malformed or out of
        range; ``argument`` names it (``"rate"``, ``"burst"``, ``"ttl"``)."""
        validate_name(name)
        per_second = parse_rate(rate)
        tokens = None if burst is None else _amount(burst, "burst", MAX_BURST)
        return cls(name, per_second, tokens, check.ttl(ttl))


#: The members of each hub in this process, by entry id: a renewal of one hub
#: renews all of them in one write, with one renew function.
_MEMBERS: weakref.WeakKeyDictionary[Hub, dict[str, RateLimiter]] = weakref.WeakKeyDictionary()


def _renew_members(hub: Hub) -> RenewFn:
    def renew(status: JSON, ids: set[str], wall: str) -> tuple[NewState, set[str]]:
        obj = hub.obj
        spec = obj.spec if obj is not None else {}
        members = _MEMBERS.get(hub, {})
        stale = hub.tracker.stale(state.member_entries(status), hub.clock.monotonic())
        missing: set[str] = set()
        current: JSON = status
        wrote = False
        for member_id in sorted(ids):
            member = members.get(member_id)
            if member is None:
                missing.add(member_id)
                continue
            out = state.renew(
                current,
                spec,
                member_id=member_id,
                demand=member._demand(spec),
                wall=wall,
                drop=(stale | member._old_ids) - ids,
                where=member._where,
            )
            if out.status is None or out.share is None:
                member._pending = None
                missing.add(member_id)
                continue
            member._lower(out.share)  # before the write is sent
            member._pending = out.share
            current, wrote = out.status, True
        return (current if wrote else None), missing

    return renew


class RateLimiter:
    """This process's membership of a cluster-wide rate limit.

    ``await acquire(cost)`` waits for ``cost`` tokens; ``try_acquire(cost)``
    takes them only if they are there now. Both spend from this member's
    local bucket: no API call. ``share`` is the rate (tokens per second) this
    member may spend now, ``rate`` and ``burst`` the cluster's, as last
    observed (``kubectl edit`` of the spec applies within one renewal).
    """

    def __init__(self, rt: Runtime, request: RateLimitRequest) -> None:
        self._rt = rt
        self.name = request.name
        self._request = request
        self._ttl = float(request.ttl)
        self._where = Where(RATELIMIT, request.name, rt.store.namespace)
        self._hub = rt.hub(RATELIMIT, request.name, state.tracked_entries)
        self._clock = rt.clock
        self._bucket = state.Bucket(self._clock.monotonic())
        self._entry: Entry | None = None
        self._cap = 0.0  # the share in force (never above what the store records)
        self._pending: float | None = None  # the share the renewal in flight writes
        self._old_ids: set[str] = set()  # earlier memberships, to remove
        self._spec = state.Spec(request.rate, request.burst or state.default_burst(request.rate))
        self._error: CorruptState | None = None
        self._seen = -1  # hub.changes last synced
        self._changed = asyncio.Event()
        self._lock = asyncio.Lock()  # acquirers of this member wait in turn
        self._window_start = self._clock.monotonic()
        self._used = 0.0
        self._max_cost = 0.0  # the largest call asked for: its bucket must hold it
        self._recent: collections.deque[float] = collections.deque(maxlen=WINDOWS - 1)
        self._limited = True  # a newcomer asks for a fair share
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._watching = False

    def __repr__(self) -> str:
        return f"<RateLimiter {self.name!r} share={self.share:g}/s of {self.rate:g}/s>"

    # -- what callers use ---------------------------------------------------------------

    @property
    def rate(self) -> float:
        """The cluster's rate (tokens per second), as last observed."""
        return self._spec.rate

    @property
    def burst(self) -> float:
        """The cluster's burst (tokens the buckets hold in all), as last observed."""
        return self._spec.burst

    @property
    def share(self) -> float:
        """Tokens per second this member may spend now (0 while it is not a member)."""
        self._sync()
        return self._cap if self._in_force(self._clock.monotonic()) else 0.0

    def try_acquire(self, cost: float = 1) -> bool:
        """Spend ``cost`` tokens if this member's bucket has them now (no wait, no API call).

        ``False`` also while another task of this member waits in
        :meth:`acquire` (first come, first served).

        Raises:
            InvalidArgument: ``cost`` is not a positive number, or is more
                than the burst (it could never be spent).
            CorruptState: the object's state does not parse: nothing is spent.
            ClientClosed: the limiter's block has ended.
        """
        tokens = parse_cost(cost)
        self._check(tokens)
        self._max_cost = max(self._max_cost, tokens)
        now = self._clock.monotonic()
        if not self._lock.locked() and self._in_force(now) and self._bucket.take(tokens, now):
            self._used += tokens
            return True
        self._limited = True
        return False

    async def acquire(self, cost: float = 1, *, timeout: Duration | None = None) -> None:
        """Wait until ``cost`` tokens can be spent, and spend them (no API call).

        Tasks of this member are served first come, first served. While the
        membership is being (re)established, or the member's share is too
        small for ``cost``, it waits for its share to grow.

        Raises:
            InvalidArgument: ``cost`` or ``timeout`` is malformed, or ``cost``
                is more than the burst (it could never be spent).
            AcquireTimeout: not spent within ``timeout``; nothing was spent.
            CorruptState: the object's state does not parse: nothing is spent.
            ClientClosed: the limiter's block has ended.
        """
        tokens = parse_cost(cost)
        wait = check.timeout(timeout)
        clock = self._clock
        deadline = None if wait is None else clock.monotonic() + wait
        self._check(tokens)
        self._max_cost = max(self._max_cost, tokens)
        async with self._lock:
            while True:
                seen, changed = self._hub.changes, self._changed
                self._check(tokens)
                now = clock.monotonic()
                if self._in_force(now) and self._bucket.take(tokens, now):
                    self._used += tokens
                    return
                self._limited = True
                if deadline is not None and now >= deadline:
                    raise AcquireTimeout(
                        f"rate limit {self.name!r}: {tokens:g} tokens not available within "
                        f"{wait:g}s (share {self.share:g}/s of {self.rate:g}/s)"
                    )
                until = deadline
                if self._in_force(now):
                    ready = self._bucket.wait_for(tokens, now)
                    assert self._entry is not None
                    # (at least a microsecond: a wait that rounds to nothing would spin)
                    nearest = self._entry.deadline if ready is None else now + max(ready, 1e-6)
                    until = nearest if until is None else min(until, nearest)
                await self._wait(seen, changed, until)

    # -- membership ---------------------------------------------------------------------

    def _check(self, cost: float) -> None:
        if self._closed:
            raise ClientClosed(f"rate limit {self.name!r}: its `async with` block has ended")
        self._rt.check_open()
        self._sync()
        if self._error is not None:
            raise self._error
        if cost > self._spec.burst:
            raise InvalidArgument(
                f"cost={cost:g} can never be spent: rate limit {self.name!r} has burst "
                f"{self._spec.burst:g} (pass burst= when creating it, or kubectl edit "
                f"ratelimit {self.name})",
                argument="cost",
            )

    def _in_force(self, now: float) -> bool:
        entry = self._entry
        if entry is None or entry.lost_reason is not None or now >= entry.deadline:
            if self._bucket.share or self._bucket.tokens:
                self._bucket.empty(now)
            return False
        return self._error is None

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _wait(self, seen: int, changed: asyncio.Event, until: float | None) -> None:
        hub_task = asyncio.ensure_future(self._hub.wait_change(seen, until))
        own_task = asyncio.ensure_future(self._clock.wait(changed, until))
        try:
            done, _ = await asyncio.wait({hub_task, own_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            hub_task.cancel()
            own_task.cancel()
            await asyncio.gather(hub_task, own_task, return_exceptions=True)
        if hub_task in done and not hub_task.cancelled() and hub_task.exception() is not None:
            raise hub_task.exception()  # type: ignore[misc]  # the watch ended for good

    def _set_cap(self, share: float) -> None:
        now = self._clock.monotonic()
        self._cap = max(0.0, share)
        spec = self._spec
        capacity = spec.burst * min(self._cap, spec.rate) / spec.rate
        self._bucket.set(self._cap, capacity, now)
        self._notify()

    def _lower(self, share: float) -> None:
        """Lower the share in force (never raise it: only a confirmed write may)."""
        if share < self._cap:
            self._set_cap(share)

    def _sync(self) -> None:
        """Take in what the hub observed: the spec, and a lower target (at once)."""
        if self._hub.changes == self._seen:
            return
        self._seen = self._hub.changes
        obj = self._hub.obj
        if obj is None:
            if self._entry is not None and self._cap > 0:
                # Deleted (an operator's reset): nothing is recorded for us any more;
                # stop now rather than at the renewal that will find it gone.
                self._set_cap(0.0)
            return
        try:
            spec = state.parse_spec(obj.spec, self._where)
            target = (
                None
                if self._entry is None
                else state.target_of(obj.spec, obj.status, self._entry.id, self._where)
            )
        except CorruptState as exc:
            self._error = exc
            self._bucket.empty(self._clock.monotonic())
            self._notify()
            return
        self._error = None
        respec = spec != self._spec
        self._spec = spec
        if self._entry is not None and target is None and self._entry.lost_reason is None:
            # Our entry is gone from a newer version: we cannot spend what is not ours.
            target = 0.0
        if target is not None and target < self._cap:
            self._set_cap(target)
        elif respec:
            self._set_cap(self._cap)  # the capacity follows the burst and rate

    def _demand(self, spec: JSON) -> float:
        """Tokens per second to report: the most of the last :data:`WINDOWS` windows.

        A window (since the last confirmed renewal) in which a call waited or
        was refused asks for all of the rate: the member is limited, and gets
        at most its fair share of it. Else a window asks for its use times
        :data:`HEADROOM`, and at least the share whose bucket holds the
        largest call (``cost * rate / burst``; a smaller one could never spend
        it), or nothing if it made no call. Taking the most of the last few
        windows keeps a member that calls now and then (once every period or
        so, so that some windows see no call) from losing its share between
        two calls and then asking for the whole rate.
        """
        try:
            parsed = state.parse_spec(spec)
        except CorruptState:
            parsed = self._spec
        if self._limited:
            return parsed.rate
        return min(parsed.rate, max([self._window_demand(parsed), *self._recent]))

    def _window_demand(self, spec: state.Spec) -> float:
        if self._used <= 0:
            return 0.0
        elapsed = max(self._clock.monotonic() - self._window_start, 1e-3)
        floor = self._max_cost * spec.rate / spec.burst
        return max(self._used / elapsed * HEADROOM, floor)

    def _renewed(self, entry: Entry, written: StoredObject) -> None:
        """A renewal was confirmed: what it recorded is in force from now on."""
        if entry is not self._entry:
            return  # an earlier membership's late answer
        pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            recorded = state.share_of(written.status, entry.id, self._where)
        except CorruptState:
            recorded = None
        self._recent.append(self._window_demand(self._spec))  # its use, limited or not
        self._window_start = self._clock.monotonic()
        self._used = 0.0
        self._limited = False
        present = {e["id"] for e in state.member_entries(written.status)}
        self._old_ids &= present  # the renewal removed the others
        self._set_cap(0.0 if recorded is None else min(pending, recorded))

    async def _ensure(self) -> StoredObject:
        spec: JSON = {"rate": self._request.rate}
        if self._request.burst is not None:
            spec["burst"] = self._request.burst
        obj = await self._hub.current()
        while obj is None:
            try:
                obj = await self._rt.store.create(RATELIMIT, self.name, spec)
                self._hub.observe(obj)
            except AlreadyExists:
                obj = await self._hub.refresh()
        cluster = state.parse_spec(obj.spec, self._where)
        if cluster.rate != self._request.rate or (
            self._request.burst is not None and cluster.burst != self._request.burst
        ):
            log.warning(
                "rate limit %r has rate=%g/s burst=%g in the cluster, not rate=%g/s burst=%s "
                "as requested; the cluster wins (change it with kubectl edit ratelimit %s)",
                self.name,
                cluster.rate,
                cluster.burst,
                self._request.rate,
                self._request.burst,
                self.name,
            )
        return obj

    async def _join(self) -> None:
        """Become a member: one guarded write taking whatever of the fair share is free.

        Raises:
            StoreUnavailable / CorruptState / Forbidden / ...: not joined.
        """
        await self._ensure()
        member_id = uuid.uuid4().hex
        sends = Sends()
        demand = self._spec.rate  # a newcomer asks for a fair share
        old = set(self._old_ids)

        def decide(obj: StoredObject) -> tuple[NewState, float | None]:
            stale = self._hub.stale(obj)
            out = state.join(
                obj.status,
                obj.spec,
                member_id=member_id,
                holder=self._rt.identity,
                ttl=self._ttl,
                demand=demand,
                wall=micro_time(self._clock.wall()),
                drop=stale | old,
                where=self._where,
            )
            return out.status, out.share

        self._old_ids.add(member_id)  # until confirmed: a lost answer may have landed
        try:
            share, written = await self._hub.update(decide, sends=sends)
        except NotFound:
            self._hub.observe(None, deleted=True)
            raise
        entry = Entry(
            self._hub,
            member_id,
            self._ttl,
            _renew_members(self._hub),
            sent_at=NEVER,
            drop=self._closing_client,
        )
        entry.record(sends, present=share is not None)
        if share is None:
            raise KonductorError(
                f"rate limit {self.name!r} has its maximum number of members; not joined"
            )
        self._old_ids -= old | {member_id}
        entry.on_lost.append(lambda reason: self._lost(entry, reason))
        entry.on_renewed.append(lambda written: self._renewed(entry, written))
        _MEMBERS.setdefault(self._hub, {})[member_id] = self
        self._entry = entry
        self._window_start = self._clock.monotonic()
        self._used = 0.0
        self._limited = True
        self._recent.clear()
        self._seen = -1
        self._rt.renewer.add(entry)
        recorded = state.share_of(written.status, member_id, self._where)
        self._set_cap(0.0 if recorded is None else min(share, recorded))
        self._sync()

    def _lost(self, entry: Entry, reason: str) -> None:
        if entry is not self._entry:
            return  # an earlier membership, already forgotten
        log.warning("rate limit %r: membership lost (%s); rejoining", self.name, reason)
        self._forget(entry)
        self._old_ids.add(entry.id)
        self._notify()

    def _forget(self, entry: Entry) -> None:
        self._entry = None
        self._pending = None
        self._cap = 0.0
        self._bucket.empty(self._clock.monotonic())
        members = _MEMBERS.get(self._hub)
        if members is not None:
            members.pop(entry.id, None)

    async def _maintain(self) -> None:
        """Rejoin whenever the membership is lost, with backoff while the store fails."""
        backoff = Backoff(initial=0.1, cap=5.0)
        while not self._closed:
            entry = self._entry
            if entry is not None:
                await entry.lost.wait()
                continue
            try:
                await self._join()
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except ClientClosed:
                return
            except CorruptState as exc:
                self._error = exc
                self._notify()
                log.warning("rate limit %r: %s", self.name, exc)
                await self._clock.sleep(backoff.next_delay())
            except KonductorError as exc:
                log.warning("rate limit %r: could not rejoin: %s", self.name, exc)
                await self._clock.sleep(backoff.next_delay())

    async def _open(self) -> RateLimiter:
        self._hub.retain_watch()
        self._watching = True
        try:
            for attempt in range(3):
                try:
                    await self._join()
                    break
                except NotFound:  # deleted between its creation and the join: again
                    if attempt == 2:
                        raise
        except BaseException:
            await self._close()
            raise
        self._task = asyncio.ensure_future(self._maintain())
        return self

    async def _drop(self, deadline: float) -> None:
        """Remove our entries (and earlier ones) from the store, giving up at ``deadline``."""
        entry = self._entry
        ids = set(self._old_ids) | ({entry.id} if entry is not None else set())
        if entry is not None:
            self._forget(entry)
        if not ids:
            return

        def decide(obj: StoredObject) -> tuple[NewState, None]:
            return state.leave(obj.status, ids, where=self._where), None

        with contextlib.suppress(NotFound):
            await self._hub.update(decide, deadline=deadline)
        self._old_ids -= ids

    async def _closing_client(self, deadline: float) -> None:
        """The client closes (its renewer drops what it renews): leave, and stop rejoining."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._drop(deadline)
        if self._watching:
            self._watching = False
            self._hub.release_watch()
        self._notify()

    async def _close(self) -> None:
        """Stop spending, stop renewing, leave (bounded by the member's own deadline)."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        entry = self._entry
        now = self._clock.monotonic()
        deadline = max(entry.deadline if entry is not None else now, now + WRITE_FLOOR)
        if entry is not None:
            self._rt.renewer.remove(entry)
        try:
            await self._drop(deadline)
        except KonductorError as exc:
            log.warning(
                "rate limit %r: could not leave (the entry expires after its TTL): %s",
                self.name,
                exc,
            )
        finally:
            if self._watching:
                self._watching = False
                self._hub.release_watch()
            self._notify()


class RateLimitGuard:
    """``async with``: join the rate limit, yield the :class:`RateLimiter`, leave on exit."""

    def __init__(self, rt: Runtime, request: RateLimitRequest) -> None:
        self._rt = rt
        self.request = request
        self._limiter: RateLimiter | None = None

    async def __aenter__(self) -> RateLimiter:
        self._limiter = RateLimiter(self._rt, self.request)
        return await self._limiter._open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        limiter, self._limiter = self._limiter, None
        if limiter is not None:
            await asyncio.shield(limiter._close())


#: Each client's long-lived memberships, by name, for :meth:`acquire_rate_limit`
#: (and the decorator): joined on first use, left when the client closes.
_SHARED: weakref.WeakKeyDictionary[Runtime, dict[str, asyncio.Future[RateLimiter]]] = (
    weakref.WeakKeyDictionary()
)


async def shared_limiter(rt: Runtime, request: RateLimitRequest) -> RateLimiter:
    """The client's long-lived membership of ``request.name``, joined on first use.

    Concurrent first callers share one join; a join that failed is tried
    again by the next caller.
    """
    rt.check_open()
    joined = _SHARED.setdefault(rt, {})
    future = joined.get(request.name)
    if future is None or (future.done() and (future.cancelled() or future.exception())):
        future = asyncio.ensure_future(RateLimiter(rt, request)._open())
        joined[request.name] = future
    limiter = await asyncio.shield(future)
    if limiter._closed:  # the client closed it
        joined.pop(request.name, None)
        rt.check_open()
    return limiter


class RateLimitMethods(HasRuntime):
    """The rate-limit methods of :class:`konductor.Client`."""

    async def acquire_rate_limit(
        self,
        name: str,
        rate: Rate,
        *,
        burst: float | None = None,
        cost: float = 1,
        ttl: Duration = DEFAULT_TTL,
        timeout: Duration | None = None,
    ) -> None:
        """Wait until ``cost`` tokens of rate limit ``name`` can be spent, and spend them.

        Spends from this client's long-lived membership of the limit, joined
        on the first call (one write) and left when the client closes: later
        calls cost no API request. For a membership scoped to a block, use
        :meth:`rate_limit`. ``rate``, ``burst`` and ``ttl`` are those of
        :meth:`rate_limit` (the first call's apply to the membership).

        Raises:
            InvalidArgument / InvalidName: bad arguments, before any API call.
            AcquireTimeout: not spent within ``timeout``; nothing was spent.
            CorruptState: the object's state does not parse: nothing is spent.
        """
        request = RateLimitRequest.parse(name, rate, burst, ttl)
        tokens = parse_cost(cost)
        wait = check.timeout(timeout)
        limiter = await shared_limiter(self._rt, request)
        await limiter.acquire(tokens, timeout=wait)

    def rate_limit(
        self,
        name: str,
        rate: Rate,
        *,
        burst: float | None = None,
        ttl: Duration = DEFAULT_TTL,
    ) -> RateLimitGuard:
        """``async with client.rate_limit("provider-api", rate="100/s") as limiter:``.

        ``rate`` is tokens per second cluster-wide: a number, or ``"N/s"``,
        ``"N/m"``, ``"N/h"``. ``burst`` is how many tokens the members'
        buckets hold in all (default: one second of the rate, at least 1).
        Created with them if missing; if it exists the cluster's spec wins (a
        mismatch is logged). Each ``async with`` joins as one member, renewed
        about every ttl/3; its share follows its demand (see docs/rate-limit.md).

        Raises:
            InvalidArgument / InvalidName: bad arguments, before any API call.
            CorruptState: (on entry) the object's state does not parse.
        """
        request = RateLimitRequest.parse(name, rate, burst, ttl)
        self._rt.check_open()
        return RateLimitGuard(self._rt, request)
