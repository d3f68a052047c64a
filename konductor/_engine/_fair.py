"""Max-min fair shares of a cluster-wide quota among its members: one module, two quotas.

:func:`fair_split` divides a count (a database's connection cap among
SQLAlchemy engines: integers, nothing beyond a member's demand);
:func:`fair_shares` divides a rate (a rate limit among its members: real
numbers, and what no demand uses is split equally too, so that an idle fleet
keeps the whole rate ready for whoever gets busy first). Both fill
progressively in increasing order of demand, the textbook max-min fairness.

Why: a quota split first come, first served (a database's connection cap
among engines) lets the first members keep everything. Every member computes
the split itself from the same observed state, so both functions are pure
and deterministic: the same members and demands give the same shares on
every machine, whatever order they were listed in (remainders go by sorted
member id).

The integer rule (:func:`fair_split`): every member
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


def fair_shares(rate: float, demands: Mapping[str, float]) -> dict[str, float]:
    """Max-min fair shares of ``rate`` over ``demands`` (tokens per second each).

    Members are served in increasing order of demand, each getting its demand
    or an equal split of what is left, whichever is smaller; what remains
    after every demand is met is split equally (so that an idle fleet keeps
    the whole rate ready). The result sums to at most ``rate``.
    """
    if not demands:
        return {}
    order = sorted(demands, key=lambda k: (min(max(demands[k], 0.0), rate), k))
    out: dict[str, float] = {}
    left = rate
    for i, key in enumerate(order):
        fair = left / (len(order) - i)
        give = min(max(demands[key], 0.0), fair)
        out[key] = give
        left -= give
    if left > 0:
        extra = left / len(order)
        for key in order:
            out[key] += extra
    return out
