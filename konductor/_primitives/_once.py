"""Run a function once cluster-wide: claim, run, renew, record; or wait and see.

Every decision is a pure transition from :mod:`._once_state` applied by
compare-and-swap. The first caller to claim the Once runs the function while
the client's renewal loop keeps its claim alive; everybody else waits
(watch-driven, waking at the earliest moment the runner's claim could expire
on this observer's clock) and sees the outcome. A runner that crashes stops
renewing and is taken over after its TTL; a runner that loses its claim has
its function cancelled and never records Done. Results are not transported
between processes: waiters learn only that the run succeeded or failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from konductor import _observe as observe
from konductor._backoff import Backoff
from konductor._engine import _validate as check
from konductor._engine._clock import micro_time
from konductor._engine._grant import in_background
from konductor._engine._hub import WRITE_FLOOR, Hub, Sends
from konductor._engine._parse import Where
from konductor._engine._renewal import NEVER, Entry
from konductor._engine._runtime import DEFAULT_TTL, HasRuntime, Runtime
from konductor._engine._validate import Duration
from konductor._errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    OnceFailed,
    OnceLost,
    StoreUnavailable,
    WaitTimeout,
)
from konductor._names import validate_name
from konductor._primitives import _once_state as state
from konductor._store._base import JSON, StoredObject
from konductor._store._kinds import ONCE

log = logging.getLogger("konductor")
T = TypeVar("T")


def _run_entries(obj: StoredObject) -> list[JSON]:
    """The runner's claim is the one entry whose expiry observers track."""
    run = state.run_of(obj.status)
    return [run] if run is not None else []


@dataclass(frozen=True)
class OnceStatus:
    """What a Once object records (see :meth:`OnceMethods.once_status`).

    ``state`` is ``"Pending"``, ``"Running"``, ``"Done"`` or ``"Failed"``;
    ``attempt`` counts run attempts (0: never run); ``runner`` is the identity
    of the current or last runner; ``error`` the recorded failure (Failed
    only); timestamps are the writers' wall clocks, for display only.
    """

    name: str
    state: str
    attempt: int
    runner: str | None = None
    error: str | None = None
    started_at: str | None = None
    done_at: str | None = None
    failed_at: str | None = None

    @property
    def done(self) -> bool:
        return self.state == state.DONE


def _status_of(name: str, status: JSON) -> OnceStatus:
    def text(key: str) -> str | None:
        value = status.get(key)
        return str(value) if value is not None else None

    return OnceStatus(
        name=name,
        state=state.state_of(status),
        attempt=state.attempt_of(status),
        runner=text("runner"),
        error=text("error"),
        started_at=text("startedAt"),
        done_at=text("doneAt"),
        failed_at=text("failedAt"),
    )


async def _call(fn: Callable[[], Awaitable[T]]) -> T:
    result = fn()
    if not inspect.isawaitable(result):
        raise InvalidArgument(
            f"once: fn must be an async callable taking no arguments; it returned "
            f"{type(result).__name__} (pass functools.partial(f, *args) for arguments)",
            argument="fn",
        )
    return await result


class _Once:
    def __init__(self, rt: Runtime, name: str, ttl: float) -> None:
        self.rt = rt
        self.name = name
        self.ttl = ttl
        self.hub: Hub = rt.hub(ONCE, name, _run_entries)
        self.where = Where(ONCE, name, rt.store.namespace)

    async def ensure(self) -> StoredObject:
        """The Once object read fresh, created (empty spec) if it does not exist."""
        obj = await self.hub.refresh()
        while obj is None:
            try:
                obj = await self.rt.store.create(ONCE, self.name, {})
                self.hub.observe(obj)
            except AlreadyExists:
                obj = await self.hub.refresh()
        return obj

    # -- the caller: claim or wait ----------------------------------------------------

    async def once(self, fn: Callable[[], Awaitable[T]], timeout: float | None) -> T | None:
        await self.ensure()
        clock = self.rt.clock
        deadline = None if timeout is None else clock.monotonic() + timeout
        claim = state.Claim(uuid.uuid4().hex, self.rt.identity, self.ttl)
        entry = self._entry(claim.id)
        joined: int | None = None
        backoff = Backoff(initial=0.1, cap=2.0)

        def decide(obj: StoredObject) -> tuple[JSON | None, state.Outcome]:
            stale = self.hub.stale(obj)
            stale.discard(claim.id)
            outcome = state.begin(
                obj.status, claim, stale, micro_time(clock.wall()), joined, where=self.where
            )
            return outcome.status, outcome

        watching = False
        try:
            while True:
                seen = self.hub.changes
                sends = Sends()
                try:
                    outcome, obj = await self.hub.update(decide, sends=sends)
                except NotFound:  # deleted meanwhile (an ops reset): start afresh
                    await self.ensure()
                    continue
                except StoreUnavailable as exc:  # ride it out, within the timeout
                    entry.record(sends, present=False)
                    now = clock.monotonic()
                    if deadline is not None and now >= deadline:
                        raise WaitTimeout(
                            f"once {self.name!r}: the store was unreachable for {timeout:g}s"
                        ) from exc
                    delay = backoff.next_delay()
                    log.warning("once %r: %s; trying again in %.2fs", self.name, exc, delay)
                    await clock.sleep(delay if deadline is None else min(delay, deadline - now))
                    continue
                backoff.reset()
                entry.record(sends, present=outcome.verdict == state.RUN)
                if outcome.verdict == state.RUN:
                    if clock.monotonic() < entry.deadline:
                        break
                    # Ours, but too late to be trusted (others may judge the claim
                    # expired): give it up and claim afresh.
                    await asyncio.shield(self._abandon(claim.id))
                    claim = state.Claim(uuid.uuid4().hex, self.rt.identity, self.ttl)
                    entry = self._entry(claim.id)
                    continue
                if outcome.verdict == state.DONE:
                    return None
                if outcome.verdict == state.FAILED:
                    error = str(obj.status.get("error", ""))
                    raise OnceFailed(
                        f"once {self.name!r} failed on its runner "
                        f"{obj.status.get('runner')!r} (attempt {outcome.attempt}): {error}; "
                        "the next caller will run it again",
                        error=error,
                    )
                if joined is None:
                    joined = outcome.attempt
                if not watching:
                    self.hub.retain_watch()
                    watching = True
                now = clock.monotonic()
                if deadline is not None and now >= deadline:
                    raise WaitTimeout(
                        f"once {self.name!r}: still running on {obj.status.get('runner')!r} "
                        f"(attempt {outcome.attempt}) after {timeout:g}s"
                    )
                run = state.run_of(obj.status)
                wake = self.hub.tracker.expires_at(run) if run is not None else float("inf")
                if deadline is not None:
                    wake = min(wake, deadline)
                await self.hub.wait_change(seen, None if wake == float("inf") else wake)
        except BaseException:
            # A claim write whose response never reached us may have made us the
            # runner: release it. Shielded against a second cancellation.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._abandon(claim.id))
            raise
        finally:
            if watching:
                self.hub.release_watch()
        return await self._run(fn, claim, entry, outcome.attempt)

    # -- the runner -------------------------------------------------------------------

    def _entry(self, claim_id: str) -> Entry:
        def renew(status: JSON, ids: set[str], wall: str) -> tuple[JSON | None, set[str]]:
            outcome, missing = state.renew(status, ids, wall, where=self.where)
            return outcome.status, missing

        return Entry(
            self.hub,
            claim_id,
            self.ttl,
            renew,
            sent_at=NEVER,  # until a write of it is confirmed
            drop=lambda deadline: self._abandon(claim_id, deadline),
        )

    def _lost(self, attempt: int, reason: str) -> OnceLost:
        return OnceLost(
            f"once {self.name!r}: the runner's claim (attempt {attempt}) was lost while "
            f"running: {reason}; the function was cancelled and not recorded as done, so "
            "another caller will run it"
        )

    @observe.operation("run")
    async def _run(
        self, fn: Callable[[], Awaitable[T]], claim: state.Claim, entry: Entry, attempt: int
    ) -> T:
        self.rt.renewer.add(entry)
        task: asyncio.Task[T] = asyncio.ensure_future(_call(fn))

        def on_lost(reason: str) -> None:
            if not task.done():
                task.cancel(f"konductor: once claim lost: {reason}")

        entry.on_lost.append(on_lost)
        recorded = False
        try:
            try:
                result = await task
            except asyncio.CancelledError as exc:
                current = asyncio.current_task()
                if entry.lost_reason is not None and not (current and current.cancelling()):
                    raise self._lost(attempt, entry.lost_reason) from exc
                raise
            except Exception as exc:
                if entry.lost_reason is not None:
                    raise self._lost(attempt, entry.lost_reason) from exc
                await self._record(claim, entry, attempt, state.truncate_error(repr(exc)))
                recorded = True
                raise
            await self._record(claim, entry, attempt, None)
            recorded = True
            return result
        finally:
            with contextlib.suppress(ValueError):
                entry.on_lost.remove(on_lost)
            self.rt.renewer.remove(entry)
            if not recorded and entry.lost_reason is not None:
                # Lost (the store is likely out of reach): clean up in the
                # background, so that the OnceLost is not delayed.
                in_background(self._abandon(claim.id), f"once {self.name!r} claim")
            elif not recorded:  # cancelled or unrecordable: let another caller run it
                deadline = max(entry.deadline, self.rt.clock.monotonic() + WRITE_FLOOR)
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._abandon(claim.id, deadline))

    async def _record(
        self, claim: state.Claim, entry: Entry, attempt: int, error: str | None
    ) -> None:
        """Write Done (``error`` None) or Failed, retrying while the claim is alive.

        Raises:
            OnceLost: the claim was lost or taken away before the record was
                written; nothing was recorded.
        """
        clock = self.rt.clock

        def decide(obj: StoredObject) -> tuple[JSON | None, str]:
            outcome = state.complete(
                obj.status,
                claim.id,
                attempt,
                claim.holder,
                micro_time(clock.wall()),
                error,
                lost=entry.lost_reason is not None,
                where=self.where,
            )
            return outcome.status, outcome.verdict

        backoff = Backoff(initial=0.1, cap=2.0)
        while True:
            try:
                verdict, _ = await self.hub.update(decide)
            except NotFound:
                verdict = state.REVOKED
            except StoreUnavailable as exc:
                if entry.lost_reason is not None:
                    raise self._lost(attempt, entry.lost_reason) from exc
                log.warning("once %r: could not record the outcome yet: %s", self.name, exc)
                await clock.wait(entry.lost, clock.monotonic() + backoff.next_delay())
                continue
            break
        if verdict == state.LOST:
            raise self._lost(attempt, entry.lost_reason or "not renewed in time")
        if verdict == state.REVOKED:
            raise self._lost(attempt, "the claim was taken over or the once was reset")

    async def _abandon(self, claim_id: str, deadline: float | None = None) -> None:
        def decide(obj: StoredObject) -> tuple[JSON | None, None]:
            return state.abandon(obj.status, claim_id, where=self.where).status, None

        with contextlib.suppress(NotFound):
            await self.hub.update(decide, deadline=deadline)

    # -- inspection and reset ---------------------------------------------------------

    async def status(self) -> OnceStatus:
        obj = await self.hub.refresh()
        return _status_of(self.name, obj.status if obj is not None else {})

    async def reset(self, force: bool) -> OnceStatus:
        before: JSON = {}

        def decide(obj: StoredObject) -> tuple[JSON | None, state.Outcome]:
            nonlocal before
            before = obj.status
            outcome = state.reset(obj.status, self.hub.stale(obj), force, where=self.where)
            return outcome.status, outcome

        await self.hub.refresh()
        try:
            outcome, _ = await self.hub.update(decide)
        except NotFound:
            return _status_of(self.name, {})
        if outcome.status is None and outcome.verdict == state.RUNNING:
            raise InvalidArgument(
                f"once {self.name!r} is running on {before.get('runner')!r} "
                f"(attempt {outcome.attempt}); wait for it to finish, or pass force=True to "
                "revoke that run (its function is cancelled at its next renewal)"
            )
        return _status_of(self.name, before)


def make(rt: Runtime, name: str, ttl: Duration) -> _Once:
    validate_name(name)
    return _Once(rt, name, check.ttl(ttl))


class OnceMethods(HasRuntime):
    """The once methods of :class:`konductor.Client`."""

    # -- once -------------------------------------------------------------------------

    async def once(
        self,
        name: str,
        fn: Callable[[], Awaitable[T]],
        *,
        ttl: Duration = DEFAULT_TTL,
        timeout: Duration | None = None,
    ) -> T | None:
        """Run ``fn`` once cluster-wide: ``await client.once("migrate-db", migrate)``.

        ``fn`` is an async callable taking no arguments (bind arguments with
        ``functools.partial(f, *args)`` or a lambda). The first caller runs it
        and gets its return value; concurrent callers wait for it and get
        ``None`` (results are not shared between processes); callers after a
        success get ``None`` at once without running it. The runner's claim is
        renewed every ``ttl/3``: if the runner dies, a waiter takes over once it
        has seen the claim unrenewed for ``ttl`` seconds. If ``fn`` raises, the
        failure is recorded (``status.error``) and the exception propagates to
        the runner; callers that waited on that run get :class:`OnceFailed`,
        and the next caller runs ``fn`` again. ``timeout`` bounds only the
        waiting, never ``fn`` itself.

        Raises:
            InvalidArgument / InvalidName: bad arguments, before any API call.
            WaitTimeout: another caller's run did not end within ``timeout``.
            OnceFailed: (to a waiter) the run it waited for failed.
            OnceLost: (to the runner) its claim was lost while ``fn`` ran
                (renewals failed for a whole TTL, or the once was reset with
                ``force``); ``fn`` was cancelled, nothing was recorded and
                another caller will run it.
            Exception: (to the runner) whatever ``fn`` raised.
        """
        check.async_callable(fn, "once: fn")
        once = make(self._rt, name, ttl)
        return await once.once(fn, check.timeout(timeout))

    async def once_status(self, name: str) -> OnceStatus:
        """What the Once ``name`` records now (``Pending``, attempt 0 if it does not exist).

        Raises:
            InvalidName: bad name, before any API call.
        """
        validate_name(name)
        return await _Once(self._rt, name, DEFAULT_TTL).status()

    async def reset_once(self, name: str, *, force: bool = False) -> OnceStatus:
        """Take the Once ``name`` back to Pending so that the next caller runs it again.

        The attempt counter (the fencing token) is kept. A run in progress is
        left alone unless ``force=True``, which revokes it: its runner loses
        its claim at its next renewal (within ``ttl/3``), its function is
        cancelled and it raises :class:`OnceLost`, so the next run may
        overlap the revoked one for up to that long. A run whose runner has
        stopped renewing (seen unchanged for its TTL) is reset without
        ``force``. Returns the status before the reset.

        Raises:
            InvalidName: bad name, before any API call.
            InvalidArgument: a live run is in progress and ``force`` is false.
        """
        validate_name(name)
        return await _Once(self._rt, name, DEFAULT_TTL).reset(force)
