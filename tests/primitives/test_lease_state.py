"""The pure Lease rules (client-go's field semantics), exhaustively."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from konductor._primitives import _lease_state as state

ME, OTHER = "me-1-abc", "go-service-7f9c"
T0, T1 = "2026-01-01T00:00:00.000000Z", "2026-01-01T00:00:05.123456Z"

HOLDERS: list[Any] = [None, "", OTHER, ME]
TRANSITIONS: list[Any] = [None, 0, 3]


def spec_of(holder: Any, transitions: Any, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"leaseDurationSeconds": 15, "acquireTime": T0, "renewTime": T0}
    if holder is not None:
        spec["holderIdentity"] = holder
    if transitions is not None:
        spec["leaseTransitions"] = transitions
    spec.update(extra)
    return spec


def test_parse_is_tolerant_of_what_others_wrote() -> None:
    rec = state.parse({})
    assert rec == state.Record(None, None, None, None, 0, None)
    assert not rec.held
    rec = state.parse(
        {
            "holderIdentity": "",
            "leaseDurationSeconds": 15.0,
            "leaseTransitions": -2,
            "renewTime": 7,
        }
    )
    assert rec.holder is None
    assert rec.duration == 15
    assert rec.transitions == 0
    assert rec.renew_time is None
    assert state.parse({"leaseDurationSeconds": True, "leaseTransitions": "4"}).duration is None
    assert state.parse({"leaseTransitions": "4"}).transitions == 0
    held = state.parse(spec_of(OTHER, 3))
    assert held.held
    assert held.holder == OTHER
    assert held.transitions == 3
    assert held.acquire_time == T0
    assert held.renew_time == T0


def test_create_is_client_go_shaped() -> None:
    assert state.create(ME, 15, T1) == {
        "holderIdentity": ME,
        "leaseDurationSeconds": 15,
        "acquireTime": T1,
        "renewTime": T1,
        "leaseTransitions": 0,
    }


@pytest.mark.parametrize(
    ("holder", "transitions", "expired"),
    list(itertools.product(HOLDERS, TRANSITIONS, [False, True])),
)
def test_acquire_every_case(holder: Any, transitions: Any, expired: bool) -> None:
    spec = spec_of(holder, transitions, preferredHolder=ME, strategy="OldestEmulationVersion")
    before = dict(spec)
    out = state.acquire(spec, ME, 20, T1, expired=expired)
    assert spec == before  # pure: the input is not changed
    blocked = holder == OTHER and not expired
    if blocked:
        assert out == state.Outcome(None)
        return
    old = transitions or 0
    assert out.token == old + 1  # every take-over, even of our own leftover, is a transition
    assert out.spec == {
        "holderIdentity": ME,
        "leaseDurationSeconds": 20,
        "acquireTime": T1,
        "renewTime": T1,
        "leaseTransitions": old + 1,
        "preferredHolder": ME,  # fields of newer Kubernetes versions are kept
        "strategy": "OldestEmulationVersion",
    }


@pytest.mark.parametrize(
    ("holder", "transitions", "token"),
    list(itertools.product(HOLDERS, TRANSITIONS, [0, 3, 4])),
)
def test_renew_only_the_current_grant(holder: Any, transitions: Any, token: int) -> None:
    spec = spec_of(holder, transitions, extra="kept")
    out = state.renew(spec, ME, token, 9, T1)
    ours = holder == ME and (transitions or 0) == token
    assert state.holds(spec, ME, token) is ours
    if not ours:
        assert out == state.Outcome(None)  # lost: the caller marks the grant lost
        return
    assert out.token == token
    assert out.spec == {**spec, "leaseDurationSeconds": 9, "renewTime": T1}
    assert out.spec["acquireTime"] == T0  # kept, as client-go does on renewal


@pytest.mark.parametrize(
    ("holder", "transitions", "token"),
    list(itertools.product(HOLDERS, TRANSITIONS, [None, 0, 3])),
)
def test_release_every_case(holder: Any, transitions: Any, token: int | None) -> None:
    spec = spec_of(holder, transitions, extra="kept")
    out = state.release(spec, ME, token, T1)
    ours = holder == ME and (token is None or (transitions or 0) == token)
    if not ours:
        assert out == state.Outcome(None)  # never clears somebody else's (or a later) grant
        return
    # client-go's ReleaseOnCancel: empty holder, duration 1, times now, transitions kept.
    assert out.spec == {
        "holderIdentity": "",
        "leaseDurationSeconds": 1,
        "acquireTime": T1,
        "renewTime": T1,
        "leaseTransitions": transitions or 0,
        "extra": "kept",
    }
    assert out.token is None
    # Once released, anybody takes it at once, with the next token.
    again = state.acquire(out.spec, OTHER, 15, T1, expired=False)
    assert again.token == (transitions or 0) + 1


def test_holder_entries_track_holder_renew_time_and_transitions() -> None:
    assert state.holder_entries({}) == []
    assert state.holder_entries(spec_of("", 2)) == []
    [entry] = state.holder_entries(spec_of(OTHER, 2))
    assert entry == {"id": OTHER, "renewals": (T0, 2), "ttlSeconds": 15}
    # Any change of the triple is a different marker (the observer restarts its count).
    renewed = state.holder_entries(spec_of(OTHER, 2, renewTime=T1))[0]
    taken = state.holder_entries(spec_of(OTHER, 3))[0]
    assert renewed["renewals"] != entry["renewals"]
    assert taken["renewals"] != entry["renewals"]
    # A duration change alone is not a renewal (client-go compares the record, we
    # the triple the issue names), but the new duration applies at once.
    longer = state.holder_entries(spec_of(OTHER, 2, leaseDurationSeconds=60))[0]
    assert longer["renewals"] == entry["renewals"]
    assert longer["ttlSeconds"] == 60
    # No duration: expired as soon as seen, as in client-go.
    no_duration = {"holderIdentity": OTHER, "renewTime": T0}
    assert state.holder_entries(no_duration)[0]["ttlSeconds"] == 0


@pytest.mark.parametrize(
    ("ttl", "seconds"),
    [(1, 1), (1.0, 1), (1.2, 2), (2.5, 3), (15, 15), (14.999, 15), (86400, 86400)],
)
def test_duration_rounds_up_to_whole_seconds(ttl: float, seconds: int) -> None:
    assert state.duration_of(ttl) == seconds
    assert isinstance(state.duration_of(ttl), int)


@pytest.mark.parametrize(
    ("holder", "expired", "preferred"),
    list(itertools.product(HOLDERS, [False, True], [None, "", ME, OTHER, 7])),
)
def test_a_candidate_defers_to_the_preferred_holder(
    holder: Any, expired: bool, preferred: Any
) -> None:
    spec = spec_of(holder, 3, preferredHolder=preferred)
    out = state.acquire(spec, ME, 15, T1, expired=expired)
    # Another identity named: never take it, free, expired or our own leftover.
    named_other = isinstance(preferred, str) and preferred not in ("", ME)
    blocked = named_other or (holder == OTHER and not expired)
    assert (out.spec is None) is blocked
    if not blocked:
        assert out.token == 4
        assert out.spec is not None
        assert out.spec["preferredHolder"] == preferred


@pytest.mark.parametrize("preferred", [None, "", ME, OTHER, 7])
def test_the_holder_yields_only_to_another_named_identity(preferred: Any) -> None:
    spec = spec_of(ME, 3, preferredHolder=preferred)
    expected = OTHER if preferred == OTHER else None
    assert state.yields_to(spec, ME) == expected
    # Renewing and releasing keep the field for the next holder to see.
    renewed = state.renew(spec, ME, 3, 15, T1).spec
    released = state.release(spec, ME, 3, T1).spec
    assert renewed is not None
    assert released is not None
    assert renewed["preferredHolder"] == preferred == released["preferredHolder"]
    # Once released, the named identity takes it at once (nobody else does).
    assert state.acquire(released, OTHER, 15, T1, expired=False).token == (
        4 if preferred in (None, "", OTHER, 7) else None
    )


@pytest.mark.parametrize(
    ("transitions", "token"),
    [
        (0, 1),
        (2**31 - 2, 2**31 - 1),
        (2**31 - 1, 0),  # the int32 maximum wraps to 0, as a recreated Lease starts
        (2**40, 0),  # beyond int32 (written by hand): read as the maximum
        (-5, 1),  # negative (refused by the server, but untrusted): read as 0
    ],
)
def test_lease_transitions_wrap_at_the_int32_maximum(transitions: int, token: int) -> None:
    assert state.MAX_TRANSITIONS == 2**31 - 1
    for holder, expired in ((None, False), (OTHER, True), (ME, False)):
        out = state.acquire(spec_of(holder, transitions), ME, 15, T1, expired=expired)
        assert out.token == token
        assert out.spec is not None
        assert out.spec["leaseTransitions"] == token
        assert -(2**31) <= out.spec["leaseTransitions"] <= 2**31 - 1
