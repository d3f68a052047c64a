"""Parsing of arguments at the public entry points, done once, before any API call.

A public method, decorator or adapter takes what a caller may pass (a
:data:`Duration`: seconds or a ``timedelta``) and turns it here, once, into
the typed value the code below it takes (:class:`Ttl`, a float of seconds
already in range). Below the entry point nothing checks again. Each error
names the parameter in ``InvalidArgument.argument``.
"""

from __future__ import annotations

import datetime as dt
import functools
import inspect
import math
from collections.abc import Callable
from typing import Any, NewType, TypeAlias

from konductor._errors import InvalidArgument
from konductor._limits import MAX_PRIORITY, MAX_TTL, MIN_PRIORITY

Duration: TypeAlias = float | dt.timedelta
"""What a caller passes for a ttl or a timeout: seconds (int or float) or a timedelta."""

Ttl = NewType("Ttl", float)
"""A ttl in seconds, parsed by :func:`ttl`: between 1 s and a day."""


# The parsers take the type a caller is meant to pass, and still check it at run
# time: a caller without a type checker may pass anything (a string "15").


def seconds(value: Duration, what: str) -> float:
    """A duration given as seconds (int/float) or a ``timedelta``.

    Raises:
        InvalidArgument: not a number or a timedelta, or NaN (``argument=what``).
    """
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(
            f"{what} must be seconds (int or float) or a timedelta, got {value!r}",
            argument=what,
        )
    if math.isnan(value):
        raise InvalidArgument(f"{what} must be a number of seconds, got NaN", argument=what)
    return float(value)


def ttl(value: Duration) -> Ttl:
    """A :class:`Ttl`: seconds between 1 and a day.

    Raises:
        InvalidArgument: not a duration, or out of range (``argument="ttl"``).
    """
    result = seconds(value, "ttl")
    if result <= 0:
        raise InvalidArgument(f"ttl must be positive, got {result:g}s; e.g. ttl=15", argument="ttl")
    if result > MAX_TTL:
        raise InvalidArgument(
            f"ttl of {result:g}s is longer than {MAX_TTL:g}s (a day): a crashed holder would "
            "block everybody that long; use a shorter ttl, it is renewed automatically",
            argument="ttl",
        )
    if result < 1:
        raise InvalidArgument(
            f"ttl of {result:g}s is below 1s: renewals every ttl/3 would flood the API server",
            argument="ttl",
        )
    return Ttl(result)


def timeout(value: Duration | None) -> float | None:
    """Seconds to wait (``None``: forever).

    Raises:
        InvalidArgument: not a duration, or negative (``argument="timeout"``).
    """
    if value is None:
        return None
    result = seconds(value, "timeout")
    if result < 0:
        raise InvalidArgument(
            f"timeout must be >= 0 (or None to wait forever), got {result:g}", argument="timeout"
        )
    return result


def positive_int(value: int, what: str, *, maximum: int | None = None) -> int:
    """``value`` as an int of at least 1 (and at most ``maximum``).

    Raises:
        InvalidArgument: not an int (a bool is not), or out of range (``argument=what``).
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{what} must be an integer, got {value!r}", argument=what)
    if value < 1:
        raise InvalidArgument(f"{what} must be at least 1, got {value}", argument=what)
    if maximum is not None and value > maximum:
        raise InvalidArgument(f"{what} must be at most {maximum:,}, got {value:,}", argument=what)
    return value


def priority(value: int) -> int:
    """A queued request's priority: an int in -100..100 (higher is served sooner).

    Raises:
        InvalidArgument: not an int (a bool is not), or out of range.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(
            f"priority must be an integer from {MIN_PRIORITY} to {MAX_PRIORITY}, got {value!r}",
            argument="priority",
        )
    if not MIN_PRIORITY <= value <= MAX_PRIORITY:
        raise InvalidArgument(
            f"priority must be from {MIN_PRIORITY} to {MAX_PRIORITY} (higher is served "
            f"sooner; the default is 0), got {value}",
            argument="priority",
        )
    return value


def count_within(count: int, permits: int | None) -> None:
    """The one check that a request for ``count`` permits can fit in ``permits``.

    Raises:
        InvalidArgument: ``count`` is more than ``permits`` (``argument="count"``).
    """
    if permits is not None and count > permits:
        raise InvalidArgument(f"count={count} is more than permits={permits}", argument="count")


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


def async_callable(fn: Callable[..., Any], what: str) -> Callable[[], Any]:
    """Check that ``fn`` is an async callable taking no arguments, before any write.

    A lambda is accepted unchecked for sync vs async (``lambda: migrate(db)``
    returns a coroutine, which only calling it shows); a plain ``def``, a class
    or a builtin is refused: it would run, and only then be found not async.

    Raises:
        InvalidArgument: not callable, needs arguments, or not async.
    """
    label = getattr(fn, "__qualname__", None) or repr(fn)
    if not callable(fn):
        raise InvalidArgument(
            f"{what} must be an async callable taking no arguments, got {fn!r}", argument=what
        )
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
                "with functools.partial(f, *args) or a lambda",
                argument=what,
            ) from None
    if _is_async(fn) or getattr(fn, "__name__", None) == "<lambda>":
        return fn
    raise InvalidArgument(
        f"{what} must be async (an `async def`, or a functools.partial of one), got {label}, "
        "which is not; for a blocking function use konductor.SyncClient",
        argument=what,
    )
