"""The store on a local SQLite file: for one machine, safe across processes.

The embedded default for development, CI and single-host deployments. Several
processes (and several stores in one process) may open the same file; the
compare-and-swap is a transaction, so it is exactly as safe across processes
as the Kubernetes store is across machines. It is *only* for one machine:
SQLite's WAL mode needs shared memory, so never put the file on a network
file system.

How each guarantee is kept:

- **Compare-and-swap.** Every write is one ``BEGIN IMMEDIATE`` transaction
  (the database write lock is taken before the first read) that checks the
  object's version (:class:`Conflict`), bumps the file's global revision
  counter, writes the object and appends the event. Versions are revision
  numbers, so they increase over every namespace in the file.
- **Watch history.** The ``events`` table keeps the last ``history`` changes;
  older rows are pruned by the writes themselves and ``meta.compacted`` records
  the newest pruned revision. A watch from before it raises :class:`Expired`,
  which the shared :class:`ResumableWatch` turns into a relist, as for a
  compacted etcd. :meth:`LocalStore.compact` prunes everything (for tests).
- **Prompt wake-up.** Same-process writes wake watchers at once through an
  asyncio signal (also across LocalStores on the same file in this process).
  Other processes' writes are noticed by polling ``PRAGMA data_version``
  every ``poll_interval`` (25 ms) while at least one watch is open. That poll
  reads a counter from the WAL index in shared memory: no file I/O when
  nothing changed, no lock a writer waits for, a few microseconds of work.
  Unlike polling an API server, which costs a network request and server
  work per client per interval, it loads nothing but this process, and only
  while something waits. Watchers then read only the new event rows.
- **Durability.** ``synchronous=FULL``: a commit is on disk before the write
  returns, so a fencing token handed out is never handed out again, even
  after a power loss.

Why threads: sqlite3 calls block. A local write takes a millisecond or two
(most of it the fsync), but another process may hold the write lock, and then the call
waits in SQLite's busy handler (up to ``busy_timeout``). That must never
block the event loop, so every call runs on a thread: each connection has its
own single-thread executor (a connection serves one statement at a time and
stays on the thread that opened it). A store has two connections: one for
calls, one for its watches (their ``data_version`` polls and event reads are
never queued behind a write that waits for the lock). A lock held for longer
than ``busy_timeout`` is retried with backoff until ``retry_deadline``, then
raised as :class:`StoreUnavailable`.

Like a network request, a call that is cancelled while its thread runs may
still complete its write; the compare-and-swap loop already handles that
(the next write with the old version conflicts).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from konductor._backoff import Backoff
from konductor._errors import (
    AlreadyExists,
    ConfigurationError,
    Conflict,
    Expired,
    InvalidArgument,
    NotFound,
    StoreError,
    StoreUnavailable,
)
from konductor._names import validate_name, validate_namespace
from konductor._store._base import (
    JSON,
    EventType,
    ObjectList,
    Store,
    StoredObject,
    WatchEvent,
)
from konductor._store._jsonpatch import patched_status
from konductor._store._kinds import Kind
from konductor._store._schema import validate_spec, validate_status
from konductor._store._watch import Bookmark, RawEvent

log = logging.getLogger("konductor.store")
T = TypeVar("T")
Rows = list[tuple[Any, ...]]

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (key, value) VALUES ('revision', 0), ('compacted', 0);
CREATE TABLE IF NOT EXISTS objects (
    namespace TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    spec TEXT NOT NULL,
    status TEXT NOT NULL,
    uid TEXT NOT NULL,
    PRIMARY KEY (namespace, kind, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    revision INTEGER PRIMARY KEY,
    namespace TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    object TEXT NOT NULL
);
"""

# SQLite primary result codes worth retrying: another connection holds a lock
# (BUSY, LOCKED), a transient WAL-index race (PROTOCOL), an I/O error.
_RETRYABLE = {5, 6, 10, 15}
# The file cannot be used at all: wrong path, not a database, read-only.
_UNUSABLE = {8, 14, 26}

_WATCH_BATCH = 1000


def default_path() -> Path:
    """The default database file, under the user's state directory.

    ``$XDG_STATE_HOME/konductor/konductor.db`` when that variable holds an
    absolute path (as the XDG spec requires), else
    ``~/.local/state/konductor/konductor.db``.
    """
    state = os.environ.get("XDG_STATE_HOME")
    base = Path(state) if state and os.path.isabs(state) else Path.home() / ".local" / "state"
    return base / "konductor" / "konductor.db"


def _kind_key(kind: Kind) -> str:
    return kind.resource  # e.g. "semaphores.konductor.io": unique per kind


def _dumps(value: Mapping[str, Any], what: str) -> str:
    try:
        return json.dumps(dict(value), separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{what} is not JSON-serializable: {exc}") from exc


def _error_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


class _Connection:
    """One sqlite3 connection and the single thread that uses it."""

    def __init__(self, path: Path, busy_timeout: float, label: str) -> None:
        self._path = path
        self._busy_timeout = busy_timeout
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"konductor-local-{label}")
        self._conn: sqlite3.Connection | None = None
        self._pid: int | None = None  # the process whose thread owns the connection

    def _open(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = connect(self._path, self._busy_timeout)
        return self._conn

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` on this connection's thread.

        Raises:
            ConfigurationError: used in a child after ``fork()``; the thread
                (and the SQLite connection) belong to the parent.
        """
        pid = os.getpid()
        if self._pid is None:
            self._pid = pid
        elif self._pid != pid:
            raise ConfigurationError(
                f"this LocalStore of {self._path} was opened in process {self._pid}; after "
                "fork() open a new LocalStore in the child"
            )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(self._open()))

    async def close(self) -> None:
        def close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, close)
        finally:
            self._executor.shutdown(wait=False)


def connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    """Open ``path`` in WAL mode with konductor's schema, creating both if needed.

    Raises:
        ConfigurationError: the directory cannot be created, the file is not a
            database, cannot be opened for writing, cannot use WAL, or was
            written by a newer konductor.
        sqlite3.Error: a lock or I/O error (the caller retries).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise ConfigurationError(f"cannot create the directory of {path}: {exc}") from exc
    try:
        conn = sqlite3.connect(
            str(path), timeout=busy_timeout, isolation_level=None, check_same_thread=True
        )
    except sqlite3.Error as exc:
        if _error_code(exc) in _UNUSABLE:
            raise ConfigurationError(f"cannot use {path} as konductor's database: {exc}") from exc
        raise
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise ConfigurationError(
                f"{path}: SQLite cannot use WAL mode here (journal mode {mode!r}); "
                "put the database on a local file system"
            )
        conn.execute("PRAGMA synchronous = FULL")
        if conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            conn.execute("BEGIN IMMEDIATE")
            try:
                found = conn.execute("PRAGMA user_version").fetchone()[0]
                if found > SCHEMA_VERSION:
                    raise ConfigurationError(
                        f"{path} was written by a newer konductor (schema {found}, "
                        f"this one knows {SCHEMA_VERSION})"
                    )
                if found < SCHEMA_VERSION:
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
    except sqlite3.Error as exc:
        conn.close()
        if _error_code(exc) in _UNUSABLE:
            raise ConfigurationError(f"cannot use {path} as konductor's database: {exc}") from exc
        raise
    except BaseException:
        conn.close()
        raise
    return conn


# --- in-process wake-ups -------------------------------------------------------------
# LocalStores of this process that have a watch open, by database file: a write
# through any of them wakes the others' watchers at once (other processes'
# writes are noticed by the data_version poll).

_watching_lock = threading.Lock()
_watching: dict[str, set[LocalStore]] = {}


def _notify_local(key: str) -> None:
    with _watching_lock:
        stores = list(_watching.get(key, ()))
    for store in stores:
        store._wake_threadsafe()


class LocalStore(Store):
    """Versioned objects in a local SQLite file, shared by the processes of one machine.

    ``path`` defaults to :func:`default_path` (directories are created).
    ``namespace`` separates sets of objects within one file. ``history`` bounds
    how many past changes a watch can resume from (pruned by every writer with
    its own bound); ``busy_timeout`` is how long one attempt waits for another
    connection's write lock, ``retry_deadline`` how long a call keeps retrying
    before it raises :class:`StoreUnavailable`; ``poll_interval`` is how often
    an open watch checks for other processes' writes.

    The file is opened on first use. Use ``async with`` or :meth:`close`.

    Raises:
        InvalidName: ``namespace`` is not a DNS-1123 label (at construction).
        InvalidArgument: a non-positive interval or bound (at construction).
        ConfigurationError: the file cannot be used (on first use).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        namespace: str = "default",
        *,
        history: int = 10_000,
        busy_timeout: float = 2.0,
        retry_deadline: float = 15.0,
        poll_interval: float = 0.025,
    ) -> None:
        self.namespace = validate_namespace(namespace)
        for what, value in (
            ("history", history),
            ("busy_timeout", busy_timeout),
            ("retry_deadline", retry_deadline),
            ("poll_interval", poll_interval),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise InvalidArgument(f"{what} must be a positive number, got {value!r}")
        self.path = Path(path) if path is not None else default_path()
        self._key = os.path.realpath(self.path)
        self._history = int(history)
        self._busy_timeout = float(busy_timeout)
        self._retry_deadline = float(retry_deadline)
        self._poll_interval = float(poll_interval)
        self._calls = _Connection(self.path, self._busy_timeout, "calls")
        self._watch_conn = _Connection(self.path, self._busy_timeout, "watch")
        self._closed = False
        # Watch state (one event loop at a time: the loop of the open watches).
        self._open_watches = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed = asyncio.Event()  # replaced by a fresh one on every wake-up
        self._poller: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"LocalStore({str(self.path)!r}, namespace={self.namespace!r})"

    # -- running calls ------------------------------------------------------------------

    async def _run(self, conn: _Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on ``conn``'s thread, retrying lock and I/O errors until the deadline.

        Raises:
            StoreUnavailable: still locked or failing at ``retry_deadline``.
            StoreError: any other SQLite error.
        """
        if self._closed:
            raise StoreUnavailable(f"{self!r} is closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._retry_deadline
        backoff = Backoff(initial=0.01, cap=0.5)
        while True:
            try:
                return await conn.run(fn)
            except sqlite3.Error as exc:
                code = _error_code(exc)
                if code not in _RETRYABLE:
                    raise StoreError(f"{self.path}: SQLite error: {exc}") from exc
                delay = backoff.next_delay()
                if loop.time() + delay >= deadline:
                    raise StoreUnavailable(
                        f"{self.path} is unavailable after {self._retry_deadline:g}s of "
                        f"retries: {exc}"
                    ) from exc
                log.debug("%s: %s; retrying in %.3fs", self.path, exc, delay)
                await asyncio.sleep(delay)

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one ``BEGIN IMMEDIATE`` transaction, then wake local watchers."""

        def transaction(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return result

        result = await self._run(self._calls, transaction)
        _notify_local(self._key)
        return result

    # -- rows -----------------------------------------------------------------------------

    def _missing(self, kind: Kind, name: str) -> NotFound:
        return NotFound(f"{kind} {name!r} not found in namespace {self.namespace!r}")

    def _row(self, conn: sqlite3.Connection, kind: Kind, name: str) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = conn.execute(
            "SELECT version, spec, status, uid FROM objects "
            "WHERE namespace = ? AND kind = ? AND name = ?",
            (self.namespace, _kind_key(kind), name),
        ).fetchone()
        return row

    @staticmethod
    def _object(kind: Kind, name: str, row: tuple[Any, ...]) -> StoredObject:
        version, spec, status, uid = row
        return StoredObject(kind, name, str(version), json.loads(spec), json.loads(status), uid)

    def _existing(self, conn: sqlite3.Connection, kind: Kind, name: str) -> StoredObject:
        row = self._row(conn, kind, name)
        if row is None:
            raise self._missing(kind, name)
        return self._object(kind, name, row)

    @staticmethod
    def _check_version(current: StoredObject, version: str) -> None:
        if current.version != version:
            raise Conflict(
                f"{current.kind} {current.name!r} changed since version {version} "
                f"(now {current.version}); read it again and retry"
            )

    @staticmethod
    def _revision(conn: sqlite3.Connection) -> int:
        value: int = conn.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()[0]
        return value

    def _bump(self, conn: sqlite3.Connection) -> int:
        """The next revision; prunes the event history to ``history`` rows."""
        conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'revision'")
        revision = self._revision(conn)
        cut = revision - self._history  # keep `history` events, this one included
        if cut > 0:
            conn.execute("DELETE FROM events WHERE revision <= ?", (cut,))
            conn.execute(
                "UPDATE meta SET value = max(value, ?) WHERE key = 'compacted'",
                (cut,),
            )
        return revision

    def _record(
        self, conn: sqlite3.Connection, revision: int, type_: EventType, obj: StoredObject
    ) -> None:
        body = {"spec": obj.spec, "status": obj.status, "uid": obj.uid}
        conn.execute(
            "INSERT INTO events (revision, namespace, kind, name, type, object) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                revision,
                self.namespace,
                _kind_key(obj.kind),
                obj.name,
                type_,
                json.dumps(body, separators=(",", ":")),
            ),
        )

    def _store(self, conn: sqlite3.Connection, obj: StoredObject, spec: str, status: str) -> None:
        conn.execute(
            "INSERT OR REPLACE INTO objects (namespace, kind, name, version, spec, status, uid) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                self.namespace,
                _kind_key(obj.kind),
                obj.name,
                int(obj.version),
                spec,
                status,
                obj.uid,
            ),
        )

    # -- the protocol ---------------------------------------------------------------------

    async def get(self, kind: Kind, name: str, *, timeout: float | None = None) -> StoredObject:
        validate_name(name)
        return await self._run(self._calls, lambda conn: self._existing(conn, kind, name))

    async def create(self, kind: Kind, name: str, spec: Mapping[str, Any]) -> StoredObject:
        validate_name(name)
        spec_text = _dumps(spec, "spec")

        def create(conn: sqlite3.Connection) -> StoredObject:
            if self._row(conn, kind, name) is not None:
                raise AlreadyExists(
                    f"{kind} {name!r} already exists in namespace {self.namespace!r}"
                )
            validate_spec(kind, name, spec)
            revision = self._bump(conn)
            obj = StoredObject(
                kind, name, str(revision), json.loads(spec_text), {}, uid=str(uuid.uuid4())
            )
            self._store(conn, obj, spec_text, "{}")
            self._record(conn, revision, "ADDED", obj)
            return obj

        return await self._write(create)

    async def _replace(
        self, kind: Kind, name: str, version: str, *, spec: str | None, status: str | None
    ) -> StoredObject:
        def write(conn: sqlite3.Connection) -> StoredObject:
            current = self._existing(conn, kind, name)
            self._check_version(current, version)
            if spec is not None:
                validate_spec(kind, name, json.loads(spec))
            if status is not None:
                validate_status(kind, name, json.loads(status))
            spec_text = spec if spec is not None else json.dumps(current.spec)
            status_text = status if status is not None else json.dumps(current.status)
            revision = self._bump(conn)
            obj = StoredObject(
                kind,
                name,
                str(revision),
                json.loads(spec_text),
                json.loads(status_text),
                current.uid,
            )
            self._store(conn, obj, spec_text, status_text)
            self._record(conn, revision, "MODIFIED", obj)
            return obj

        return await self._write(write)

    async def replace_status(
        self,
        kind: Kind,
        name: str,
        status: Mapping[str, Any],
        *,
        version: str,
        timeout: float | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> StoredObject:
        if not kind.has_status:
            raise InvalidArgument(f"{kind} has no status; write its spec instead")
        validate_name(name)
        if on_sent is not None:
            on_sent()
        return await self._replace(kind, name, version, spec=None, status=_dumps(status, "status"))

    async def patch_status(
        self,
        kind: Kind,
        name: str,
        ops: Sequence[JSON],
        *,
        timeout: float | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> StoredObject:
        if not kind.has_status:
            raise InvalidArgument(f"{kind} has no status; write its spec instead")
        validate_name(name)
        if on_sent is not None:
            on_sent()
        patch = [dict(op) for op in ops]

        def write(conn: sqlite3.Connection) -> StoredObject:
            # Read, apply and write in one transaction: atomic against every
            # other process, as the API server's own read-modify-write is.
            current = self._existing(conn, kind, name)
            status = patched_status(f"{kind} {name!r}", current.spec, current.status, patch)
            validate_status(kind, name, status)
            status_text = _dumps(status, "status")
            revision = self._bump(conn)
            obj = StoredObject(
                kind, name, str(revision), current.spec, json.loads(status_text), current.uid
            )
            self._store(conn, obj, json.dumps(current.spec), status_text)
            self._record(conn, revision, "MODIFIED", obj)
            return obj

        return await self._write(write)

    async def replace_spec(
        self,
        kind: Kind,
        name: str,
        spec: Mapping[str, Any],
        *,
        version: str,
        timeout: float | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> StoredObject:
        validate_name(name)
        if on_sent is not None:
            on_sent()
        return await self._replace(kind, name, version, spec=_dumps(spec, "spec"), status=None)

    async def delete(self, kind: Kind, name: str, *, version: str | None = None) -> None:
        validate_name(name)

        def delete(conn: sqlite3.Connection) -> None:
            current = self._existing(conn, kind, name)
            if version is not None:
                self._check_version(current, version)
            conn.execute(
                "DELETE FROM objects WHERE namespace = ? AND kind = ? AND name = ?",
                (self.namespace, _kind_key(kind), name),
            )
            revision = self._bump(conn)
            self._record(conn, revision, "DELETED", replace(current, version=str(revision)))

        await self._write(delete)

    async def list(self, kind: Kind) -> ObjectList:
        def list_(conn: sqlite3.Connection) -> ObjectList:
            conn.execute("BEGIN")  # one snapshot for the items and the version
            try:
                revision = self._revision(conn)
                rows = conn.execute(
                    "SELECT name, version, spec, status, uid FROM objects "
                    "WHERE namespace = ? AND kind = ? ORDER BY name",
                    (self.namespace, _kind_key(kind)),
                ).fetchall()
            finally:
                conn.execute("COMMIT")
            items = tuple(self._object(kind, row[0], row[1:]) for row in rows)
            return ObjectList(items, str(revision))

        return await self._run(self._calls, list_)

    def compact(self) -> None:
        """Forget all watch history now, as an etcd compaction does (for tests).

        Synchronous: it opens its own connection on the calling thread and may
        wait up to ``busy_timeout`` for the write lock. Watches from any
        version before now then recover by listing.

        Raises:
            StoreUnavailable: the write lock was not free within ``busy_timeout``.
            ConfigurationError: the file cannot be used.
        """
        try:
            conn = connect(self.path, self._busy_timeout)
            try:
                conn.execute("BEGIN IMMEDIATE")
                revision = self._revision(conn)
                conn.execute("DELETE FROM events WHERE revision <= ?", (revision,))
                conn.execute(
                    "UPDATE meta SET value = max(value, ?) WHERE key = 'compacted'", (revision,)
                )
                conn.execute("COMMIT")
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot compact {self.path}: {exc}") from exc
        _notify_local(self._key)

    # -- watching -------------------------------------------------------------------------

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _wake_threadsafe(self) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake()
        else:
            with contextlib.suppress(RuntimeError):  # that loop is closed
                loop.call_soon_threadsafe(self._wake)

    def _watch_started(self) -> None:
        loop = asyncio.get_running_loop()
        if self._open_watches == 0:
            self._loop = loop
            self._changed = asyncio.Event()
            self._poller = loop.create_task(self._poll())
            with _watching_lock:
                _watching.setdefault(self._key, set()).add(self)
        elif loop is not self._loop:
            raise InvalidArgument(
                f"{self!r} already has watches open on another event loop; "
                "use one LocalStore per event loop"
            )
        self._open_watches += 1

    def _watch_ended(self) -> None:
        if self._closed:  # close() already stopped watching
            return
        self._open_watches -= 1
        if self._open_watches == 0:
            self._stop_watching()

    def _stop_watching(self) -> None:
        with _watching_lock:
            stores = _watching.get(self._key)
            if stores is not None:
                stores.discard(self)
                if not stores:
                    del _watching[self._key]
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None
        self._loop = None

    async def _poll(self) -> None:
        """Wake watchers when another connection commits (``PRAGMA data_version``).

        The first wake-up comes right after the baseline is read, so that a
        watcher that looked before the baseline misses nothing.
        """

        def data_version(conn: sqlite3.Connection) -> int:
            value: int = conn.execute("PRAGMA data_version").fetchone()[0]
            return value

        last: int | None = None
        failure = ""  # logged once until it changes
        while True:
            try:
                current: int | None = await self._run(self._watch_conn, data_version)
                failure = ""
            except Exception as exc:  # the watchers' own reads raise it to their callers
                if str(exc) != failure:
                    failure = str(exc)
                    log.warning("%s: cannot poll for changes: %s", self.path, exc)
                current = None
            if current is None or current != last:
                self._wake()
            last = current
            await asyncio.sleep(self._poll_interval)

    def _read_events(
        self, kind: Kind, name: str | None, position: int
    ) -> Callable[[sqlite3.Connection], tuple[int, int, Rows]]:
        def read(conn: sqlite3.Connection) -> tuple[int, int, Rows]:
            conn.execute("BEGIN")  # one snapshot for the bounds and the rows
            try:
                meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
                query = (
                    "SELECT revision, type, name, object FROM events "
                    "WHERE revision > ? AND namespace = ? AND kind = ?"
                )
                params: list[Any] = [position, self.namespace, _kind_key(kind)]
                if name is not None:
                    query += " AND name = ?"
                    params.append(name)
                query += f" ORDER BY revision LIMIT {_WATCH_BATCH}"
                rows = conn.execute(query, params).fetchall()
            finally:
                conn.execute("COMMIT")
            return meta["revision"], meta["compacted"], rows

        return read

    @asynccontextmanager
    async def _raw_watch(
        self, kind: Kind, name: str | None, since: str
    ) -> AsyncIterator[AsyncIterator[RawEvent]]:
        try:
            start = int(since)
        except ValueError:
            raise InvalidArgument(f"not a version of this store: {since!r}") from None
        _, compacted, _ = await self._run(self._watch_conn, self._read_events(kind, name, start))
        if start < compacted:
            raise Expired(f"version {since} has been compacted (oldest kept: {compacted})")

        async def events() -> AsyncIterator[RawEvent]:
            position = start
            while True:
                changed = self._changed  # taken before reading: no wake-up is missed
                head, compacted, rows = await self._run(
                    self._watch_conn, self._read_events(kind, name, position)
                )
                if position < compacted:
                    raise Expired(f"version {position} has been compacted")
                for revision, type_, obj_name, body in rows:
                    data = json.loads(body)
                    obj = StoredObject(
                        kind, obj_name, str(revision), data["spec"], data["status"], data["uid"]
                    )
                    position = revision
                    yield WatchEvent(type_, obj)
                if len(rows) == _WATCH_BATCH:
                    continue
                if head > position:
                    # Nothing else matched up to head: move on, so that pruning
                    # other objects' events never expires this watch.
                    position = head
                    yield Bookmark(str(head))
                await changed.wait()

        self._watch_started()
        try:
            yield events()
        finally:
            self._watch_ended()

    async def close(self) -> None:
        """Stop polling and close both connections; the store must not be used afterwards."""
        if self._closed:
            return
        self._closed = True
        if self._open_watches:
            self._open_watches = 0
            self._stop_watching()
        await self._calls.close()
        await self._watch_conn.close()
