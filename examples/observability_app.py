"""A FastAPI app that exposes konductor's Prometheus metrics at ``/metrics``.

It runs ``WORKERS`` job loops that share the semaphore ``jobs`` (``PERMITS``
permits; each job holds its permit ``HOLD`` seconds) and campaigns for the
Lease ``scheduler``, so that every metric of docs/observability.md moves:
``konductor_held`` and ``konductor_waiting`` for the semaphore,
``leader_election_master_status{name="scheduler"}`` for the lease, and the
acquisition, wait, hold, renewal and API request counters.

The two lines that matter for your own app are::

    konductor.metrics.instrument()                    # once, before any client
    app.mount("/metrics", prometheus_client.make_asgi_app())

Run it against a cluster (``pip install 'konductor[fastapi,prometheus]'``)::

    KONDUCTOR_STORE=kubernetes KUBECONFIG=~/.kube/config \\
        python examples/observability_app.py --port 9464
    curl -s localhost:9464/metrics/ | grep konductor_held

or on konductor's local store with ``KONDUCTOR_STORE=local``. Scrape it with
Prometheus (``scrape_configs: [{job_name: app, static_configs: [{targets:
["localhost:9464"]}]}]``) and load examples/grafana-dashboard.json in Grafana.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import prometheus_client
import uvicorn
from fastapi import FastAPI

import konductor.metrics
from konductor import Client, KonductorError, LostError

WORKERS = int(os.environ.get("WORKERS", "3"))
PERMITS = int(os.environ.get("PERMITS", "2"))
HOLD = float(os.environ.get("HOLD", "3600"))
log = logging.getLogger("observability_app")


async def job_loop(client: Client, worker: int) -> None:
    """Run jobs one after another, each under a permit of ``jobs``."""
    while True:
        try:
            async with client.semaphore("jobs", permits=PERMITS, ttl=6) as permit:
                log.info("worker %d runs a job with token %d", worker, permit.token)
                await asyncio.sleep(HOLD)
        except LostError as exc:  # counted in konductor_lost_total; run the next job
            log.warning("worker %d lost its permit: %s", worker, exc)
        except KonductorError as exc:
            log.warning("worker %d: %s; trying again", worker, exc)
            await asyncio.sleep(1)


async def lead(client: Client) -> None:
    """Hold the Lease ``scheduler`` while this process lives (campaign again after a loss)."""
    while True:
        try:
            async with client.lease("scheduler", ttl=6):
                await asyncio.Event().wait()
        except KonductorError as exc:
            log.warning("leadership: %s; campaigning again", exc)
            await asyncio.sleep(1)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    konductor.metrics.instrument()  # the default registry, which make_asgi_app serves
    async with Client() as client:
        tasks = [asyncio.ensure_future(job_loop(client, i)) for i in range(WORKERS)]
        tasks.append(asyncio.ensure_future(lead(client)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task


app = FastAPI(lifespan=lifespan)
app.mount("/metrics", prometheus_client.make_asgi_app())


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9464)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
