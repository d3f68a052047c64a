"""Kubernetes Events for the rare transitions an operator should see in ``kubectl describe``.

Only on the Kubernetes store, and only for: a grant lost while held
(``GrantLost``, Warning), a grant that took over from expired holders
(``Takeover``), leadership gained or given up on a Lease (``LeaderElection``,
as client-go records it) and a once whose function failed (``OnceFailed``,
Warning). Never one per grant of a semaphore or mutex.

Rate-limited so that a flapping object cannot flood the API server: at most
one Event per object and reason (for leadership: per "became leader" and
"stopped leading") every :data:`PER_OBJECT_INTERVAL` seconds,
and at most :data:`BURST` per process per minute; the rest are dropped
(logged at DEBUG). Each Event is one POST, sent in a task of its own with a
short timeout and no retries, on the store's connection but not counted in
its ``api_requests`` (which measures the coordination itself). A 403 (the Role
lacks ``create`` on ``events``) is logged once as a WARNING and turns Events
off for that store. ``KONDUCTOR_EVENTS=off`` turns them off altogether.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import socket
import time
import weakref
from collections import deque

from konductor import _observe as observe
from konductor._errors import Forbidden, KonductorError, OnceLost
from konductor._kube._api import JSON, KubeApi, Target
from konductor._observe import Hold, Operation, Site
from konductor._store._kubernetes import KubernetesStore

log = logging.getLogger("konductor.events")

PER_OBJECT_INTERVAL = 60.0
BURST = 20
TIMEOUT = 5.0
_OFF = {"0", "off", "false", "no"}


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventRecorder(observe.Observer):
    """Records Events for the Kubernetes stores it was enabled for."""

    def __init__(self) -> None:
        self._stores: weakref.WeakSet[KubernetesStore] = weakref.WeakSet()
        self._last: dict[tuple[int, str, str, str], float] = {}
        self._recent: deque[float] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent = 0  # Events created (for tests and docs/performance.md)
        self.dropped = 0  # Events not sent because of the rate limits
        self.host = os.environ.get("POD_NAME") or socket.gethostname()

    def enable(self, store: KubernetesStore) -> None:
        self._stores.add(store)

    # -- the transitions ------------------------------------------------------------------

    def hold_ended(self, hold: Hold) -> None:
        if hold.reason is not None:
            self._record(
                hold.site,
                "Warning",
                "GrantLost",
                f"{self._who()} lost its grant (token {hold.token}) after holding it "
                f"{hold.held:.1f}s: {hold.message}",
            )

    def takeover(self, site: Site, expired: int) -> None:
        self._record(
            site, "Normal", "Takeover", f"{self._who()} took over from {expired} expired holder(s)"
        )

    def leadership(self, site: Site, leading: bool) -> None:
        what = "became leader" if leading else "stopped leading"
        self._record(site, "Normal", "LeaderElection", f"{self._who()} {what}", topic=what)

    def operation_ended(self, op: Operation) -> None:
        error = op.error
        if op.what != "run" or not isinstance(error, Exception) or isinstance(error, OnceLost):
            return
        self._record(
            op.site,
            "Warning",
            "OnceFailed",
            f"the once function failed on {self._who()}: {type(error).__name__}: {error}"[:1000],
        )

    def _who(self) -> str:
        return f"{self.host} (pid {os.getpid()})"

    # -- sending --------------------------------------------------------------------------

    def _allowed(self, site: Site, topic: str) -> bool:
        now = time.monotonic()
        key = (id(site.store), site.primitive, site.name, topic)
        last = self._last.get(key)
        while self._recent and now - self._recent[0] > 60.0:
            self._recent.popleft()
        if (last is not None and now - last < PER_OBJECT_INTERVAL) or len(self._recent) >= BURST:
            self.dropped += 1
            log.debug("rate limit: no %s Event for %s %r", topic, site.primitive, site.name)
            return False
        self._last[key] = now
        self._recent.append(now)
        if len(self._last) > 4096:  # forget the oldest objects
            for old in sorted(self._last, key=self._last.__getitem__)[:1024]:
                del self._last[old]
        return True

    def _record(
        self, site: Site, type_: str, reason: str, message: str, *, topic: str = ""
    ) -> None:
        """Send an Event, unless one of the same ``reason`` and ``topic`` was sent lately."""
        store = site.store
        if not isinstance(store, KubernetesStore) or store not in self._stores or not site.kind:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if not self._allowed(site, f"{reason}/{topic}"):
            return
        body: JSON = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{site.name}.", "namespace": site.namespace},
            "involvedObject": {
                "apiVersion": site.kind.api_version,
                "kind": site.kind.kind,
                "name": site.name,
                "namespace": site.namespace,
                **({"uid": site.uid} if site.uid else {}),
            },
            "reason": reason,
            "message": message,
            "type": type_,
            "source": {"component": "konductor", "host": self.host},
            "firstTimestamp": _now(),
            "lastTimestamp": _now(),
            "count": 1,
        }
        task = loop.create_task(self._send(store, site, body))
        self._forget_closed()
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, store: KubernetesStore, site: Site, body: JSON) -> None:
        # On the store's connection as it is now, never one opened for the Event: a
        # send that runs after the client closed (a lease released just before
        # close) would otherwise open a session nobody closes ("Unclosed client
        # session" at exit). A counter of its own: api_requests measures the
        # coordination, Events are reported apart.
        shared = store._connected()
        if shared is None:
            log.debug("no %s Event: the store is closed", body["reason"])
            return
        api = KubeApi(shared._client, request_timeout=TIMEOUT, retry_deadline=0.0)
        try:
            await api.request_once(
                "POST",
                f"/api/v1/namespaces/{site.namespace}/events",
                Target("create", "events", "Event", site.namespace, None, custom=False),
                body=body,
                timeout=TIMEOUT,
            )
            self.sent += 1
        except Forbidden as exc:
            self._stores.discard(store)
            log.warning(
                "konductor cannot record Kubernetes Events in namespace %r (%s); Events are off "
                "for this client. Grant `create` on `events` in the Role (konductor manifests "
                "rbac does), or set KONDUCTOR_EVENTS=off",
                site.namespace,
                exc,
            )
        except KonductorError as exc:
            log.info("could not record a %s Event: %s", body["reason"], exc)
        except Exception:
            if store._connected() is not shared:  # the client closed while it was sent
                log.debug("a %s Event was cut short by the client's close", body["reason"])
                return
            log.exception("could not record a %s Event", body["reason"])

    def _forget_closed(self) -> None:
        """Forget the sends of event loops that closed.

        One recorder serves every event loop of the process (a SyncClient runs its
        own), and a loop closed with a send in flight leaves that task pending
        forever: it must neither be awaited from another loop nor kept.
        """
        for task in [t for t in self._tasks if t.get_loop().is_closed()]:
            self._tasks.discard(task)

    def _of(self, loop: asyncio.AbstractEventLoop) -> list[asyncio.Task[None]]:
        self._forget_closed()
        return [t for t in self._tasks if t.get_loop() is loop and not t.done()]

    async def drain(self) -> None:
        """Wait for the Events this event loop is sending (tests, and a clean shutdown)."""
        loop = asyncio.get_running_loop()
        while mine := self._of(loop):
            await asyncio.gather(*mine, return_exceptions=True)


recorder: EventRecorder | None = None


def enable_for(store: KubernetesStore) -> None:
    """Record Events for ``store`` (unless ``KONDUCTOR_EVENTS`` is off)."""
    global recorder
    if os.environ.get("KONDUCTOR_EVENTS", "on").strip().lower() in _OFF:
        return
    if recorder is None:
        recorder = EventRecorder()
        observe.install(recorder)
    recorder.enable(store)
