"""Raw JSON requests to the Kubernetes API over one ApiClient, with error translation.

konductor talks JSON to a handful of paths (its custom resources, Leases, Jobs,
CRDs), so it uses kubernetes_asyncio's ApiClient for configuration,
authentication and connection pooling, and skips its typed models: the
objects travel as plain dicts, exactly as the API server sent them (no
datetime round-trips that could change a Lease's MicroTime format).

Errors are decided on the HTTP status and the ``Status`` body's ``reason`` and
``details``, never on the message text, and re-raised as konductor's own
classes chained to the transport error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

from konductor import _observe as observe
from konductor._backoff import Backoff
from konductor._errors import (
    AlreadyExists,
    Conflict,
    CRDNotInstalled,
    Expired,
    Forbidden,
    Invalid,
    NotFound,
    StoreError,
    StoreUnavailable,
)

log = logging.getLogger("konductor.kubernetes")

JSON = dict[str, Any]
INSTALL_HINT = (
    "install them with `konductor install` (or `konductor manifests | kubectl apply -f -`)"
)


def rbac_hint(namespace: str | None) -> str:
    """How to grant konductor's Role, for the namespace the request was made in."""
    return (
        "grant it with konductor's Role and RoleBinding: `konductor manifests --rbac "
        f"--namespace {namespace or 'NAMESPACE'} | kubectl apply -f -` (the RBAC page of "
        "konductor's docs lists each verb)"
    )


@dataclass(frozen=True)
class Target:
    """What a request is about, for error messages."""

    verb: str
    resource: str  # plural.group, as RBAC names it
    kind: str
    namespace: str | None = None
    name: str | None = None
    custom: bool = True  # a konductor CRD (a 404 of the type means "not installed")

    def describe(self) -> str:
        what = f"{self.kind} {self.name!r}" if self.name else self.resource
        where = f" in namespace {self.namespace!r}" if self.namespace else ""
        return f"{what}{where}"


def _status_body(raw: bytes) -> JSON:
    try:
        body = json.loads(raw)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def raise_for_status(
    status: int, body: JSON, target: Target, cause: BaseException | None
) -> NoReturn:
    """Raise the konductor error for an error response from the API server."""
    reason = body.get("reason") if isinstance(body.get("reason"), str) else None
    raw_details = body.get("details")
    details: JSON = raw_details if isinstance(raw_details, dict) else {}
    server_says = body.get("message") or ""
    exc: StoreError
    if status == 404:
        if details.get("kind") == "namespaces":
            exc = NotFound(
                f"cannot {target.verb} {target.describe()}: namespace "
                f"{details.get('name')!r} does not exist; create it "
                "(`kubectl create namespace NAME`) or choose another",
                status=status,
                reason=reason,
            )
        elif details.get("name"):
            exc = NotFound(f"{target.describe()} not found", status=status, reason=reason)
        elif target.custom:
            exc = CRDNotInstalled(
                f"cannot {target.verb} {target.describe()}: the resource type "
                f"{target.resource} is not installed in this cluster (konductor's "
                f"CustomResourceDefinitions are missing); {INSTALL_HINT}",
                status=status,
                reason=reason,
            )
        else:
            exc = CRDNotInstalled(
                f"cannot {target.verb} {target.describe()}: this cluster does not serve "
                f"{target.resource}; konductor needs a Kubernetes version that does",
                status=status,
                reason=reason,
            )
    elif status == 401:
        exc = Forbidden(
            f"cannot {target.verb} {target.describe()}: the API server did not accept the "
            "credentials (401 Unauthorized); check the token or certificate in the kubeconfig, "
            "or the pod's service account token",
            status=status,
            reason=reason,
        )
    elif status == 403:
        exc = Forbidden(
            f"forbidden to {target.verb} {target.resource}"
            + (f" in namespace {target.namespace!r}" if target.namespace else "")
            + f" ({server_says}); {rbac_hint(target.namespace)}",
            status=status,
            reason=reason,
        )
    elif status == 409 and reason == "AlreadyExists":
        exc = AlreadyExists(f"{target.describe()} already exists", status=status, reason=reason)
    elif status == 409:
        exc = Conflict(
            f"cannot {target.verb} {target.describe()}: it changed since it was read "
            "(stale resourceVersion); read it again and retry",
            status=status,
            reason=reason,
        )
    elif status == 410:
        exc = Expired(
            f"{target.describe()}: the requested resourceVersion is too old (410 Gone)",
            status=status,
            reason=reason,
        )
    elif status in (400, 422):
        raw_causes = details.get("causes")
        causes: list[Any] = raw_causes if isinstance(raw_causes, list) else []
        fields = tuple(str(c["field"]) for c in causes if isinstance(c, dict) and c.get("field"))
        parts = [
            f"{c.get('field', '?')}: {c.get('message', '')}".strip()
            for c in causes
            if isinstance(c, dict)
        ]
        detail = "; ".join(parts) if parts else server_says
        exc = Invalid(
            f"the API server rejected {target.describe()} as invalid: {detail}",
            fields=fields,
            status=status,
            reason=reason,
        )
    elif status == 429 or status >= 500:
        exc = StoreUnavailable(
            f"the API server could not {target.verb} {target.describe()} right now "
            f"({status} {reason or ''}: {server_says}); retrying later may succeed",
            status=status,
            reason=reason,
        )
    else:
        exc = StoreError(
            f"cannot {target.verb} {target.describe()}: {status} {reason or ''} {server_says}",
            status=status,
            reason=reason,
        )
    raise exc from cause


@contextmanager
def _unavailable_on_network_error(what: str) -> Iterator[None]:
    """Re-raise aiohttp / socket / time-out failures as StoreUnavailable(``what``: cause)."""
    import aiohttp

    try:
        yield
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise StoreUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc


class KubeApi:
    """JSON over one kubernetes_asyncio ApiClient, with retries for retryable errors.

    Retries re-send creates and conditional writes too: a write that reached the
    server before the connection broke then fails with AlreadyExists or
    Conflict, which callers' compare-and-swap loops already handle by reading
    again. No unconditional write is ever retried blindly.
    """

    def __init__(
        self,
        api_client: Any,
        *,
        request_timeout: float = 30.0,
        retry_deadline: float = 15.0,
    ) -> None:
        self._client = api_client
        self._timeout = request_timeout
        self._retry_deadline = retry_deadline
        self.requests = 0  # every HTTP request sent (benchmarks count API calls)

    @property
    def host(self) -> str:
        return str(self._client.configuration.host)

    async def close(self) -> None:
        await self._client.close()

    async def _send(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]] | None,
        body: JSON | list[JSON] | None,
        timeout: Any,
        content_type: str = "application/json",
    ) -> Any:
        self.requests += 1
        with _unavailable_on_network_error(
            f"cannot reach the Kubernetes API server at {self.host}"
        ):
            return await self._client.call_api(
                path,
                method,
                query_params=query or [],
                header_params={"Accept": "application/json", "Content-Type": content_type},
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=timeout,
            )

    async def request_once(
        self,
        method: str,
        path: str,
        target: Target,
        *,
        query: list[tuple[str, str]] | None = None,
        body: JSON | list[JSON] | None = None,
        timeout: float | None = None,
        content_type: str = "application/json",
    ) -> JSON:
        """One request, bounded as a whole (connect, send, answer, body) by ``timeout``.

        Raises:
            StoreUnavailable: the network failed, or no answer came within
                ``timeout`` (a blackholed connection hangs, it does not fail).
            StoreError: the translated error response.
        """
        limit = self._timeout if timeout is None else timeout
        what = (
            f"connection to the API server at {self.host} broke during {target.verb} "
            f"{target.describe()}"
        )
        try:
            async with asyncio.timeout(limit):
                resp = await self._send(method, path, query, body, limit, content_type)
                try:
                    with _unavailable_on_network_error(what):
                        raw = await resp.read()
                finally:
                    resp.release()
        except TimeoutError as exc:
            raise StoreUnavailable(
                f"the API server at {self.host} did not answer {target.verb} "
                f"{target.describe()} within {limit:.3g}s"
            ) from exc
        observe.api_response(target.verb, target.kind, resp.status)
        if not 200 <= resp.status < 300:
            raise_for_status(resp.status, _status_body(raw), target, None)
        return _status_body(raw)

    async def request(
        self,
        method: str,
        path: str,
        target: Target,
        *,
        query: list[tuple[str, str]] | None = None,
        body: JSON | list[JSON] | None = None,
        timeout: float | None = None,
        on_attempt: Callable[[], None] | None = None,
        content_type: str = "application/json",
    ) -> JSON:
        """A request retried with jittered backoff while the error is retryable.

        Without ``timeout``, each attempt may take ``request_timeout`` and new
        attempts start until ``retry_deadline``. With it, the whole call,
        retries included, ends within ``timeout`` seconds: no request outlives
        the deadline it serves. ``on_attempt`` is called just before each
        attempt is sent (a holder measures its deadline from the attempt that
        succeeded).

        Raises:
            StoreUnavailable: still failing (or not answering) when time ran out.
        """
        backoff = Backoff(initial=0.05, cap=2.0)
        start = time.monotonic()
        if timeout is None:
            end, retry_until = (
                start + self._retry_deadline + self._timeout,
                start + self._retry_deadline,
            )
        else:
            end = retry_until = start + timeout
        while True:
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise StoreUnavailable(
                    f"cannot {target.verb} {target.describe()}: no time left to reach the API "
                    f"server at {self.host}"
                )
            if on_attempt is not None:
                on_attempt()
            try:
                return await self.request_once(
                    method,
                    path,
                    target,
                    query=query,
                    body=body,
                    timeout=min(self._timeout, remaining),
                    content_type=content_type,
                )
            except StoreUnavailable as exc:
                observe.api_unavailable(target.verb, target.kind)
                delay = backoff.next_delay()
                if time.monotonic() + delay > retry_until:
                    raise
                observe.api_retry(target.verb, target.kind)
                log.debug("retrying %s %s in %.2fs: %s", method, path, delay, exc)
                await asyncio.sleep(delay)

    @asynccontextmanager
    async def stream(
        self, path: str, target: Target, query: list[tuple[str, str]], read_timeout: float
    ) -> AsyncIterator[AsyncIterator[JSON]]:
        """A watch stream: yields an iterator of the decoded JSON lines.

        Raises StoreUnavailable when the connection fails or breaks, and the
        translated error for an error status (410 -> Expired).
        """
        import aiohttp

        # Opening (connect and TLS handshake) and every silence on the stream are
        # bounded: a blackholed watch fails instead of hanging.
        timeout = aiohttp.ClientTimeout(
            total=None, connect=10, sock_connect=10, sock_read=read_timeout
        )
        resp = await self._send("GET", path, query, None, timeout)
        observe.api_response("watch", target.kind, resp.status)
        try:
            if not 200 <= resp.status < 300:
                try:
                    raw = await resp.read()
                except (aiohttp.ClientError, OSError, TimeoutError):
                    raw = b""
                raise_for_status(resp.status, _status_body(raw), target, None)

            async def lines() -> AsyncIterator[JSON]:
                while True:
                    with _unavailable_on_network_error(f"watch of {target.describe()} broke"):
                        line = await resp.content.readline()
                    if not line:
                        return
                    if line.strip():
                        yield _status_body(line)

            yield lines()
        finally:
            resp.release()
            resp.close()
