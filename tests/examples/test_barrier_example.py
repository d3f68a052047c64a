"""examples/barrier.py runs, on the memory store and on the real API server."""

from __future__ import annotations

from typing import Any

import pytest

from tests.examples.test_examples import run_example


def test_barrier_example_on_memory() -> None:
    out = run_example("examples/barrier.py")
    assert out.count("passed (5 of 5 arrived)") == 5
    assert "all 5 workers passed together, none before the last arrival" in out


@pytest.mark.kubernetes
def test_barrier_example_on_kubernetes(kube_crds: Any) -> None:
    for _ in range(2):  # a second run starts afresh although the barrier stays open
        out = run_example(
            "examples/barrier.py",
            "--kubeconfig",
            str(kube_crds.admin_kubeconfig),
            "--workers",
            "3",
        )
        assert out.count("passed (3 of 3 arrived)") == 3
        assert "barrier 'example-start-line': open=True, arrived 3/3" in out
