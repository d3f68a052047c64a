"""Barrier transitions, exhaustively: counting, idempotence, opening, staying open."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from konductor import CorruptState
from konductor._primitives import _barrier_state as state

W1, W2 = "2026-01-01T00:00:01.000000Z", "2026-01-01T00:00:02.000000Z"


def apply(status: dict[str, Any], expected: int, party: str, wall: str = W1) -> dict[str, Any]:
    out = state.arrive(status, expected, party, wall)
    return out.status if out.status is not None else status


def test_first_arrival_is_recorded_with_its_time() -> None:
    out = state.arrive({}, 3, "a", W1)
    assert out.counted
    assert out.status == {
        "arrived": [{"identity": "a", "arrivedAt": W1}],
        "arrivedCount": 1,
        "open": False,
    }


def test_arriving_twice_counts_once_and_writes_nothing() -> None:
    status = apply({}, 3, "a")
    out = state.arrive(status, 3, "a", W2)
    assert out.status is None
    assert out.counted


def test_the_last_arrival_opens_and_only_it() -> None:
    status: dict[str, Any] = {}
    for i, party in enumerate(["a", "b", "c"]):
        status = apply(status, 3, party, W1 if i < 2 else W2)
        assert status["open"] is (i == 2)
        assert status["arrivedCount"] == i + 1
    assert status["openedAt"] == W2
    assert state.identities(status) == ["a", "b", "c"]


@pytest.mark.parametrize("expected", [1, 2, 3, 4])
def test_every_arrival_order_opens_exactly_when_expected_distinct_parties_arrived(
    expected: int,
) -> None:
    parties = ["a", "b", "c", "a", "b", "d"]  # with repeats
    for order in itertools.permutations(parties, 4):
        status: dict[str, Any] = {}
        distinct: set[str] = set()
        for party in order:
            was_open = state.is_open(status)
            status = apply(status, expected, party)
            if not was_open:
                distinct.add(party)
            assert status["arrivedCount"] == len(state.identities(status))
            assert len(set(state.identities(status))) == len(state.identities(status))
            assert state.is_open(status) == (len(distinct) >= expected)


def test_open_barrier_stays_open_and_ignores_late_parties() -> None:
    status = apply(apply({}, 2, "a"), 2, "b")
    assert state.arrive(status, 2, "late", W2) == state.Outcome(None, counted=False)
    assert state.arrive(status, 2, "a", W2) == state.Outcome(None, counted=True)
    # Even a raised spec.expected does not close it.
    assert state.arrive(status, 10, "late", W2).status is None
    assert state.settle(status, 10, W2) is None


def test_settle_opens_a_barrier_whose_expected_was_lowered() -> None:
    status = apply(apply({}, 3, "a"), 3, "b")
    assert state.settle(status, 3, W2) is None
    opened = state.settle(status, 2, W2)
    assert opened is not None
    assert opened["open"] is True
    assert opened["openedAt"] == W2
    assert opened["arrivedCount"] == 2
    # A repeat arrival also settles it.
    again = state.arrive(status, 2, "a", W2).status
    assert again is not None
    assert again["open"] is True


def test_malformed_entries_are_refused_and_input_is_not_mutated() -> None:
    """An arrival that does not parse is not skipped (the barrier would open late or,
    with a garbage ``expected``, early): the barrier is refused with CorruptState."""
    for arrived, field in [
        ([{"identity": "a"}, "junk"], "status.arrived[1]"),
        ([{"identity": "a"}, {"no": "identity"}], "status.arrived[1].identity"),
        ([{"identity": "a"}, {"identity": "a"}], "status.arrived[1].identity"),
        ("junk", "status.arrived"),
    ]:
        status = {"arrived": arrived, "extra": 1}
        before = repr(status)
        with pytest.raises(CorruptState) as caught:
            apply(status, 5, "b")
        assert caught.value.field == field
        assert repr(status) == before
    new = apply({"arrived": [{"identity": "a"}], "extra": 1}, 5, "b")
    assert state.identities(new) == ["a", "b"]
    assert new["extra"] == 1
    assert state.identities({"arrived": "junk"}) == []  # for display only: lenient
