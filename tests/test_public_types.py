"""No parameter of the public API is typed ``object``: arguments that accept several
forms are converted at the edge into one typed value (a ``Duration``, a parsed
request), so mypy can check every call site."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator

import pytest

PUBLIC_MODULES = (
    "konductor",
    "konductor.store",
    "konductor.testing",
    "konductor.integrations.celery",
    "konductor.integrations.fastapi",
    "konductor.integrations.sqlalchemy",
)
DUNDERS = {"__init__", "__call__", "__enter__", "__exit__", "__aenter__", "__aexit__"}


def _public_callables() -> Iterator[tuple[str, Callable[..., object]]]:
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj):
                for attr, member in inspect.getmembers(obj, callable):
                    ours = (getattr(member, "__module__", None) or "").startswith("konductor")
                    method = not inspect.isclass(member)  # not e.g. Permit.lost_error
                    if ours and method and (not attr.startswith("_") or attr in DUNDERS):
                        yield f"{module_name}.{name}.{attr}", member
            elif callable(obj):
                yield f"{module_name}.{name}", obj


CALLABLES = dict(_public_callables())


def test_the_public_api_is_found() -> None:
    assert "konductor.SyncClient.semaphore" in CALLABLES
    assert "konductor.integrations.sqlalchemy.CoordinatedEngine.__init__" in CALLABLES
    assert len(CALLABLES) > 200


@pytest.mark.parametrize("name", sorted(CALLABLES))
def test_no_public_parameter_is_typed_object(name: str) -> None:
    signature = inspect.signature(CALLABLES[name])
    untyped = [p.name for p in signature.parameters.values() if p.annotation in (object, "object")]
    assert untyped == [], f"{name}{signature}: type {untyped} with what callers may pass"
