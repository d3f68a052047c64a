"""Benchmark: one semaphore contended by many OS processes, counted by the apiserver itself.

Run from the repository root::

    .venv/bin/python benchmarks/contention.py             # full curve, ~10 min
    .venv/bin/python benchmarks/contention.py --quick     # a smoke run, seconds
    .venv/bin/python benchmarks/contention.py --kubeconfig PATH   # an existing cluster

Why a separate benchmark: benchmarks/semaphore.py runs its contended case with
every client in one process, where one event loop serves all of them. A fleet is
many processes, each its own client; that is what this measures. For every
(processes, hold) pair, and for konductor and the polling baseline
(benchmarks/_baseline.py) in the same run, it:

* creates a fresh semaphore (``--permits``, default 4);
* spawns that many worker processes (benchmarks/_contention_worker.py), each with
  its own ``Client`` on its own ``KubernetesStore``; waits until all are READY,
  then starts them at one instant (a ``GO`` line on their stdin naming a common
  ``CLOCK_MONOTONIC`` start), so startup is not measured;
* each worker loops one task acquire -> hold -> release for ``--seconds``;
* counts the requests with the apiserver's own ``/metrics``
  (``apiserver_request_total{resource="semaphores"}``, every verb including
  WATCH, ``code="409"`` and ``"422"`` for conflicts), scraped before the start and after every
  worker has exited (a watch is counted when it ends), alongside the clients'
  own counters as a cross-check;
* takes the peak number of holders from a Redis witness (127.0.0.1:6379);
* measures CPU over the window: the machine's busy share (/proc/stat) and the
  CPU seconds of the workers, kube-apiserver and etcd, so that client CPU
  starvation can be told from a server-side collapse.

Progress goes to stderr, the table to stdout (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis
from semaphore import create_namespace, percentile, progress

from konductor.store import SEMAPHORE, KubernetesStore

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORKER = HERE / "_contention_worker.py"
MODES = ("konductor", "baseline")
TICKS = os.sysconf("SC_CLK_TCK")

# apiserver_request_total{code="409",...,resource="semaphores",...,verb="PUT",...} 12
_METRIC = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
_GAUGE = re.compile(r"^apiserver_longrunning_gauge\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$")


# --------------------------------------------------------------------------- server side


@dataclass(frozen=True)
class ServerCounts:
    """apiserver_request_total for one resource, by (verb, code)."""

    by: Counter[tuple[str, str]] = field(default_factory=Counter)

    def __sub__(self, other: ServerCounts) -> ServerCounts:
        out: Counter[tuple[str, str]] = Counter(self.by)
        out.subtract(other.by)
        return ServerCounts(out)

    @property
    def requests(self) -> int:
        return sum(self.by.values())

    @property
    def conflicts(self) -> int:
        # 409: a compare-and-swap on a stale version; 422: a guarded patch whose
        # test failed (the API server answers 422 for it; konductor's own writes
        # are never otherwise invalid, so every 422 here is such a conflict).
        return sum(n for (_, code), n in self.by.items() if code in ("409", "422"))

    @property
    def watches(self) -> int:
        return sum(n for (verb, _), n in self.by.items() if verb == "WATCH")


class Metrics:
    """Scrapes the apiserver's /metrics with the kubeconfig's (admin) credentials.

    Counts one konductor resource (``semaphores`` unless told otherwise).
    """

    def __init__(self, kubeconfig: str, resource: str = "semaphores") -> None:
        self.kubeconfig = kubeconfig
        self.resource = resource

    async def _text(self) -> str:
        from kubernetes_asyncio import config as k8s_config

        api = await k8s_config.new_client_from_config(
            config_file=self.kubeconfig, persist_config=False
        )
        async with api:
            resp = await api.call_api(
                "/metrics",
                "GET",
                auth_settings=["BearerToken"],
                response_types_map={},
                _preload_content=False,
                _request_timeout=30,
            )
            data = await resp.read()
        return data.decode() if isinstance(data, bytes) else str(data)

    def _resource_lines(
        self, text: str, pattern: re.Pattern[str]
    ) -> Iterator[tuple[dict[str, str], float]]:
        for line in text.splitlines():
            m = pattern.match(line)
            if m is None:
                continue
            labels = dict(_LABEL.findall(m["labels"]))
            if labels.get("resource") == self.resource and labels.get("group") == "konductor.io":
                yield labels, float(m["value"])

    async def scrape(self) -> ServerCounts:
        by: Counter[tuple[str, str]] = Counter()
        for labels, value in self._resource_lines(await self._text(), _METRIC):
            by[(labels.get("verb", "?"), labels.get("code", "?"))] += int(value)
        return ServerCounts(by)

    async def open_watches(self) -> int:
        text = await self._text()
        return int(
            sum(
                v
                for labels, v in self._resource_lines(text, _GAUGE)
                if labels.get("verb") == "WATCH"
            )
        )


# --------------------------------------------------------------------------- CPU


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
    return total - idle, total


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` so far; 0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    after = stat.rsplit(")", 1)[1].split()
    return (int(after[11]) + int(after[12])) / TICKS


# --------------------------------------------------------------------------- one window


def spawn_worker(args: list[str], log: Path, worker: Path = WORKER) -> subprocess.Popen[str]:
    """Start one ``worker`` process (stdin/stdout piped, stderr to ``log``)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)])}
    with log.open("w") as err:
        return subprocess.Popen(
            [sys.executable, str(worker), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            cwd=ROOT,
            env=env,
        )


@dataclass
class Window:
    mode: str
    processes: int
    hold: float
    permits: int
    seconds: float
    grants: int = 0
    waits: list[float] = field(default_factory=list)
    server: ServerCounts = field(default_factory=ServerCounts)
    client_requests: int = 0
    client_conflicts: int = 0
    peak: int = 0
    served: int = 0  # processes granted at least once in the window (fairness)
    timeouts: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    machine_busy: float = 0.0  # share of all cores busy over the window (everything)
    worker_cpu: float = 0.0  # CPU seconds of the workers over the window
    server_cpu: float | None = None  # CPU seconds of kube-apiserver + etcd (local server only)
    cores: int = 1

    @property
    def ideal(self) -> float:
        return min(self.processes, self.permits) / self.hold

    @property
    def rate(self) -> float:
        return self.grants / self.seconds

    def per_grant(self, n: float) -> float:
        return n / self.grants if self.grants else float("nan")


class Runner:
    def __init__(
        self,
        kubeconfig: str,
        ns: str,
        permits: int,
        seconds: float,
        server_pids: dict[str, int],
        workdir: Path,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.ns = ns
        self.permits = permits
        self.seconds = seconds
        self.server_pids = server_pids
        self.workdir = workdir
        self.metrics = Metrics(kubeconfig)
        self.redis = redis.Redis(host="127.0.0.1", port=6379)

    def _server_cpu(self) -> float | None:
        if not self.server_pids:
            return None
        return sum(process_cpu(pid) for pid in self.server_pids.values())

    async def window(self, mode: str, processes: int, hold: float) -> Window:
        tag = f"{mode}-p{processes}-h{round(hold * 1000)}"
        name = f"{tag}-{uuid.uuid4().hex[:6]}"
        key = f"konductor-bench:{name}"
        out = Window(mode, processes, hold, self.permits, self.seconds, cores=os.cpu_count() or 1)
        async with KubernetesStore(self.ns, kubeconfig=self.kubeconfig) as setup:
            await setup.create(SEMAPHORE, name, {"permits": self.permits})
        progress(f"{tag}: starting {processes} worker processes ...")
        procs: list[subprocess.Popen[str]] = []
        files: list[tuple[Path, Path]] = []
        try:
            for i in range(processes):
                result, log = self.workdir / f"{tag}-{i}.json", self.workdir / f"{tag}-{i}.log"
                files.append((result, log))
                args = [
                    *("--kubeconfig", self.kubeconfig, "--namespace", self.ns),
                    *("--name", name, "--mode", mode, "--hold", str(hold)),
                    *("--permits", str(self.permits), "--key", key, "--out", str(result)),
                ]
                procs.append(spawn_worker(args, log))
            for i, p in enumerate(procs):
                assert p.stdout is not None
                line = await asyncio.to_thread(p.stdout.readline)
                if line.strip() != "READY":
                    raise RuntimeError(
                        f"worker {i} of {tag} did not start (exit {p.poll()}); its log"
                        f" {files[i][1]}:\n{files[i][1].read_text()[-2000:]}"
                    )
            before = await self.metrics.scrape()
            start = time.monotonic() + 0.5
            deadline = start + self.seconds
            for p in procs:
                assert p.stdin is not None
                p.stdin.write(f"GO {start!r} {deadline!r}\n")
                p.stdin.flush()
            await asyncio.sleep(max(0.0, start - time.monotonic()))
            busy0, total0 = cpu_times()
            server0 = self._server_cpu()
            shown = 0.0
            while (now := time.monotonic()) < deadline:
                await asyncio.sleep(min(1.0, deadline - now))
                elapsed = time.monotonic() - start
                if elapsed - shown >= 1.0 or time.monotonic() >= deadline:
                    shown = elapsed
                    done = int(self.redis.get(f"{key}:total") or 0)
                    progress(
                        f"{tag}: {min(elapsed, self.seconds):4.1f}/{self.seconds:g} s,"
                        f" {done} grants, load {os.getloadavg()[0]:.1f}"
                    )
            busy1, total1 = cpu_times()
            server1 = self._server_cpu()
            out.machine_busy = (busy1 - busy0) / max(1, total1 - total0)
            if server0 is not None and server1 is not None:
                out.server_cpu = server1 - server0
            for i, p in enumerate(procs):
                code = await asyncio.to_thread(p.wait, hold + 120)
                if code != 0:
                    raise RuntimeError(
                        f"worker {i} of {tag} failed (exit {code}); its log {files[i][1]}:\n"
                        f"{files[i][1].read_text()[-2000:]}"
                    )
            # A watch is counted by the apiserver when it ends: wait until none is open.
            for _ in range(50):
                if await self.metrics.open_watches() == 0:
                    break
                await asyncio.sleep(0.2)
            out.server = await self.metrics.scrape() - before
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        for result, _ in files:
            doc = json.loads(result.read_text())
            for asked, granted in doc["grants"]:
                out.waits.append(granted - asked)
            out.served += bool(doc["grants"])
            out.timeouts += doc["timeouts"]
            out.errors.update(doc["errors"])
            out.worker_cpu += doc["cpu"]
            out.client_requests += doc["client"]["requests"]
            out.client_conflicts += doc["client"]["conflicts"]
        out.grants = len(out.waits)
        out.peak = int(self.redis.get(f"{key}:max") or 0)
        left_inside = int(self.redis.get(f"{key}:inside") or 0)
        self.redis.delete(f"{key}:inside", f"{key}:max", f"{key}:total")
        if left_inside != 0:
            raise RuntimeError(f"{tag}: the witness still counts {left_inside} holders inside")
        progress(
            f"{tag}: {out.grants} grants, {out.rate:.1f}/s,"
            f" {out.per_grant(out.server.requests):.2f} requests/grant (server),"
            f" peak {out.peak}, machine CPU {out.machine_busy:.0%}"
        )
        return out


# --------------------------------------------------------------------------- report

HEADERS = (
    "processes",
    "hold ms",
    "semaphore",
    "grants/s",
    "ideal",
    "requests/grant",
    "conflicts/grant",
    "watches/grant",
    "wait p50 ms",
    "wait p95 ms",
    "peak holders",
    "served",
    "timeouts",
    "errors",
    "machine CPU",
    "own CPU",
)
RATIO_HEADERS = (
    "processes",
    "hold ms",
    "grants/s k/b",
    "requests/grant k/b",
    "conflicts/grant k/b",
    "wait p50 k/b",
)


def _table(headers: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.ljust(w) if i == 2 and headers is HEADERS else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(headers), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]


def _ratio(k: float, b: float) -> str:
    if b == 0 or b != b or k != k:
        return "n/a"
    return f"{k / b:.2f}"


def own_cpu(w: Window) -> str:
    """CPU seconds of the workers (+ apiserver/etcd) as a share of the machine's cores."""
    capacity = w.seconds * w.cores
    share = w.worker_cpu + (w.server_cpu or 0.0)
    return f"{share / capacity:.0%}"


def render(windows: list[Window]) -> list[str]:
    rows = []
    for w in windows:
        waits_ms = [x * 1000 for x in w.waits] or [float("nan")]
        rows.append(
            (
                str(w.processes),
                f"{w.hold * 1000:.0f}",
                w.mode,
                f"{w.rate:.1f}",
                f"{w.ideal:.0f}",
                f"{w.per_grant(w.server.requests):.2f}",
                f"{w.per_grant(w.server.conflicts):.2f}",
                f"{w.per_grant(w.server.watches):.2f}",
                f"{percentile(waits_ms, 50):.0f}",
                f"{percentile(waits_ms, 95):.0f}",
                str(w.peak),
                f"{w.served}/{w.processes}",
                str(w.timeouts),
                str(sum(w.errors.values())),
                f"{w.machine_busy:.0%}",
                own_cpu(w),
            )
        )
    out = _table(HEADERS, rows)
    pairs = []
    for k in windows:
        b = next(
            (
                x
                for x in windows
                if x.mode == "baseline" and (x.processes, x.hold) == (k.processes, k.hold)
            ),
            None,
        )
        if k.mode != "konductor" or b is None:
            continue
        pairs.append(
            (
                str(k.processes),
                f"{k.hold * 1000:.0f}",
                _ratio(k.rate, b.rate),
                _ratio(k.per_grant(k.server.requests), b.per_grant(b.server.requests)),
                _ratio(k.per_grant(k.server.conflicts), b.per_grant(b.server.conflicts)),
                _ratio(percentile(k.waits, 50), percentile(b.waits, 50))
                if k.waits and b.waits
                else "n/a",
            )
        )
    if pairs:
        out += ["", "konductor / baseline (same run; grants/s above 1 = konductor faster,"]
        out += ["the others below 1 = konductor cheaper or quicker):", ""]
        out += _table(RATIO_HEADERS, pairs)
    return out


def notes(windows: list[Window], where: str, args: argparse.Namespace, took: float) -> list[str]:
    errors: Counter[str] = Counter()
    for w in windows:
        errors.update(w.errors)
    client_vs_server = ", ".join(
        f"{w.mode[0]}{w.processes}/{w.hold * 1000:.0f}ms {w.client_requests}/{w.server.requests}"
        for w in windows
    )
    return [
        f"server: {where}; {'QUICK sizes (smoke run)' if args.quick else 'full sizes'};"
        f" permits {args.permits}; {args.seconds:g} s per window; run took {took:.0f} s",
        f"machine: {os.cpu_count()} cores, {platform.machine()}, Python"
        f" {platform.python_version()}; load average at the end {os.getloadavg()[0]:.1f}",
        "each process = one OS process, its own Client and KubernetesStore, one task looping"
        " acquire -> hold -> release; all start at one instant after connecting",
        "requests/grant, conflicts/grant (409 stale CAS + 422 failed patch test),"
        " watches/grant: the apiserver's own apiserver_request_total"
        " for resource semaphores (all verbs incl. WATCH, any code), scraped before the start"
        " and after all workers exited, / grants in the window; ideal = min(processes,"
        " permits) / hold",
        f"client-counted vs server-counted requests per window: {client_vs_server}",
        "wait = from calling acquire to holding (nearest-rank percentiles); timeouts = acquires"
        " still waiting at the end of the window (given up, not grants)",
        "peak holders: Redis witness (INCR inside each hold, max kept atomically); never above"
        " the permits for a safe semaphore; served = processes granted at least once in the"
        " window (a fairness check: a semaphore whose holders re-acquire ahead of the waiters"
        " can show high grants/s while most processes starve)",
        "machine CPU = share of all cores busy over the window (/proc/stat, includes anything"
        " else running on the machine); own CPU = CPU seconds of the workers"
        + (" + kube-apiserver + etcd" if windows and windows[0].server_cpu is not None else "")
        + " / (window x cores). Near 100% means the clients were starved of CPU: a throughput"
        " drop there is not (only) the server's doing",
        "server-counted requests by verb and code per window: "
        + "; ".join(
            f"{w.mode[0]}{w.processes}/{w.hold * 1000:.0f}ms "
            + " ".join(f"{v}:{c}={n}" for (v, c), n in sorted(w.server.by.items()) if n)
            for w in windows
        ),
        "errors by class: " + (", ".join(f"{k} {v}" for k, v in errors.items()) or "none"),
        "baseline: GET + CAS PUT per poll, retry at once on 409, sleep 1 s x1.5 up to 5 s when"
        " full, no watch (benchmarks/_baseline.py)",
    ]


# --------------------------------------------------------------------------- driver


@contextlib.contextmanager
def environment(kubeconfig: str | None) -> Iterator[tuple[str, str, dict[str, int]]]:
    """(kubeconfig, description, server pids) of the server to benchmark against."""
    explicit = kubeconfig or os.environ.get("KONDUCTOR_TEST_KUBECONFIG")
    if explicit:
        yield explicit, f"cluster of {explicit}", {}
        return
    from konductor.testing.apiserver import KUBE_APISERVER_VERSION, LocalApiServer

    progress("starting a local kube-apiserver + etcd on loopback ...")
    with LocalApiServer() as env:
        where = f"local kube-apiserver {KUBE_APISERVER_VERSION} at {env.server}"
        yield str(env.admin_kubeconfig), where, env.pids


async def bench(
    args: argparse.Namespace, kubeconfig: str, pids: dict[str, int], workdir: Path
) -> list[Window]:
    from konductor.manifests import install_crds

    ns = f"bench-{uuid.uuid4().hex[:8]}"
    async with KubernetesStore(ns, kubeconfig=kubeconfig) as admin:
        await install_crds(admin)
    await create_namespace(kubeconfig, ns)
    runner = Runner(kubeconfig, ns, args.permits, args.seconds, pids, workdir)
    windows: list[Window] = []
    try:
        for processes in args.processes:
            for hold in args.holds:
                for mode in MODES:
                    if mode == "baseline" and processes > args.baseline_max:
                        continue
                    windows.append(await runner.window(mode, processes, hold))
    finally:
        runner.redis.close()
        with contextlib.suppress(Exception):
            await create_namespace(kubeconfig, ns, delete=True)
    return windows


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smoke run: 1,4 processes, 50 ms, 3 s")
    p.add_argument("--kubeconfig", help="benchmark on this cluster (admin) instead of a local one")
    p.add_argument("--processes", type=_ints, help="default 1,4,16,64")
    p.add_argument("--holds", type=_floats, help="hold times in s, default 0.05,0.5")
    p.add_argument("--seconds", type=float, help="window per row, default 15")
    p.add_argument("--permits", type=int, default=4)
    p.add_argument(
        "--baseline-max",
        type=int,
        default=64,
        help="run the polling baseline only up to this many processes (default 64)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.processes = args.processes or [1, 4]
        args.holds = args.holds or [0.05]
        args.seconds = args.seconds or 3.0
    args.processes = args.processes or [1, 4, 16, 64]
    args.holds = args.holds or [0.05, 0.5]
    args.seconds = args.seconds or 15.0
    started = time.monotonic()
    with (
        environment(args.kubeconfig) as (kubeconfig, where, pids),
        tempfile.TemporaryDirectory(prefix="konductor-contention-") as tmp,
    ):
        windows = asyncio.run(bench(args, kubeconfig, pids, Path(tmp)))
    print(
        f"one semaphore, permits {args.permits}, N OS processes each looping acquire -> hold ->"
        " release; konductor and the polling baseline in the same run"
    )
    print()
    for line in render(windows):
        print(line)
    print()
    for note in notes(windows, where, args, time.monotonic() - started):
        print(f"* {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
