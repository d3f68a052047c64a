"""A Celery app with a misconfigured coordinated task: a worker must refuse to start."""

from __future__ import annotations

import os

from celery import Celery

from konductor.integrations.celery import CoordinatedTask

BROKER = os.environ.get("KT_CELERY_BROKER", "redis://127.0.0.1:6379/10")

app = Celery("kt_celery_bad", broker=BROKER, backend=BROKER)


@app.task(base=CoordinatedTask, semaphore="payments-api", permits=0)
def charge(order_id: str) -> str:
    return order_id
