"""Types shared across layers that belong to none of them."""

from __future__ import annotations

from types import TracebackType
from typing import TypeAlias

ExcInfo: TypeAlias = tuple[type[BaseException] | None, BaseException | None, TracebackType | None]
"""What ``__exit__`` / ``__aexit__`` receive: ``def __exit__(self, *exc: Unpack[ExcInfo])``."""
