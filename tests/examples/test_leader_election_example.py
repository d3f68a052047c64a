"""The leader-election example runs, on the memory store and on the real API server."""

from __future__ import annotations

from typing import Any

import pytest

from tests.examples.test_examples import run_example


def test_leader_election_on_memory() -> None:
    out = run_example("examples/leader_election.py")
    assert "3 candidates campaign for lease 'example-leader'" in out
    assert out.count(" leads (token ") == 3
    assert out.count(" steps down") == 3
    # Tokens 0, 1, 2: created with 0 as client-go does, +1 at every change of holder.
    for token in range(3):
        assert f"(token {token})" in out
    assert "never more than one leader at a time: yes" in out
    assert "fencing tokens strictly increase: yes" in out


@pytest.mark.kubernetes
def test_leader_election_on_kubernetes(kube_crds: Any) -> None:
    out = run_example(
        "examples/leader_election.py",
        "--kubeconfig",
        str(kube_crds.admin_kubeconfig),
        "--candidates",
        "3",
        "--steps",
        "1",
    )
    assert out.count(" leads (token ") == 3
    assert "never more than one leader at a time: yes" in out
    assert "fencing tokens strictly increase: yes" in out
