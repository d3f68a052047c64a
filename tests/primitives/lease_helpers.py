"""Helpers for the lease tests: a per-client outage switch and a leadership witness."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import itertools
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from konductor import StoreUnavailable
from konductor.store import Kind, ObjectList, Store, StoredObject

JSON = dict[str, Any]

MICRO_TIME = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$"


class Outage(Store):
    """One client's connection to a shared store, which the test can cut (``down``).

    Every call is counted in ``calls``; while ``down`` every call but the watch
    fails with ``StoreUnavailable``, as if only this client lost the network.
    """

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.namespace = inner.namespace
        self.down = False
        self.calls: collections.Counter[str] = collections.Counter()

    def _call(self, op: str) -> None:
        self.calls[op] += 1
        if self.down:
            raise StoreUnavailable("simulated outage of this client")

    async def get(self, kind: Kind, name: str, *, timeout: float | None = None) -> StoredObject:
        self._call("get")
        return await self.inner.get(kind, name, timeout=timeout)

    async def create(self, kind: Kind, name: str, spec: Mapping[str, Any]) -> StoredObject:
        self._call("create")
        return await self.inner.create(kind, name, spec)

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
        self._call("replace_status")
        return await self.inner.replace_status(
            kind, name, status, version=version, timeout=timeout, on_sent=on_sent
        )

    async def patch_status(
        self,
        kind: Kind,
        name: str,
        ops: Sequence[JSON],
        *,
        timeout: float | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> StoredObject:
        self._call("patch_status")
        return await self.inner.patch_status(kind, name, ops, timeout=timeout, on_sent=on_sent)

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
        self._call("replace_spec")
        return await self.inner.replace_spec(
            kind, name, spec, version=version, timeout=timeout, on_sent=on_sent
        )

    async def delete(self, kind: Kind, name: str, *, version: str | None = None) -> None:
        self._call("delete")
        await self.inner.delete(kind, name, version=version)

    async def list(self, kind: Kind) -> ObjectList:
        self._call("list")
        return await self.inner.list(kind)

    def _raw_watch(
        self, kind: Kind, name: str | None, since: str
    ) -> AbstractAsyncContextManager[AsyncIterator[Any]]:
        return self.inner._raw_watch(kind, name, since)

    async def close(self) -> None:
        pass  # the inner store belongs to the test's backend


class Leaders:
    """Who is leading right now, outside konductor's own bookkeeping."""

    def __init__(self) -> None:
        self.current: list[str] = []
        self.max = 0
        self.history: list[tuple[str, int]] = []  # (who, token) in order of taking office
        self.cancelled: list[str] = []
        self.changed = asyncio.Event()

    def enter(self, who: str, token: int) -> None:
        self.current.append(who)
        self.max = max(self.max, len(self.current))
        self.history.append((who, token))
        self.changed.set()

    def leave(self, who: str, *, cancelled: bool) -> None:
        self.current.remove(who)
        if cancelled:
            self.cancelled.append(who)
        self.changed.set()

    async def wait_for(self, predicate: Any, timeout: float = 30) -> None:
        async def loop() -> None:
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(loop(), timeout)


def tokens_increase(tokens: Iterable[int]) -> bool:
    seq = list(tokens)
    return all(a < b for a, b in itertools.pairwise(seq))


# --- contenders in other processes, with a shared witness ---------------------------


def clientgo_elector() -> Path:
    """The built client-go elector: ``KONDUCTOR_CLIENTGO_ELECTOR``, else the cached build.

    Fails (never skips) when it is missing: the interop claims rest on it.
    """
    given = os.environ.get("KONDUCTOR_CLIENTGO_ELECTOR")
    if given:
        path = Path(given)
    else:
        cache = Path(
            os.environ.get("KONDUCTOR_CACHE_DIR")
            or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "konductor"
        )
        digest = hashlib.sha256(CLIENTGO_MAIN.read_bytes()).hexdigest()[:12]
        path = cache / f"clientgo-elector-v1.20.2-{digest}"
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"the client-go elector {path} is missing: build it with "
            "scripts/build-client-go-elector.sh (scripts/test does) or set "
            "KONDUCTOR_CLIENTGO_ELECTOR"
        )
    return path


CLIENTGO_MAIN = Path(__file__).resolve().parents[1] / "support" / "clientgo" / "main.go"


@dataclass(frozen=True)
class Event:
    """One line a contender printed: CLOCK_MONOTONIC seconds, who, what."""

    at: float
    who: str
    what: str
    detail: str


class Witness:
    """Every contender's events on one monotonic time line (outside konductor)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    def add(self, who: str, what: str, detail: str = "", at: float | None = None) -> None:
        with self._lock:
            now = time.monotonic() if at is None else at
            self.events.append(Event(now, who, what, detail))
            self._changed.notify_all()

    def first(self, who: str, what: str, after: float = 0.0) -> Event | None:
        with self._lock:
            return next(
                (e for e in self.events if e.who == who and e.what == what and e.at >= after),
                None,
            )

    def wait(self, who: str, what: str, timeout: float, after: float = 0.0) -> Event:
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                found = next(
                    (e for e in self.events if e.who == who and e.what == what and e.at >= after),
                    None,
                )
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{who} did not report {what!r} within {timeout}s; events: {self.events}"
                    )
                self._changed.wait(left)

    async def await_event(self, who: str, what: str, timeout: float, after: float = 0.0) -> Event:
        return await asyncio.to_thread(self.wait, who, what, timeout, after)

    def periods(self, who: str) -> list[tuple[float, float]]:
        """``who``'s leadership periods ``(start, stop)``; an open one ends at +inf."""
        out: list[tuple[float, float]] = []
        start: float | None = None
        with self._lock:
            for e in self.events:
                if e.who != who:
                    continue
                if e.what == "start-leading":
                    start = e.at
                elif e.what in ("stop-leading", "killed") and start is not None:
                    out.append((start, e.at))
                    start = None
        if start is not None:
            out.append((start, float("inf")))
        return out

    def overlap(self, a: str, b: str) -> float:
        """The longest time ``a`` and ``b`` both led (0 when they never did)."""
        worst = 0.0
        for s1, e1 in self.periods(a):
            for s2, e2 in self.periods(b):
                worst = max(worst, min(e1, e2) - max(s1, s2))
        return worst


class Contender:
    """A leader-election process (client-go or konductor) that reports to a witness."""

    def __init__(self, who: str, argv: list[str], witness: Witness) -> None:
        self.who = who
        self.witness = witness
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.stderr: list[str] = []
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            mono, _wall, *rest = line.split(maxsplit=3)
            what = rest[0] if rest else ""
            detail = rest[1].strip() if len(rest) > 1 else ""
            self.witness.add(self.who, what, detail, at=int(mono) / 1e9)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def kill(self) -> None:
        """SIGKILL: the process stops leading at this very moment (recorded as ``killed``)."""
        self.proc.kill()
        self.witness.add(self.who, "killed")
        self.proc.wait(10)

    def terminate(self, timeout: float = 30) -> None:
        self.proc.terminate()
        self.proc.wait(timeout)

    def release_failed(self) -> bool:
        """After it exited: client-go's own release on cancel failed ("Failed to release lock").

        client-go v1.20 cancels its renewal in flight when its context ends; if that
        renewal had landed, the release is sent with the older resourceVersion,
        conflicts and is given up (leaderelection.go ``release``): the Lease then
        expires after its duration instead of being handed over at once.
        """
        for t in self._threads:
            t.join(5)
        return any("Failed to release lock" in line for line in self.stderr)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for t in self._threads:
            t.join(5)


def go_contender(
    witness: Witness,
    who: str,
    kubeconfig: Path,
    namespace: str,
    name: str,
    *,
    release_on_cancel: bool = True,
    lease_duration: float = 4.0,
) -> Contender:
    """client-go's leader election: LeaseDuration 4 s, RenewDeadline 2.5 s, RetryPeriod 0.5 s."""
    argv = [
        str(clientgo_elector()),
        f"-kubeconfig={kubeconfig}",
        f"-namespace={namespace}",
        f"-name={name}",
        f"-identity={who}",
        f"-lease-duration={lease_duration}s",
        f"-release-on-cancel={'true' if release_on_cancel else 'false'}",
    ]
    return Contender(who, argv, witness)


def konductor_contender(
    witness: Witness, who: str, kubeconfig: Path, namespace: str, name: str, *, ttl: float = 4
) -> Contender:
    """konductor's campaign in its own process (tests/support/lease_worker.py)."""
    argv = [
        sys.executable,
        "-m",
        "tests.support.lease_worker",
        f"--kubeconfig={kubeconfig}",
        f"--namespace={namespace}",
        f"--name={name}",
        f"--identity={who}",
        f"--ttl={ttl}",
    ]
    return Contender(who, argv, witness)
