"""Fixtures of the CLI tests: a fresh namespace on the session's real API server."""

from __future__ import annotations

from typing import Any

import pytest

from tests.cli.support import Target
from tests.store.conftest import fresh_namespace


@pytest.fixture
def kube(kube_crds: Any) -> Target:
    return Target(kube_crds.admin_kubeconfig, fresh_namespace(kube_crds))
