"""Benchmark: konductor's semaphore against a polling baseline, on a real kube-apiserver.

Run from the repository root::

    .venv/bin/python benchmarks/semaphore.py            # starts its own kube-apiserver
    .venv/bin/python benchmarks/semaphore.py --quick    # tiny sizes, a smoke run
    .venv/bin/python benchmarks/semaphore.py --kubeconfig PATH   # an existing cluster

Without ``--kubeconfig`` it uses ``$KONDUCTOR_TEST_KUBECONFIG`` if set, else it
starts a private kube-apiserver + etcd on loopback
(:class:`konductor.testing.apiserver.LocalApiServer`). Either way it installs
konductor's CRDs and works in a fresh namespace, which it deletes at the end.

Three measurements, each for konductor and for the baseline in the same run
(see benchmarks/README.md for how to read the table):

1. API requests per uncontended acquire + release, in steady state (after a
   warm-up cycle on the same client), split into writes, reads and watches.
2. Handoff latency: one client holds, a waiter in another OS process waits;
   time from just before ``release()`` to the waiter's acquire returning.
3. W waiters on P permits (C clients x W/C tasks, each holds briefly): API
   requests of all clients divided by the number of grants.

The baseline (benchmarks/_baseline.py) polls like the reference Go SDK:
GET + compare-and-swap PUT, sleep 1 s, x1.5, capped at 5 s, no watch.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from _baseline import PollingSemaphore
from _counting import CountingStore, Counts

from konductor import Client
from konductor.store import SEMAPHORE, KubernetesStore, Store

SCRIPT = Path(__file__).resolve()


# --------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Sizes:
    cycles: int  # uncontended acquire+release cycles measured (after one warm-up)
    handoffs: int  # konductor handoff rounds
    baseline_handoffs: int  # baseline handoff rounds (each costs ~1-3 s of polling)
    hold_min: float  # the holder holds U(hold_min, hold_max) s once the waiter waits
    hold_max: float
    clients: int  # contended scenario: clients ...
    tasks: int  # ... x tasks per client = waiters
    permits: int
    task_hold: float  # each contended waiter holds this long

    @property
    def waiters(self) -> int:
        return self.clients * self.tasks


FULL = Sizes(
    cycles=20,
    handoffs=40,
    baseline_handoffs=20,
    hold_min=0.05,
    hold_max=1.5,
    clients=5,
    tasks=10,
    permits=5,
    task_hold=0.02,
)
QUICK = Sizes(
    cycles=3,
    handoffs=3,
    baseline_handoffs=2,
    hold_min=0.05,
    hold_max=0.3,
    clients=2,
    tasks=3,
    permits=2,
    task_hold=0.02,
)


# --------------------------------------------------------------------------- results


@dataclass
class Row:
    metric: str
    konductor: float
    baseline: float
    unit_fmt: str = "{:.2f}"
    goal: str = ""
    met: bool | None = None
    ratio: bool = True


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *args: object, **kwargs: object) -> None:
        self.rows.append(Row(*args, **kwargs))  # type: ignore[arg-type]

    def render(self) -> str:
        headers = ("metric", "konductor", "baseline", "konductor/baseline", "goal (konductor)")
        table: list[tuple[str, ...]] = []
        for r in self.rows:
            if not r.ratio:
                ratio = "-"
            elif r.baseline == 0:
                ratio = "n/a" if r.konductor == 0 else "inf"
            else:
                ratio = f"{r.konductor / r.baseline:.3f}"
            goal = r.goal
            if r.met is not None:
                goal = f"{goal}: {'met' if r.met else 'MISSED'}"
            k, b = r.unit_fmt.format(r.konductor), r.unit_fmt.format(r.baseline)
            table.append((r.metric, k, b, ratio, goal))
        widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(headers)]

        def line(cells: tuple[str, ...]) -> str:
            first = cells[0].ljust(widths[0])
            rest = [c.rjust(w) for c, w in zip(cells[1:4], widths[1:4], strict=True)]
            return "  ".join([first, *rest, cells[4].ljust(widths[4])]).rstrip()

        out = [line(headers), "  ".join("-" * w for w in widths)]
        out += [line(t) for t in table]
        return "\n".join(out)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation): a value that was measured."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def total(stores: list[CountingStore]) -> Counts:
    out = Counts()
    for s in stores:
        out = out + s.snapshot()
    return out


# --------------------------------------------------------------------------- 1. uncontended


async def uncontended_konductor(kubeconfig: str, ns: str, cycles: int) -> Counts:
    store = CountingStore(ns, kubeconfig=kubeconfig)
    async with Client(store) as client:
        name = "bench-uncontended"
        permit = await client.acquire_semaphore(name, permits=1)  # warm-up: creates, caches
        await permit.release()
        before = store.snapshot()
        for _ in range(cycles):
            permit = await client.acquire_semaphore(name, permits=1)
            await permit.release()
        return store.snapshot() - before


async def uncontended_baseline(kubeconfig: str, ns: str, cycles: int) -> Counts:
    async with CountingStore(ns, kubeconfig=kubeconfig) as store:
        assert isinstance(store, CountingStore)
        sem = PollingSemaphore(store, "baseline-uncontended", permits=1)
        await sem.ensure()
        await sem.release(await sem.acquire())  # warm-up
        before = store.snapshot()
        for _ in range(cycles):
            await sem.release(await sem.acquire())
        return store.snapshot() - before


# --------------------------------------------------------------------------- 2. handoff


class Waiter:
    """The waiting side of the handoff, in its own OS process (this script, --child)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def spawn(cls, mode: str, kubeconfig: str, ns: str, name: str) -> Waiter:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(SCRIPT),
            "--child",
            mode,
            "--kubeconfig",
            kubeconfig,
            "--namespace",
            ns,
            "--name",
            name,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        waiter = cls(proc)
        await waiter.expect("READY")
        return waiter

    async def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{line}\n".encode())
        await self.proc.stdin.drain()

    async def expect(self, word: str, timeout: float = 120.0) -> list[str]:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        parts = raw.decode().split()
        if not parts or parts[0] != word:
            raise RuntimeError(f"handoff waiter: expected {word}, got {raw!r}")
        return parts[1:]

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.send("QUIT")
        try:
            await asyncio.wait_for(self.proc.wait(), 30)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


async def wait_until_queued(observer: Store, name: str) -> None:
    """Until konductor's semaphore shows a waiter (``status.waiting``, a printer column)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        obj = await observer.get(SEMAPHORE, name)
        if int(obj.status.get("waiting") or 0) >= 1:
            return
        await asyncio.sleep(0.005)
    raise RuntimeError(f"the waiter never queued on semaphore {name!r}")


@dataclass
class Handoffs:
    latencies: list[float] = field(default_factory=list)  # seconds, release -> waiter holds
    requests: list[int] = field(default_factory=list)  # holder's release + waiter's wait


async def handoffs(
    mode: str,
    kubeconfig: str,
    ns: str,
    rounds: int,
    sizes: Sizes,
    rng: random.Random,
) -> Handoffs:
    """``rounds`` handoffs from a holder here to a waiter in another process.

    Each round: the holder takes the permit, the waiter starts acquiring; once
    it is waiting (konductor: its ticket is queued; baseline: its first poll
    found the semaphore full) the holder holds a random while longer, then
    releases. Requests counted: the holder's release, plus the waiter's from
    the start of its acquire until it holds.
    """
    name = f"{'bench' if mode == 'konductor' else 'baseline'}-handoff"
    out = Handoffs()
    store = CountingStore(ns, kubeconfig=kubeconfig)
    async with Client(store) as client, KubernetesStore(ns, kubeconfig=kubeconfig) as observer:
        sem = PollingSemaphore(store, name, permits=1)

        async def acquire() -> Callable[[], Awaitable[None]]:
            if mode == "konductor":
                return (await client.acquire_semaphore(name, permits=1)).release
            holder_id = await sem.acquire()
            return lambda: sem.release(holder_id)

        if mode == "baseline":
            await sem.ensure()
        await (await acquire())()  # creates the object, warms the connection and cache
        waiter = await Waiter.spawn(mode, kubeconfig, ns, name)
        try:
            for _ in range(rounds):
                release = await acquire()
                await waiter.send("GO")
                if mode == "konductor":
                    await wait_until_queued(observer, name)
                else:
                    await waiter.expect("WAITING")
                await asyncio.sleep(rng.uniform(sizes.hold_min, sizes.hold_max))
                before = store.snapshot()
                t0 = time.monotonic()
                await release()
                released = store.snapshot() - before
                t1, waiter_requests = await waiter.expect("ACQUIRED")
                out.latencies.append(float(t1) - t0)
                out.requests.append(released.requests + int(waiter_requests))
                await waiter.expect("RELEASED")
        finally:
            await waiter.close()
    return out


async def child(args: argparse.Namespace) -> None:
    """The waiter process: on each GO, acquire (saying when it holds) and release.

    Prints ``READY`` once warmed up; per GO: ``WAITING`` (baseline only, after
    its first poll found the semaphore full), ``ACQUIRED <monotonic time>
    <requests sent so far in this acquire>``, ``RELEASED``.
    """
    loop = asyncio.get_running_loop()

    def say(*words: object) -> None:
        print(*words, flush=True)

    store = CountingStore(args.namespace, kubeconfig=args.kubeconfig)
    async with Client(store) as client:
        sem = PollingSemaphore(store, args.name, permits=1)

        async def cycle(report: bool) -> None:
            before = store.snapshot()
            if args.child == "konductor":
                permit = await client.acquire_semaphore(args.name, permits=1)
                release: Callable[[], Awaitable[None]] = permit.release
            else:
                full = [False]

                def on_full() -> None:
                    if report and not full[0]:
                        full[0] = True
                        say("WAITING")

                holder_id = await sem.acquire(on_full)
                release = lambda: sem.release(holder_id)  # noqa: E731
            t1 = time.monotonic()
            if report:
                say("ACQUIRED", repr(t1), (store.snapshot() - before).requests)
            await release()
            if report:
                say("RELEASED")

        await cycle(report=False)  # warm-up: connection open, object cached
        say("READY")
        while True:
            line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
            if line != "GO":
                break
            await cycle(report=True)


# --------------------------------------------------------------------------- 3. contended


@dataclass
class Contended:
    counts: Counts
    grants: int
    seconds: float
    peak: int


async def contended(
    kubeconfig: str,
    ns: str,
    sizes: Sizes,
    name: str,
    setup: Store,
    make_worker: Callable[[CountingStore, Callable[[], Awaitable[None]]], Awaitable[None]],
    finish: Callable[[], Awaitable[None]] | None = None,
) -> Contended:
    await setup.create(SEMAPHORE, name, {"permits": sizes.permits})
    stores = [CountingStore(ns, kubeconfig=kubeconfig) for _ in range(sizes.clients)]
    inside = 0
    peak = 0
    grants = 0

    async def body() -> None:
        nonlocal inside, peak, grants
        inside += 1
        grants += 1
        peak = max(peak, inside)
        try:
            await asyncio.sleep(sizes.task_hold)
        finally:
            inside -= 1

    try:
        before = total(stores)
        t0 = time.monotonic()
        await asyncio.wait_for(
            asyncio.gather(*(make_worker(s, body) for s in stores for _ in range(sizes.tasks))),
            timeout=600,
        )
        seconds = time.monotonic() - t0
        counts = total(stores) - before
    finally:
        if finish is not None:
            await finish()
        for s in stores:
            await s.close()
    return Contended(counts, grants, seconds, peak)


async def contended_konductor(kubeconfig: str, ns: str, sizes: Sizes, setup: Store) -> Contended:
    name = "bench-contended"
    clients: dict[int, Client] = {}

    async def worker(store: CountingStore, body: Callable[[], Awaitable[None]]) -> None:
        if id(store) not in clients:
            clients[id(store)] = Client(store)
        permit = await clients[id(store)].acquire_semaphore(name, permits=sizes.permits)
        try:
            await body()
        finally:
            await permit.release()

    async def finish() -> None:
        for c in clients.values():
            await c.close()

    return await contended(kubeconfig, ns, sizes, name, setup, worker, finish)


async def contended_baseline(kubeconfig: str, ns: str, sizes: Sizes, setup: Store) -> Contended:
    name = "baseline-contended"

    async def worker(store: CountingStore, body: Callable[[], Awaitable[None]]) -> None:
        sem = PollingSemaphore(store, name, permits=sizes.permits)
        holder_id = await sem.acquire()
        try:
            await body()
        finally:
            await sem.release(holder_id)

    return await contended(kubeconfig, ns, sizes, name, setup, worker)


# --------------------------------------------------------------------------- driver


async def create_namespace(kubeconfig: str, ns: str, *, delete: bool = False) -> None:
    from kubernetes_asyncio import client as k8s
    from kubernetes_asyncio import config as k8s_config

    api = await k8s_config.new_client_from_config(config_file=kubeconfig, persist_config=False)
    async with api:
        core = k8s.CoreV1Api(api)
        if delete:
            await core.delete_namespace(ns)
        else:
            await core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=ns)))


async def bench(kubeconfig: str, where: str, sizes: Sizes, quick: bool, seed: int) -> Report:
    from konductor.manifests import install_crds

    rng = random.Random(seed)
    ns = f"bench-{uuid.uuid4().hex[:8]}"
    async with KubernetesStore(ns, kubeconfig=kubeconfig) as admin:
        await install_crds(admin)
    await create_namespace(kubeconfig, ns)
    report = Report()
    started = time.monotonic()
    try:
        async with KubernetesStore(ns, kubeconfig=kubeconfig) as setup:
            progress(f"1/3 uncontended acquire+release x{sizes.cycles} ...")
            k1 = await uncontended_konductor(kubeconfig, ns, sizes.cycles)
            b1 = await uncontended_baseline(kubeconfig, ns, sizes.cycles)
            n = sizes.cycles
            report.add(
                "uncontended acquire+release: API requests",
                k1.requests / n,
                b1.requests / n,
            )
            report.add(
                "uncontended acquire+release: writes",
                k1.writes / n,
                b1.writes / n,
                goal="<= 2",
                met=k1.writes / n <= 2,
            )
            report.add(
                "uncontended acquire+release: reads",
                k1.reads / n,
                b1.reads / n,
                goal="0",
                met=k1.reads == 0,
            )
            report.add("uncontended acquire+release: watches", k1.watches / n, b1.watches / n)

            progress(f"2/3 handoff latency, konductor x{sizes.handoffs} ...")
            kh = await handoffs("konductor", kubeconfig, ns, sizes.handoffs, sizes, rng)
            progress(f"2/3 handoff latency, baseline x{sizes.baseline_handoffs} (polls) ...")
            bh = await handoffs("baseline", kubeconfig, ns, sizes.baseline_handoffs, sizes, rng)
            kl, bl = kh.latencies, bh.latencies
            p50 = percentile(kl, 50) * 1000
            report.add(
                "handoff latency p50 (ms)",
                p50,
                percentile(bl, 50) * 1000,
                unit_fmt="{:.1f}",
                goal="< 50 ms",
                met=p50 < 50,
            )
            report.add(
                "handoff latency p95 (ms)",
                percentile(kl, 95) * 1000,
                percentile(bl, 95) * 1000,
                unit_fmt="{:.1f}",
            )
            report.add(
                "handoff latency max (ms)", max(kl) * 1000, max(bl) * 1000, unit_fmt="{:.1f}"
            )
            report.add(
                "handoff: API requests per handoff",
                statistics.mean(kh.requests),
                statistics.mean(bh.requests),
            )

            label = f"{sizes.waiters} waiters on {sizes.permits} permits"
            progress(f"3/3 {label}, konductor ...")
            k3 = await contended_konductor(kubeconfig, ns, sizes, setup)
            progress(f"3/3 {label}, baseline (polls) ...")
            b3 = await contended_baseline(kubeconfig, ns, sizes, setup)
            per_grant = k3.counts.requests / k3.grants
            report.add(
                f"{label}: API requests per grant",
                per_grant,
                b3.counts.requests / b3.grants,
                goal="<= 3",
                met=per_grant <= 3,
            )
            report.add(
                f"{label}: writes per grant",
                k3.counts.writes / k3.grants,
                b3.counts.writes / b3.grants,
            )
            report.add(
                f"{label}: reads per grant",
                k3.counts.reads / k3.grants,
                b3.counts.reads / b3.grants,
            )
            report.add(
                f"{label}: watches per grant",
                k3.counts.watches / k3.grants,
                b3.counts.watches / b3.grants,
            )
            report.add(
                f"{label}: 409 conflicts per grant",
                k3.counts.conflicts / k3.grants,
                b3.counts.conflicts / b3.grants,
            )
            report.add(f"{label}: wall time (s)", k3.seconds, b3.seconds, unit_fmt="{:.1f}")
            report.add(
                f"{label}: most holders at once",
                k3.peak,
                b3.peak,
                unit_fmt="{:.0f}",
                goal=f"<= {sizes.permits}",
                met=k3.peak <= sizes.permits,
                ratio=False,
            )
            retries = k1.retries + k3.counts.retries + b1.retries + b3.counts.retries
    finally:
        with contextlib.suppress(Exception):
            await create_namespace(kubeconfig, ns, delete=True)

    report.notes = [
        f"server: {where}; namespace {ns}; {'QUICK sizes (smoke run)' if quick else 'full sizes'}"
        f"; seed {seed}; run took {time.monotonic() - started:.0f} s",
        f"uncontended: mean over {sizes.cycles} cycles after one warm-up cycle on the same"
        " client; writes = create/replace/delete, reads = get/list, watches = watch"
        " connections opened; 'API requests' = every HTTP request (incl. retries:"
        f" {retries} in this run)",
        f"handoff: holder in this process, waiter in a separate OS process; the holder"
        f" releases U({sizes.hold_min:g}, {sizes.hold_max:g}) s after the waiter is waiting;"
        f" {len(kl)} konductor samples, {len(bl)} baseline samples (baseline capped: each of"
        " its handoffs costs up to seconds of polling); percentiles are nearest-rank",
        f"contended: {sizes.clients} clients x {sizes.tasks} tasks, each acquires once, holds"
        f" {sizes.task_hold * 1000:.0f} ms, releases; all requests of all clients (first"
        f" reads and watches included) / grants ({k3.grants} konductor, {b3.grants} baseline)",
        "baseline: GET + CAS PUT per poll, retry at once on 409, sleep 1 s x1.5 up to 5 s"
        " when full, no watch; release = GET + PUT (benchmarks/_baseline.py)",
        "konductor/baseline < 1 means konductor costs less (fewer requests, lower latency)",
    ]
    return report


def progress(message: str) -> None:
    print(f"... {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def environment(kubeconfig: str | None) -> Iterator[tuple[str, str]]:
    """(kubeconfig, description) of the server to benchmark against."""
    explicit = kubeconfig or os.environ.get("KONDUCTOR_TEST_KUBECONFIG")
    if explicit:
        yield explicit, f"cluster of {explicit}"
        return
    from konductor.testing.apiserver import KUBE_APISERVER_VERSION, LocalApiServer

    progress("starting a local kube-apiserver + etcd on loopback ...")
    with LocalApiServer() as env:
        where = f"local kube-apiserver {KUBE_APISERVER_VERSION} at {env.server}"
        yield str(env.admin_kubeconfig), where


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run, seconds)")
    p.add_argument("--kubeconfig", help="benchmark on this cluster (admin) instead of a local one")
    p.add_argument("--seed", type=int, default=1, help="seed of the random hold times")
    # Internal: the handoff waiter process.
    p.add_argument("--child", choices=("konductor", "baseline"), help=argparse.SUPPRESS)
    p.add_argument("--namespace", help=argparse.SUPPRESS)
    p.add_argument("--name", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        asyncio.run(child(args))
        return 0
    sizes = QUICK if args.quick else FULL
    with environment(args.kubeconfig) as (kubeconfig, where):
        report = asyncio.run(bench(kubeconfig, where, sizes, args.quick, args.seed))
    print("konductor semaphore vs polling baseline (same run, same server)")
    print()
    print(report.render())
    print()
    for note in report.notes:
        print(f"* {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
