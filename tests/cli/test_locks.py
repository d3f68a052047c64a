"""``konductor mutex``, ``rwmutex`` and ``waitgroup`` against the real kube-apiserver."""

from __future__ import annotations

import json
import time

import pytest

from tests.cli.support import Target, eventually, finish, kill_all

pytestmark = pytest.mark.kubernetes


def holders(kube: Target, noun: str, name: str) -> list[dict[str, object]] | None:
    got = kube.run(noun, "status", name, "-o", "json")
    if got.returncode != 0:
        return None
    value: list[dict[str, object]] = json.loads(got.stdout)["holders"]
    return value


def test_mutex_acquire_status_timeout_and_force_release(kube: Target) -> None:
    a = kube.spawn("mutex", "acquire", "reindex", "--ttl", "3")
    try:
        (held,) = eventually(lambda: holders(kube, "mutex", "reindex"), what="holder a")
        busy = kube.run("mutex", "acquire", "reindex", "--timeout", "1")
        assert busy.returncode == 3, busy.stderr
        status = kube.data("mutex", "status", "reindex")
        assert status["state"] == "locked"
        assert status["queue"] == []  # the timed-out waiter left nothing behind
        removed = kube.data("mutex", "release", "reindex", "--holder", str(held["identity"]))
        assert [e["identity"] for e in removed["removed"]] == [held["identity"]]
        code, _, err = finish(a)
        assert code == 1
        assert "the lock was lost" in err
        ran = kube.run(
            "mutex", "run", "reindex", "--", "sh", "-c", 'exit "$KONDUCTOR_FENCING_TOKEN"'
        )
        assert ran.returncode == 2, ran.stderr  # the second grant: token 2
    finally:
        kill_all([a])


def test_rwmutex_readers_share_and_a_writer_waits(kube: Target) -> None:
    hold = ["--", "sleep", "3"]
    r1 = kube.spawn("rwmutex", "run", "config", "--mode", "read", *hold)
    r2 = kube.spawn("rwmutex", "run", "config", "--mode", "read", *hold)
    w = None
    try:
        both = eventually(
            lambda: (h := holders(kube, "rwmutex", "config")) and len(h) == 2 and h,
            what="two readers at once",
        )
        assert {e["role"] for e in both} == {"holder (read)"}
        started = time.monotonic()
        w = kube.spawn("rwmutex", "acquire", "config", "--mode", "write", "--for", "0.1")
        code, out, err = finish(w)
        assert code == 0, err
        assert "for write" in out
        assert time.monotonic() - started > 0.5  # it waited for the readers
        for r in (r1, r2):
            assert finish(r)[0] == 0
        usage = kube.run("rwmutex", "acquire", "config")
        assert usage.returncode == 2
        assert "--mode" in usage.stderr
    finally:
        kill_all([p for p in (r1, r2, w) if p is not None])


def test_waitgroup_add_done_wait_status(kube: Target) -> None:
    assert kube.data("waitgroup", "add", "export", "2")["count"] == 2
    waiter = kube.spawn("waitgroup", "wait", "export", "--timeout", "60")
    try:
        assert kube.run("waitgroup", "wait", "export", "--timeout", "0.5").returncode == 3
        assert kube.data("waitgroup", "done", "export")["count"] == 1
        assert kube.data("waitgroup", "status", "export")["count"] == 1
        assert waiter.poll() is None
        assert kube.data("waitgroup", "done", "export")["count"] == 0
        code, out, err = finish(waiter)
        assert code == 0, err
        assert "all done" in out
    finally:
        kill_all([waiter])
