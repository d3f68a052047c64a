"""Argument checks shared by every primitive, done before any API call."""

from __future__ import annotations

import datetime as dt
import math

from konductor._errors import InvalidArgument
from konductor._limits import MAX_TTL


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
