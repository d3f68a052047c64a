"""Rebalancing decisions, without a store or a database: the census of a semaphore,
the decision, and the plan driven by hand (tenacity-style: the plan yields requests,
the test answers them)."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, cast

import pytest

from konductor import CorruptState, ObjectStatus, StoreUnavailable
from konductor.integrations._sqlalchemy import _plans as plans
from konductor.integrations._sqlalchemy._shares import Census, Decision, decide, note
from konductor.integrations._sqlalchemy._slots import Settings
from konductor.integrations._sqlalchemy._sync_core import SyncCore

W = "2026-12-01T00:00:00.000000Z"


def entry(i: int, count: int, extra: dict[str, Any] | None = None, *, held: bool = True) -> Any:
    out: dict[str, Any] = {
        "id": f"id{i}",
        "holder": "pod",
        "count": count,
        "mode": "exclusive",
        "ttlSeconds": 15.0,
        "renewals": 0,
        "renewedAt": W,
        **(extra or {}),
    }
    if held:
        out["token"] = i + 1
    return out


def status(holders: list[Any], queue: list[Any] | None = None) -> dict[str, Any]:
    return {"holders": holders, "queue": queue or [], "nextToken": 100}


# --- census: notes are untrusted ---------------------------------------------------------


def test_census_groups_entries_by_member_and_keeps_unnoted_holders_apart() -> None:
    census = Census.of(
        9,
        status(
            [
                entry(0, 1, note("a", 9)),
                entry(1, 1, note("a", 9)),
                entry(2, 2, note("b", 4)),
                entry(3, 1),  # another user of the semaphore: not shared out
                entry(4, 1, {"member": "c", "demand": True}),  # not a valid note
                entry(5, 1, {"member": "x" * 65, "demand": 3}),
                entry(6, 1, {"member": "d", "demand": 0}),
            ],
            [entry(7, 1, note("e", 9), held=False), entry(8, 1, {"member": 5}, held=False)],
        ),
    )
    assert census.demands == {"a": 9, "b": 4, "e": 9}
    assert census.held == {"a": 2, "b": 2}
    assert census.waiting == frozenset({"e"})
    assert census.others == 4
    assert census.shares("a", 9) == {"a": 2, "b": 2, "e": 1}  # 5 left, remainder by id


def test_a_census_of_a_corrupt_status_is_refused() -> None:
    with pytest.raises(CorruptState):
        Census.of(9, status([{"id": "x", "count": "many"}]))


# --- decisions ---------------------------------------------------------------------------


def census(held: dict[str, int], waiting: tuple[str, ...] = (), demand: int = 9) -> Census:
    members = {*held, *waiting}
    return Census(9, dict.fromkeys(members, demand), held, frozenset(waiting))


def test_alone_an_engine_keeps_the_whole_cap() -> None:
    assert decide(census({"a": 9}), "a", held=9, giving=0, pool_size=9, min_connections=1) == (
        Decision(9, members=1)
    )


def test_an_engine_above_its_share_gives_back_while_another_waits() -> None:
    d = decide(census({"a": 9}, ("b",)), "a", held=9, giving=0, pool_size=9, min_connections=1)
    assert (d.share, d.shrink, d.grow) == (5, 4, 0)  # remainders by sorted id: a gets 5
    d = decide(census({"b": 9}, ("a",)), "b", held=9, giving=0, pool_size=9, min_connections=1)
    assert (d.share, d.shrink) == (4, 5)
    assert "1 other engine(s) wait" in d.why


def test_an_engine_gives_back_while_another_holds_less_than_its_share() -> None:
    c = census({"a": 5, "b": 1, "c": 3})
    d = decide(c, "a", held=5, giving=0, pool_size=9, min_connections=1)
    assert (d.share, d.shrink) == (3, 2)
    # Already giving 2: nothing more to decide, and no growth while giving.
    assert decide(c, "a", held=5, giving=2, pool_size=9, min_connections=1) == Decision(
        3, members=3
    )
    # The one below its share grows to it (if its pool is exhausted: the caller's check).
    d = decide(c, "b", held=1, giving=0, pool_size=9, min_connections=1)
    assert (d.share, d.grow) == (3, 2)


def test_nobody_needy_means_no_shrink_and_what_was_being_given_is_kept() -> None:
    c = census({"a": 6, "b": 3})  # shares 5 + 4: b holds less than its share
    assert decide(c, "a", held=6, giving=0, pool_size=9, min_connections=1).shrink == 1
    d = decide(c, "a", held=6, giving=1, pool_size=9, min_connections=1)
    assert (d.shrink, d.grow, d.cancel) == (0, 0, False)  # on its way: keep giving
    d = decide(census({"a": 6, "b": 4}), "a", held=6, giving=1, pool_size=9, min_connections=1)
    assert (d.shrink, d.cancel) == (0, True)  # b has its share: keep what is not reclaimed
    d = decide(census({"a": 9}), "a", held=9, giving=2, pool_size=9, min_connections=1)
    assert d.cancel  # the newcomer left before its share was freed


def test_min_connections_and_pool_size_bound_the_share() -> None:
    c = census({"a": 6, "b": 1, "c": 1}, demand=9)
    d = decide(c, "a", held=6, giving=0, pool_size=9, min_connections=4)
    assert (d.share, d.shrink) == (4, 2)  # fair share 3, but never below min_connections
    d = decide(
        census({"a": 2}, ("b",), demand=2), "a", held=2, giving=0, pool_size=2, min_connections=1
    )
    assert (d.share, d.shrink) == (2, 0)  # demands 2 + 2 fit under 9: nobody gives back
    d = decide(
        census({"a": 1}), "a", held=1, giving=0, pool_size=4, min_connections=1, starting=True
    )
    assert (d.share, d.grow) == (4, 3)  # alone, its own demand (pool_size) is the ceiling


def test_starting_never_shrinks() -> None:
    d = decide(
        census({"a": 1, "b": 0}, ("c",)),
        "a",
        held=1,
        giving=0,
        pool_size=9,
        min_connections=1,
        starting=True,
    )
    assert (d.shrink, d.grow) == (0, 2)


# --- the plan, driven by hand ------------------------------------------------------------


class FakePermit:
    """Stands for a Permit in the plan: the accounting reads count and lost."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.is_lost = False
        self.released = False
        self.name = "db"
        self.token = 1
        self.lost_reason: str | None = None

    def when_lost(self, callback: Callable[[str], None]) -> None:
        pass


def settings(**kw: Any) -> Settings:
    base: dict[str, Any] = {
        "semaphore": "db",
        "max_connections": 9,
        "pool_size": 9,
        "min_connections": 1,
        "mode": "reserve",
        "ttl": 15.0,
        "reserve_timeout": 60.0,
        "grow_interval": 1.0,
        "rebalance": True,
    }
    return Settings(**{**base, **kw})


def seen(holders: list[Any], queue: list[Any] | None = None) -> ObjectStatus:
    return ObjectStatus(
        "semaphore", "Semaphore", "db", "ns", "", capacity=9, status=status(holders, queue)
    )


def drive(
    plan: Generator[plans.Step, plans.Result, Any], answer: Callable[[plans.Step], Any]
) -> list[plans.Step]:
    run, steps = plans.Run(plan), []
    while (step := run.next()) is not None:
        steps.append(step)
        try:
            run.result = cast(plans.Result, answer(step))
        except StoreUnavailable as exc:
            run.failure = exc
    return steps


def test_the_reservation_takes_min_connections_then_single_permits_up_to_its_share() -> None:
    core = SyncCore(settings(), None, None)
    core.member = "m-b"
    other = note("m-a", 9)

    def answer(step: plans.Step) -> Any:
        if isinstance(step, plans.Look):  # m-a holds 4 of its share of 5: m-b's is 4
            return seen([entry(0, 4, other), entry(1, 1, note("m-b", 9))])
        assert isinstance(step, plans.Try)
        return FakePermit(step.count)

    steps = drive(plans.reservation(core, core.generation), answer)
    assert [type(s).__name__ for s in steps] == ["Try", "Look", "Try", "Try", "Try"]
    assert [s.count for s in steps if isinstance(s, plans.Try)] == [1, 1, 1, 1]
    assert steps[0] == plans.Try(1, 9)  # the first request may create the semaphore
    assert (core.held, core.share, core.slots) == (4, 4, 4)

    # A third engine waits: 3 each. m-b gives one back: an idle slot (a token) goes
    # at once and its permit (a single, never the first grant) is released.
    def crowded(step: plans.Step) -> Any:
        assert isinstance(step, plans.Look)
        return seen(
            [entry(0, 4, other), entry(1, 1, note("m-b", 9)), entry(2, 3, note("m-b", 9))],
            [entry(3, 1, note("m-c", 9), held=False)],
        )

    first = core.grants[0]
    assert [type(s).__name__ for s in drive(plans.rebalance(core, core.generation), crowded)] == [
        "Look"
    ]
    assert (core.giving, core.surplus) == (1, 1)
    core.reclaim_idle()
    assert (core.surplus, core.slots, core.held) == (0, 3, 4)  # slot gone, permit still held
    given = core.take_given()
    assert len(given) == 1
    assert given[0] is not first
    assert (core.held, core.giving, core.slots) == (3, 0, 3)
    assert "share=3 giving=0" in core.status()


def test_a_slot_in_use_is_not_taken_its_permit_waits_for_it() -> None:
    core = SyncCore(settings(), None, None)
    core.member = "m-a"
    steps = drive(
        plans.reservation(core, core.generation),
        lambda s: seen([]) if isinstance(s, plans.Look) else FakePermit(cast(plans.Try, s).count),
    )
    assert len(steps) == 10  # Try(1), Look, then 8 singles: alone, the whole cap
    taken = [core.queue.get_nowait() for _ in range(9)]
    for item in taken:
        assert core.claim(item)  # all 9 checked out (tokens: no connection needed here)
    core.give_fair(4, "test")
    core.reclaim_idle()
    assert core.take_given() == []  # nothing idle: nothing reclaimed, nothing released
    assert (core.held, core.in_use, core.surplus) == (9, 9, 4)
    core.unclaim_token()  # one comes back (a token returned): it pays the surplus
    assert (core.surplus, core.slots, len(core.take_given())) == (3, 8, 1)
    assert core.held == 8


def test_a_failed_read_changes_nothing(caplog: pytest.LogCaptureFixture) -> None:
    core = SyncCore(settings(), None, None)

    def answer(step: plans.Step) -> Any:
        raise StoreUnavailable("down")

    assert drive(plans.rebalance(core, core.generation), answer) == [plans.Look()]
    assert (core.held, core.giving) == (0, 0)
    assert "could not read semaphore 'db' to rebalance" in caplog.text


def test_a_checkout_that_keeps_waiting_is_demand_until_it_stops() -> None:
    """Threads returning connections take them straight back (the queue does not hand
    a returned one to the longest waiter), so a pool can stay exhausted with no new
    wait starting: a waiting checkout counts as demand for as long as it waits."""
    core = SyncCore(settings(), None, None)
    assert not core.take_demand()
    core.note_demand()
    assert core.take_demand()
    assert not core.take_demand()  # the flag is reset by the growth try
    core.waiting(1)
    assert core.take_demand()
    assert core.take_demand()  # still waiting: still demand
    core.waiting(-1)
    assert not core.take_demand()


def test_a_slot_given_up_with_no_single_grant_left_comes_back_as_a_token() -> None:
    """A loss while giving back: the permits to release are gone already, so the slots
    given up come back as tokens (then pay the loss's debt) instead of staying unused."""
    core = SyncCore(settings(), None, None)
    core.member = "m-a"
    drive(
        plans.reservation(core, core.generation),
        lambda s: seen([]) if isinstance(s, plans.Look) else FakePermit(cast(plans.Try, s).count),
    )
    core.give_fair(2, "test")
    core.reclaim_idle()
    assert (core.slots, core.giving, core.surplus) == (7, 2, 0)
    for handle in core.grants[1:]:  # every single permit is lost
        cast(FakePermit, handle).is_lost = True
    core.collect_lost()
    assert (core.held, core.slots, core.debt) == (1, 0, 1)
    assert core.take_given() == []
    assert (core.slots, core.debt, core.giving) == (2, 1, 0)
    core.reclaim_idle()
    assert (core.held, core.slots, core.debt, core.queue.qsize()) == (1, 1, 0, 1)
