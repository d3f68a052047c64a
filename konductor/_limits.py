"""Bounds shared by the CRD schemas, the argument checks and the state parsers.

One place, so that what the API server refuses, what konductor refuses before
a call and what it accepts when reading state can never drift apart. The list
bounds keep the largest object well under the API server's 1.5 MiB object
size limit (an entry is at most ~500 bytes).
"""

from __future__ import annotations

MAX_PERMITS = 1_000_000  # spec.permits of a semaphore, and a request's count
MAX_TTL = 24 * 3600.0  # seconds; ttlSeconds of any entry
MIN_TTL = 1.0  # seconds; renewals every ttl/3 below that would flood the server
MAX_ID = 64  # an entry's id (konductor writes 32 hex digits)
MAX_IDENTITY = 253  # a holder identity (a pod name is at most 253 characters)
MAX_TIME = 40  # a MicroTime string (27 characters)
MAX_HOLDERS = 1000  # holders of one semaphore / mutex / rwmutex
MAX_QUEUE = 1000  # waiters queued on one of them
MAX_PARTIES = 2000  # arrivals of one barrier, so spec.expected too
MAX_TOKEN = 2**53 - 1  # fencing tokens and counters: exact in every JSON reader
MAX_ERROR = 1024  # characters of a once-function's error kept in status
MAX_OPS = 100  # recent operation ids a wait group keeps
MAX_CONDITIONS = 100  # conditions of one gate
MIN_PRIORITY = -100  # a queued request's priority (higher is served sooner)
MAX_PRIORITY = 100
MAX_RATE = 1e9  # tokens per second of a rate limit (spec.rate)
MAX_BURST = 1e12  # tokens a rate limit's buckets may hold in all (spec.burst)
MAX_MEMBERS = 1000  # members sharing one rate limit
