"""SyncClient is the twin of Client: the same methods, with the same parameters."""

from __future__ import annotations

import inspect
import threading
import time
from pathlib import Path

import pytest

from konductor import Client, InvalidArgument, LocalStore, SyncClient, SyncGrant
from konductor._primitives._lease import Lease

#: Parameters a SyncClient method has on top of its twin's, and why.
SYNC_EXTRAS = {"close": {"timeout"}}  # bounds the blocking wait for the releases


def public_methods(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in inspect.getmembers(cls, callable)
        if not name.startswith("_")
    }


def test_every_public_method_of_client_has_a_sync_twin_with_the_same_parameters() -> None:
    async_methods = public_methods(Client)
    sync_methods = public_methods(SyncClient)
    assert "campaign" in async_methods
    missing = sorted(set(async_methods) - set(sync_methods))
    assert missing == [], f"SyncClient lacks {missing}"
    for name, signature in async_methods.items():
        twin = sync_methods[name]
        extras = SYNC_EXTRAS.get(name, set())
        ours = [
            (p.name, p.kind, p.default) for p in twin.parameters.values() if p.name not in extras
        ]
        theirs = [(p.name, p.kind, p.default) for p in signature.parameters.values()]
        assert ours == theirs, f"SyncClient.{name}{twin} differs from Client.{name}{signature}"


def test_sync_campaign_returns_the_leaders_result_and_releases(tmp_path: Path) -> None:
    db = tmp_path / "k.db"
    with SyncClient(lambda: LocalStore(db)) as a, SyncClient(lambda: LocalStore(db)) as b:
        seen: list[int] = []

        def lead(lease: SyncGrant[Lease]) -> str:
            lease.ensure_held()
            seen.append(lease.token)
            return "done"

        assert a.campaign("beat", lead, ttl=3) == "done"
        assert len(seen) == 1
        assert b.try_acquire_lease("beat", ttl=3) is not None  # released at once
        with pytest.raises(InvalidArgument):
            a.campaign("beat", "not a function")  # type: ignore[arg-type]


def test_sync_campaign_leads_again_after_losing_the_lease(tmp_path: Path) -> None:
    db = tmp_path / "k.db"
    calls: list[int] = []

    def lead(lease: SyncGrant[Lease]) -> str:
        calls.append(lease.token)
        if len(calls) == 2:
            return "second term"
        while True:  # blocking leader work, checking leadership between steps
            lease.ensure_held()  # raises LeaseLost once the lease is gone
            time.sleep(0.05)

    with SyncClient(lambda: LocalStore(db)) as leader, SyncClient(lambda: LocalStore(db)) as ops:
        result: list[str] = []
        runner = threading.Thread(
            target=lambda: result.append(leader.campaign("beat", lead, ttl=3))
        )
        runner.start()
        deadline = time.monotonic() + 30
        while not calls:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        ops.delete("lease", "beat")  # an operator resets the lease: the leader loses it
        runner.join(timeout=30)
        assert not runner.is_alive()
    assert result == ["second term"]
    assert len(calls) == 2
    # (No token comparison: deleting the Lease restarted its leaseTransitions.)
