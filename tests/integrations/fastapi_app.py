"""The app the FastAPI process tests run: ``python -m uvicorn tests.integrations.fastapi_app:app``.

Configured by the environment (the store by ``KONDUCTOR_STORE`` /
``KUBECONFIG`` / ``KONDUCTOR_NAMESPACE``, as any konductor app):

- ``FA_WITNESS``: a file; the migration and the leader coroutine append lines
  to it (``O_APPEND``, one write per line), a record kept outside konductor;
- ``FA_GATES``: comma-separated gate names to wait for;
- ``FA_EXPECTED``: replicas the ``app-start`` barrier expects (0: no barrier);
- ``FA_TTL``: the leader Lease's TTL in seconds;
- ``FA_STARTUP_TIMEOUT``: seconds.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request

from konductor import Lease
from konductor.integrations.fastapi import KonductorStateDep, LeaderConfig, konductor_lifespan

WITNESS = os.environ.get("FA_WITNESS", "")


def record(*words: object) -> None:
    if WITNESS:
        line = " ".join(str(w) for w in (*words, os.getpid(), f"{time.time():.6f}")) + "\n"
        fd = os.open(WITNESS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


async def migrate() -> None:
    record("migrate-start")
    await asyncio.sleep(0.5)  # long enough for the other replicas to be waiting on it
    record("migrate-done")


async def lead(lease: Lease) -> None:
    record("lead-start", lease.token)
    try:
        while True:
            await asyncio.sleep(0.5)
            record("lead-tick", lease.token)
    finally:
        record("lead-stop", lease.token)


@asynccontextmanager
async def own_lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    record("app-lifespan-start")
    yield {"pid": os.getpid()}
    record("app-lifespan-stop")


expected = int(os.environ.get("FA_EXPECTED", "3"))
app = FastAPI(
    lifespan=konductor_lifespan(
        gates=[g for g in os.environ.get("FA_GATES", "").split(",") if g],
        once={"migrations": migrate},
        barrier=("app-start", expected) if expected else None,
        leader=LeaderConfig("background-jobs", run=lead, ttl=float(os.environ.get("FA_TTL", "3"))),
        startup_timeout=float(os.environ.get("FA_STARTUP_TIMEOUT", "120")),
        inner=own_lifespan,
    )
)


@app.get("/konductor")
def konductor_state(request: Request, k: KonductorStateDep) -> dict[str, Any]:
    return {"pid": request.state.pid, **k.to_dict()}
