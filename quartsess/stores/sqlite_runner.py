"""Per-request statements on a SQLite file through the standard ``sqlite3`` module, and
the file's set-up (WAL mode, busy timeout) shared with the maintenance engine."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ..errors import SessionStoreUnavailable
from .sqlite_files import OpenedFiles, SqliteFiles, safe_to_close
from .statements import CompiledStatement, Row

logger = logging.getLogger("quartsess")

SQLITE_BUSY_TIMEOUT_MS = 10_000
#: The write-ahead log is cut back to this size whenever it restarts after a complete
#: checkpoint, so a burst of writes does not leave a large file behind.
JOURNAL_SIZE_LIMIT = 8 * 1024 * 1024
# The size limit in log frames (one page each: 4 KiB unless the app changed page_size).
_LOG_LIMIT_FRAMES = JOURNAL_SIZE_LIMIT // 4096


class SqliteRunner:
    """``sqlite3`` on the event loop thread, never waiting there for a lock.

    A statement that finds the database locked by another process (``SQLITE_BUSY``) does
    nothing and is re-run on a worker thread whose connection waits up to the busy timeout.
    Uncontended statements take microseconds, so running them inline is cheaper than any
    hand-off to a thread (which is what aiosqlite does for every call).

    The inline connection never checkpoints the WAL itself (a checkpoint copies pages into
    the database file and fsyncs it: milliseconds, on the loop, in whichever write crossed
    the threshold). Every ``CHECKPOINT_EVERY`` inline writes, a passive checkpoint (never
    waits for readers or writers) runs on the worker thread instead. The log restarts
    from its beginning (and is cut back to ``JOURNAL_SIZE_LIMIT``) only when a write
    begins just after a checkpoint has copied all of it; a checkpoint that started in the
    middle of a run of writes never has, so under steady writes the log would only grow.
    So once a checkpoint finds the log past its size limit, every write waits on the event
    loop for the end of a checkpoint (starting one when none runs) before it runs inline;
    reads go on. Such a checkpoint copies only what was written during the last one, this
    worker writes nothing while it runs, and the first write after it restarts the log;
    the waits end when a checkpoint finds the log short (so two checkpoints per restart).
    The event loop never waits for a checkpoint, and no write is handed to the thread for
    it: there a write also waits for the GIL (a median of 17-22 ms each under load,
    against a few for the checkpoint). Other workers on the file restart the log the same
    way; one worker's writes during another's checkpoint only postpone the restart.

    Before each statement, ``files`` (:class:`~quartsess.stores.sqlite_files.SqliteFiles`)
    says whether the connections may be used: not while the ``-shm`` file is immutable
    (touching it would be a SIGBUS), and never again once their database was deleted or
    replaced (the path is then opened again, if there is something safe to open).

    Only the URL's file path is used: query options and ``connect_args`` of the URL or
    ``SESSION_ENGINE_OPTIONS`` apply to the SQLAlchemy engine (maintenance) alone."""

    #: Inline writes between two checkpoints (a few pages each: about SQLite's own
    #: default of 1,000 pages).
    CHECKPOINT_EVERY = 250

    def __init__(
        self, database: str, busy_timeout_ms: int, files: SqliteFiles | None = None
    ) -> None:
        self._database = database
        self._busy_timeout_ms = busy_timeout_ms
        self._files = files if files is not None else SqliteFiles(database)
        self._inline: sqlite3.Connection | None = None
        self._waiting: sqlite3.Connection | None = None
        self._opened: OpenedFiles | None = None  # the files the connections opened
        self._thread: ThreadPoolExecutor | None = None
        self._opening: asyncio.Lock | None = None
        self._writes = 0  # inline writes since the last checkpoint was started
        #: The running checkpoint's end (resolved on its loop; the worker thread sets this
        #: back to None as the checkpoint ends); None when no checkpoint runs.
        self._checkpoint_ended: asyncio.Future[None] | None = None
        self._log_too_long = False  # the last checkpoint left the log past its limit
        #: Guards the two fields above, which the worker thread sets too.
        self._checkpoint_lock = threading.Lock()
        #: Keep the connections open between statements (while the app serves);
        #: otherwise they are closed after each statement.
        self.keep_open = True
        self._in_flight = 0

    async def _connections(self) -> tuple[sqlite3.Connection, ThreadPoolExecutor]:
        """The open connections, once the files say they may be used (see the class
        docstring); raises :class:`~quartsess.SessionStoreUnavailable` otherwise."""
        for attempt in range(2):
            inline, thread, opened = self._inline, self._thread, self._opened
            if inline is None or thread is None or opened is None:
                await self._open_connections()
                inline, thread, opened = self._inline, self._thread, self._opened
            if inline is not None and thread is not None and opened is not None:
                if self._files.check(opened):
                    return inline, thread
                if attempt == 0:
                    await self.close()  # their database is no longer at the path
        raise SessionStoreUnavailable(f"the SQLite database {self._database} keeps changing")

    async def _open_connections(self) -> None:
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._inline is None or self._thread is None:
                self._files.may_open()
                thread = ThreadPoolExecutor(1, thread_name_prefix="quartsess-sqlite")
                loop = asyncio.get_running_loop()
                try:
                    inline, waiting, opened = await loop.run_in_executor(thread, self._open_both)
                except sqlite3.Error as error:
                    thread.shutdown(wait=False)
                    raise SessionStoreUnavailable(
                        f"cannot open the SQLite database: {error}"
                    ) from error
                self._inline, self._waiting, self._thread = inline, waiting, thread
                self._opened = opened

    def _open_both(self) -> tuple[sqlite3.Connection, sqlite3.Connection, OpenedFiles]:
        directory = os.path.dirname(os.path.abspath(self._database))
        os.makedirs(directory, exist_ok=True)
        create_private_file(self._database)
        waiting = self._open(self._busy_timeout_ms)
        try:
            inline = self._open(0)
            inline.execute("PRAGMA wal_autocheckpoint = 0")  # see the class docstring
        except BaseException:
            waiting.close()
            raise
        return inline, waiting, self._files.opened()

    def _open(self, busy_timeout_ms: int) -> sqlite3.Connection:
        connection = sqlite3.connect(
            self._database, isolation_level=None, check_same_thread=False, timeout=0
        )
        try:
            # Switching to WAL may wait for another worker; only then the connection's own
            # busy timeout applies.
            configure_sqlite(connection, self._busy_timeout_ms)
            use_wal(connection, self._busy_timeout_ms)
            connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        except BaseException:
            connection.close()
            raise
        return connection

    async def fetch_one(
        self, statement: CompiledStatement, params: Mapping[str, Any]
    ) -> Row | None:
        result = await self._execute_then_maybe_close(statement, params, fetch=True)
        return result if result is None or isinstance(result, tuple) else None

    async def rowcount(self, statement: CompiledStatement, params: Mapping[str, Any]) -> int:
        result = await self._execute_then_maybe_close(statement, params, fetch=False)
        return result if isinstance(result, int) else 0

    async def _execute_then_maybe_close(
        self, statement: CompiledStatement, params: Mapping[str, Any], *, fetch: bool
    ) -> tuple[Any, ...] | int | None:
        self._in_flight += 1
        try:
            return await self._execute(statement, params, fetch=fetch)
        finally:
            self._in_flight -= 1
            if not self.keep_open and not self._in_flight:
                await self.close()

    async def _execute(
        self, statement: CompiledStatement, params: Mapping[str, Any], *, fetch: bool
    ) -> tuple[Any, ...] | int | None:
        if not fetch and self._log_too_long:
            await self._wait_for_a_checkpoint()
        inline, thread = await self._connections()
        arguments = statement.arguments(params)
        try:
            result = _run_sqlite(inline, statement.sql, arguments, fetch)
        except sqlite3.OperationalError as error:
            if not _is_busy(error):
                raise SessionStoreUnavailable(f"SQLite: {error}") from error
        else:
            if not fetch:
                self._writes += 1
                if self._writes >= self.CHECKPOINT_EVERY and self._checkpoint_ended is None:
                    self._start_checkpoint(thread)
            return result
        return await self._on_thread(thread, statement.sql, arguments, fetch)

    async def _wait_for_a_checkpoint(self) -> None:
        """Hold this write until the running checkpoint ends, starting one if none runs
        (see the class docstring), or until the runner closes."""
        if self._checkpoint_ended is None and self._thread is not None:
            self._start_checkpoint(self._thread)
        ended = self._checkpoint_ended
        if ended is not None and ended.get_loop() is asyncio.get_running_loop():
            # Not asyncio.wait_for: a cancelled caller must not cancel the shared future.
            await asyncio.wait((ended,))

    async def _on_thread(
        self, thread: ThreadPoolExecutor, sql: str, arguments: tuple[Any, ...], fetch: bool
    ) -> tuple[Any, ...] | int | None:
        """Run the statement on the thread's connection, which waits for locks."""
        waiting, opened = self._waiting, self._opened
        if waiting is None or opened is None:  # pragma: no cover - closed while in flight
            raise SessionStoreUnavailable("the SQLite store is closed")

        def checked() -> tuple[Any, ...] | int | None:
            # Checked again on the thread, just before the statement touches the files.
            if not self._files.check(opened):
                raise SessionStoreUnavailable(f"the SQLite database {self._database} changed")
            return _run_sqlite(waiting, sql, arguments, fetch)

        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(thread, checked)
        except sqlite3.Error as error:
            raise SessionStoreUnavailable(f"SQLite: {error}") from error

    def _start_checkpoint(self, thread: ThreadPoolExecutor) -> None:
        waiting, opened = self._waiting, self._opened
        if waiting is None or opened is None:  # pragma: no cover - closed while in flight
            return
        ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._checkpoint_lock:
            self._writes = 0
            self._checkpoint_ended = ended

        def on_thread_done(future: Future[int | None]) -> None:
            # On the worker thread. The flags are set here, not on the loop, as a caller
            # that writes without ever yielding to the loop must see them too.
            self._checkpoint_done(future, ended)
            _resolve_from_anywhere(ended)

        try:
            # A concurrent future: its callback runs on the thread even if the loop is gone.
            checkpoint = thread.submit(_checkpoint_if_usable, self._files, opened, waiting)
            checkpoint.add_done_callback(on_thread_done)
        except RuntimeError:  # pragma: no cover - the executor is shut down (at exit)
            with self._checkpoint_lock:
                if self._checkpoint_ended is ended:
                    self._checkpoint_ended = None
            _resolve_from_anywhere(ended)

    def _checkpoint_done(self, future: Future[int | None], ended: asyncio.Future[None]) -> None:
        log_frames = None if future.cancelled() or future.exception() else future.result()
        with self._checkpoint_lock:
            if ended is not self._checkpoint_ended:
                return  # from before a close()
            # Only a log found short ends the waits: a complete checkpoint with no write of
            # ours during it does not prove the restart, as another worker may have written.
            self._log_too_long = log_frames is not None and log_frames > _LOG_LIMIT_FRAMES
            self._checkpoint_ended = None

    async def close(self) -> None:
        inline, waiting, thread, opened = self._inline, self._waiting, self._thread, self._opened
        self._inline = self._waiting = self._thread = self._opened = None
        with self._checkpoint_lock:
            ended, self._checkpoint_ended = self._checkpoint_ended, None
            self._log_too_long = False
        if ended is not None:
            _resolve_from_anywhere(ended)  # writes waiting for it go on (and reopen)
        self._opening = None  # an asyncio.Lock binds to its loop; the next open may be on another
        if inline is not None and safe_to_close(self._files, opened, inline):
            inline.close()
        if thread is not None:
            if waiting is not None and safe_to_close(self._files, opened, waiting):
                await asyncio.get_running_loop().run_in_executor(thread, waiting.close)
            thread.shutdown(wait=False)


def configure_sqlite(dbapi_connection: Any, busy_timeout_ms: int) -> None:
    """A busy timeout, ``synchronous=NORMAL`` (safe in WAL) and a WAL size limit on any
    DB-API connection.
    The file itself is put in WAL mode by :func:`use_wal`, once, before this runs."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
    finally:
        cursor.close()


def use_wal(connection: sqlite3.Connection, busy_timeout_ms: int) -> None:
    """Put the database file in WAL mode (readers never wait for the writer), so several
    workers can share it. Blocks: call it on a worker thread.

    Switching needs an exclusive lock, and when several connections try at once on a new
    file SQLite answers SQLITE_BUSY at once instead of calling its busy handler (it sees a
    deadlock). The mode is stored in the file, so whoever loses finds it set on a retry.
    """
    deadline = time.monotonic() + max(busy_timeout_ms, 1_000) / 1_000
    delay = 0.001
    while True:
        try:
            [(mode,)] = connection.execute("PRAGMA journal_mode = WAL").fetchall()
        except sqlite3.OperationalError as error:
            if not _is_busy(error) or time.monotonic() + delay > deadline:
                raise
        else:
            if str(mode).lower() not in ("wal", "memory"):
                # SQLite answers with the mode it kept when it cannot switch (no error).
                logger.warning(
                    "SQLite kept journal_mode=%s instead of WAL; several workers sharing "
                    "this database will wait for each other's writes and reads",
                    mode,
                )
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _is_busy(error: sqlite3.Error) -> bool:
    # Extended codes (SQLITE_BUSY_SNAPSHOT, _RECOVERY, ...) keep the primary code in
    # their low byte, as SQLite's own retry loop checks it.
    return (getattr(error, "sqlite_errorcode", 0) & 0xFF) in (
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
    )


def _checkpoint_if_usable(
    files: SqliteFiles, opened: OpenedFiles, connection: sqlite3.Connection
) -> int | None:
    """:func:`_checkpoint` if the files say the connection may be used (see the class
    docstring), else None, as for a checkpoint that could not run."""
    try:
        if not files.check(opened):
            return None
    except (SessionStoreUnavailable, OSError):
        return None
    return _checkpoint(connection)


def _checkpoint(connection: sqlite3.Connection) -> int | None:
    """Copy what the WAL holds into the database file, without waiting for anyone;
    returns the log's length in frames, or None if the checkpoint could not run."""
    try:
        row = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    except sqlite3.ProgrammingError:
        return None  # closed meanwhile
    except sqlite3.Error as error:
        if getattr(error, "sqlite_errorcode", 0) & 0xFF not in _BUSY_CODES:
            # A disk that is full or failing: the log cannot shrink while it lasts, and
            # the statements' own errors may not show it. Once per kind of error.
            _log_checkpoint_failure(error)
        return None  # busy: the next one catches up
    return None if row is None else int(row[1])


#: SQLITE_BUSY and SQLITE_LOCKED (the low byte of an extended code).
_BUSY_CODES = (5, 6)
_logged_checkpoint_failures: set[str] = set()


def _log_checkpoint_failure(error: sqlite3.Error) -> None:
    kind = getattr(error, "sqlite_errorname", type(error).__name__)
    if kind not in _logged_checkpoint_failures:
        _logged_checkpoint_failures.add(kind)
        logger.warning("a checkpoint of the SQLite log failed: %s", error)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _resolve_from_anywhere(future: asyncio.Future[None]) -> None:
    """Resolve a future of any loop, from any thread; a closed loop has nobody waiting."""
    try:
        future.get_loop().call_soon_threadsafe(_resolve, future)
    except RuntimeError:
        pass


def _run_sqlite(
    connection: sqlite3.Connection, sql: str, arguments: tuple[Any, ...], fetch: bool
) -> tuple[Any, ...] | int | None:
    try:
        cursor = connection.execute(sql, arguments)
    except sqlite3.OperationalError:
        raise
    except sqlite3.Error as error:
        raise SessionStoreUnavailable(f"SQLite: {error}") from error
    if fetch:
        row: tuple[Any, ...] | None = cursor.fetchone()
        cursor.close()
        return row
    return cursor.rowcount


def prepare_sqlite_file(database: str, is_uri: bool) -> None:
    """Create the file's directory and put the file in WAL mode (blocks: run on a thread)."""
    if not is_uri:
        os.makedirs(os.path.dirname(os.path.abspath(database)), exist_ok=True)
        create_private_file(database)
    try:
        connection = sqlite3.connect(database, uri=is_uri, timeout=0, isolation_level=None)
        try:
            use_wal(connection, SQLITE_BUSY_TIMEOUT_MS)
        finally:
            connection.close()
    except sqlite3.Error as error:
        raise SessionStoreUnavailable(f"cannot open the SQLite database: {error}") from error


def create_private_file(database: str) -> None:
    """Create the database file readable and writable by its owner only, if it is not
    there yet (SQLite gives its -wal and -shm files the same permissions). Sessions are
    encrypted, but the file also tells who is logged in and when."""
    try:
        descriptor = os.open(database, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    except OSError as error:
        raise SessionStoreUnavailable(f"cannot create the SQLite database: {error}") from error
    os.close(descriptor)
