"""Once transitions, exhaustively: who runs, who waits, what is recorded."""

from __future__ import annotations

import itertools
from collections.abc import Collection
from typing import Any

import pytest

from konductor import CorruptState
from konductor._primitives import _once_state as s

RUN_OK = {"id": "a", "holder": "h", "attempt": 1, "ttlSeconds": 5.0, "renewals": 0}
RUN_OK = {"id": "a", "holder": "h", "attempt": 1, "ttlSeconds": 5.0, "renewals": 0}
WALL = "2026-01-01T00:00:00.000000Z"
ME = s.Claim("me", "pod-a-1-aaaaaa", 15.0)


def run_entry(claim_id: str, attempt: int, renewals: int = 0) -> dict[str, Any]:
    return {
        "id": claim_id,
        "holder": f"holder-of-{claim_id}",
        "attempt": attempt,
        "ttlSeconds": 15.0,
        "renewals": renewals,
        "renewedAt": WALL,
    }


def running(claim_id: str = "other", attempt: int = 1) -> dict[str, Any]:
    return {
        "state": "Running",
        "attempt": attempt,
        "runner": f"holder-of-{claim_id}",
        "startedAt": WALL,
        "run": run_entry(claim_id, attempt),
    }


DONE = {"state": "Done", "attempt": 3, "runner": "x", "doneAt": WALL}
FAILED = {"state": "Failed", "attempt": 3, "runner": "x", "error": "ValueError('no')"}


# -- begin ------------------------------------------------------------------------------


def test_the_first_caller_claims_attempt_one() -> None:
    out = s.begin({}, ME, set(), WALL, None)
    assert out.verdict == s.RUN
    assert out.attempt == 1
    assert out.status == {
        "state": "Running",
        "attempt": 1,
        "runner": ME.holder,
        "startedAt": WALL,
        "run": {
            "id": "me",
            "holder": ME.holder,
            "attempt": 1,
            "ttlSeconds": 15.0,
            "renewals": 0,
            "renewedAt": WALL,
        },
    }


def test_a_live_claim_makes_others_wait_without_a_write() -> None:
    out = s.begin(running(attempt=4), ME, set(), WALL, None)
    assert (out.status, out.verdict, out.attempt) == (None, s.WAIT, 4)
    out = s.begin(running(attempt=4), ME, {"unrelated"}, WALL, 4)
    assert (out.status, out.verdict) == (None, s.WAIT)


def test_a_stale_claim_is_taken_over_with_the_next_attempt() -> None:
    out = s.begin(running("dead", attempt=4), ME, {"dead"}, WALL, 4)
    assert out.verdict == s.RUN
    assert out.attempt == 5
    assert out.status is not None
    assert out.status["run"]["id"] == "me"
    assert out.status["run"]["attempt"] == 5
    assert out.status["runner"] == ME.holder


def test_running_without_a_claim_entry_is_taken_over() -> None:
    status = {"state": "Running", "attempt": 2, "runner": "somebody"}
    out = s.begin(status, ME, set(), WALL, None)
    assert (out.verdict, out.attempt) == (s.RUN, 3)


def test_our_own_claim_already_written_means_run_without_a_write() -> None:
    out = s.begin(running("me", attempt=7), ME, set(), WALL, None)
    assert (out.status, out.verdict, out.attempt) == (None, s.RUN, 7)


@pytest.mark.parametrize("joined", [None, 1, 3, 9])
def test_done_is_final_for_everybody(joined: int | None) -> None:
    out = s.begin(DONE, ME, set(), WALL, joined)
    assert (out.status, out.verdict, out.attempt) == (None, s.DONE, 3)


@pytest.mark.parametrize("joined", [1, 2, 3])
def test_a_waiter_sees_the_failure_of_the_run_it_waited_for(joined: int) -> None:
    out = s.begin(FAILED, ME, set(), WALL, joined)
    assert (out.status, out.verdict, out.attempt) == (None, s.FAILED, 3)


def test_a_caller_arriving_after_a_failure_retries() -> None:
    out = s.begin(FAILED, ME, set(), WALL, None)
    assert (out.verdict, out.attempt) == (s.RUN, 4)
    assert out.status is not None
    assert "error" not in out.status
    assert out.status["state"] == "Running"


def test_a_failure_older_than_the_awaited_attempt_is_retried() -> None:
    assert s.begin(FAILED, ME, set(), WALL, 4).verdict == s.RUN


def test_pending_after_a_reset_keeps_counting_attempts() -> None:
    out = s.begin({"state": "Pending", "attempt": 6}, ME, set(), WALL, None)
    assert (out.verdict, out.attempt) == (s.RUN, 7)


@pytest.mark.parametrize("value", ["Weird", None, 3, ""])
def test_an_unknown_state_reads_as_pending_but_is_never_run(value: Any) -> None:
    """Shown as Pending, but a garbage state is not guessed at: running the function
    again on it could run a migration twice (fail closed, with a clear error)."""
    assert s.state_of({"state": value}) == "Pending"
    with pytest.raises(CorruptState) as caught:
        s.begin({"state": value}, ME, set(), WALL, None)
    assert caught.value.field == "status.state"


@pytest.mark.parametrize(
    ("status", "field"),
    [
        ({"attempt": -3}, "status.attempt"),
        ({"attempt": "3"}, "status.attempt"),
        ({"state": "Running", "run": "x"}, "status.run"),
        ({"state": "Running", "run": {"holder": "h"}}, "status.run.id"),
        ({"state": "Running", "run": {**RUN_OK, "ttlSeconds": "abc"}}, "status.run.ttlSeconds"),
        ({"state": "Running", "run": {**RUN_OK, "attempt": 0}}, "status.run.attempt"),
    ],
)
def test_corrupt_fields_raise_corrupt_state(status: dict[str, Any], field: str) -> None:
    for transition in (
        lambda: s.begin(status, ME, set(), WALL, None),
        lambda: s.renew(status, {"a"}, WALL),
        lambda: s.reset(status, set(), force=True),
    ):
        with pytest.raises(CorruptState) as caught:
            transition()
        assert caught.value.field == field


def test_the_token_never_goes_below_the_live_claims() -> None:
    out = s.begin(
        {"state": "Failed", "attempt": 2, "run": {**RUN_OK, "attempt": 9}}, ME, set(), WALL, None
    )
    assert out.attempt == 10


@pytest.mark.parametrize("value", ["3", True, None, 2.5])
def test_a_garbage_attempt_reads_as_zero(value: Any) -> None:
    assert s.attempt_of({"attempt": value}) == 0


def test_unknown_fields_written_by_others_are_kept() -> None:
    out = s.begin({"note": "hello", **FAILED}, ME, set(), WALL, None)
    assert out.status is not None
    assert out.status["note"] == "hello"


def test_the_input_status_is_never_mutated() -> None:
    status = running("me", attempt=2)
    snapshot = repr(status)
    s.begin(status, ME, {"me"}, WALL, None)
    s.renew(status, {"me"}, "later")
    s.complete(status, "me", 2, "h", WALL, None, lost=False)
    s.complete(status, "me", 2, "h", WALL, "boom", lost=True)
    s.abandon(status, "me")
    s.reset(status, set(), force=True)
    assert repr(status) == snapshot


STATES: list[dict[str, Any]] = [
    {},
    {"state": "Pending", "attempt": 2},
    running("other", 2),
    running("me", 2),
    {"state": "Running", "attempt": 2},
    {**DONE, "attempt": 2},
    {**FAILED, "attempt": 2},
]


@pytest.mark.parametrize(
    ("status", "stale", "joined"),
    list(itertools.product(STATES, [set(), {"other"}, {"me"}], [None, 1, 2, 3])),
)
def test_begin_invariants_over_every_combination(
    status: dict[str, Any], stale: set[str], joined: int | None
) -> None:
    out = s.begin(status, ME, stale, WALL, joined)
    old_attempt = s.attempt_of(status)
    current = s.state_of(status)
    other_live = current == "Running" and status.get("run", {}).get("id") == "other"
    if current == "Done":
        assert out.verdict == s.DONE
    if other_live and "other" not in stale:
        assert out.verdict == s.WAIT  # never two live claims
    if out.verdict == s.FAILED:
        assert current == "Failed"
        assert joined is not None
        assert joined <= old_attempt
    if out.status is not None:  # a write is always a fresh claim of the next attempt
        assert out.verdict == s.RUN
        assert out.attempt == old_attempt + 1
        assert out.status["attempt"] == old_attempt + 1
        assert out.status["state"] == "Running"
        assert out.status["run"]["id"] == "me"
    elif out.verdict == s.RUN:  # only our own claim runs without a write
        assert status.get("run", {}).get("id") == "me"


# -- renew ------------------------------------------------------------------------------


def test_renew_bumps_only_the_live_claim() -> None:
    out, missing = s.renew(running("me", 2), {"me"}, "later")
    assert missing == set()
    assert out.status is not None
    assert out.status["run"]["renewals"] == 1
    assert out.status["run"]["renewedAt"] == "later"
    assert out.status["state"] == "Running"


@pytest.mark.parametrize(
    "status", [{}, running("other", 2), DONE, FAILED, {"state": "Pending", "attempt": 2}]
)
def test_renew_reports_a_claim_that_is_gone(status: dict[str, Any]) -> None:
    out, missing = s.renew(status, {"me"}, "later")
    assert out.status is None
    assert missing == {"me"}


# -- complete ---------------------------------------------------------------------------


def test_done_is_recorded_by_the_live_claim() -> None:
    out = s.complete(running("me", 2), "me", 2, "pod-a", "end", None, lost=False)
    assert out.verdict == s.RECORDED
    assert out.status == {
        "state": "Done",
        "attempt": 2,
        "runner": "pod-a",
        "startedAt": WALL,
        "doneAt": "end",
    }


def test_failure_is_recorded_with_the_error_truncated() -> None:
    huge = "RuntimeError('" + "x" * 5000 + "')"
    out = s.complete(running("me", 2), "me", 2, "pod-a", "end", huge, lost=False)
    assert out.verdict == s.RECORDED
    assert out.status is not None
    assert out.status["state"] == "Failed"
    assert out.status["failedAt"] == "end"
    assert "run" not in out.status
    assert len(out.status["error"]) == s.MAX_ERROR
    assert out.status["error"].startswith("RuntimeError('xxx")
    assert out.status["error"].endswith("[truncated]")


def test_a_repeated_record_changes_nothing() -> None:
    done = s.complete(running("me", 2), "me", 2, "pod-a", "end", None, lost=False).status
    assert done is not None
    again = s.complete(done, "me", 2, "pod-a", "end", None, lost=False)
    assert (again.status, again.verdict) == (None, s.RECORDED)
    failed = s.complete(running("me", 2), "me", 2, "pod-a", "end", "E()", lost=False).status
    assert failed is not None
    again = s.complete(failed, "me", 2, "pod-a", "end", "E()", lost=False)
    assert (again.status, again.verdict) == (None, s.RECORDED)


@pytest.mark.parametrize(
    "status",
    [
        running("other", 3),  # taken over
        {"state": "Pending", "attempt": 2},  # reset
        {**DONE, "attempt": 3},  # taken over and finished by the other
        {**FAILED, "attempt": 3},
        {},  # deleted and recreated
    ],
)
@pytest.mark.parametrize("error", [None, "E()"])
@pytest.mark.parametrize("lost", [False, True])
def test_a_revoked_claim_records_nothing(
    status: dict[str, Any], error: str | None, lost: bool
) -> None:
    out = s.complete(status, "me", 2, "pod-a", "end", error, lost=lost)
    assert (out.status, out.verdict) == (None, s.REVOKED)


@pytest.mark.parametrize("error", [None, "E()"])
def test_a_lost_claim_is_released_never_recorded(error: str | None) -> None:
    out = s.complete(running("me", 2), "me", 2, "pod-a", "end", error, lost=True)
    assert out.verdict == s.LOST
    assert out.status == {"state": "Pending", "attempt": 2}


# -- abandon and reset ------------------------------------------------------------------


def test_abandon_releases_only_our_claim() -> None:
    out = s.abandon(running("me", 4), "me")
    assert out.status == {"state": "Pending", "attempt": 4}
    for status in (running("other", 4), DONE, FAILED, {}):
        assert s.abandon(status, "me").status is None


@pytest.mark.parametrize("status", [DONE, FAILED, running("dead", 3)])
def test_reset_goes_back_to_pending_keeping_the_attempt(status: dict[str, Any]) -> None:
    out = s.reset(status, {"dead"}, force=False)
    assert out.status == {"state": "Pending", "attempt": status["attempt"]}
    assert out.verdict == status["state"]


def test_reset_leaves_a_live_run_alone_unless_forced() -> None:
    out = s.reset(running("alive", 3), set(), force=False)
    assert (out.status, out.verdict) == (None, "Running")
    out = s.reset(running("alive", 3), set(), force=True)
    assert out.status == {"state": "Pending", "attempt": 3}
    assert out.verdict == "Running"


@pytest.mark.parametrize("status", [{}, {"state": "Pending", "attempt": 5}])
def test_reset_of_a_pending_once_writes_nothing(status: dict[str, Any]) -> None:
    out = s.reset(status, set(), force=True)
    assert (out.status, out.verdict) == (None, "Pending")


def test_attempts_strictly_increase_through_a_whole_history() -> None:
    tokens = []
    status: dict[str, Any] = {}

    def claim(cid: str, stale: Collection[str] = ()) -> None:
        nonlocal status
        out = s.begin(status, s.Claim(cid, cid, 15.0), stale, WALL, None)
        assert out.verdict == s.RUN
        assert out.status is not None
        status = out.status
        tokens.append(out.attempt)

    def end(cid: str, error: str | None) -> None:
        nonlocal status
        out = s.complete(status, cid, s.attempt_of(status), cid, WALL, error, lost=False)
        assert out.verdict == s.RECORDED
        assert out.status is not None
        status = out.status

    claim("a")
    end("a", "E()")  # fails
    claim("b")  # a newcomer retries
    claim("c", stale={"b"})  # b crashed: taken over
    out = s.complete(status, "b", 2, "b", WALL, None, lost=False)
    assert out.verdict == s.REVOKED  # the crashed run cannot record over the takeover
    end("c", None)
    reset = s.reset(status, set(), force=False).status
    assert reset is not None
    status = reset
    claim("d")
    assert tokens == [1, 2, 3, 4]


def test_truncate_error_keeps_short_text() -> None:
    assert s.truncate_error("ValueError('x')") == "ValueError('x')"
    assert s.truncate_error("y" * s.MAX_ERROR) == "y" * s.MAX_ERROR
    assert len(s.truncate_error("y" * (s.MAX_ERROR + 1))) == s.MAX_ERROR
