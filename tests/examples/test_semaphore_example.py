"""examples/semaphore.py runs and never lets more than 3 jobs in."""

from __future__ import annotations

from tests.examples.test_examples import run_example


def test_semaphore_example_on_memory() -> None:
    out = run_example("examples/semaphore.py")
    assert "12 jobs done; at most 3 ran at once" in out
    assert out.count(" runs ") == 12
