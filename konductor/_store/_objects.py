"""What a store holds and returns: objects, versions, changes (no behaviour).

Kept apart from the :class:`~konductor.store.Store` protocol so that the
pieces built on these values (the resumable watch) and the protocol that
returns them do not import each other.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from konductor._store._kinds import Kind

JSON = dict[str, Any]
EventType = Literal["ADDED", "MODIFIED", "DELETED"]


@dataclass(frozen=True)
class StoredObject:
    """One object as the store returned it.

    ``spec`` is what a person configures, ``status`` the live state; both are
    fresh copies owned by the caller. ``version`` is opaque: pass it back to
    :meth:`Store.replace_status`, :meth:`Store.replace_spec` or
    :meth:`Store.delete` to make the write conditional.
    """

    kind: Kind
    name: str
    version: str
    spec: JSON = field(default_factory=dict)
    status: JSON = field(default_factory=dict)
    uid: str = ""


@dataclass(frozen=True)
class WatchEvent:
    """A change to an object, delivered in the order the store applied it."""

    type: EventType
    object: StoredObject


@dataclass(frozen=True)
class ObjectList:
    """The objects of one kind and the store version the list was taken at.

    Watching from ``version`` delivers every change made after the list.
    """

    items: tuple[StoredObject, ...]
    version: str


def version_newer(a: str, b: str) -> bool:
    """Whether version ``a`` is newer than ``b``.

    Stores use increasing integers; for a version that is not one, any
    difference counts as newer (a duplicate is then possible, a miss is not).
    """
    try:
        return int(a) > int(b)
    except ValueError:
        return a != b


def copy_json(value: Mapping[str, Any]) -> JSON:
    """A deep copy, so that callers never share mutable state with a store."""
    return copy.deepcopy(dict(value))
