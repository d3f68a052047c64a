"""Inspecting and administering stored objects: one API for users, the CLI and observability.

``_model``  the typed results (ObjectStatus, EntryStatus, Transition, NamespaceStatus, RepairReport)
``_read``   stored object -> ObjectStatus, through the primitives' ``_*_state`` parsers
``_repair`` pure repairs of state that does not parse
``_admin``  :class:`Admin`: status, describe, watch, force-release, delete, repair (via Hub)
``_sync``   :class:`SyncAdmin`, its blocking twin
"""

from konductor._admin._admin import Admin, kind_of
from konductor._admin._model import (
    EntryStatus,
    NamespaceStatus,
    ObjectStatus,
    RepairReport,
    Transition,
)
from konductor._admin._sync import SyncAdmin

__all__ = (
    "Admin",
    "EntryStatus",
    "NamespaceStatus",
    "ObjectStatus",
    "RepairReport",
    "SyncAdmin",
    "Transition",
    "kind_of",
)
