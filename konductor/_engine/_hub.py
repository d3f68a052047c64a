"""One shared view of one object per client: cache, watch, expiry, the write loop.

Every waiter and holder of the same object in a process shares its hub, so a
process opens at most one watch per object however many tasks wait on it,
and a write whose response carries the new version keeps the cache current
(an uncontended acquire and release cost two writes and no read).

Waiting is watch-driven: a waiter sleeps until the object changes or until
the earliest moment an entry blocking it could become stale on this
observer's clock, never on a fixed poll interval.

Every request is bounded. A write carries a deadline (a renewal's is its
holder's own deadline; others get :data:`WRITE_BUDGET`) and is never sent, nor
retried, past it. A watch that fails for good (``Forbidden``, the CRD missing)
ends and its error is raised to every waiter; one that only fails for now is
reopened with backoff; one that has gone silent (a dead connection: it has
delivered nothing for WATCH_SILENCE seconds while writes of ours conflicted
twice in a row with versions it never delivered) is reopened at once. A watch
that merely lags under load keeps delivering and is left alone: reopening it
would add load where there is too much already. Waiters never depend on the
watch for safety (every decision is a compare-and-swap, or a JSON Patch that
the store applies only if what the decision read is unchanged), only for
promptness.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Callable
from typing import Any, TypeVar

from konductor import _observe as observe
from konductor._backoff import Backoff
from konductor._engine._clock import Clock
from konductor._engine._expiry import ExpiryTracker
from konductor._errors import (
    Conflict,
    CorruptState,
    Forbidden,
    KonductorError,
    NotFound,
    StoreUnavailable,
)
from konductor._store._base import JSON, Store, StoredObject, version_newer
from konductor._store._kinds import Kind

log = logging.getLogger("konductor")
T = TypeVar("T")
WATCH_LINGER = 30.0  # seconds an unused watch stays open
#: Seconds a write without a deadline of its own may take, retries included.
WRITE_BUDGET = 30.0
#: Seconds a write may outlive the deadline of the call it serves (so that a
#: non-blocking try, whose deadline is now, can still be sent).
WRITE_FLOOR = 2.0
#: Seconds a write waits for the watch to deliver the version it conflicted with.
CONFLICT_WAIT = 0.5
#: Upper bound (seconds) of the random pause before a write retries after its
#: second and later conflicts in a row.
CONFLICT_SPREAD = 0.2
#: Seconds of complete silence after which a watch that failed to explain two
#: conflicts in a row is taken for dead. A watch that lags under load still
#: delivers events; reopening it would only add load.
WATCH_SILENCE = 5.0

Entries = Callable[[StoredObject], list[JSON]]
#: Seconds after a patch of ours, with nothing written since, before derived
#: fields it may have left behind are put right (see ``Hub(settle=)``).
SETTLE_AFTER = 1.0


@dataclasses.dataclass
class Sends:
    """When the writes carrying one update's change were sent (monotonic, the hub's clock).

    A holder's deadline must count from a moment no later than the write that
    made its entry what others now observe. ``committed`` is the attempt the
    store confirmed (the only one of its write that landed: another that had
    landed would have made it conflict). When no attempt was confirmed, one
    may still have landed with its answer lost: ``first`` is the earliest that
    can have happened.
    """

    first: float | None = None
    committed: float | None = None

    def sent(self, at: float) -> None:
        if self.first is None:
            self.first = at

    @property
    def landed_by(self) -> float | None:
        """The latest safe "sent at" for the change: the confirmed attempt, else the first."""
        return self.committed if self.committed is not None else self.first


@dataclasses.dataclass(frozen=True)
class Patch:
    """A decided change as a guarded JSON Patch, and the status it leads to.

    ``ops`` test exactly what the decision depended on (see
    :func:`konductor._engine._queue_state.patch_ops`), so the write
    succeeds on the object as it is when it arrives unless one of those parts
    changed: writers stop conflicting over changes that do not matter to them.
    ``status`` is the status the decision computed (for combining updates and
    as the compare-and-swap fallback).
    """

    ops: list[JSON]
    status: JSON


#: What a ``decide`` function returns as the new state: a whole status (or spec)
#: to write by compare-and-swap, a :class:`Patch`, or ``None`` for no write.
NewState = JSON | Patch | None
#: A fix for derived fields a patch may leave behind, given the object written.
Settle = Callable[[StoredObject], NewState]


@dataclasses.dataclass
class _Pending:
    decide: Callable[[StoredObject], tuple[NewState, Any]]
    sends: Sends | None
    future: asyncio.Future[tuple[Any, StoredObject]]
    deadline: float  # monotonic: never sent, nor retried, after this


class Hub:
    """Cache, watch and expiry tracking for one (kind, name)."""

    def __init__(
        self,
        store: Store,
        kind: Kind,
        name: str,
        clock: Clock,
        entries: Entries,
        settle: Settle | None = None,
    ) -> None:
        """``settle(obj)`` says how to put right what a patch leaves behind
        (a summary field counted without a ticket appended concurrently);
        it is applied :data:`SETTLE_AFTER` seconds after a patch of ours if
        nothing was written since (a later writer settles instead)."""
        self.store = store
        self._settle = settle
        self._settling: asyncio.TimerHandle | None = None
        self._settle_task: asyncio.Task[None] | None = None
        self.kind = kind
        self.name = name
        self.clock = clock
        self.tracker = ExpiryTracker()
        self._entries = entries
        self.obj: StoredObject | None = None
        self.changes = 0  # bumped on every observed change
        self._changed = asyncio.Event()  # replaced by a fresh one on every change
        self._watchers = 0
        self._watch_task: asyncio.Task[None] | None = None
        self._pending: list[_Pending] = []
        self._linger: asyncio.TimerHandle | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._pause: asyncio.Future[None] | None = None  # the writer's backoff before a retry
        self.watch_error: KonductorError | None = None  # why the watch ended for good
        self._watch_misses = 0  # conflicts the watch did not explain in time, in a row
        self._watch_heard = 0.0  # monotonic time the watch last delivered (or opened)
        self.watch_restarts = 0  # silent watches reopened (for tests and metrics)
        self._patches = True  # send Patch decisions as patches (False: the Role forbids it)

    # -- observation ------------------------------------------------------------------

    def observe(self, obj: StoredObject | None, *, deleted: bool = False) -> None:
        """Take ``obj`` as the object's latest state (if it is newer than the cache)."""
        if deleted:
            self.obj = None
        elif obj is not None:
            if self.obj is not None and not version_newer(obj.version, self.obj.version):
                return
            self.obj = obj
            self.tracker.observe(self._entries(obj), self.clock.monotonic())
        self._notify()

    def _notify(self) -> None:
        self.changes += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def stale(self, obj: StoredObject) -> set[str]:
        """Ids of ``obj``'s entries this observer has seen unchanged for their full TTL."""
        return self.tracker.stale(self._entries(obj), self.clock.monotonic())

    async def refresh(self, *, timeout: float | None = None) -> StoredObject | None:
        """Read the object from the store (``None`` if it does not exist)."""
        try:
            obj = await self.store.get(self.kind, self.name, timeout=timeout)
        except NotFound:
            self.observe(None, deleted=True)
            return None
        self.observe(obj)
        return self.obj

    async def current(self) -> StoredObject | None:
        return self.obj if self.obj is not None else await self.refresh()

    # -- compare-and-swap ------------------------------------------------------------

    async def update(
        self,
        decide: Callable[[StoredObject], tuple[NewState, T]],
        *,
        sends: Sends | None = None,
        deadline: float | None = None,
    ) -> tuple[T, StoredObject]:
        """Apply ``decide`` to the latest state until the write wins the CAS.

        ``decide`` returns the new status (the new spec for a kind without a
        status, such as a Lease; a :class:`Patch` to send a guarded JSON Patch
        instead of a compare-and-swap; ``None`` for no write) and a result; it is
        re-run on the fresh object after every conflict. ``sends`` records when
        the attempts carrying its change were sent (holders measure their
        deadline from the attempt that succeeded).
        ``deadline`` (monotonic, on the hub's clock) bounds the whole update:
        no attempt is sent after it and none outlives it; without one the
        update may take :data:`WRITE_BUDGET` seconds.

        Updates from tasks of this process are *combined*: one writer task
        applies every pending ``decide`` in arrival order, each to the state the
        previous ones produced, and sends a single write. Tasks of one process
        therefore never conflict with each other, and ten waiters queueing at
        once cost one write, exactly as if they had written one after another.

        Raises:
            NotFound: the object does not exist.
            StoreUnavailable: the store could not be reached before the deadline
                (the write may or may not have been applied).
        """
        future: asyncio.Future[tuple[Any, StoredObject]] = (
            asyncio.get_running_loop().create_future()
        )
        if deadline is None:
            deadline = self.clock.monotonic() + WRITE_BUDGET
        self._pending.append(_Pending(decide, sends, future, deadline))
        if self._writer is None or self._writer.done():
            # A task of its own, so that a caller's cancellation never aborts the
            # write others are waiting for.
            self._writer = asyncio.ensure_future(self._write_pending())
        result, obj = await future
        return result, obj

    async def _write_pending(self) -> None:
        backoff = Backoff(initial=0.05, cap=1.0)
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self._write_batch(batch)
                backoff.reset()
            except StoreUnavailable as exc:
                # Those whose time is up fail; the others, whose write was cut
                # short by an earlier deadline in the batch, go round again.
                now = self.clock.monotonic()
                retry = [
                    item
                    for item in batch
                    if item.deadline > now and not item.future.done() and not self._closing
                ]
                for item in batch:
                    if item not in retry and not item.future.done():
                        item.future.set_exception(exc)
                if retry:
                    self._pending[:0] = retry
                    delay = min(backoff.next_delay(), min(i.deadline for i in retry) - now)
                    self._pause = asyncio.ensure_future(self.clock.sleep(delay))
                    await asyncio.wait({self._pause})  # close() may cut it short
                    self._pause = None
            except BaseException as exc:
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise

    async def _write_batch(self, batch: list[_Pending]) -> None:
        def remaining() -> float:
            return min(item.deadline for item in batch) - self.clock.monotonic()

        if remaining() <= 0:
            raise StoreUnavailable(
                f"{self.kind} {self.name!r}: the write's deadline passed before it could be sent"
            )
        obj = await self.current()
        reread = False
        conflicts = 0
        write = self.store.replace_status if self.kind.has_status else self.store.replace_spec
        while True:
            if obj is None:
                raise NotFound(f"{self.kind} {self.name!r} not found")
            view = obj
            results: list[Any] = []
            changed: list[_Pending] = []
            ops: list[JSON] | None = [] if self._patches and self.kind.has_status else None
            try:
                for item in batch:
                    decided, result = item.decide(view)
                    results.append(result)
                    if isinstance(decided, Patch):
                        if ops is not None:
                            # Each decision's tests were made on the state the
                            # previous ones lead to, and the store applies the
                            # operations in order: the concatenation says it all.
                            ops.extend(decided.ops)
                        new: JSON | None = decided.status
                    else:
                        new = decided
                        if new is not None:
                            ops = None  # one compare-and-swap for the whole batch
                    if new is not None:
                        changed.append(item)
                        # Kinds with a status subresource keep their state in status;
                        # a Lease keeps it in spec.
                        view = (
                            dataclasses.replace(view, status=new)
                            if self.kind.has_status
                            else dataclasses.replace(view, spec=new)
                        )
            except CorruptState:
                budget = remaining()
                if reread or budget <= 0:
                    raise
                # The cached object may predate a repair, and no watch may be open
                # to bring it up to date: decide once more on a fresh read.
                reread = True
                obj = await self.refresh(timeout=max(0.001, remaining()))
                continue
            if not changed:
                for item, result in zip(batch, results, strict=True):
                    item.future.set_result((result, obj))
                return

            attempt_at = self.clock.monotonic()

            def sent(changed: list[_Pending] = changed) -> None:
                nonlocal attempt_at
                attempt_at = self.clock.monotonic()
                for item in changed:
                    if item.sends is not None:
                        item.sends.sent(attempt_at)

            state = view.status if self.kind.has_status else view.spec
            budget = remaining()
            if budget <= 0:
                raise StoreUnavailable(
                    f"{self.kind} {self.name!r}: the write's deadline passed while it was retried"
                )
            try:
                if ops is not None:
                    written = await self.store.patch_status(
                        self.kind, self.name, ops, timeout=budget, on_sent=sent
                    )
                else:
                    written = await write(
                        self.kind,
                        self.name,
                        state,
                        version=obj.version,
                        timeout=budget,
                        on_sent=sent,
                    )
            except Conflict:
                conflicts += 1
                obj = await self._after_conflict(obj, budget)
                if conflicts >= 2:
                    # Lost twice in a row: other processes are deciding on the same
                    # state at the same moment. Spread the retries out (jittered,
                    # growing) rather than all re-deciding on the next event together.
                    # Real time, not the hub's clock: this paces real processes
                    # (and a test's fake clock must not have to advance for it).
                    pause = random.uniform(0, min(CONFLICT_SPREAD, 0.005 * 2**conflicts))
                    await asyncio.sleep(min(pause, max(0.0, remaining() - WRITE_FLOOR / 4)))
                    if self.obj is not None and (
                        obj is None or version_newer(self.obj.version, obj.version)
                    ):
                        obj = self.obj
                continue
            except Forbidden:
                if ops is None:
                    raise
                # A Role from before konductor sent patches: fall back to
                # compare-and-swap (correct, slower under contention).
                self._patches = False
                log.warning(
                    "%s %r: not allowed to patch the status (%s); writing by "
                    "compare-and-swap instead. Re-apply konductor's RBAC "
                    "(`konductor manifests --rbac -n NAMESPACE | kubectl apply -f -`) to "
                    "grant `patch` on the status: it is much cheaper when many processes "
                    "contend for one object",
                    self.kind,
                    self.name,
                    "forbidden",
                )
                continue
            except NotFound:
                self.observe(None, deleted=True)
                raise
            self.observe(written)
            if ops is not None:
                self._settle_soon(written)
            for item in changed:
                if item.sends is not None:
                    # A compare-and-swap lands once: an earlier attempt that had
                    # landed would have made this one conflict. A patch can land
                    # twice (an append re-sent after its answer was lost), so its
                    # change counts from the first attempt: earlier, so safe.
                    first = item.sends.first
                    item.sends.committed = (
                        attempt_at if ops is None or first is None else min(first, attempt_at)
                    )
            for item, result in zip(batch, results, strict=True):
                if not item.future.done():
                    item.future.set_result((result, written))
            return

    def _settle_soon(self, written: StoredObject) -> None:
        if self._settle is None or self._closing or self._settle(written) is None:
            return
        if self._settling is not None:
            self._settling.cancel()
        self._settling = asyncio.get_running_loop().call_later(
            SETTLE_AFTER, self._settle_if_quiet, written.version
        )

    def _settle_if_quiet(self, version: str) -> None:
        self._settling = None
        if self._closing or self.obj is None or self.obj.version != version:
            return  # written since: that writer settles, if anything is left
        settle = self._settle
        assert settle is not None

        async def run() -> None:
            try:
                await self.update(
                    lambda obj: (settle(obj), None),
                    deadline=self.clock.monotonic() + WRITE_FLOOR,
                )
            except KonductorError as exc:  # cosmetic: the next write puts it right
                log.debug("could not settle %s %r: %s", self.kind, self.name, exc)

        self._settle_task = asyncio.ensure_future(run())

    async def _after_conflict(self, stale: StoredObject, budget: float) -> StoredObject | None:
        """The object after a lost CAS: from the open watch if it delivers soon, else read.

        A watch that twice in a row fails to deliver, in time, a version a
        write of ours already conflicted with, and has delivered nothing at all
        for ``WATCH_SILENCE`` seconds, is taken for dead (its connection
        silently gone) and reopened.
        """
        if self._watch_task is not None and not self._watch_task.done():
            seen = self.changes
            until = self.clock.monotonic() + min(CONFLICT_WAIT, budget)
            while self.clock.monotonic() < until:
                if self.obj is not None and version_newer(self.obj.version, stale.version):
                    self._watch_misses = 0
                    return self.obj
                await self.wait_change(seen, until, raise_watch_error=False)
                seen = self.changes
            self._watch_misses += 1
            silent = self.clock.monotonic() - self._watch_heard
            if self._watch_misses >= 2 and silent >= WATCH_SILENCE:
                self._restart_watch()
        return await self.refresh(timeout=max(0.001, budget - CONFLICT_WAIT))

    # -- waiting ----------------------------------------------------------------------

    async def wait_change(
        self, seen_changes: int, until: float | None, *, raise_watch_error: bool = True
    ) -> None:
        """Return once ``changes`` exceeds ``seen_changes`` or at monotonic ``until``.

        Raises:
            KonductorError: the watch ended for good (``Forbidden``,
                ``CRDNotInstalled``, ...): waiting longer would wait forever.
        """
        if self.changes <= seen_changes:
            await self.clock.wait(self._changed, until)
        if raise_watch_error and self.watch_error is not None:
            raise self.watch_error

    def retain_watch(self) -> None:
        """Keep a watch open while at least one waiter or holder needs it."""
        self._watchers += 1
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        if self._watch_task is None or self._watch_task.done():
            self._start_watch()

    def _start_watch(self) -> None:
        self.watch_error = None
        self._watch_misses = 0
        self._watch_heard = self.clock.monotonic()
        self._watch_task = asyncio.ensure_future(self._watch())

    def _restart_watch(self) -> None:
        """Reopen a watch that has gone silent (its connection is presumed dead)."""
        if self._watch_task is None or self._watch_task.done():
            return
        log.warning(
            "watch of %s %r delivered nothing while the object changed; reopening it",
            self.kind,
            self.name,
        )
        self.watch_restarts += 1
        observe.watch_reconnected(self, "silent")
        self._watch_task.cancel()
        self._start_watch()

    def release_watch(self) -> None:
        """Drop one use; the watch stays open for ``WATCH_LINGER`` seconds of idleness.

        Lingering lets a process that acquires and releases the same object
        again and again keep one watch (and a current cache) instead of
        reopening it every time.
        """
        self._watchers -= 1
        if self._watchers <= 0 and self._watch_task is not None and self._linger is None:
            self._linger = asyncio.get_running_loop().call_later(WATCH_LINGER, self._stop_watch)

    def _stop_watch(self) -> None:
        self._linger = None
        if self._watchers <= 0 and self._watch_task is not None:
            self._watch_task.cancel()
            self._watch_task = None

    async def _watch(self) -> None:
        observe.watching(self)
        backoff = Backoff(initial=0.1, cap=5.0)
        while True:
            try:
                obj = self.obj or await self.refresh()
                if obj is None:
                    listed = await self.store.list(self.kind)
                    since, seen = listed.version, []
                    for item in listed.items:
                        if item.name == self.name:
                            self.observe(item)
                            since, seen = item.version, [item]
                else:
                    since, seen = obj.version, [obj]
                async with self.store.watch(
                    self.kind, name=self.name, since=since, seen=seen
                ) as events:
                    async for ev in events:
                        backoff.reset()
                        self._watch_heard = self.clock.monotonic()
                        self.observe(ev.object, deleted=ev.type == "DELETED")
            except asyncio.CancelledError:
                raise
            except StoreUnavailable as exc:  # for now: reopen with backoff
                log.warning("watch of %s %r failed: %s", self.kind, self.name, exc)
            except KonductorError as exc:
                # For good (Forbidden, CRDNotInstalled, Invalid...): every waiter
                # gets the error instead of waiting forever on a watch that will
                # never deliver.
                log.warning("watch of %s %r failed: %s", self.kind, self.name, exc)
                self.watch_error = exc
                self._notify()
                return
            except Exception as exc:
                log.exception("watch of %s %r failed", self.kind, self.name)
                self.watch_error = KonductorError(
                    f"watch of {self.kind} {self.name!r} failed: {type(exc).__name__}: {exc}"
                )
                self.watch_error.__cause__ = exc
                self._notify()
                return
            observe.watch_reconnected(self, "error")
            await asyncio.sleep(backoff.next_delay())

    async def close(self) -> None:
        """Stop the watch; a write in flight ends, one waiting to be retried fails now.

        A settle still due (a patch of ours may have left ``waiting`` behind)
        is made now, within :data:`WRITE_FLOOR`, so that the printer columns
        are right when the last process leaves.
        """
        due, settle = self._settling is not None, self._settle
        if self._settling is not None:
            self._settling.cancel()
            self._settling = None
        if due and settle is not None and self.obj is not None:
            try:
                await self.update(
                    lambda obj: (settle(obj), None),
                    deadline=self.clock.monotonic() + WRITE_FLOOR,
                )
            except KonductorError as exc:  # cosmetic: the next write puts it right
                log.debug("could not settle %s %r on close: %s", self.kind, self.name, exc)
        self._closing = True
        if self._pause is not None:
            self._pause.cancel()
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
        if self._settle_task is not None:
            await asyncio.gather(self._settle_task, return_exceptions=True)
        if self._watch_task is not None:
            self._watch_task.cancel()
            await asyncio.gather(self._watch_task, return_exceptions=True)
            self._watch_task = None


def entries_of(*keys: str) -> Entries:
    """An ``Entries`` function reading the listed status arrays."""

    def entries(obj: StoredObject) -> list[JSON]:
        out: list[JSON] = []
        for key in keys:
            value: Any = obj.status.get(key)
            if isinstance(value, list):
                out.extend(e for e in value if isinstance(e, dict))
        return out

    return entries
