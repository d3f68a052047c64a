"""Integer max-min fair shares of a cluster-wide quota among its members.

Why: a quota split first come, first served (a database's connection cap
among engines) lets the first members keep everything. Every member computes
the split itself from the same observed state, so the function must be pure
and deterministic: the same members and demands give the same shares on
every machine, whatever order they were listed in (remainders go by sorted
member id).

The rule (progressive filling, the textbook max-min fairness): every member
first gets ``min(minimum, demand)``; what is left is raised evenly among the
members still below their demand, a member stopping at its demand; a
remainder smaller than the number of members still rising goes one each to
the first of them by sorted id. Shares are integers, never above a member's
demand, and sum to ``min(total, sum of demands)``. If ``total`` cannot cover
every member's minimum, members get their minimum in sorted id order until
it runs out (the rest get 0): the sum never exceeds ``total``.
"""

from __future__ import annotations

from collections.abc import Mapping

from konductor._errors import InvalidArgument


def fair_split(total: int, demands: Mapping[str, int], minimum: int = 1) -> dict[str, int]:
    """Max-min fair integer shares of ``total`` for members wanting ``demands``.

    Raises:
        InvalidArgument: ``total``, ``minimum`` or a demand is not an integer >= 0.
    """
    for value, what in ((total, "total"), (minimum, "minimum")):
        if type(value) is not int or value < 0:
            raise InvalidArgument(f"{what} must be an integer >= 0, got {value!r}", argument=what)
    for member, demand in demands.items():
        if type(demand) is not int or demand < 0:
            raise InvalidArgument(
                f"the demand of {member!r} must be an integer >= 0, got {demand!r}",
                argument="demands",
            )
    members = sorted(demands)
    shares = dict.fromkeys(members, 0)
    left = total
    for member in members:
        floor = min(minimum, demands[member], left)
        shares[member] = floor
        left -= floor
    while left > 0:
        rising = [m for m in members if shares[m] < demands[m]]
        if not rising:
            break
        each, extra = divmod(left, len(rising))
        if each == 0:
            for member in rising[:extra]:
                shares[member] += 1
            break
        for member in rising:
            add = min(each, demands[member] - shares[member])
            shares[member] += add
            left -= add
    return shares
