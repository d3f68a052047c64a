"""The public surface is chosen on purpose: these tests fail when it drifts."""

from __future__ import annotations

import subprocess
import sys

import konductor
import konductor.manifests
import konductor.store


def test_top_level_exports_are_pinned() -> None:
    assert sorted(konductor.__all__) == sorted(
        [
            "AcquireTimeout",
            "Admin",
            "EntryStatus",
            "NamespaceStatus",
            "ObjectStatus",
            "RepairReport",
            "SyncAdmin",
            "Transition",
            "AlreadyExists",
            "BarrierInfo",
            "CRDNotInstalled",
            "Client",
            "ClientClosed",
            "ConditionState",
            "ConfigurationError",
            "Conflict",
            "CorruptState",
            "Expired",
            "Forbidden",
            "GateCondition",
            "GateInfo",
            "Invalid",
            "InvalidArgument",
            "InvalidName",
            "KonductorError",
            "KubernetesStore",
            "Lease",
            "LocalStore",
            "LeaseLost",
            "Lock",
            "LostError",
            "MemoryStore",
            "MutexLost",
            "NotFound",
            "OnceFailed",
            "OnceLost",
            "OnceStatus",
            "Permit",
            "RateLimiter",
            "SemaphoreLost",
            "StoreError",
            "StoreUnavailable",
            "SyncClient",
            "SyncGrant",
            "SyncGuard",
            "SyncRateLimiter",
            "WaitGroupInfo",
            "WaitTimeout",
            "__version__",
            "barrier",
            "configure",
            "once",
            "validate_name",
            "with_lease",
            "with_mutex",
            "with_rate_limit",
            "with_semaphore",
        ]
    )
    for name in konductor.__all__:
        assert hasattr(konductor, name), name


def test_store_and_manifest_modules_export_what_they_declare() -> None:
    for module in (konductor.store, konductor.manifests):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"


def test_every_error_derives_from_the_root() -> None:
    errors = [getattr(konductor, n) for n in konductor.__all__ if n[0].isupper()]
    errors = [e for e in errors if isinstance(e, type) and issubclass(e, BaseException)]
    assert len(errors) == 23
    assert all(issubclass(e, konductor.KonductorError) for e in errors)
    assert issubclass(konductor.Forbidden, PermissionError)
    assert issubclass(konductor.InvalidArgument, ValueError)
    assert not issubclass(konductor.CRDNotInstalled, konductor.NotFound)


def test_import_konductor_pulls_in_no_optional_or_transport_dependency() -> None:
    code = (
        "import sys, konductor, konductor.store, konductor.manifests\n"
        "heavy = ('kubernetes_asyncio', 'aiohttp', 'celery', 'sqlalchemy', 'fastapi',"
        " 'starlette', 'uvicorn', 'redis', 'prometheus_client', 'opentelemetry')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_package_ships_py_typed() -> None:
    from importlib.resources import files

    assert files("konductor").joinpath("py.typed").is_file()
