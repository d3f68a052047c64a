"""The coordination primitives (semaphore, mutex, lease, once, barrier, gate, wait group),
built on the engine in :mod:`konductor._engine`: their client methods and pure state."""
