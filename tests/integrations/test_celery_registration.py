"""CoordinatedTask without a worker: registration checks, direct calls, configuration.

Misconfiguration must fail when the task is registered (the task class is
created), with a message naming the task and the option: in-process here, and
with a real ``celery worker`` that refuses to start. Direct calls and
``apply()`` (no queue to go back to) wait for their grant, on the real API
server.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from konductor import (
    AcquireTimeout,
    ConfigurationError,
    InvalidArgument,
    InvalidName,
    KubernetesStore,
    MemoryStore,
    SemaphoreLost,
    SyncClient,
    validate_name,
)
from konductor.integrations.celery import (
    CoordinatedTask,
    close_clients,
    default_rate_limit_name,
    get_client,
    singleton_name,
)
from konductor.store import RATELIMIT, SEMAPHORE, Kind
from tests.integrations.celery_support import ROOT
from tests.store.conftest import fresh_namespace

# -- misconfiguration fails at registration --------------------------------------------


def new_app() -> Celery:
    return Celery("kt-registration", set_as_current=False)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        (
            {"semaphore": "payments-api", "permits": 0},
            InvalidArgument,
            "permits must be at least 1, got 0",
        ),
        (
            {"semaphore": "payments-api", "permits": -3},
            InvalidArgument,
            "permits must be at least 1",
        ),
        (
            {"semaphore": "payments-api", "permits": "3"},
            InvalidArgument,
            "permits must be an integer",
        ),
        (
            {"semaphore": "payments-api", "permits": 3, "on_full": "block"},
            InvalidArgument,
            "on_full must be 'retry' or 'wait', got 'block'",
        ),
        (
            {"singleton": True, "on_duplicate": "skip"},
            InvalidArgument,
            "on_duplicate must be 'retry' or 'drop', got 'skip'",
        ),
        (
            {"semaphore": "Payments API", "permits": 3},
            InvalidName,
            "invalid semaphore 'Payments API'",
        ),
        ({"semaphore": "payments-api", "ttl": 0.2}, InvalidArgument, "ttl of 0.2s is below 1s"),
        (
            {"semaphore": "payments-api", "wait_timeout": -1},
            InvalidArgument,
            "timeout must be >= 0",
        ),
        ({"permits": 3}, InvalidArgument, "permits=3 was given without semaphore="),
        ({"singleton": "yes"}, InvalidArgument, "singleton must be True, False or a function"),
        (
            {"semaphore": "p", "requeue_delay": 5, "requeue_delay_max": 1},
            InvalidArgument,
            "requeue_delay_max (1) must be at least requeue_delay (5)",
        ),
        ({"semaphore": "p", "max_requeues": -1}, InvalidArgument, "max_requeues must be None"),
        (
            {"semaphore": "p", "semaphore_priority": 500},
            InvalidArgument,
            "priority must be from -100 to 100",
        ),
        (
            {"rate_limit": "10/s"},
            InvalidArgument,
            "rate_limit='10/s' is Celery's own rate limit, which each worker enforces "
            "separately (4 workers run 4 times that); for one limit across every worker use "
            "cluster_rate_limit='10/s'",
        ),
        (
            {"cluster_rate_limit": "10/sec"},
            InvalidArgument,
            'cluster_rate_limit must be "N/s", "N/m", "N/h" or a number per second, got \'10/sec\'',
        ),
        (
            {"cluster_rate_limit": 0},
            InvalidArgument,
            "cluster_rate_limit must be more than 0 and at most",
        ),
        (
            {"cluster_rate_limit": "10/s", "on_limited": "block"},
            InvalidArgument,
            "on_limited must be 'retry' or 'wait', got 'block'",
        ),
        (
            {"rate_limit_burst": 5},
            InvalidArgument,
            "rate_limit_burst=5 was given without cluster_rate_limit=",
        ),
        (
            {"cluster_rate_limit": "10/s", "rate_limit_burst": 0},
            InvalidArgument,
            "rate_limit_burst: burst must be more than 0",
        ),
        (
            {"cluster_rate_limit": "10/s", "rate_limit_name": "Provider API"},
            InvalidName,
            "invalid rate_limit_name 'Provider API'",
        ),
    ],
)
def test_bad_options_fail_at_task_registration(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    app = new_app()

    @app.task(base=CoordinatedTask, shared=False, **options)
    def charge(order_id: str) -> str:
        return order_id

    with pytest.raises(error) as info:
        app.finalize()  # Celery registers (creates) the task class here
    assert message in str(info.value)
    assert "task tests.integrations.test_celery_registration.charge" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_bad_options_fail_when_subclassing() -> None:
    with pytest.raises(
        InvalidArgument, match=r"task .*PaymentTask: permits must be at least 1, got 0"
    ):

        class PaymentTask(CoordinatedTask):
            semaphore = "payments-api"
            permits = 0


def test_a_worker_refuses_to_start_with_a_misconfigured_task() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tests.integrations.celery_bad_app",
            "worker",
            "--pool=prefork",
            "-c",
            "2",
            "-Q",
            "kt-never-used",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode != 0
    assert (
        "InvalidArgument: task tests.integrations.celery_bad_app.charge: "
        "permits must be at least 1, got 0"
    ) in proc.stderr + proc.stdout


def test_good_options_from_the_decorator_and_from_subclasses() -> None:
    app = new_app()

    class Payments(CoordinatedTask):
        semaphore = "payments-api"
        permits = 3

    @app.task(base=Payments, shared=False, on_full="wait", wait_timeout=5)
    def charge(order_id: str) -> str:
        return order_id

    @app.task(base=CoordinatedTask, shared=False, singleton=lambda order_id: order_id)
    def refund(order_id: str) -> str:
        return order_id

    @app.task(base=CoordinatedTask, shared=False)
    def ungated() -> str:
        return "free"

    app.finalize()
    plan = charge._konductor_plan
    assert (plan.semaphore, plan.permits, plan.on_full, plan.wait_timeout) == (
        "payments-api",
        3,
        "wait",
        5.0,
    )
    assert refund._konductor_plan.singleton_key is not None
    assert not ungated._konductor_plan.gated
    assert ungated() == "free"  # no gate, no client needed


def test_rate_limit_options_are_parsed_once_at_registration() -> None:
    app = new_app()

    class Provider(CoordinatedTask):
        cluster_rate_limit = "120/m"
        rate_limit_name = "provider-api"

    @app.task(base=Provider, shared=False, on_limited="wait", rate_limit_burst=3)
    def fetch(item: str) -> str:
        return item

    @app.task(base=CoordinatedTask, shared=False, cluster_rate_limit=0.5)
    def report() -> None:
        return None

    app.finalize()
    plan = fetch._konductor_plan
    assert (plan.rate, plan.rate_limit_name, plan.rate_limit_burst, plan.on_limited) == (
        2.0,
        "provider-api",
        3.0,
        "wait",
    )
    assert plan.gated
    assert report._konductor_plan.rate == 0.5
    assert report._konductor_plan.rate_limit_name is None  # named after the task, when it runs
    assert report._konductor_plan.on_limited == "retry"
    name = default_rate_limit_name(report.name)
    assert validate_name(name) == name
    assert name.startswith("celery-tests-integrations-test-celery-registration-report-")
    assert name != singleton_name(report.name, "")
    assert name != default_rate_limit_name(fetch.name)


def test_celerys_per_worker_rate_limit_stays_possible_through_annotations() -> None:
    # What the registration error points to: Celery applies annotations to the
    # task when it binds it, after CoordinatedTask checked the class, and
    # enforces that per-worker limit itself.
    app = new_app()
    app.conf.task_annotations = {"kt.per-worker": {"rate_limit": "10/s"}}

    @app.task(base=CoordinatedTask, shared=False, name="kt.per-worker", semaphore="p")
    def per_worker() -> None:
        return None

    app.finalize()
    assert per_worker.rate_limit == "10/s"
    assert per_worker._konductor_plan.rate is None


def test_annotations_apply_even_after_the_base_class_was_bound() -> None:
    # Any access to CoordinatedTask.app binds the base class to the current app;
    # Celery then skipped the annotations of every task class made from it later
    # (it inherited ``__bound__``): the per-worker limit above was silently lost
    # (seen in a full suite run, where an earlier test had touched it).
    CoordinatedTask.app  # noqa: B018 - the access is the point
    app = new_app()
    app.conf.task_annotations = {"kt.bound-base": {"rate_limit": "10/s"}}

    @app.task(base=CoordinatedTask, shared=False, name="kt.bound-base", semaphore="p")
    def bound_base() -> None:
        return None

    app.finalize()
    assert bound_base.rate_limit == "10/s"


def test_singleton_names_are_valid_and_distinct() -> None:
    long_name = "proj.tasks." + "Very_Long_Task_Name." * 20
    names = {
        singleton_name("proj.tasks.charge", "order-7"),
        singleton_name("proj.tasks.charge", "order-8"),
        singleton_name("proj.tasks.refund", "order-7"),
        singleton_name("proj.tasks.charge", ("ü", None, 3)),
        singleton_name("proj_tasks.charge", "order-7"),  # slugs alike, digests differ
        singleton_name(long_name, ""),
        singleton_name("___", "x"),
    }
    assert len(names) == 7
    for name in names:
        assert validate_name(name) == name


# -- optional dependency -----------------------------------------------------------------


def test_import_konductor_does_not_import_celery() -> None:
    code = "import sys, konductor; assert 'celery' not in sys.modules, 'celery imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


def test_without_celery_the_error_names_the_install_command() -> None:
    code = (
        "import sys; sys.modules['celery'] = None\n"
        "try:\n"
        "    import konductor.integrations.celery\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert "pip install 'konductor[celery]'" in out.stdout, out.stderr


# -- configuration -----------------------------------------------------------------------


def test_a_store_instance_in_the_celery_config_is_refused() -> None:
    app = new_app()
    app.conf.konductor_store = MemoryStore()
    with pytest.raises(ConfigurationError, match="zero-argument factory"):
        get_client(app)


# -- direct calls and apply(), on the real API server ----------------------------------


@pytest.fixture
def kube_app(kube_crds: Any) -> Iterator[tuple[Celery, str]]:
    ns = fresh_namespace(kube_crds)
    app = new_app()
    app.conf.konductor_store = lambda: KubernetesStore(ns, kubeconfig=kube_crds.admin_kubeconfig)
    try:
        yield app, ns
    finally:
        close_clients()


@pytest.mark.kubernetes
def test_direct_calls_hold_the_permit_only_while_the_body_runs(
    kube_app: tuple[Celery, str], kube_crds: Any
) -> None:
    app, ns = kube_app
    seen: list[int] = []

    @app.task(base=CoordinatedTask, bind=True, shared=False, semaphore="direct", permits=1)
    def work(self: CoordinatedTask, fail: bool = False) -> int:
        assert self.permit is not None
        self.permit.ensure_held()
        seen.append(self.permit.token)
        if fail:
            raise RuntimeError("body failed")
        return self.permit.token

    app.finalize()
    assert work() == seen[0]
    with pytest.raises(RuntimeError, match="body failed"):
        work(fail=True)
    result = work.apply()  # eager: same gate
    assert result.get() == seen[2]
    assert seen == sorted(seen)  # fencing tokens increase
    assert len(set(seen)) == 3
    assert work.permit is None  # outside the body: nothing held
    status = asyncio.run(_status(kube_crds, ns, "direct"))
    assert status["inUse"] == 0


@pytest.mark.kubernetes
def test_a_direct_call_waits_for_a_free_permit(
    kube_app: tuple[Celery, str], kube_crds: Any
) -> None:
    app, ns = kube_app

    busy = {"semaphore": "busy", "permits": 1}

    @app.task(base=CoordinatedTask, shared=False, wait_timeout=1, **busy)
    def impatient() -> str:
        return "done"

    @app.task(base=CoordinatedTask, shared=False, wait_timeout=None, **busy)
    def patient() -> str:
        return "done"

    app.finalize()
    with SyncClient(lambda: KubernetesStore(ns, kubeconfig=kube_crds.admin_kubeconfig)) as other:
        permit = other.acquire_semaphore("busy", 1, ttl=15)
        with pytest.raises(AcquireTimeout):
            impatient()  # waited wait_timeout=1 s in vain
        threading.Timer(0.5, permit.release).start()
        assert patient() == "done"  # granted once the other process released


@pytest.mark.kubernetes
def test_semaphore_priority_orders_the_waiters_that_queue(
    kube_app: tuple[Celery, str], kube_crds: Any
) -> None:
    """Two direct calls wait on a full semaphore; the urgent one, queued second, runs first."""
    app, ns = kube_app
    ran: list[str] = []
    gate = {"semaphore": "ranked", "permits": 1, "wait_timeout": 60}

    @app.task(base=CoordinatedTask, shared=False, **gate)
    def routine() -> None:
        ran.append("routine")

    @app.task(base=CoordinatedTask, shared=False, semaphore_priority=10, **gate)
    def urgent() -> None:
        ran.append("urgent")

    app.finalize()

    def queued(count: int) -> None:
        for _ in range(600):
            if len(asyncio.run(_status(kube_crds, ns, "ranked")).get("queue") or []) >= count:
                return
            time.sleep(0.05)
        raise AssertionError(f"{count} tickets never queued")

    with SyncClient(lambda: KubernetesStore(ns, kubeconfig=kube_crds.admin_kubeconfig)) as other:
        permit = other.acquire_semaphore("ranked", 1, ttl=15)
        first = threading.Thread(target=routine)
        first.start()
        queued(1)
        second = threading.Thread(target=urgent)
        second.start()
        queued(2)
        tickets = asyncio.run(_status(kube_crds, ns, "ranked"))["queue"]
        assert [t.get("priority", 0) for t in tickets] == [0, 10]
        permit.release()
        first.join(60)
        second.join(60)
    assert ran == ["urgent", "routine"]


@pytest.mark.kubernetes
def test_a_direct_call_of_a_dropped_duplicate_returns_none(
    kube_app: tuple[Celery, str], kube_crds: Any
) -> None:
    app, ns = kube_app
    ran: list[str] = []

    @app.task(base=CoordinatedTask, shared=False, singleton=True, on_duplicate="drop")
    def nightly() -> str:
        ran.append("x")
        return "ran"

    app.finalize()
    with SyncClient(lambda: KubernetesStore(ns, kubeconfig=kube_crds.admin_kubeconfig)) as other:
        lock = other.acquire_mutex(singleton_name(nightly.name, ""), ttl=15)
        assert nightly() is None  # another instance runs: dropped
        assert nightly.apply().state == "IGNORED"
        lock.release()
    assert nightly() == "ran"
    assert ran == ["x"]


@pytest.mark.kubernetes
def test_a_permit_lost_while_the_body_ran_fails_the_task(
    kube_app: tuple[Celery, str], kube_crds: Any
) -> None:
    app, ns = kube_app

    @app.task(base=CoordinatedTask, bind=True, shared=False, semaphore="fragile", permits=1, ttl=3)
    def work(self: CoordinatedTask) -> str:
        assert self.permit is not None
        asyncio.run(_drop_holders(kube_crds, ns, "fragile"))  # as if it had expired
        deadline = time.monotonic() + 30
        while not self.permit.is_lost and time.monotonic() < deadline:
            time.sleep(0.1)  # the next renewal (ttl/3) finds it gone
        return "finished"

    app.finalize()
    with pytest.raises(SemaphoreLost, match="the result is not trusted"):
        work()


@pytest.mark.kubernetes
def test_direct_calls_spend_rate_tokens_from_one_membership_per_process(
    kube_app: tuple[Celery, str], kube_crds: Any
) -> None:
    app, ns = kube_app
    ran: list[str] = []
    shared = {"rate_limit_name": "provider-api", "wait_timeout": 0.5}

    @app.task(base=CoordinatedTask, shared=False, cluster_rate_limit="20/s", **shared)
    def fetch(i: int) -> int:
        ran.append("fetch")
        return i

    @app.task(
        base=CoordinatedTask,
        shared=False,
        cluster_rate_limit="1/h",
        rate_limit_burst=1,
        wait_timeout=0.5,
    )
    def scarce() -> None:
        ran.append("scarce")

    @app.task(base=CoordinatedTask, shared=False, cluster_rate_limit="20/s", **shared)
    def refund(i: int) -> int:
        ran.append("refund")
        return i

    app.finalize()
    # A direct call has no queue to go back to: it waits for a token.
    assert [fetch(i) for i in range(5)] + [refund.apply(args=(5,)).get()] == list(range(6))
    # A new member's bucket starts empty, and 1/h adds nothing in 0.5 s.
    with pytest.raises(AcquireTimeout, match=r"not available within 0\.5s"):
        scarce()
    assert ran == ["fetch"] * 5 + ["refund"]  # the body never ran without a token
    # fetch and refund share one limit, and this process is one member of it.
    members = asyncio.run(_status(kube_crds, ns, "provider-api", RATELIMIT)).get("members")
    assert [m["holder"] for m in members] == [get_client(app).identity]
    assert default_rate_limit_name(scarce.name) != "provider-api"
    close_clients()  # what worker process shutdown does: the member leaves
    assert not asyncio.run(_status(kube_crds, ns, "provider-api", RATELIMIT)).get("members")


async def _status(kube: Any, ns: str, name: str, kind: Kind = SEMAPHORE) -> dict[str, Any]:
    async with KubernetesStore(ns, kubeconfig=kube.admin_kubeconfig) as store:
        return dict((await store.get(kind, name)).status)


async def _drop_holders(kube: Any, ns: str, name: str) -> None:
    async with KubernetesStore(ns, kubeconfig=kube.admin_kubeconfig) as store:
        obj = await store.get(SEMAPHORE, name)
        status = {**obj.status, "holders": [], "inUse": 0}
        await store.replace_status(SEMAPHORE, name, status, version=obj.version)
