"""A Celery app whose prefork children report konductor metrics in multiprocess mode.

Run by tests/observability/test_celery_multiprocess.py as a real ``celery
worker`` with ``PROMETHEUS_MULTIPROC_DIR`` set, exactly as
docs/observability.md tells users to: ``instrument()`` at import (the parent
imports this module, the forked children inherit it), and exited children
marked dead so that their live gauges stop counting.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery, signals
from prometheus_client import multiprocess

import konductor.metrics
from konductor.integrations.celery import CoordinatedTask

konductor.metrics.instrument()

BROKER = os.environ["KT_CELERY_BROKER"]
app = Celery("kt_obs", broker=BROKER, backend=BROKER)
app.conf.update(
    task_default_queue=os.environ["KT_CELERY_QUEUE"],
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
    result_expires=600,
)


@signals.worker_process_shutdown.connect
def _mark_dead(pid: int | None = None, **_: Any) -> None:
    multiprocess.mark_process_dead(pid or os.getpid())


@app.task(base=CoordinatedTask, semaphore="obs-jobs", permits=1, on_full="wait", wait_timeout=120)
def hold(seconds: float) -> int:
    """Hold the one permit for ``seconds``; the pid says which child ran it."""
    time.sleep(seconds)
    return os.getpid()
