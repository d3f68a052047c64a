"""Once state transitions, as pure functions of (status, inputs).

A Once object records whether a function has run cluster-wide. Its status is
the whole truth, changed only by compare-and-swap:

``state``
    ``"Pending"`` (or absent): nobody has run it, or the last run was
    abandoned or reset; the next caller runs it.
    ``"Running"``: ``run`` holds the runner's claim; others wait.
    ``"Done"``: it completed (``doneAt``, ``runner``). Final until a reset.
    ``"Failed"``: the last run raised (``error``, ``failedAt``, ``runner``);
    callers that waited on that run see it fail, the next caller retries.
    (A gate waits for ``state == "Done"`` exactly.)
``attempt``
    the fencing token: bumped by every claim (first run, retry after a
    failure, takeover from a crashed runner), never decreased, kept by a reset.
``run``
    the runner's claim while ``Running``: ``{id, holder, attempt, ttlSeconds,
    renewals, renewedAt}``, renewed like a semaphore grant. An observer that
    has seen it unchanged for ``ttlSeconds`` on its own monotonic clock (the
    caller passes such ids as ``stale``) may take the run over.
``runner``
    identity of the current (Running) or last (Done / Failed) runner, for
    ``kubectl get onces``.

Safety: a claim is written only over a state that allows it (Pending, Failed
for a caller that did not wait on that failure, or Running with a stale
claim), so at most one claim is live at a time; a run is recorded Done or
Failed only while its own claim is still the one in ``run`` and its owner has
not lost it, so a crashed or revoked run never overwrites a takeover.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from konductor import _limits as limits
from konductor._engine import _parse as p
from konductor._engine._parse import Where
from konductor._errors import CorruptState
from konductor._store._kinds import ONCE

JSON = dict[str, Any]

PENDING = "Pending"
RUNNING = "Running"
DONE = "Done"
FAILED = "Failed"

# Verdicts of begin():
RUN = "run"  # the caller holds the claim: it must run the function now
WAIT = "wait"  # somebody else's live claim: wait for a change
# DONE / FAILED (the strings above) report the outcome to a caller.

# Verdicts of complete():
RECORDED = "recorded"  # Done / Failed written (or already written by this claim)
LOST = "lost"  # the owner lost its claim: not recorded, the claim released
REVOKED = "revoked"  # the claim is no longer in the status (taken over, reset)

# Fields describing the current or last run; cleared whenever the state changes.
_RUN_KEYS = ("run", "runner", "error", "startedAt", "doneAt", "failedAt")

MAX_ERROR = limits.MAX_ERROR  # characters of repr(exception) kept in status.error


@dataclass(frozen=True)
class Claim:
    """One caller's claim to run the function, identified by ``id`` across retries."""

    id: str
    holder: str
    ttl: float


@dataclass(frozen=True)
class Outcome:
    """The result of a transition.

    ``status`` is the new status to write, or ``None`` when nothing changes.
    ``verdict`` says what the caller must do; ``attempt`` is the attempt the
    verdict is about (the caller's fencing token when the verdict is ``RUN``).
    """

    status: JSON | None
    verdict: str
    attempt: int = 0


def validate(status: Mapping[str, Any], where: Where | None = None) -> None:
    """Check the fields the transitions read; called first by each of them.

    Raises:
        CorruptState: ``state``, ``attempt`` or the ``run`` claim does not parse.
    """
    where = where or Where(ONCE)
    if "state" in status:
        p.choice(where, "status.state", status["state"], (PENDING, RUNNING, DONE, FAILED))
    if "attempt" in status:
        p.integer(where, "status.attempt", status["attempt"], minimum=0, maximum=limits.MAX_TOKEN)
    raw = status.get("run")
    if raw is None:
        return
    run = p.mapping(where, "status.run", raw)
    field = "status.run"
    p.string(
        where,
        f"{field}.id",
        p.required(where, field, run, "id"),
        min_length=1,
        max_length=limits.MAX_ID,
    )
    p.string(
        where,
        f"{field}.holder",
        p.required(where, field, run, "holder"),
        max_length=limits.MAX_IDENTITY,
    )
    p.integer(
        where,
        f"{field}.attempt",
        p.required(where, field, run, "attempt"),
        minimum=1,
        maximum=limits.MAX_TOKEN,
    )
    p.number(
        where,
        f"{field}.ttlSeconds",
        p.required(where, field, run, "ttlSeconds"),
        above=0,
        maximum=limits.MAX_TTL,
    )
    p.integer(
        where,
        f"{field}.renewals",
        p.required(where, field, run, "renewals"),
        minimum=0,
        maximum=limits.MAX_TOKEN,
    )


def _valid(status: Mapping[str, Any]) -> bool:
    try:
        validate(status)
    except CorruptState:
        return False
    return True


def state_of(status: Mapping[str, Any]) -> str:
    """The recorded state; absent or unknown values read as Pending."""
    value = status.get("state")
    return value if value in (RUNNING, DONE, FAILED) else PENDING


def attempt_of(status: Mapping[str, Any]) -> int:
    """The last attempt (fencing token): never lower than the live claim's."""
    value = status.get("attempt", 0)
    attempt = value if isinstance(value, int) and not isinstance(value, bool) else 0
    run = status.get("run")
    claimed = run.get("attempt") if isinstance(run, dict) else None
    if isinstance(claimed, int) and not isinstance(claimed, bool):
        attempt = max(attempt, claimed)
    return max(attempt, 0)


def run_of(status: Mapping[str, Any]) -> JSON | None:
    """The runner's claim entry, if the status holds one that parses."""
    value = status.get("run")
    if not isinstance(value, dict) or not _valid({"run": value}):
        return None
    return dict(value)


def truncate_error(text: str, limit: int = MAX_ERROR) -> str:
    """``text`` cut to ``limit`` characters (marked), so a huge repr stays small."""
    if len(text) <= limit:
        return text
    marker = "... [truncated]"
    return text[: limit - len(marker)] + marker


def _base(status: Mapping[str, Any], state: str, attempt: int) -> JSON:
    """A fresh status keeping only unknown fields (written by someone else)."""
    new = copy.deepcopy(dict(status))
    for key in _RUN_KEYS:
        new.pop(key, None)
    new["state"] = state
    new["attempt"] = attempt
    return new


def begin(
    status: Mapping[str, Any],
    claim: Claim,
    stale: Collection[str],
    wall: str,
    joined: int | None,
    *,
    where: Where | None = None,
) -> Outcome:
    """Decide what a caller of ``once`` does: run, wait, or report the outcome.

    ``joined`` is the first attempt this caller saw Running and waited for
    (``None`` if it has not waited): a failure of that attempt or a later one
    is reported to it as failed, while a caller that arrives after a failure
    retries. A Running claim in ``stale`` (its runner stopped renewing) or a
    Running state without a claim is taken over.
    """
    validate(status, where)
    current = state_of(status)
    attempt = attempt_of(status)
    if current == DONE:
        return Outcome(None, DONE, attempt)
    if current == RUNNING:
        run = run_of(status)
        if run is not None and run.get("id") == claim.id:  # our claim (a retried write)
            return Outcome(None, RUN, attempt)
        if run is not None and run.get("id") not in stale:
            return Outcome(None, WAIT, attempt)
    elif current == FAILED and joined is not None and attempt >= joined:
        return Outcome(None, FAILED, attempt)
    token = attempt + 1
    new = _base(status, RUNNING, token)
    new["runner"] = claim.holder
    new["startedAt"] = wall
    new["run"] = {
        "id": claim.id,
        "holder": claim.holder,
        "attempt": token,
        "ttlSeconds": claim.ttl,
        "renewals": 0,
        "renewedAt": wall,
    }
    return Outcome(new, RUN, token)


def renew(
    status: Mapping[str, Any], ids: Collection[str], wall: str, *, where: Where | None = None
) -> tuple[Outcome, set[str]]:
    """Bump the renewal counter of the claim if its id is in ``ids``.

    Returns the outcome and the ids that are not (or no longer) the live
    claim: their owners must treat their run as lost.
    """
    validate(status, where)
    run = run_of(status)
    if state_of(status) != RUNNING or run is None or run["id"] not in ids:
        return Outcome(None, WAIT, attempt_of(status)), set(ids)
    new = copy.deepcopy(dict(status))
    run["renewals"] = int(run.get("renewals", 0)) + 1
    run["renewedAt"] = wall
    new["run"] = run
    return Outcome(new, WAIT, attempt_of(status)), set(ids) - {run["id"]}


def _owns(status: Mapping[str, Any], claim_id: str) -> bool:
    run = run_of(status)
    return state_of(status) == RUNNING and run is not None and run["id"] == claim_id


def complete(
    status: Mapping[str, Any],
    claim_id: str,
    attempt: int,
    holder: str,
    wall: str,
    error: str | None,
    lost: bool,
    *,
    where: Where | None = None,
) -> Outcome:
    """Record the end of the run of ``claim_id``: Done (``error`` None) or Failed.

    Only the live claim records anything, and only if its owner has not
    ``lost`` it (then the claim is released to Pending, as if the runner had
    crashed, and the verdict is ``LOST``). A write repeated after a lost
    response finds its own record and changes nothing.
    """
    validate(status, where)
    wanted = DONE if error is None else FAILED
    if state_of(status) == wanted and attempt_of(status) == attempt:
        return Outcome(None, RECORDED, attempt)
    if not _owns(status, claim_id):
        return Outcome(None, REVOKED, attempt_of(status))
    if lost:
        return Outcome(_base(status, PENDING, attempt_of(status)), LOST, attempt)
    new = _base(status, wanted, attempt_of(status))
    new["runner"] = holder
    if "startedAt" in status:
        new["startedAt"] = status["startedAt"]
    if error is None:
        new["doneAt"] = wall
    else:
        new["error"] = truncate_error(error)
        new["failedAt"] = wall
    return Outcome(new, RECORDED, attempt)


def abandon(status: Mapping[str, Any], claim_id: str, *, where: Where | None = None) -> Outcome:
    """Release the claim ``claim_id`` back to Pending (its run was cancelled).

    Nothing changes if it is not the live claim.
    """
    validate(status, where)
    if not _owns(status, claim_id):
        return Outcome(None, REVOKED, attempt_of(status))
    return Outcome(_base(status, PENDING, attempt_of(status)), PENDING, attempt_of(status))


def reset(
    status: Mapping[str, Any], stale: Collection[str], force: bool, *, where: Where | None = None
) -> Outcome:
    """Back to Pending (keeping ``attempt``) so the next caller runs it again.

    A live claim (Running, not stale) is revoked only with ``force``;
    otherwise the verdict is ``RUNNING`` and nothing changes. The verdict is
    the state before the reset.
    """
    validate(status, where)
    current = state_of(status)
    run = run_of(status)
    if current == RUNNING and run is not None and run["id"] not in stale and not force:
        return Outcome(None, RUNNING, attempt_of(status))
    if current == PENDING and not any(key in status for key in _RUN_KEYS):
        return Outcome(None, current, attempt_of(status))  # nothing to reset
    return Outcome(_base(status, PENDING, attempt_of(status)), current, attempt_of(status))
