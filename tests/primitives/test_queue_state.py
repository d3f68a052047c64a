"""Queued-grant transitions (semaphore, mutex, rwmutex), exhaustively over small states."""

from __future__ import annotations

import itertools

import pytest

from konductor._engine import _queue_state as s
from konductor._engine._expiry import ExpiryTracker
from konductor._store import _jsonpatch as jp

W = "2026-11-26T00:00:00.000000Z"


def req(i: str, count: int = 1) -> s.Request:
    return s.Request(i, f"holder-{i}", count, 10.0)


def apply(status: dict, permits: int, r: s.Request, stale: set[str] = frozenset()) -> s.Outcome:  # type: ignore[assignment, type-arg]
    return s.acquire(status, {"permits": permits}, r, stale, W, s.SEMAPHORE)


def free(status: dict, permits: int, *ids: str) -> dict:  # type: ignore[type-arg]
    """Release ``ids`` from a semaphore of ``permits``; the new status."""
    out = s.release(status, {"permits": permits}, set(ids), set(), s.SEMAPHORE)
    assert out.status is not None
    return out.status


def holder_ids(status: dict) -> list[str]:  # type: ignore[type-arg]
    return [h["id"] for h in status.get("holders", [])]


def test_grants_until_full_then_queues_in_order() -> None:
    status: dict = {}  # type: ignore[type-arg]
    for i in "ab":
        out = apply(status, 2, req(i))
        assert out.granted is not None
        assert out.status is not None
        status = out.status
    out = apply(status, 2, req("c"))
    assert out.granted is None
    assert out.status is not None
    status = out.status
    assert [q["id"] for q in status["queue"]] == ["c"]
    assert (status["inUse"], status["waiting"]) == (2, 1)
    # Re-evaluating while still full writes nothing.
    assert apply(status, 2, req("c")).status is None
    # The release hands the freed permit to the head of the queue in the same write.
    status = free(status, 2, "a")
    assert holder_ids(status) == ["b", "c"]
    assert status["queue"] == []
    assert status["holders"][1]["token"] == 3
    # c finds itself granted without writing.
    out = apply(status, 2, req("c"))
    assert out.status is None
    assert out.granted is not None
    assert out.granted["token"] == 3


def test_fifo_no_barging_and_head_of_line() -> None:
    status: dict = apply({}, 3, req("a", 2)).status  # type: ignore[assignment, type-arg]
    status = apply(status, 3, req("big", 3)).status  # queued: needs 3, 1 free
    assert status["waiting"] == 1
    # A small request behind the big one waits even though 1 permit is free.
    out = apply(status, 3, req("small"))
    assert out.granted is None
    status = out.status  # type: ignore[assignment]
    assert [q["id"] for q in status["queue"]] == ["big", "small"]
    # A non-blocking try never barges ahead of the queue and leaves no ticket.
    assert (
        s.acquire(status, {"permits": 3}, req("try"), set(), W, s.SEMAPHORE, enqueue=False).status
        is None
    )
    # Releasing a's 2 permits lets big (3) in first; small still waits behind it.
    status = free(status, 3, "a")
    assert holder_ids(status) == ["big"]
    assert [q["id"] for q in status["queue"]] == ["small"]
    assert apply(status, 3, req("small")).granted is None
    status = free(status, 3, "big")
    assert holder_ids(status) == ["small"]


def test_tokens_strictly_increase_and_grants_are_idempotent() -> None:
    status: dict = {}  # type: ignore[type-arg]
    tokens = []
    for i in range(5):
        out = apply(status, 1, req(str(i)))
        assert out.granted is not None
        tokens.append(out.granted["token"])
        again = apply(out.status, 1, req(str(i)))  # type: ignore[arg-type]
        assert again.status is None
        assert again.granted == out.granted
        status = free(out.status, 1, str(i))  # type: ignore[arg-type]
    assert tokens == sorted(tokens)
    assert len(set(tokens)) == 5


def test_stale_entries_are_purged_and_free_their_permits() -> None:
    status: dict = apply({}, 1, req("dead")).status  # type: ignore[assignment, type-arg]
    status = apply(status, 1, req("dead-waiter")).status
    assert apply(status, 1, req("x")).granted is None
    out = apply(status, 1, req("x"), {"dead", "dead-waiter"})
    assert out.granted is not None
    assert [h["id"] for h in out.status["holders"]] == ["x"]  # type: ignore[index]


def test_release_is_idempotent_and_renew_reports_missing() -> None:
    status: dict = apply({}, 2, req("a")).status  # type: ignore[assignment, type-arg]
    released = free(status, 2, "a")
    assert released["inUse"] == 0
    assert s.release(released, {"permits": 2}, {"a"}, set(), s.SEMAPHORE).status is None
    out, missing = s.renew(status, {"a", "gone"}, W, s.SEMAPHORE)
    assert missing == {"gone"}
    assert out.status is not None
    assert out.status["holders"][0]["renewals"] == 1


def test_never_over_admits_in_any_interleaving() -> None:
    """Every sequence of 5 acquires/releases of 4 requesters on 2 permits stays <= 2."""
    ids = ["a", "b", "c", "d"]
    ops = [("acq", i) for i in ids] + [("rel", i) for i in ids]
    for seq in itertools.product(ops, repeat=5):
        status: dict = {}  # type: ignore[type-arg]
        for op, i in seq:
            out = (
                apply(status, 2, req(i))
                if op == "acq"
                else s.release(status, {"permits": 2}, {i}, set(), s.SEMAPHORE)
            )
            if out.status is not None:
                status = out.status
            assert sum(h["count"] for h in status.get("holders", [])) <= 2


def test_expiry_is_judged_on_the_observers_clock() -> None:
    tracker = ExpiryTracker()
    entry = {"id": "a", "renewals": 0, "ttlSeconds": 10}
    tracker.observe([entry], now=1000.0)  # first seen now, whatever its timestamps say
    assert tracker.stale([entry], 1009.9) == set()
    assert tracker.stale([entry], 1010.0) == {"a"}
    renewed = {**entry, "renewals": 1}
    tracker.observe([renewed], now=1005.0)
    assert tracker.stale([renewed], 1014.0) == set()
    assert tracker.stale([renewed], 1015.0) == {"a"}
    assert tracker.expires_at({"id": "unseen", "ttlSeconds": 1}) == float("inf")


def rw(i: str, mode: str) -> s.Request:
    return s.Request(i, f"holder-{i}", 1, 10.0, mode)


def rw_apply(status: dict, r: s.Request) -> s.Outcome:  # type: ignore[type-arg]
    return s.acquire(status, {}, r, set(), W, s.RWMUTEX)


def test_rwmutex_many_readers_or_one_writer_in_every_interleaving() -> None:
    """Every sequence of 5 operations by 2 readers and 2 writers is exclusive."""
    reqs = [rw("r1", s.READ), rw("r2", s.READ), rw("w1", s.WRITE), rw("w2", s.WRITE)]
    ops = [("acq", r) for r in reqs] + [("rel", r) for r in reqs]
    for seq in itertools.product(ops, repeat=5):
        status: dict = {}  # type: ignore[type-arg]
        for op, r in seq:
            if op == "acq":
                out = rw_apply(status, r)
            else:
                out = s.release(status, {}, {r.id}, set(), s.RWMUTEX)
            if out.status is not None:
                status = out.status
            modes = [h["mode"] for h in status.get("holders", [])]
            assert s.WRITE not in modes or modes == [s.WRITE]


def test_rwmutex_prefers_writers() -> None:
    status: dict = rw_apply({}, rw("r1", s.READ)).status  # type: ignore[assignment, type-arg]
    status = rw_apply(status, rw("r2", s.READ)).status  # readers share
    assert status["readers"] == 2
    status = rw_apply(status, rw("w", s.WRITE)).status  # the writer queues
    assert status["waiting"] == 1
    late_reader = rw_apply(status, rw("r3", s.READ))
    assert late_reader.granted is None  # no new reader overtakes the waiting writer
    status = late_reader.status  # type: ignore[assignment]
    # The last reader out hands the lock to the writer; r3 still waits behind it.
    status = s.release(status, {}, {"r1", "r2"}, set(), s.RWMUTEX).status  # type: ignore[assignment]
    assert status["writer"] == "holder-w"
    assert rw_apply(status, rw("r3", s.READ)).granted is None
    # When the writer leaves, every reader queued behind it is let in together.
    status = rw_apply(status, rw("r4", s.READ)).status  # type: ignore[assignment]
    status = s.release(status, {}, {"w"}, set(), s.RWMUTEX).status  # type: ignore[assignment]
    assert status["readers"] == 2
    assert status["queue"] == []


def test_mutex_is_exclusive_and_fifo() -> None:
    status: dict = s.acquire({}, {}, req("a"), set(), W, s.MUTEX).status  # type: ignore[assignment, type-arg]
    assert status["holder"] == "holder-a"
    status = s.acquire(status, {}, req("b"), set(), W, s.MUTEX).status  # type: ignore[assignment]
    status = s.acquire(status, {}, req("c"), set(), W, s.MUTEX).status  # type: ignore[assignment]
    assert status["waiting"] == 2
    status = s.release(status, {}, {"a"}, set(), s.MUTEX).status  # type: ignore[assignment]
    assert status["holder"] == "holder-b"  # handed to the first waiter
    assert s.acquire(status, {}, req("c"), set(), W, s.MUTEX).granted is None
    assert s.acquire(status, {}, req("b"), set(), W, s.MUTEX).granted is not None


# --- priority with aging ---------------------------------------------------------------


def preq(i: str, priority: int) -> s.Request:
    return s.Request(i, f"holder-{i}", 1, 10.0, priority=priority)


def queue_ids(status: dict) -> list[str]:  # type: ignore[type-arg]
    return [q["id"] for q in status.get("queue", [])]


def test_higher_priority_is_served_first_fifo_within_one() -> None:
    status: dict = apply({}, 1, req("h")).status  # type: ignore[assignment, type-arg]
    for i, priority in (("a", 0), ("b", 5), ("c", 0), ("d", 5)):
        out = apply(status, 1, preq(i, priority))
        assert out.granted is None
        assert out.status is not None
        status = out.status
    served = []
    holder = "h"
    for _ in range(4):
        status = free(status, 1, holder)
        holder = holder_ids(status)[0]
        served.append(holder)
    assert served == ["b", "d", "a", "c"]


def test_a_new_request_does_not_overtake_an_equal_or_higher_priority_ticket() -> None:
    status: dict = apply({}, 1, req("h")).status  # type: ignore[assignment, type-arg]
    status = apply(status, 1, preq("a", 3)).status  # type: ignore[assignment]
    status = free(status, 1, "h")
    assert holder_ids(status) == ["a"]
    status = apply(status, 1, preq("b", 3)).status  # type: ignore[assignment]
    status = apply(status, 1, preq("c", 9)).status  # type: ignore[assignment]
    status = free(status, 1, "a")
    assert holder_ids(status) == ["c"]


def test_aging_bounds_the_wait_of_a_low_priority_ticket() -> None:
    """A priority-0 ticket behind an endless stream of priority-10 arrivals is served
    within AGING_GRANTS * 10 grants plus the few already ahead of it."""
    status: dict = apply({}, 1, req("h")).status  # type: ignore[assignment, type-arg]
    status = apply(status, 1, preq("low", 0)).status  # type: ignore[assignment]
    holder, grants = "h", 0
    for n in range(1000):
        status = apply(status, 1, preq(f"hi{n}", 10)).status  # type: ignore[assignment]
        status = free(status, 1, holder)
        holder = holder_ids(status)[0]
        grants += 1
        if holder == "low":
            break
    assert holder == "low"
    assert grants <= s.AGING_GRANTS * 10 + 2


def test_a_ticket_appended_with_an_old_next_token_keeps_its_place() -> None:
    """Within one priority the order is arrival order, whatever queuedAt says."""
    status: dict = apply({}, 1, req("h")).status  # type: ignore[assignment, type-arg]
    status = apply({**status, "nextToken": 50}, 1, req("a")).status  # type: ignore[assignment]
    assert status["queue"][0]["queuedAt"] == 50
    # b is appended by a writer whose copy still said nextToken 2.
    stale = apply({**status, "nextToken": 2, "queue": []}, 1, req("b"))
    assert stale.status is not None
    appended = stale.status["queue"][-1]
    assert appended["queuedAt"] == 2
    status = {**status, "queue": [*status["queue"], appended]}
    parsed = s.parse(status)
    for clock in (50, 60, 500):
        assert [t.id for t in s.service_order(parsed.queue, clock)] == ["a", "b"]
    assert holder_ids(free(status, 1, "h")) == ["a"]


# --- guarded patches -------------------------------------------------------------------


def patched(status: dict, permits: int, ops: list[dict]) -> dict:  # type: ignore[type-arg]
    doc = jp.apply({"spec": {"permits": permits}, "status": status}, ops)
    return doc["status"]  # type: ignore[no-any-return]


def test_every_transition_patch_gives_the_same_status_as_its_cas() -> None:
    """Over many scripted states: applying an outcome's ops to the old status gives its status."""
    status: dict = {}  # type: ignore[type-arg]
    status = apply(status, 3, req("seed")).status  # type: ignore[assignment]
    checked = 0
    for step in range(60):
        if step % 3 == 2 and holder_ids(status):
            out = s.release(status, {"permits": 3}, {holder_ids(status)[0]}, set(), s.SEMAPHORE)
        else:
            out = apply(status, 3, preq(f"r{step}", step % 4 - 1))
        if out.status is None:
            continue
        assert out.ops is not None
        assert patched(status, 3, out.ops) == jp.canonical(out.status)
        checked += 1
        status = jp.canonical(out.status)
    assert checked > 40


def test_a_release_does_not_conflict_with_a_concurrent_append() -> None:
    status: dict = apply({}, 1, req("h")).status  # type: ignore[assignment, type-arg]
    status = apply(status, 1, req("a")).status  # type: ignore[assignment]
    release = s.release(status, {"permits": 1}, {"h"}, set(), s.SEMAPHORE)
    append = apply(status, 1, req("b"))
    assert release.ops is not None
    assert append.ops is not None
    assert [op["op"] for op in append.ops if op["path"].startswith("/status/queue")] == ["add"]
    # b's ticket lands first, then the release (decided without it) still applies.
    both = patched(patched(status, 1, append.ops), 1, release.ops)
    assert holder_ids(both) == ["a"]
    assert queue_ids(both) == ["b"]


def test_a_fresh_grant_fails_if_someone_queued_meanwhile() -> None:
    """FIFO across processes: a grant decided on an empty queue must not overtake."""
    status: dict = apply({}, 2, req("h")).status  # type: ignore[assignment, type-arg]
    status = free(status, 2, "h")
    grant = apply(status, 2, req("fresh"))
    assert grant.granted is not None
    assert grant.ops is not None
    queued = patched(status, 2, [{"op": "add", "path": "/status/queue/-", "value": {"x": 1}}])
    with pytest.raises(jp.PatchTestFailed):
        patched(queued, 2, grant.ops)


def test_removing_a_stale_holder_fails_if_it_was_renewed_meanwhile() -> None:
    status: dict = apply({}, 1, req("h")).status  # type: ignore[assignment, type-arg]
    status = apply(status, 1, req("w")).status  # type: ignore[assignment]
    purge = apply(status, 1, req("w"), stale={"h"})
    assert purge.granted is not None
    assert purge.ops is not None
    renewed, _ = s.renew(status, {"h"}, "2026-11-26T00:00:05.000000Z", s.SEMAPHORE)
    assert renewed.status is not None
    with pytest.raises(jp.PatchTestFailed):
        patched(jp.canonical(renewed.status), 1, purge.ops)


def test_a_ticket_appended_twice_counts_once_and_the_next_write_drops_the_copy() -> None:
    status: dict = apply({}, 1, req("h")).status  # type: ignore[assignment, type-arg]
    out = apply(status, 1, req("a"))
    assert out.ops is not None
    twice = patched(patched(status, 1, out.ops), 1, out.ops)
    assert queue_ids(twice) == ["a", "a"]
    assert [q.id for q in s.parse(twice).queue] == ["a"]
    released = s.release(twice, {"permits": 1}, {"h"}, set(), s.SEMAPHORE)
    assert released.ops is not None
    after = patched(twice, 1, released.ops)
    assert holder_ids(after) == ["a"]
    assert queue_ids(after) == []


def test_settle_puts_the_waiting_count_right_and_tests_what_it_counted() -> None:
    status: dict = apply({}, 1, req("h")).status  # type: ignore[assignment, type-arg]
    status = apply(status, 1, req("a")).status  # type: ignore[assignment]
    behind = {**status, "waiting": 0}
    fix = s.settle(behind, s.SEMAPHORE)
    assert fix.ops is not None
    assert fix.status is not None
    assert patched(behind, 1, fix.ops)["waiting"] == 1
    assert s.settle(status, s.SEMAPHORE).status is None
    moved = {**behind, "queue": []}
    with pytest.raises(jp.PatchTestFailed):
        patched(moved, 1, fix.ops)
