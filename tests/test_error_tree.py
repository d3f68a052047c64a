"""docs/store.md's error tree is the one the code has (regenerate it, do not edit it)."""

from __future__ import annotations

import subprocess
import sys

import konductor
from tests.support.error_tree import DOC, documented, public_errors, tree


def test_the_documented_error_tree_is_the_codes() -> None:
    assert documented(DOC.read_text()) == tree(), (
        "docs/store.md's error tree differs from konductor's classes; run "
        "`python -m tests.support.error_tree --write`"
    )


def test_the_tree_has_every_public_error_with_its_real_parent() -> None:
    drawn = tree()
    for cls in public_errors():
        assert cls.__name__ in drawn
    # The points a newcomer got wrong from the old, hand-drawn tree:
    assert issubclass(konductor.AcquireTimeout, konductor.WaitTimeout)
    assert "│   └── AcquireTimeout" in drawn
    for name in ("WaitTimeout", "OnceFailed", "MutexLost", "LeaseLost", "OnceLost"):
        assert name in drawn


def test_errors_read_as_konductor_names_in_tracebacks() -> None:
    for cls in public_errors():
        assert cls.__module__ == "konductor"
        assert getattr(konductor, cls.__name__) is cls
    done = subprocess.run(
        [sys.executable, "-c", "import konductor; raise konductor.AcquireTimeout('late')"],
        capture_output=True,
        text=True,
    )
    assert done.stderr.splitlines()[-1] == "konductor.AcquireTimeout: late"


def test_the_errors_module_docstring_names_every_public_error() -> None:
    from konductor import _errors

    doc = _errors.__doc__ or ""
    missing = [c.__name__ for c in public_errors() if c.__name__ not in doc]
    assert missing == [], f"konductor/_errors.py's docstring tree lacks {missing}"
