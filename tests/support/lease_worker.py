"""A konductor leader-election process for the client-go interop tests.

Campaigns for ``--name`` on the real API server and prints one line per event
on stdout, in the same format as the Go elector (tests/support/clientgo):
``<CLOCK_MONOTONIC ns> <unix ns> <event> [<detail>]`` with events ``ready``,
``start-leading <token>``, ``stop-leading`` (the leader body was cancelled)
and ``exit``. SIGTERM cancels the campaign (the Lease is released); the
tests SIGKILL it to simulate a crash.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time

from konductor import Client
from konductor._primitives._lease import Lease
from konductor.store import KubernetesStore


def emit(event: str, detail: str = "") -> None:
    line = f"{time.monotonic_ns()} {time.time_ns()} {event}"
    sys.stdout.write(f"{line} {detail}\n" if detail else f"{line}\n")
    sys.stdout.flush()


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--identity", required=True)
    p.add_argument("--ttl", type=float, default=4)
    args = p.parse_args()

    async def lead(lease: Lease) -> None:
        emit("start-leading", str(lease.token))
        try:
            await asyncio.Event().wait()
        finally:
            emit("stop-leading")

    store = KubernetesStore(args.namespace, kubeconfig=args.kubeconfig)
    async with Client(store, identity=args.identity) as client:
        task = asyncio.ensure_future(client.campaign(args.name, lead, ttl=args.ttl))
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        emit("ready", args.identity)
        with contextlib.suppress(asyncio.CancelledError):
            await task
    emit("exit")


if __name__ == "__main__":
    asyncio.run(main())
