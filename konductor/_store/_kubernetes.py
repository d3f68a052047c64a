"""The store on a Kubernetes API server.

Custom resources in ``konductor.io/v1alpha1`` (one kind per primitive, with a
status subresource) and the built-in ``coordination.k8s.io/v1`` Lease. The
version is ``metadata.resourceVersion``; a write with a stale one is the API
server's 409 Conflict, the compare-and-swap every primitive is built on.
"""

from __future__ import annotations

import os
import random
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from konductor._errors import Conflict, Invalid, InvalidArgument, StoreUnavailable
from konductor._kube._api import JSON, KubeApi, Target, raise_for_status
from konductor._names import validate_name, validate_namespace
from konductor._store._base import (
    ObjectList,
    Store,
    StoredObject,
    WatchEvent,
    copy_json,
    version_newer,
)
from konductor._store._jsonpatch import check_status_patch
from konductor._store._kinds import Kind
from konductor._store._watch import Bookmark, RawEvent

MANAGED_BY = {"app.kubernetes.io/managed-by": "konductor"}
#: Seconds of silence past a watch's own ``timeoutSeconds`` that mark its connection dead.
WATCH_MARGIN = 10

#: The metadata others own, which a spec write (a PUT of the whole object) must
#: send back unchanged, or the API server would delete it.
KEPT_METADATA = ("labels", "annotations", "finalizers", "ownerReferences")

#: How many objects' kept metadata a store remembers (least recently seen go first).
_KEPT_OBJECTS = 4096


def _to_object(kind: Kind, raw: Mapping[str, Any]) -> StoredObject:
    meta = raw.get("metadata") or {}
    spec = raw.get("spec")
    status = raw.get("status")
    return StoredObject(
        kind=kind,
        name=str(meta.get("name", "")),
        version=str(meta.get("resourceVersion", "")),
        spec=spec if isinstance(spec, dict) else {},
        status=status if isinstance(status, dict) else {},
        uid=str(meta.get("uid", "")),
    )


class KubernetesStore(Store):
    """Objects stored as Kubernetes resources in one namespace.

    Construct it from a kubeconfig (``kubeconfig=`` path, or ``KUBECONFIG`` /
    ``~/.kube/config`` when neither it nor ``in_cluster`` is given), from the
    pod's service account (``in_cluster=True``), or from an existing
    kubernetes_asyncio ``ApiClient`` (``api_client=``, which the store then owns
    and closes). The connection is made on first use. One ApiClient serves
    every call and watch; :meth:`close` (or ``async with``) releases it.

    Raises:
        ConfigurationError: the kubeconfig cannot be read (at construction, when
            the namespace must be taken from it; otherwise on first use), or the
            service account cannot be loaded (on first use).
    """

    def __init__(
        self,
        namespace: str | None = None,
        *,
        kubeconfig: str | os.PathLike[str] | None = None,
        context: str | None = None,
        in_cluster: bool = False,
        api_client: Any = None,
        request_timeout: float = 30.0,
        retry_deadline: float = 15.0,
        watch_timeout: tuple[int, int] = (40, 60),
    ) -> None:
        from konductor._kube import _config

        self._kubeconfig = kubeconfig
        self._context = context
        self._in_cluster = in_cluster
        self._raw_client = api_client
        self._request_timeout = request_timeout
        self._retry_deadline = retry_deadline
        self._watch_timeout = watch_timeout
        self._api: KubeApi | None = None
        # (kind, name) -> (version, kept metadata) of the newest version seen.
        self._kept: OrderedDict[tuple[str, str], tuple[str, JSON]] = OrderedDict()
        if namespace is None:
            if in_cluster:
                namespace = _config.service_account_namespace()
            elif api_client is None:
                path = kubeconfig or _config.default_kubeconfig_path()
                namespace = _config.kubeconfig_namespace(path, context) if path else None
        self.namespace = validate_namespace(namespace or "default")

    async def _connect(self) -> KubeApi:
        if self._api is None:
            from konductor._errors import ConfigurationError
            from konductor._kube import _config

            client = self._raw_client
            if client is None:
                if self._in_cluster:
                    client = _config.api_client_in_cluster()
                else:
                    path = self._kubeconfig or _config.default_kubeconfig_path()
                    if path is None:
                        raise ConfigurationError(
                            "no kubeconfig found: set KUBECONFIG, create ~/.kube/config, "
                            "pass kubeconfig=..., or run in a pod with in_cluster=True"
                        )
                    client = await _config.api_client_from_kubeconfig(path, self._context)
            if self._api is None:
                self._api = KubeApi(
                    client,
                    request_timeout=self._request_timeout,
                    retry_deadline=self._retry_deadline,
                )
        return self._api

    def _connected(self) -> KubeApi | None:
        """The open connection, or ``None`` (never connected, or closed): opens nothing."""
        return self._api

    @property
    def api_requests(self) -> int:
        """HTTP requests sent so far (for benchmarks and API-call budgets)."""
        return self._api.requests if self._api is not None else 0

    async def close(self) -> None:
        if self._api is not None:
            api, self._api = self._api, None
            await api.close()
        elif self._raw_client is not None:
            await self._raw_client.close()
        self._raw_client = None

    # -- paths -----------------------------------------------------------------------------

    def _collection(self, kind: Kind) -> str:
        prefix = f"/apis/{kind.group}/{kind.version}"
        return f"{prefix}/namespaces/{self.namespace}/{kind.plural}"

    def _target(self, verb: str, kind: Kind, name: str | None = None) -> Target:
        return Target(
            verb=verb,
            resource=kind.resource,
            kind=kind.kind,
            namespace=self.namespace,
            name=name,
            custom=not kind.builtin,
        )

    # -- Store ---------------------------------------------------------------------------

    async def get(self, kind: Kind, name: str, *, timeout: float | None = None) -> StoredObject:
        validate_name(name)
        api = await self._connect()
        raw = await api.request(
            "GET",
            f"{self._collection(kind)}/{name}",
            self._target("get", kind, name),
            timeout=timeout,
        )
        return self._seen(kind, raw)

    async def create(self, kind: Kind, name: str, spec: Mapping[str, Any]) -> StoredObject:
        validate_name(name)
        api = await self._connect()
        body: JSON = {
            "apiVersion": kind.api_version,
            "kind": kind.kind,
            "metadata": {"name": name, "namespace": self.namespace, "labels": dict(MANAGED_BY)},
            "spec": copy_json(spec),
        }
        raw = await api.request(
            "POST", self._collection(kind), self._target("create", kind, name), body=body
        )
        return self._seen(kind, raw)

    def _seen(self, kind: Kind, raw: Mapping[str, Any]) -> StoredObject:
        """The object of a response, remembering the metadata a later spec write must keep."""
        obj = _to_object(kind, raw)
        meta = raw.get("metadata")
        if obj.version and isinstance(meta, dict):
            key = (kind.resource, obj.name)
            known = self._kept.get(key)
            if known is None or not version_newer(known[0], obj.version):
                kept = {k: meta[k] for k in KEPT_METADATA if k in meta}
                self._kept[key] = (obj.version, copy_json(kept))
                self._kept.move_to_end(key)
                while len(self._kept) > _KEPT_OBJECTS:
                    self._kept.popitem(last=False)
        return obj

    async def _kept_metadata(
        self, kind: Kind, name: str, version: str, timeout: float | None
    ) -> JSON:
        """Labels, annotations, finalizers and owner references of ``name`` at ``version``.

        Exact when this store has seen ``version`` (its response, a list or a
        watch event). If it has seen a newer one, the write conflicts whatever
        it sends. Otherwise (a version learnt elsewhere) one read finds them.
        """
        known = self._kept.get((kind.resource, name))
        if known is None or version_newer(version, known[0]):
            await self.get(kind, name, timeout=timeout)
            known = self._kept.get((kind.resource, name))
        return copy_json(known[1]) if known is not None else {}

    def _update_body(
        self, kind: Kind, name: str, version: str, metadata: JSON | None = None, **parts: Any
    ) -> JSON:
        meta: JSON = {"name": name, "namespace": self.namespace, "resourceVersion": version}
        return {
            "apiVersion": kind.api_version,
            "kind": kind.kind,
            "metadata": {**(metadata or {}), **meta},
            **{k: copy_json(v) for k, v in parts.items()},
        }

    async def replace_status(
        self,
        kind: Kind,
        name: str,
        status: Mapping[str, Any],
        *,
        version: str,
        timeout: float | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> StoredObject:
        validate_name(name)
        if not kind.has_status:
            raise InvalidArgument(f"{kind} has no status subresource; write its spec instead")
        api = await self._connect()
        raw = await api.request(
            "PUT",
            f"{self._collection(kind)}/{name}/status",
            self._target("update", kind, name),
            body=self._update_body(kind, name, version, status=status),
            timeout=timeout,
            on_attempt=on_sent,
        )
        return self._seen(kind, raw)

    async def patch_status(
        self,
        kind: Kind,
        name: str,
        ops: Sequence[JSON],
        *,
        timeout: float | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> StoredObject:
        validate_name(name)
        if not kind.has_status:
            raise InvalidArgument(f"{kind} has no status subresource; write its spec instead")
        check_status_patch(f"{kind} {name!r}", ops)
        api = await self._connect()
        target = self._target("patch", kind, name)
        try:
            raw = await api.request(
                "PATCH",
                f"{self._collection(kind)}/{name}/status",
                target,
                body=[dict(op) for op in ops],
                timeout=timeout,
                on_attempt=on_sent,
                content_type="application/json-patch+json",
            )
        except Invalid as exc:
            if exc.status != 422 or exc.fields:
                # A malformed request (400), or a patched object the schema
                # rejects (422 whose causes name the fields).
                raise
            # The API server answers 422 with no field cause when the patch does
            # not apply to the object as it is: a test failed, or a path no
            # longer fits. Either way the object is not what the write was
            # decided on: a conflict.
            raise Conflict(
                f"cannot patch {kind} {name!r}: it changed since it was read in a way "
                "the write depended on; read it again and retry",
                status=exc.status,
                reason=exc.reason,
            ) from None
        return self._seen(kind, raw)

    async def replace_spec(
        self,
        kind: Kind,
        name: str,
        spec: Mapping[str, Any],
        *,
        version: str,
        timeout: float | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> StoredObject:
        validate_name(name)
        api = await self._connect()
        # A PUT replaces the whole object: send back what others own.
        end = None if timeout is None else time.monotonic() + timeout
        metadata = await self._kept_metadata(kind, name, version, timeout)
        raw = await api.request(
            "PUT",
            f"{self._collection(kind)}/{name}",
            self._target("update", kind, name),
            body=self._update_body(kind, name, version, metadata, spec=spec),
            timeout=None if end is None else max(0.0, end - time.monotonic()),
            on_attempt=on_sent,
        )
        return self._seen(kind, raw)

    async def delete(self, kind: Kind, name: str, *, version: str | None = None) -> None:
        validate_name(name)
        api = await self._connect()
        body: JSON = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if version is not None:
            body["preconditions"] = {"resourceVersion": version}
        await api.request(
            "DELETE",
            f"{self._collection(kind)}/{name}",
            self._target("delete", kind, name),
            body=body,
        )
        self._kept.pop((kind.resource, name), None)

    async def list(self, kind: Kind) -> ObjectList:
        api = await self._connect()
        raw = await api.request("GET", self._collection(kind), self._target("list", kind))
        items = tuple(self._seen(kind, item) for item in raw.get("items") or [])
        version = str((raw.get("metadata") or {}).get("resourceVersion", ""))
        return ObjectList(tuple(sorted(items, key=lambda o: o.name)), version)

    @asynccontextmanager
    async def _raw_watch(
        self, kind: Kind, name: str | None, since: str
    ) -> AsyncIterator[AsyncIterator[RawEvent]]:
        api = await self._connect()
        server_timeout = random.randint(*self._watch_timeout)
        query = [
            ("watch", "true"),
            ("resourceVersion", since),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(server_timeout)),
        ]
        if name is not None:
            query.append(("fieldSelector", f"metadata.name={name}"))
        target = self._target("watch", kind, name)
        # The server ends a quiet watch after timeoutSeconds; a stream silent for
        # longer than that (plus a margin) is a dead connection, not a quiet object.
        async with api.stream(
            self._collection(kind), target, query, read_timeout=server_timeout + WATCH_MARGIN
        ) as lines:

            async def events() -> AsyncIterator[RawEvent]:
                async for line in lines:
                    type_ = line.get("type")
                    obj = line.get("object")
                    if not isinstance(obj, dict):
                        raise StoreUnavailable(f"malformed watch event for {target.describe()}")
                    if type_ == "ERROR":
                        raise_for_status(int(obj.get("code") or 500), obj, target, None)
                    if type_ == "BOOKMARK":
                        version = (obj.get("metadata") or {}).get("resourceVersion")
                        if version:
                            yield Bookmark(str(version))
                        continue
                    if type_ == "DELETED":
                        gone = _to_object(kind, obj)
                        self._kept.pop((kind.resource, gone.name), None)
                        yield WatchEvent(type_, gone)
                    elif type_ in ("ADDED", "MODIFIED"):
                        yield WatchEvent(type_, self._seen(kind, obj))

            yield events()
