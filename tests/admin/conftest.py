"""The admin API runs on every store: memory, local and the real API server."""

from __future__ import annotations

from tests.primitives.conftest import clients as clients
from tests.store.conftest import backend as backend
