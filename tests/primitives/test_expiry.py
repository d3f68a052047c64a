"""Observers judge expiry by an entry's marker: its renewals and its fencing token."""

from __future__ import annotations

from konductor._engine import _queue_state as state
from konductor._engine._expiry import ExpiryTracker
from konductor.store import SEMAPHORE, StoredObject

TICKET = {
    "id": "w",
    "holder": "waiter",
    "count": 1,
    "mode": "exclusive",
    "ttlSeconds": 4.0,
    "renewals": 3,
    "renewedAt": "2026-01-01T00:00:00.000000Z",
}


def test_a_ticket_promoted_to_a_grant_restarts_the_observers_count() -> None:
    tracker = ExpiryTracker()
    tracker.observe([TICKET], now=0.0)
    # Seen unrenewed for longer than its TTL (its owner could not reach the store)...
    assert tracker.stale([TICKET], now=10.0) == {"w"}
    # ...then someone's write promotes it: the same id and renewal counter, now a
    # grant with a token. Its owner's deadline counts from a write no later than
    # the promotion, so the observer must count a full TTL again from here.
    promoted = {**TICKET, "token": 7}
    tracker.observe([promoted], now=10.0)
    assert tracker.stale([promoted], now=10.0) == set()
    assert tracker.expires_at(promoted) == 14.0
    assert tracker.stale([promoted], now=14.0) == {"w"}


def test_tracked_holder_entries_keep_their_token() -> None:
    obj = StoredObject(
        SEMAPHORE,
        "s",
        "1",
        {"permits": 1},
        {"holders": [{**TICKET, "token": 7}], "queue": [{**TICKET, "id": "q"}], "nextToken": 8},
    )
    tracked = {e["id"]: e for e in state.tracked_entries(obj)}
    assert tracked["w"]["token"] == 7
    assert "token" not in tracked["q"]
