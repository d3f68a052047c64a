"""The integer max-min fair split, checked exhaustively against brute force on small cases."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from konductor import InvalidArgument
from konductor._integration import fair_split


def _allocations(total: int, demands: list[int], minimum: int) -> Iterator[tuple[int, ...]]:
    """Every integer split with each share within [its floor, its demand] summing to what
    can be given (floors only where the total covers them all)."""
    give = min(total, sum(demands))
    floors = [min(minimum, d) for d in demands]
    if sum(floors) > total:
        return
    for alloc in itertools.product(
        *(range(f, d + 1) for f, d in zip(floors, demands, strict=True))
    ):
        if sum(alloc) == give:
            yield alloc


def _best(total: int, demands: list[int], minimum: int) -> list[int] | None:
    """The max-min fair shares, as a sorted vector: the lexicographically largest one."""
    found = [sorted(a) for a in _allocations(total, demands, minimum)]
    return max(found) if found else None


def _cases() -> Iterator[tuple[int, tuple[int, ...], int]]:
    for minimum in (0, 1, 2):
        for n in range(4):
            for demands in itertools.product(range(6), repeat=n):
                for total in range(0, sum(demands) + 3):
                    yield total, demands, minimum
        for demands in itertools.product(range(4), repeat=4):
            for total in range(0, sum(demands) + 2):
                yield total, demands, minimum


def test_fair_split_is_max_min_fair_integer_and_deterministic() -> None:
    checked = 0
    for total, demands, minimum in _cases():
        names = [f"m{i}" for i in range(len(demands))]
        wanted = dict(zip(names, demands, strict=True))
        shares = fair_split(total, wanted, minimum)
        assert set(shares) == set(names)
        values = [shares[n] for n in names]
        assert all(type(v) is int and 0 <= v <= d for v, d in zip(values, demands, strict=True))
        assert sum(values) <= total
        best = _best(total, list(demands), minimum)
        if best is not None:
            assert sorted(values) == best, (total, demands, minimum, shares)
        else:
            # The minimums do not fit: they go by sorted id until the total runs out.
            left = total
            for n, d in zip(names, demands, strict=True):
                floor = min(minimum, d, left)
                assert shares[n] == floor, (total, demands, minimum, shares)
                left -= floor
        # The remainder goes to the first members by sorted id: a member one below
        # another is either at its demand or sorted after it.
        for a, b in itertools.permutations(range(len(names)), 2):
            if values[a] + 1 == values[b] and values[a] < demands[a]:
                assert names[b] < names[a], (total, demands, minimum, shares)
        # Listing order does not matter: every engine computes the same split.
        for order in itertools.islice(itertools.permutations(names), 6):
            assert fair_split(total, {n: wanted[n] for n in order}, minimum) == shares
        checked += 1
    assert checked > 10_000


def test_three_engines_under_a_cap_of_nine_get_three_each() -> None:
    assert fair_split(9, {"a": 9, "b": 9, "c": 9}) == {"a": 3, "b": 3, "c": 3}
    assert fair_split(9, {"a": 9, "b": 9}) == {"a": 5, "b": 4}
    assert fair_split(9, {"a": 9, "b": 2, "c": 9}) == {"a": 4, "b": 2, "c": 3}
    assert fair_split(2, {"a": 9, "b": 9, "c": 9}) == {"a": 1, "b": 1, "c": 0}
    assert fair_split(9, {}) == {}


@pytest.mark.parametrize(
    ("total", "demands", "minimum", "argument"),
    [
        (-1, {"a": 1}, 1, "total"),
        (1.5, {"a": 1}, 1, "total"),
        (True, {"a": 1}, 1, "total"),
        (3, {"a": -1}, 1, "demands"),
        (3, {"a": 2.0}, 1, "demands"),
        (3, {"a": 1}, -1, "minimum"),
    ],
)
def test_bad_arguments_are_refused(
    total: object, demands: dict[str, object], minimum: object, argument: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        fair_split(total, demands, minimum)  # type: ignore[arg-type]
    assert caught.value.argument == argument
