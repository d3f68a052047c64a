"""Celery prefork children + prometheus_client's multiprocess mode, with real workers.

Two children of one ``celery worker`` run two tasks gated by a semaphore of one
permit (``on_full="wait"``: the second waits in the queue, holding its slot).
A ``MultiProcessCollector`` over the workers' ``PROMETHEUS_MULTIPROC_DIR``
must see one holder and one waiter across the two processes, then the sums of
both children's counters and histograms; the store is konductor's local store
(one SQLite file shared by the processes).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from celery import Celery
from prometheus_client import CollectorRegistry, multiprocess

ROOT = Path(__file__).resolve().parents[2]
BROKER = "redis://127.0.0.1:6379/10"
LABELS = {"primitive": "semaphore", "name": "obs-jobs", "namespace": "default"}


def wait_for(what: str, check: Callable[[], bool], timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.2)
    pytest.fail(f"{what}: not within {timeout:g}s")


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[tuple[Celery, Path]]:
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    queue = f"kt-obs-{uuid.uuid4().hex[:10]}"
    log_path = tmp_path / "worker.log"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "KT_CELERY_BROKER": BROKER,
        "KT_CELERY_QUEUE": queue,
        "KONDUCTOR_STORE": f"local:{tmp_path / 'konductor.db'}",
    }
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "tests.observability.celery_metrics_app",
                "worker",
                "--pool=prefork",
                "-c",
                "2",
                "-Q",
                queue,
                "-n",
                f"{queue}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-l",
                "INFO",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
            start_new_session=True,
        )
    client = Celery("kt-obs-client", broker=BROKER, backend=BROKER, set_as_current=False)
    client.conf.task_default_queue = queue
    try:
        wait_for("the worker ready", lambda: b"ready." in log_path.read_bytes())
        yield client, metrics_dir
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # warm shutdown: children exit, marked dead
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        client.close()


def collect(metrics_dir: Path) -> CollectorRegistry:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(metrics_dir))
    return registry


def sample(registry: CollectorRegistry, name: str) -> float:
    return registry.get_sample_value(name, LABELS) or 0.0


def test_prefork_children_report_into_one_multiprocess_view(
    worker: tuple[Celery, Path],
) -> None:
    client, metrics_dir = worker
    results = [client.send_task("tests.observability.celery_metrics_app.hold", (4,)) for _ in "ab"]
    wait_for(
        "one holder and one waiter across the children",
        lambda: (
            sample(collect(metrics_dir), "konductor_held") == 1
            and sample(collect(metrics_dir), "konductor_waiting") == 1
        ),
    )
    pids = {r.get(timeout=120) for r in results}
    assert len(pids) == 2  # two children, one task each
    registry = collect(metrics_dir)
    assert sample(registry, "konductor_held") == 0
    assert sample(registry, "konductor_waiting") == 0
    granted = dict(LABELS, result="granted")
    assert registry.get_sample_value("konductor_acquisitions_total", granted) == 2
    assert sample(registry, "konductor_hold_seconds_count") == 2
    assert sample(registry, "konductor_hold_seconds_sum") >= 8  # two holds of 4 s
    assert sample(registry, "konductor_acquire_wait_seconds_count") == 2
    # Each child wrote its own files: both pids are there.
    files = {p.name for p in metrics_dir.iterdir()}
    assert all(any(f.endswith(f"_{pid}.db") for f in files) for pid in pids), files
