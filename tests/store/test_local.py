"""What the local (SQLite) store promises beyond the shared conformance suite.

The conformance suite (``backend`` = ``local``) covers the protocol itself;
these cover the file: where it lives, how it is selected, that it persists,
that another process's writes wake a watch, that a lock held elsewhere never
blocks the event loop and ends in StoreUnavailable, and that the history is
bounded.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import threading
import time
from pathlib import Path

import pytest

from konductor import ConfigurationError, InvalidArgument, StoreUnavailable
from konductor._store._local import default_path
from konductor._store._watch import Bookmark
from konductor.store import BARRIER, SEMAPHORE, LocalStore, WatchEvent

ROOT = Path(__file__).resolve().parents[2]
WAIT = 30.0  # generous upper bound for an expected event; never a speed claim


def test_default_path_follows_xdg_state_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert default_path() == tmp_path / "state" / "konductor" / "konductor.db"
    assert LocalStore().path == default_path()
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_path() == tmp_path / "home" / ".local" / "state" / "konductor" / "konductor.db"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")  # the spec says: absolute only
    assert default_path() == tmp_path / "home" / ".local" / "state" / "konductor" / "konductor.db"


async def test_directories_are_created_on_first_use(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    async with LocalStore() as store:
        assert not store.path.exists()  # nothing is touched at construction
        await store.create(SEMAPHORE, "s", {"permits": 1})
    assert (tmp_path / "state" / "konductor" / "konductor.db").is_file()


def test_bad_constructor_arguments_are_rejected_at_once(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="poll_interval"):
        LocalStore(tmp_path / "a.db", poll_interval=0)
    with pytest.raises(InvalidArgument, match="history"):
        LocalStore(tmp_path / "a.db", history=-1)


async def test_objects_persist_and_versions_keep_increasing_across_reopen(tmp_path: Path) -> None:
    db = tmp_path / "persist.db"
    async with LocalStore(db) as store:
        obj = await store.create(SEMAPHORE, "kept", {"permits": 2})
        obj = await store.replace_status(SEMAPHORE, "kept", {"inUse": 1}, version=obj.version)
    async with LocalStore(db) as store:
        again = await store.get(SEMAPHORE, "kept")
        assert (again.spec, again.status, again.uid) == (obj.spec, obj.status, obj.uid)
        assert again.version == obj.version
        other = await store.create(BARRIER, "next", {"expected": 1})
        assert int(other.version) > int(obj.version)


async def test_namespaces_in_one_file_are_separate(tmp_path: Path) -> None:
    db = tmp_path / "ns.db"
    async with LocalStore(db, "team-a") as a, LocalStore(db, "team-b") as b:
        await a.create(SEMAPHORE, "same", {"permits": 1})
        await b.create(SEMAPHORE, "same", {"permits": 7})
        assert (await a.get(SEMAPHORE, "same")).spec == {"permits": 1}
        assert [o.spec for o in (await b.list(SEMAPHORE)).items] == [{"permits": 7}]
        listed = await a.list(SEMAPHORE)
        async with a.watch(SEMAPHORE, since=listed.version) as events:
            other = await b.get(SEMAPHORE, "same")
            await b.replace_status(SEMAPHORE, "same", {"x": 1}, version=other.version)
            mine = await a.get(SEMAPHORE, "same")
            await a.replace_status(SEMAPHORE, "same", {"x": 2}, version=mine.version)
            async with asyncio.timeout(WAIT):
                ev = await anext(events)
        assert ev.object.status == {"x": 2}  # team-b's change was not delivered


async def test_unserializable_values_are_rejected_before_any_write(tmp_path: Path) -> None:
    async with LocalStore(tmp_path / "json.db") as store:
        obj = await store.create(SEMAPHORE, "j", {"permits": 1})
        with pytest.raises(InvalidArgument, match="JSON"):
            await store.replace_status(SEMAPHORE, "j", {"when": object()}, version=obj.version)
        assert (await store.get(SEMAPHORE, "j")).version == obj.version


WRITE_FROM_ANOTHER_PROCESS = """
import asyncio, sys
from konductor.store import SEMAPHORE, LocalStore

async def main():
    async with LocalStore(sys.argv[1]) as store:
        obj = await store.get(SEMAPHORE, "x")
        await store.replace_status(SEMAPHORE, "x", {"from": "child"}, version=obj.version)

asyncio.run(main())
"""


async def test_another_processs_write_wakes_a_watch(tmp_path: Path) -> None:
    """Only the data_version poll can notice this write: it comes from another process."""
    db = tmp_path / "wake.db"
    async with LocalStore(db) as store:
        obj = await store.create(SEMAPHORE, "x", {"permits": 1})
        async with store.watch(SEMAPHORE, name="x", since=obj.version) as events:
            reader = asyncio.ensure_future(anext(events))
            await asyncio.sleep(0.2)  # the watch is open and idle
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                WRITE_FROM_ANOTHER_PROCESS,
                str(db),
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            assert await proc.wait() == 0
            ev = await asyncio.wait_for(reader, WAIT)
    assert (ev.type, ev.object.status) == ("MODIFIED", {"from": "child"})


def _hold_write_lock(db: Path, seconds: float, held: threading.Event) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        held.set()
        time.sleep(seconds)
        conn.execute("COMMIT")
    finally:
        conn.close()


async def _ticking(stop: asyncio.Event) -> float:
    """The longest gap between 10 ms ticks of the event loop until ``stop``."""
    longest, last = 0.0, time.monotonic()
    while not stop.is_set():
        await asyncio.sleep(0.01)
        now = time.monotonic()
        longest, last = max(longest, now - last), now
    return longest


async def test_a_lock_held_elsewhere_ends_in_store_unavailable_without_blocking_the_loop(
    tmp_path: Path,
) -> None:
    db = tmp_path / "locked.db"
    async with LocalStore(db, busy_timeout=1.0, retry_deadline=2.5) as store:
        obj = await store.create(SEMAPHORE, "l", {"permits": 1})
        held = threading.Event()
        holder = threading.Thread(target=_hold_write_lock, args=(db, 6.0, held))
        holder.start()
        try:
            await asyncio.to_thread(held.wait)
            stop = asyncio.Event()
            ticker = asyncio.ensure_future(_ticking(stop))
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="unavailable"):
                await store.replace_status(SEMAPHORE, "l", {"n": 1}, version=obj.version)
            waited = time.monotonic() - started
            # Reads are not blocked by another connection's write lock (WAL).
            assert (await store.get(SEMAPHORE, "l")).version == obj.version
            stop.set()
            longest_gap = await ticker
        finally:
            await asyncio.to_thread(holder.join)
        assert waited >= 2.0  # it really retried until (about) the deadline
        # Each attempt waited a full second in SQLite's busy handler, on a thread:
        # the loop kept ticking (the bound only absorbs a slow, loaded machine).
        assert longest_gap < 0.9
        # Once the lock is released, the same write goes through.
        await store.replace_status(SEMAPHORE, "l", {"n": 1}, version=obj.version)


async def test_a_write_waits_for_a_briefly_held_lock(tmp_path: Path) -> None:
    db = tmp_path / "brief.db"
    async with LocalStore(db, busy_timeout=0.1, retry_deadline=10.0) as store:
        obj = await store.create(SEMAPHORE, "b", {"permits": 1})
        held = threading.Event()
        holder = threading.Thread(target=_hold_write_lock, args=(db, 0.8, held))
        holder.start()
        try:
            await asyncio.to_thread(held.wait)
            written = await store.replace_status(SEMAPHORE, "b", {"n": 1}, version=obj.version)
        finally:
            await asyncio.to_thread(holder.join)
        assert written.status == {"n": 1}


async def test_a_file_that_is_not_a_database_is_a_configuration_error(tmp_path: Path) -> None:
    bad = tmp_path / "not-a.db"
    bad.write_bytes(b"this is not an SQLite database, just some text " * 100)
    async with LocalStore(bad) as store:
        with pytest.raises(ConfigurationError, match=r"not-a\.db"):
            await store.get(SEMAPHORE, "x")


async def test_a_database_from_a_newer_konductor_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "newer.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    async with LocalStore(db) as store:
        with pytest.raises(ConfigurationError, match="newer konductor"):
            await store.get(SEMAPHORE, "x")


async def test_history_is_bounded_and_a_watch_from_before_it_recovers(tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    async with LocalStore(db, history=5) as store:
        obj = await store.create(SEMAPHORE, "h", {"permits": 1})
        start = obj
        for i in range(1, 21):
            obj = await store.replace_status(SEMAPHORE, "h", {"n": i}, version=obj.version)
        conn = sqlite3.connect(db)
        try:
            (rows,) = conn.execute("SELECT count(*) FROM events").fetchone()
        finally:
            conn.close()
        assert rows == 5
        async with store.watch(SEMAPHORE, name="h", since=start.version, seen=[start]) as events:
            async with asyncio.timeout(WAIT):
                ev = await anext(events)
        # The intermediate states are gone: the recovery delivers the latest one.
        assert (ev.type, ev.object.status) == ("MODIFIED", {"n": 20})


async def test_other_objects_churn_never_expires_an_open_watch(tmp_path: Path) -> None:
    """An idle raw watch moves its position on, so pruning others' events cannot expire it.

    40 changes to another object go by with a history of 5; the watch of the
    quiet object keeps up with them (bookmarks), then still delivers its change.
    """
    db = tmp_path / "churn.db"
    async with LocalStore(db, history=5) as store, LocalStore(db, history=5) as writer:
        quiet = await store.create(SEMAPHORE, "quiet", {"permits": 1})
        busy = await writer.create(SEMAPHORE, "busy", {"permits": 1})
        got: list[WatchEvent | Bookmark] = []
        progressed = asyncio.Condition()
        async with store._raw_watch(SEMAPHORE, "quiet", quiet.version) as raw:

            async def read() -> None:
                try:
                    async for item in raw:
                        got.append(item)
                        async with progressed:
                            progressed.notify_all()
                        if isinstance(item, WatchEvent):
                            return
                finally:
                    async with progressed:
                        progressed.notify_all()

            def reached(version: str) -> bool:
                return any(
                    isinstance(item, Bookmark) and int(item.version) >= int(version) for item in got
                )

            reader = asyncio.ensure_future(read())
            for i in range(40):
                busy = await writer.replace_status(
                    SEMAPHORE, "busy", {"n": i}, version=busy.version
                )
                async with progressed, asyncio.timeout(WAIT):
                    await progressed.wait_for(lambda v=busy.version: reached(v) or reader.done())
            await store.replace_status(SEMAPHORE, "quiet", {"n": 1}, version=quiet.version)
            await asyncio.wait_for(reader, WAIT)  # raises Expired if the watch was expired
        last = got[-1]
        assert isinstance(last, WatchEvent)
        assert last.object.status == {"n": 1}


async def test_a_store_used_before_fork_refuses_to_run_in_the_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its thread and connection stay in the parent: a clear error instead of a hang."""
    async with LocalStore(tmp_path / "fork.db") as store:
        await store.create(SEMAPHORE, "f", {"permits": 1})
        parent = os.getpid()
        monkeypatch.setattr(os, "getpid", lambda: parent + 1)  # as in a forked child
        with pytest.raises(ConfigurationError, match="fork"):
            await store.get(SEMAPHORE, "f")
        monkeypatch.undo()
        assert (await store.get(SEMAPHORE, "f")).spec == {"permits": 1}
