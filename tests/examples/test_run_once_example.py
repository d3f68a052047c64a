"""examples/run_once.py runs: one migration for five replicas, a failure, a retry."""

from __future__ import annotations

from tests.examples.test_examples import run_example


def test_run_once_example_on_memory() -> None:
    out = run_example("examples/run_once.py")
    assert out.count("ran the migration -> schema v42") == 1
    assert out.count("waited for the migration") == 4
    assert "migrate-db: Done (attempt 1); ran 1 time(s)" in out
    assert out.count("ran the warm-up, which failed: ConnectionError") == 1
    assert out.count("the warm-up it waited for failed: ConnectionError") == 4
    assert "warm-cache: Failed: ConnectionError('cache not reachable yet')" in out
    assert "warm-cache: Done after 2 runs (attempt 2)" in out
