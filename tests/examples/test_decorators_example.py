"""examples/decorators.py runs; the semaphore held two exports at most."""

from __future__ import annotations

from tests.examples.test_examples import run_example


def test_decorators_example_on_memory() -> None:
    out = run_example("examples/decorators.py")
    assert out.count("done") == 6
    assert "at most 2 exports ran at once" in out
    assert "report weekly built" in out
    assert "all reports rebuilt" in out
