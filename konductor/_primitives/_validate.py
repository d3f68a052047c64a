"""Argument checks shared by every primitive, done before any API call."""

from __future__ import annotations

import datetime as dt
import functools
import inspect
import math
from collections.abc import Callable
from typing import Any

from konductor._errors import InvalidArgument
from konductor._limits import MAX_PRIORITY, MAX_TTL, MIN_PRIORITY


def seconds(value: object, what: str) -> float:
    """A duration given as seconds (int/float) or a ``timedelta``."""
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(
            f"{what} must be seconds (int or float) or a timedelta, got {value!r}"
        )
    if math.isnan(value):
        raise InvalidArgument(f"{what} must be a number of seconds, got NaN")
    return float(value)


def ttl(value: object) -> float:
    result = seconds(value, "ttl")
    if result <= 0:
        raise InvalidArgument(f"ttl must be positive, got {result:g}s; e.g. ttl=15")
    if result > MAX_TTL:
        raise InvalidArgument(
            f"ttl of {result:g}s is longer than {MAX_TTL:g}s (a day): a crashed holder would "
            "block everybody that long; use a shorter ttl, it is renewed automatically"
        )
    if result < 1:
        raise InvalidArgument(
            f"ttl of {result:g}s is below 1s: renewals every ttl/3 would flood the API server"
        )
    return result


def timeout(value: object) -> float | None:
    if value is None:
        return None
    result = seconds(value, "timeout")
    if result < 0:
        raise InvalidArgument(f"timeout must be >= 0 (or None to wait forever), got {result:g}")
    return result


def positive_int(value: object, what: str, *, maximum: int | None = None) -> int:
    """``value`` as an int of at least 1 (and at most ``maximum``).

    Raises:
        InvalidArgument: not an int (a bool is not), or out of range.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{what} must be an integer, got {value!r}")
    if value < 1:
        raise InvalidArgument(f"{what} must be at least 1, got {value}")
    if maximum is not None and value > maximum:
        raise InvalidArgument(f"{what} must be at most {maximum:,}, got {value:,}")
    return value


def priority(value: object) -> int:
    """A queued request's priority: an int in -100..100 (higher is served sooner).

    Raises:
        InvalidArgument: not an int (a bool is not), or out of range.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(
            f"priority must be an integer from {MIN_PRIORITY} to {MAX_PRIORITY}, got {value!r}"
        )
    if not MIN_PRIORITY <= value <= MAX_PRIORITY:
        raise InvalidArgument(
            f"priority must be from {MIN_PRIORITY} to {MAX_PRIORITY} (higher is served "
            f"sooner; the default is 0), got {value}"
        )
    return value


def _is_async(fn: Callable[..., Any]) -> bool:
    """An ``async def`` function or method, a partial of one, or an object with one as
    ``__call__``."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    if inspect.isroutine(fn) or isinstance(fn, type):
        return False
    return inspect.iscoroutinefunction(type(fn).__call__)


def async_callable(fn: object, what: str) -> Callable[[], Any]:
    """Check that ``fn`` is an async callable taking no arguments, before any write.

    A lambda is accepted unchecked for sync vs async (``lambda: migrate(db)``
    returns a coroutine, which only calling it shows); a plain ``def``, a class
    or a builtin is refused: it would run, and only then be found not async.

    Raises:
        InvalidArgument: not callable, needs arguments, or not async.
    """
    label = getattr(fn, "__qualname__", None) or repr(fn)
    if not callable(fn):
        raise InvalidArgument(f"{what} must be an async callable taking no arguments, got {fn!r}")
    try:
        signature: inspect.Signature | None = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have none
        signature = None
    if signature is not None:
        try:
            signature.bind()
        except TypeError:
            raise InvalidArgument(
                f"{what} must take no arguments, but {label}{signature} needs some; bind them "
                "with functools.partial(f, *args) or a lambda"
            ) from None
    if _is_async(fn) or getattr(fn, "__name__", None) == "<lambda>":
        return fn
    raise InvalidArgument(
        f"{what} must be async (an `async def`, or a functools.partial of one), got {label}, "
        "which is not; for a blocking function use konductor.SyncClient"
    )
