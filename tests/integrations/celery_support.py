"""Real ``celery worker`` subprocesses for the Celery integration tests.

Each test gets its own queue, its own Redis witness prefix and its own
Kubernetes namespace; the workers get the real API server's kubeconfig and the
namespace through the environment (``KONDUCTOR_STORE=kubernetes``) and are
stopped at the end of the test, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.result import AsyncResult

from konductor.store import RATELIMIT, SEMAPHORE, Kind, KubernetesStore
from tests.store.conftest import fresh_namespace

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.integrations.celery_app"
BROKER = "redis://127.0.0.1:6379/10"


class CeleryCluster:
    """Worker subprocesses on one private queue, a client app, a Redis witness."""

    def __init__(self, kube: Any, tmp_path: Path) -> None:
        self.kube = kube
        self.namespace = fresh_namespace(kube)
        self.queue = f"kt-{uuid.uuid4().hex[:12]}"
        self.key = f"kt-witness:{self.queue}"
        self.logs = tmp_path
        self.procs: list[subprocess.Popen[bytes]] = []
        self.queues: dict[str, int] = {}  # queue -> workers started on it
        self.redis = redis.Redis.from_url(BROKER)
        self.client = Celery("kt-client", broker=BROKER, backend=BROKER, set_as_current=False)
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "KT_CELERY_BROKER": BROKER,
            "KT_CELERY_QUEUE": self.queue,
            "KONDUCTOR_STORE": "kubernetes",
            "KUBECONFIG": str(kube.admin_kubeconfig),
            "KONDUCTOR_NAMESPACE": self.namespace,
        }

    # -- workers ----------------------------------------------------------------------

    def start(
        self,
        count: int = 2,
        concurrency: int = 2,
        pool: str = "prefork",
        *,
        queue: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """Start ``count`` workers and wait until each says it is ready.

        ``queue``: a queue of their own (default: the test's queue); ``env``: extra
        environment for these workers only.
        """
        queue = queue or self.queue
        first = len(self.procs)
        self.queues.setdefault(queue, 0)
        self.queues[queue] += count
        for i in range(first, first + count):
            with open(self.logs / f"worker{i}.log", "wb") as log:
                self.procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "celery",
                            "-A",
                            APP,
                            "worker",
                            f"--pool={pool}",
                            "-c",
                            str(concurrency),
                            "-Q",
                            queue,
                            "-n",
                            f"w{i}.{queue}@%h",
                            "--without-gossip",
                            "--without-mingle",
                            "--without-heartbeat",
                            "-l",
                            "INFO",
                        ],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        cwd=ROOT,
                        env={**self.env, **(env or {}), "KT_CELERY_QUEUE": queue},
                        start_new_session=True,  # its own process group: stop() ends it whole
                    )
                )
        expected = self.queues[queue]
        self.wait_for(
            lambda: self.redis.scard(f"kt-celery:{queue}:ready") >= expected,
            "workers ready",
            timeout=180,
        )

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)  # warm shutdown
        deadline = time.monotonic() + 30
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)  # the group: pool children included
            p.wait(timeout=30)

    def worker_logs(self, lines: int = 60) -> str:
        out = []
        for log in sorted(self.logs.glob("worker*.log")):
            out.append(f"--- {log.name} (last {lines} lines)\n")
            out.extend(log.read_text(errors="replace").splitlines(keepends=True)[-lines:])
        return "".join(out)

    def check_alive(self) -> None:
        for p in self.procs:
            if p.poll() is not None:
                raise AssertionError(f"a worker exited ({p.returncode}):\n{self.worker_logs()}")

    # -- tasks and the witness ----------------------------------------------------------

    def send(self, task: str, *args: Any, **kwargs: Any) -> AsyncResult:
        return self.client.send_task(f"{APP}.{task}", args=args, kwargs=kwargs, queue=self.queue)

    def send_on(self, queue: str, task: str, *args: Any, **kwargs: Any) -> AsyncResult:
        return self.client.send_task(f"{APP}.{task}", args=args, kwargs=kwargs, queue=queue)

    def get(self, result: AsyncResult, timeout: float = 300) -> Any:
        try:
            return result.get(timeout=timeout, propagate=True)
        except Exception as exc:
            raise AssertionError(
                f"task {result.id} ended in {result.state}: {exc!r}\n{self.worker_logs()}"
            ) from exc

    def count(self, suffix: str, key: str | None = None) -> int:
        return int(self.redis.get(f"{key or self.key}:{suffix}") or 0)

    def entries(self, key: str | None = None) -> list[float]:
        return [float(v) for v in self.redis.lrange(f"{key or self.key}:entries", 0, -1)]

    def release(self, key: str | None = None) -> None:
        self.redis.rpush(f"{key or self.key}:release", "go")

    def wait_for(self, condition: Callable[[], object], what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            self.check_alive()
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\n{self.worker_logs()}")
            time.sleep(0.05)

    def semaphore_status(self, name: str) -> dict[str, Any]:
        """The semaphore's status as the API server has it."""
        return self.status(SEMAPHORE, name)

    def ratelimit_status(self, name: str) -> dict[str, Any]:
        """The rate limit's status (its members and their shares) as the API server has it."""
        return self.status(RATELIMIT, name)

    def status(self, kind: Kind, name: str) -> dict[str, Any]:
        async def read() -> dict[str, Any]:
            async with KubernetesStore(
                self.namespace, kubeconfig=self.kube.admin_kubeconfig
            ) as store:
                return dict((await store.get(kind, name)).status)

        return asyncio.run(read())

    def cleanup(self) -> None:
        keys = list(self.redis.scan_iter(f"{self.key}*"))
        for queue in {self.queue, *self.queues}:
            keys += [queue, f"kt-celery:{queue}:ready"]
            keys += [f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}"]
        self.redis.delete(*keys)
        self.redis.close()
        self.client.close()


@pytest.fixture
def celery_cluster(kube_crds: Any, tmp_path: Path) -> Iterator[CeleryCluster]:
    cluster = CeleryCluster(kube_crds, tmp_path)
    try:
        yield cluster
    finally:
        try:
            cluster.stop()
        finally:
            cluster.cleanup()
