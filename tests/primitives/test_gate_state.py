"""Gate conditions and flag transitions, as pure functions."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from konductor import InvalidArgument, InvalidName
from konductor._primitives import _gate_state as state
from konductor._primitives._gate_state import GateCondition

W = "2026-01-01T00:00:01.000000Z"


def test_conditions_are_parsed_from_every_accepted_form() -> None:
    conds = state.parse_conditions(
        [
            GateCondition.barrier("b"),
            {"type": "once", "name": "o"},
            ("JOB", "j"),
            {"type": "Barrier", "name": "b"},  # duplicate dropped
        ]
    )
    assert conds == (
        GateCondition("Barrier", "b"),
        GateCondition("Once", "o"),
        GateCondition("Job", "j"),
    )
    assert next(c.to_json() for c in conds) == {"type": "Barrier", "name": "b"}


@pytest.mark.parametrize(
    "bad",
    [
        "barrier",
        {"type": "Barrier", "name": "b"},
        [{"type": "Pod", "name": "p"}],
        [{"type": "Barrier"}],
        [{"type": "Barrier", "name": "b", "extra": 1}],
        [("Barrier",)],
        [42],
        [{"type": None, "name": "b"}],
        7,
    ],
)
def test_bad_conditions_are_rejected(bad: object) -> None:
    with pytest.raises(InvalidArgument):
        state.parse_conditions(bad)


def test_bad_condition_names_are_rejected_naming_the_kind() -> None:
    with pytest.raises(InvalidName, match="Job condition name"):
        state.parse_conditions([GateCondition.job("Not_Valid")])


def test_conditions_of_spec_skips_what_the_crd_would_reject() -> None:
    spec = {
        "conditions": [
            {"type": "Barrier", "name": "b"},
            {"type": "Pod", "name": "p"},
            "junk",
            {"type": "Once", "name": ""},
            {"type": "Job", "name": "j"},
            {"type": "Job", "name": "j"},
        ]
    }
    assert state.conditions_of(spec) == (GateCondition.barrier("b"), GateCondition.job("j"))
    assert state.conditions_of({}) == ()
    assert state.conditions_of({"conditions": "junk"}) == ()


BARRIER, ONCE, JOB = GateCondition.barrier("b"), GateCondition.once("o"), GateCondition.job("j")
MET: list[tuple[GateCondition, dict[str, Any] | None, bool]] = [
    (BARRIER, None, False),
    (BARRIER, {}, False),
    (BARRIER, {"open": False, "arrivedCount": 2}, False),
    (BARRIER, {"open": "true"}, False),
    (BARRIER, {"open": True}, True),
    (ONCE, None, False),
    (ONCE, {}, False),
    (ONCE, {"state": "Running"}, False),
    (ONCE, {"state": "Failed"}, False),
    (ONCE, {"state": "done"}, False),
    (ONCE, {"state": "Done"}, True),
    (JOB, None, False),
    (JOB, {}, False),
    (JOB, {"conditions": [{"type": "Complete", "status": "False"}]}, False),
    (JOB, {"conditions": [{"type": "Failed", "status": "True"}]}, False),
    (JOB, {"conditions": [{"type": "SuccessCriteriaMet", "status": "True"}]}, False),
    (JOB, {"conditions": "junk"}, False),
    (
        JOB,
        {
            "conditions": [
                {"type": "SuccessCriteriaMet", "status": "True"},
                {"type": "Complete", "status": "True"},
            ]
        },
        True,
    ),
]


@pytest.mark.parametrize(("cond", "status", "met"), MET)
def test_condition_met(cond: GateCondition, status: dict[str, Any] | None, met: bool) -> None:
    assert state.condition_met(cond, status) is met
    text = state.describe(cond, status)
    assert cond.name in text
    if status is None:
        assert "does not exist" in text


def test_describe_says_where_each_object_stands() -> None:
    assert state.describe(BARRIER, {"arrivedCount": 2}) == "barrier 'b' open (2 arrived)"
    assert state.describe(ONCE, {"state": "Running"}) == "once 'o' done (state Running)"
    assert state.describe(ONCE, {}) == "once 'o' done (state not started)"
    failed = {"conditions": [{"type": "Failed", "status": "True"}]}
    assert state.describe(JOB, failed) == "job 'j' complete (Failed)"
    assert state.describe(JOB, {}) == "job 'j' complete (running)"


@pytest.mark.parametrize("flag", [None, False, True])
@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_open_is_flag_or_all_of_at_least_one_condition(flag: bool | None, n: int) -> None:
    status = {} if flag is None else {"open": flag}
    for met in itertools.product([False, True], repeat=n):
        expected = flag is True or (n > 0 and all(met))
        assert state.is_open(status, iter(met)) is expected


def test_set_open_is_idempotent_and_records_who_and_when() -> None:
    opened = state.set_open({"open": False, "x": 1}, True, "me", W)
    assert opened == {"open": True, "openedAt": W, "changedBy": "me", "x": 1}
    assert state.set_open(opened, True, "other", W) is None
    closed = state.set_open(opened, False, "you", W)
    assert closed is not None
    assert closed["open"] is False
    assert closed["closedAt"] == W
    assert closed["changedBy"] == "you"
    assert state.set_open(closed, False, "me", W) is None
    # A fresh gate has no flag: closing it writes the flag.
    assert state.set_open({}, False, "me", W) == {"open": False, "closedAt": W, "changedBy": "me"}


def test_initial_status_is_closed_once() -> None:
    assert state.initial({}) == {"open": False}
    assert state.initial({"open": True}) is None
    assert state.initial({"open": False}) is None


@pytest.mark.parametrize(
    ("conditions", "field"),
    [
        ("all", "spec.conditions"),
        ([{"type": "Barrier", "name": "b"}, {"type": 5, "name": "x"}], "spec.conditions[1].type"),
        ([{"type": "Barrier", "name": "b"}, {"type": "Job"}], "spec.conditions[1]"),
        ([{"type": "Once", "name": ""}], "spec.conditions[0].name"),
        (["Barrier b"], "spec.conditions[0]"),
    ],
)
def test_a_corrupt_condition_is_refused_not_skipped(conditions: Any, field: str) -> None:
    """Skipping the condition that does not parse would open the gate early."""
    from konductor import CorruptState
    from konductor._primitives._gate_state import parse_spec

    with pytest.raises(CorruptState) as caught:
        parse_spec({"conditions": conditions})
    assert caught.value.field.startswith(field)
    assert parse_spec({"conditions": [{"type": "Job", "name": "j"}]}) == (GateCondition.job("j"),)
