"""Rate-limit shares: the pure transitions, the fair split and the local bucket.

The safety property checked everywhere: after every write the recorded
shares sum to at most the rate, and a member's share in force (lowered
before a write, raised only after it is confirmed) never exceeds what the
store records for it.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from typing import Any

import pytest

from konductor import CorruptState
from konductor._primitives import _ratelimit_state as state

W = "2026-01-01T00:00:00.000000Z"
SPEC = {"rate": 50}


def members(status: dict[str, Any]) -> dict[str, float]:
    return {m.id: m.share for m in state.parse(status)}


def total(status: dict[str, Any]) -> float:
    return math.fsum(members(status).values())


def join(status: dict[str, Any], mid: str, demand: float = 50, spec: Any = SPEC) -> dict[str, Any]:
    out = state.join(status, spec, member_id=mid, holder=f"h-{mid}", ttl=3, demand=demand, wall=W)
    assert out.status is not None
    return out.status


def renew(status: dict[str, Any], mid: str, demand: float, spec: Any = SPEC) -> dict[str, Any]:
    out = state.renew(status, spec, member_id=mid, demand=demand, wall=W)
    assert out.status is not None
    return out.status


# -- the fair split ---------------------------------------------------------------------


def test_fair_shares_split_equally_among_equal_demands() -> None:
    assert state.fair_shares(50, {"a": 50, "b": 50}) == {"a": 25, "b": 25}
    assert state.fair_shares(50, {}) == {}


def test_fair_shares_give_what_idle_members_do_not_use_to_busy_ones() -> None:
    shares = state.fair_shares(50, {"busy": 50, "i1": 1, "i2": 0, "i3": 2})
    assert shares == {"busy": 47, "i1": 1, "i2": 0, "i3": 2}


def test_fair_shares_split_what_no_demand_uses_equally() -> None:
    assert state.fair_shares(40, {"a": 4, "b": 0}) == {"a": 22, "b": 18}


@pytest.mark.parametrize("seed", range(200))
def test_fair_shares_are_max_min_fair_and_never_exceed_the_rate(seed: int) -> None:
    rng = random.Random(seed)
    rate = rng.choice([1.0, 50.0, 1 / 3600, 1e6])
    demands = {
        f"m{i}": rng.choice([0.0, rate, rng.random() * rate]) for i in range(rng.randint(1, 12))
    }
    shares = state.fair_shares(rate, demands)
    assert set(shares) == set(demands)
    assert math.fsum(shares.values()) <= rate * (1 + 1e-12)
    satisfied = all(shares[k] >= demands[k] - 1e-9 * rate for k in demands)
    if not satisfied:
        # Water-filling: whoever got less than it asked got at least as much as anyone.
        top = max(shares.values())
        for k in demands:
            if shares[k] < demands[k] - 1e-9 * rate:
                assert shares[k] >= top - 1e-9 * rate
        assert math.fsum(shares.values()) == pytest.approx(rate)


# -- transitions ------------------------------------------------------------------------


def test_the_first_member_takes_the_whole_rate_a_newcomer_only_what_is_free() -> None:
    s = join({}, "a")
    assert members(s) == {"a": pytest.approx(50)}
    s = join(s, "b")
    assert members(s)["b"] == 0.0  # nothing is free yet
    assert s["memberCount"] == 2
    assert s["allocated"] == pytest.approx(50)


def test_others_shrink_at_their_renewal_then_the_newcomer_grows() -> None:
    s = join(join({}, "a"), "b")
    s = renew(s, "a", 50)  # a sees b's demand and gives back half
    assert members(s)["a"] == pytest.approx(25)
    s = renew(s, "b", 50)
    assert members(s) == {"a": pytest.approx(25), "b": pytest.approx(25)}
    assert total(s) <= 50


def test_an_increase_never_takes_more_than_is_free() -> None:
    s = join(join({}, "a"), "b")
    s = renew(s, "b", 50)  # a has not shrunk: b may not grow
    assert members(s)["b"] == 0.0
    assert total(s) <= 50


def test_an_idle_member_gives_its_share_to_a_busy_one_within_two_renewals() -> None:
    s = join({}, "busy")
    for i in range(3):
        s = join(s, f"idle{i}")
    for name in ("busy", "idle0", "idle1", "idle2"):
        s = renew(s, name, 50)  # all busy: equal shares
    assert members(s)["busy"] == pytest.approx(12.5)
    for name in ("idle0", "idle1", "idle2"):  # they go idle and report it
        s = renew(s, name, 0.5)
    s = renew(s, "busy", 50)
    assert members(s)["busy"] == pytest.approx(48.5)
    assert total(s) <= 50


def test_renewal_bumps_the_counter_and_records_the_demand() -> None:
    s = join({}, "a", demand=10)
    s = renew(s, "a", 7)
    (m,) = state.parse(s)
    assert (m.renewals, m.demand, m.renewed_at) == (1, 7, W)


def test_a_member_whose_entry_is_gone_is_told_so() -> None:
    s = join({}, "a")
    assert state.renew(s, SPEC, member_id="zz", demand=1, wall=W) == state.Outcome(None, None)


def test_leave_and_drop_remove_entries() -> None:
    s = join(join({}, "a"), "b")
    left = state.leave(s, {"a"})
    assert left is not None
    assert set(members(left)) == {"b"}
    assert state.leave(s, {"zz"}) is None
    dropped = state.join(s, SPEC, member_id="c", holder="h", ttl=3, demand=50, wall=W, drop={"a"})
    assert dropped.status is not None
    assert set(members(dropped.status)) == {"b", "c"}
    assert dropped.share == pytest.approx(25)  # a's share is free: c takes its fair half


def test_joining_again_with_the_same_id_renews_it() -> None:
    s = join({}, "a")
    again = state.join(s, SPEC, member_id="a", holder="h-a", ttl=3, demand=50, wall=W)
    assert again.status is not None
    assert len(state.parse(again.status)) == 1
    assert state.parse(again.status)[0].renewals == 1


def test_a_lowered_rate_makes_every_member_shrink_and_no_one_grow() -> None:
    s = join(join({}, "a"), "b")
    s = renew(renew(s, "a", 50), "b", 50)
    low = {"rate": 10}
    s = renew(s, "a", 50, spec=low)
    assert members(s)["a"] == pytest.approx(5)
    assert total(s) > 10  # b has not renewed yet
    assert state.target_of(low, s, "b") == pytest.approx(5)  # b lowers at once on seeing it
    s = renew(s, "b", 50, spec=low)
    assert total(s) <= 10


def test_a_full_member_list_refuses_a_join() -> None:
    status = {
        "members": [
            {"id": f"m{i}", "holder": "h", "share": 0, "demand": 0, "ttlSeconds": 3, "renewals": 0}
            for i in range(1000)
        ]
    }
    assert state.join(status, SPEC, member_id="x", holder="h", ttl=3, demand=1, wall=W) == (
        state.Outcome(None, None)
    )


# -- the protocol under every interleaving ---------------------------------------------


class Model:
    """Members following the protocol's local rules over a shared status (one CAS at a time)."""

    def __init__(self, rate: float) -> None:
        self.spec: dict[str, Any] = {"rate": rate}
        self.status: dict[str, Any] = {}
        self.in_force: dict[str, float] = {}

    def check(self) -> None:
        rate = self.spec["rate"]
        recorded = members(self.status)
        assert math.fsum(recorded.values()) <= rate
        for mid, share in self.in_force.items():
            # in force never above recorded (a removed entry's owner has stopped)
            assert share <= recorded.get(mid, 0.0)
        assert math.fsum(self.in_force.values()) <= rate

    def step(self, op: str, mid: str, demand: float) -> None:
        if op == "join" and mid not in self.in_force:
            out = state.join(
                self.status, self.spec, member_id=mid, holder="h", ttl=3, demand=demand, wall=W
            )
            assert out.status is not None
            assert out.share is not None
            self.status = out.status
            self.in_force[mid] = out.share  # confirmed: in force from now on
        elif op == "renew" and mid in self.in_force:
            out = state.renew(self.status, self.spec, member_id=mid, demand=demand, wall=W)
            assert out.share is not None
            assert out.status is not None
            self.in_force[mid] = min(self.in_force[mid], out.share)  # lower first
            self.check()
            self.status = out.status  # the write lands
            self.in_force[mid] = out.share  # raise after the confirmation
        elif op == "lost-write" and mid in self.in_force:
            # A renewal decided and sent, whose answer never came: lowered, not raised.
            out = state.renew(self.status, self.spec, member_id=mid, demand=demand, wall=W)
            assert out.share is not None
            assert out.status is not None
            self.in_force[mid] = min(self.in_force[mid], out.share)
            self.status = out.status
        elif op == "leave" and mid in self.in_force:
            del self.in_force[mid]  # stop spending, then write
            self.status = state.leave(self.status, {mid}) or self.status
        elif op == "expire" and mid in self.in_force:
            del self.in_force[mid]  # its own deadline passed first...
            self.status = state.leave(self.status, {mid}) or self.status  # ...then it is removed
        self.check()


@pytest.mark.parametrize("seed", range(300))
def test_random_interleavings_keep_the_sum_within_the_rate(seed: int) -> None:
    rng = random.Random(seed)
    model = Model(rng.choice([50.0, 1.0, 7.0, 1 / 60]))
    ids = [f"m{i}" for i in range(rng.randint(2, 6))]
    ops = ["join", "renew", "renew", "renew", "lost-write", "leave", "expire"]
    for _ in range(200):
        rate = model.spec["rate"]
        demand = rng.choice([0.0, rate, rng.random() * rate])
        model.step(rng.choice(ops), rng.choice(ids), demand)


def test_every_order_of_two_joins_and_renewals_keeps_the_sum_within_the_rate() -> None:
    steps = [("join", "a"), ("join", "b"), ("renew", "a"), ("renew", "b"), ("renew", "a")]
    for order in itertools.permutations(steps):
        model = Model(50)
        for op, mid in order:
            model.step(op, mid, 50)


def test_two_busy_members_converge_to_equal_shares_in_two_renewals_each() -> None:
    model = Model(50)
    model.step("join", "a", 50)
    model.step("join", "b", 50)
    for _ in range(2):
        model.step("renew", "a", 50)
        model.step("renew", "b", 50)
    assert model.in_force == {"a": pytest.approx(25), "b": pytest.approx(25)}


# -- untrusted state --------------------------------------------------------------------

GOOD = {"id": "a", "holder": "h", "share": 1, "demand": 1, "ttlSeconds": 3, "renewals": 0}


@pytest.mark.parametrize(
    ("status", "field"),
    [
        ({"members": 3}, "status.members"),
        ({"members": ["x"]}, "status.members[0]"),
        ({"members": [{**GOOD, "share": -1}]}, "status.members[0].share"),
        ({"members": [{**GOOD, "share": "lots"}]}, "status.members[0].share"),
        ({"members": [{**GOOD, "share": float("inf")}]}, "status.members[0].share"),
        ({"members": [{**GOOD, "share": True}]}, "status.members[0].share"),
        ({"members": [{**GOOD, "demand": None}]}, "status.members[0].demand"),
        ({"members": [{k: v for k, v in GOOD.items() if k != "share"}]}, "status.members[0].share"),
        ({"members": [{**GOOD, "ttlSeconds": 0}]}, "status.members[0].ttlSeconds"),
        ({"members": [{**GOOD, "renewals": 1.5}]}, "status.members[0].renewals"),
        ({"members": [{**GOOD, "id": ""}]}, "status.members[0].id"),
        ({"members": [GOOD, GOOD]}, "status.members[1].id"),
    ],
)
def test_a_status_that_does_not_parse_is_refused_whole(status: dict[str, Any], field: str) -> None:
    with pytest.raises(CorruptState) as err:
        state.join(status, SPEC, member_id="x", holder="h", ttl=3, demand=1, wall=W)
    assert err.value.field == field
    with pytest.raises(CorruptState):
        state.renew(status, SPEC, member_id="a", demand=1, wall=W)
    with pytest.raises(CorruptState):
        state.leave(status, {"a"})
    assert state.tracked_entries(_obj(status)) == []  # nothing of it is judged stale


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({}, "spec.rate"),
        ({"rate": 0}, "spec.rate"),
        ({"rate": -5}, "spec.rate"),
        ({"rate": "50/s"}, "spec.rate"),
        ({"rate": float("nan")}, "spec.rate"),
        ({"rate": 2e9}, "spec.rate"),
        ({"rate": 5, "burst": 0}, "spec.burst"),
        ({"rate": 5, "burst": "x"}, "spec.burst"),
    ],
)
def test_a_spec_that_does_not_parse_is_refused(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(CorruptState) as err:
        state.join({}, spec, member_id="x", holder="h", ttl=3, demand=1, wall=W)
    assert err.value.field == field


def test_spec_burst_defaults_to_one_second_of_the_rate_at_least_one_token() -> None:
    assert state.parse_spec({"rate": 50}) == state.Spec(50, 50)
    assert state.parse_spec({"rate": 0.01}) == state.Spec(0.01, 1)
    assert state.parse_spec({"rate": 50, "burst": 5}) == state.Spec(50, 5)


def _obj(status: dict[str, Any]) -> Any:
    from konductor.store import RATELIMIT, StoredObject

    return StoredObject(RATELIMIT, "r", "1", {"rate": 5}, status)


def test_tracked_entries_of_a_good_status() -> None:
    s = join({}, "a")
    assert state.tracked_entries(_obj(s)) == [{"id": "a", "renewals": 0, "ttlSeconds": 3}]


# -- the bucket -------------------------------------------------------------------------


def test_bucket_fills_at_its_share_up_to_its_capacity() -> None:
    b = state.Bucket(0)
    b.set(10, 5, 0)
    assert not b.take(1, 0)  # starts empty
    assert b.wait_for(1, 0) == pytest.approx(0.1)
    assert b.take(1, 0.1)
    b.refill(100)
    assert b.tokens == 5  # capped
    assert b.take(5, 100)
    assert not b.take(0.5, 100)


def test_a_raised_share_adds_no_tokens_and_a_cut_caps_them_at_once() -> None:
    b = state.Bucket(0)
    b.set(10, 10, 0)
    b.refill(0.5)
    assert b.tokens == pytest.approx(5)
    b.set(40, 40, 0.5)
    assert b.tokens == pytest.approx(5)  # no jump
    b.set(2, 2, 0.5)
    assert b.tokens == 2  # capped now
    b.empty(0.6)
    assert (b.tokens, b.share) == (0, 0)
    assert not b.take(0.001, 10)


def test_a_cost_above_the_capacity_can_never_be_met() -> None:
    b = state.Bucket(0)
    b.set(10, 2, 0)
    assert b.wait_for(3, 0) is None
    b.set(0, 0, 0)
    assert b.wait_for(1, 0) is None


@pytest.mark.parametrize("seed", range(50))
def test_buckets_sharing_a_rate_never_spend_more_than_burst_plus_rate_times_t(seed: int) -> None:
    """The window bound, from the bucket rules alone, with shares moving under the invariant."""
    rng = random.Random(seed)
    rate, burst = 50.0, 10.0
    buckets = [state.Bucket(0) for _ in range(4)]
    spent: list[tuple[float, float]] = []
    now = 0.0
    for _ in range(2000):
        now += rng.random() * 0.05
        if rng.random() < 0.05:  # new shares summing to at most the rate
            weights = [rng.random() for _ in buckets]
            scale = rate / sum(weights) * rng.choice([1.0, 0.5])
            # lower the shrinking ones first, then raise: the sum stays <= rate throughout
            new = [w * scale for w in weights]
            for b, s in sorted(zip(buckets, new, strict=True), key=lambda bs: bs[1] - bs[0].share):
                b.set(s, burst * s / rate, now)
                assert math.fsum(x.share for x in buckets) <= rate * (1 + 1e-9)
        for b in buckets:
            cost = rng.choice([1.0, 0.5, 2.0])
            if b.take(cost, now):
                spent.append((now, cost))
    times = [t for t, _ in spent]
    sums = list(itertools.accumulate((c for _, c in spent), initial=0.0))
    for i, start in enumerate(times):
        for window in (0.1, 1.0, 3.0):
            end = bisect.bisect_left(times, start + window)
            assert sums[end] - sums[i] <= burst + rate * window + 1e-6
