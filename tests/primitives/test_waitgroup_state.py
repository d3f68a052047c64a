"""Wait-group transitions: counting, never negative, exactly once, drains."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from konductor._primitives import _waitgroup_state as state


def apply(status: dict[str, Any], delta: int, op: str) -> dict[str, Any]:
    out = state.add(status, delta, op)
    assert not out.rejected
    return out.status if out.status is not None else status


def test_add_done_and_drain() -> None:
    s = apply({}, 2, "o1")
    assert (s["count"], s["drains"], s["ops"]) == (2, 0, ["o1"])
    s = apply(s, -1, "o2")
    assert (s["count"], s["drains"]) == (1, 0)
    s = apply(s, -1, "o3")
    assert (s["count"], s["drains"]) == (0, 1)
    s = apply(s, 3, "o4")
    assert (s["count"], s["drains"]) == (3, 1)
    s = apply(s, -3, "o5")
    assert (s["count"], s["drains"]) == (0, 2)


def test_going_below_zero_is_rejected_without_a_write() -> None:
    assert state.add({}, -1, "o") == state.Outcome(None, 0, rejected=True)
    s = apply({}, 1, "o1")
    assert state.add(s, -2, "o2") == state.Outcome(None, 1, rejected=True)


def test_the_same_op_is_applied_once() -> None:
    s = apply({}, 5, "o1")
    again = state.add(s, 5, "o1")
    assert again == state.Outcome(None, 5)


def test_add_zero_only_initialises_the_count() -> None:
    s = state.add({}, 0, "o").status
    assert s is not None
    assert s["count"] == 0
    assert s["drains"] == 0
    assert state.add(s, 0, "o2") == state.Outcome(None, 0)
    # Zero to zero is not a drain.
    assert state.drains_of(s) == 0


def test_ops_are_bounded() -> None:
    s: dict[str, Any] = {}
    for i in range(state.MAX_OPS + 20):
        s = apply(s, 1, f"o{i}")
    assert len(s["ops"]) == state.MAX_OPS
    assert s["ops"][-1] == f"o{state.MAX_OPS + 19}"
    assert s["count"] == state.MAX_OPS + 20


@pytest.mark.parametrize("n", [1, 2, 3])
def test_every_order_of_adds_and_dones_counts_drains_exactly(n: int) -> None:
    ops = [1] * n + [-1] * n
    for order in set(itertools.permutations(ops)):
        s: dict[str, Any] = {}
        count, drains = 0, 0
        for i, delta in enumerate(order):
            out = state.add(s, delta, f"o{i}")
            if count + delta < 0:
                assert out.rejected
                assert out.status is None
                continue
            assert out.status is not None
            s = out.status
            if count > 0 and count + delta == 0:
                drains += 1
            count += delta
            assert (s["count"], s["drains"]) == (count, drains)


def test_drained_since() -> None:
    assert not state.drained_since({}, 0)  # no add yet: not drained
    assert state.drained_since({"count": 0}, 0)
    assert not state.drained_since({"count": 2, "drains": 3}, 3)
    assert state.drained_since({"count": 2, "drains": 4}, 3)  # drained and re-added
    assert state.count_of({"count": True}) is None
    assert state.drains_of({"drains": "x"}) == 0
