"""What every primitive needs from its client: store, clock, identity, hubs, renewer."""

from __future__ import annotations

import sys

from konductor._engine._clock import Clock
from konductor._engine._hub import Entries, Hub, Settle
from konductor._engine._renewal import Renewer
from konductor._errors import ClientClosed, InvalidArgument
from konductor._limits import MAX_IDENTITY
from konductor._store._base import Store
from konductor._store._kinds import Kind

DEFAULT_TTL = 15.0


def _record_events(store: Store) -> None:
    """On a Kubernetes store, record Kubernetes Events for rare transitions (unless off).

    ``konductor._store._kubernetes`` not imported means the store cannot be one,
    so nothing Kubernetes-related is imported here for other stores.
    """
    module = sys.modules.get("konductor._store._kubernetes")
    if module is not None and isinstance(store, module.KubernetesStore):
        from konductor._kube import _events

        _events.enable_for(store)


class HasRuntime:
    """Base of the client mixins: each primitive family's methods use ``self._rt``."""

    _rt: Runtime


class Runtime:
    """Shared state of one client (one per process and event loop)."""

    def __init__(self, store: Store, clock: Clock, identity: str) -> None:
        """Raises: InvalidArgument: ``identity`` is not a string of 1 to 253 characters
        (it goes into every entry this client writes, and the schema bounds it)."""
        if not isinstance(identity, str) or not 1 <= len(identity) <= MAX_IDENTITY:
            raise InvalidArgument(
                f"identity must be a string of 1 to {MAX_IDENTITY} characters, got "
                f"{identity!r:.80}; the default (pod name + pid + random suffix) always fits",
                argument="identity",
            )
        self._store = store
        self.clock = clock
        self.identity = identity
        self.renewer = Renewer(clock)
        self._hubs: dict[tuple[Kind, str], Hub] = {}
        self.closed = False
        _record_events(store)

    @property
    def store(self) -> Store:
        """The client's store; every primitive reaches it through here.

        Raises:
            ClientClosed: the client was closed (a mistake in the caller, not
                an outage of the store).
        """
        self.check_open()
        return self._store

    def check_open(self) -> None:
        if self.closed:
            raise ClientClosed(
                f"this konductor client (identity {self.identity!r}) is closed; call its "
                "methods inside its `async with` / `with` block, or create a new client"
            )

    def hub(self, kind: Kind, name: str, entries: Entries, settle: Settle | None = None) -> Hub:
        self.check_open()
        key = (kind, name)
        if key not in self._hubs:
            self._hubs[key] = Hub(self.store, kind, name, self.clock, entries, settle)
        return self._hubs[key]

    async def close(self) -> None:
        await self.renewer.close()
        for hub in self._hubs.values():
            await hub.close()
        self._hubs.clear()
        self.closed = True
