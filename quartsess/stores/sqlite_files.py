"""Whether the SQLite files a worker has open can still be used, checked before every
statement, so that a worker never touches a file that would crash it or lose what it
writes.

*Unwritable.* SQLite keeps the WAL index in the ``-shm`` file, mapped into every worker's
memory and written through that map. A write to a mapped page of a file that cannot be
written is a SIGBUS, which kills the process: on ext4, ``chattr +i`` on the ``-shm`` file
(the kernel writes its pages back and protects them) kills every worker at its next
statement that writes the index, which a read does too after another's write.
No setting keeps several processes sharing one WAL file without that map (a WAL index in
heap memory needs ``locking_mode=EXCLUSIVE``: one process), so before each statement
the ``-shm`` file's flags are read (one ``statx``, 1-2 us). While it is immutable no
statement runs (503) and the connections are kept, untouched: closing them may
checkpoint, which writes the map too. They are used again once it can be written.
What the check cannot close is the time between it and the statement: microseconds,
or the wait for another worker's lock of a statement handed to the thread. Files made
read-only by the filesystem (``errors=remount-ro``) or full give errors, not a signal:
SQLite's own errors are the 503 then.

*Deleted or replaced.* Unlinked files stay usable by the processes that have them open,
so writes would succeed and be lost at the next start. A worker stats the ``-shm`` file
before each statement (the same ``statx``) and the database and ``-wal`` files at most
once a second. A database file deleted or replaced under it is never written again:
the worker closes its connections (SQLite neither checkpoints nor deletes anything when
it closes a file that has moved) and opens whatever is at the path now. Nothing there
(deleted): 503 until a database is put back or the app is restarted; creating an empty
one would silently log everyone out. The ``-wal`` or ``-shm`` file of the old database
still at the path: 503 until they are moved away, as SQLite would read the old file's
log into the new one. A ``-wal`` or ``-shm`` file deleted under an unchanged database:
503 until the app is restarted (two workers would otherwise write through two logs)."""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import sqlite3
import stat
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..errors import SessionStoreUnavailable

logger = logging.getLogger("quartsess")

#: (device, inode, birth time in ns or 0 where unknown): an inode number alone may be
#: reused by a new file once the old one is deleted and closed.
FileId = tuple[int, int, int]


class Look(NamedTuple):
    """What a stat of one file tells: which file it is, and whether it is immutable."""

    id: FileId
    immutable: bool


@dataclass
class OpenedFiles:
    """The files at the path when a set of connections opened them."""

    database: FileId | None
    wal: FileId | None
    shm: FileId | None
    #: Whether the -shm file could be written then (SQLite mapped it writable).
    map_writable: bool
    #: When the database and -wal files are looked at next (monotonic seconds).
    next_look: float


class SqliteFiles:
    """The files of one SQLite database as this worker's connections opened them (shared
    by the store's per-request runner and its maintenance connections)."""

    #: Seconds between two looks at the database and ``-wal`` files' inodes.
    LOOK_EVERY = 1.0

    def __init__(self, database: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = database
        self._wal = f"{database}-wal"
        self._shm = f"{database}-shm"
        self._shm_name = os.fsencode(self._shm)
        self._scratch = threading.local()  # a statx buffer per thread
        self._clock = clock
        self._lock = threading.Lock()
        self._fault: str | None = None  # the fault logged, until it ends
        #: The files given up because the database was deleted or replaced under them.
        self._gone: OpenedFiles | None = None
        self._latest: FileId | None = None  # the database file opened last

    # -- opening ------------------------------------------------------------------------

    def may_open(self) -> None:
        """Raise :class:`~quartsess.SessionStoreUnavailable` if the path must not be
        opened now: its database was deleted under this worker and nothing is there
        yet, or the old database's ``-wal`` or ``-shm`` file is still there."""
        gone = self._gone
        if gone is None:
            return
        if self._file_id(self.path) is None:
            raise self._unavailable(
                "deleted",
                f"the SQLite database {self.path} was deleted while in use; nothing more "
                "is written to it, and requests that use the session get 503 until a "
                "database is put back at that path or the app is restarted",
            )
        stale = [
            path
            for path, old in ((self._wal, gone.wal), (self._shm, gone.shm))
            if old is not None and self._file_id(path) == old
        ]
        if stale:
            raise self._unavailable(
                "stale",
                f"the SQLite database {self.path} was replaced while in use, but "
                f"{' and '.join(stale)} of the old database are still there (SQLite would "
                "read the old log into the new file); requests that use the session get "
                "503 until they are moved away",
            )
        with self._lock:
            self._gone = None
        logger.error(
            "the SQLite database %s was deleted or replaced while in use; nothing more is "
            "written to the old file, and this worker now uses the database at that path",
            self.path,
        )
        self._recovered()

    def opened(self) -> OpenedFiles:
        """The files at the path, just after connections opened them (a ``-wal`` or
        ``-shm`` file not there yet is recorded when it appears)."""
        shm = self.look(self._shm_name)
        self._latest = database = self._file_id(self.path)
        return OpenedFiles(
            database=database,
            wal=self._file_id(self._wal),
            shm=None if shm is None else shm.id,
            map_writable=shm is None or not shm.immutable,
            next_look=self._clock() + self.LOOK_EVERY,
        )

    # -- before each statement ----------------------------------------------------------

    def check(self, opened: OpenedFiles) -> bool:
        """Before a statement on the connections that opened ``opened``: True if it may
        run; False if they must be closed (their database is no longer at the path),
        after which :meth:`may_open` says whether the path may be opened. Raises
        :class:`~quartsess.SessionStoreUnavailable` while no statement may run."""
        if self._gone is not None or opened.database != self._latest:
            return self._changed(opened)  # the other connections found it, or moved on
        shm = self.look(self._shm_name)
        if shm is None:
            if opened.shm is not None:
                return self._changed(opened)
        elif opened.shm is None:
            opened.shm = shm.id  # a maintenance connection maps it at its first read
        elif shm.id != opened.shm:
            return self._changed(opened)
        if shm is not None and shm.immutable:
            raise self._unavailable(
                "immutable",
                f"the SQLite file {self._shm} is immutable, so it cannot be written; "
                "requests that use the session get 503 until it can",
            )
        now = self._clock()
        if now >= opened.next_look:
            opened.next_look = now + self.LOOK_EVERY
            wal = self._file_id(self._wal)
            if opened.wal is None:
                opened.wal = wal
            if self._file_id(self.path) != opened.database or wal != opened.wal:
                return self._changed(opened)
        if self._fault == "immutable":
            self._recovered()
        return True

    def may_close(self, opened: OpenedFiles | None) -> bool:
        """Whether connections that opened ``opened`` may be closed now: not while the
        ``-shm`` file they mapped writable is immutable (the last connection to close
        checkpoints, writing the map)."""
        if opened is None or not opened.map_writable:
            return True
        shm = self.look(self._shm_name)
        return shm is None or shm.id != opened.shm or not shm.immutable

    def _changed(self, opened: OpenedFiles) -> bool:
        database = self._file_id(self.path)
        if database is not None and database == opened.database:
            # Closing would checkpoint into this database and delete the -wal and -shm
            # files at the path, which may be another worker's new ones by then.
            raise self._unavailable(
                "log deleted",
                f"the -wal or -shm file of the SQLite database {self.path} was deleted or "
                "replaced while in use; nothing more is written to it, and requests that "
                "use the session get 503 until the app is restarted",
            )
        if database is None or database != self._latest:  # else another user has moved on
            with self._lock:
                self._gone = opened
        return False  # may_open() logs what happens next

    # -- stat ---------------------------------------------------------------------------

    def look(self, path: bytes) -> Look | None:
        """The file at ``path`` (None if there is none): one ``statx`` on Linux, which
        also gives the immutable flag (``os.stat`` does not); ``os.stat`` elsewhere."""
        if _statx is not None:
            try:
                buffer = self._scratch.buffer
            except AttributeError:
                buffer = self._scratch.buffer = ctypes.create_string_buffer(256)
            if _statx(_AT_FDCWD, path, _STATX_FLAGS, _STATX_WANTED, buffer) == 0:
                mask, attributes, ino, known, seconds, ns, major, minor = _STATX_FIELDS.unpack_from(
                    buffer
                )
                born = seconds * 1_000_000_000 + ns if mask & _STATX_BTIME else 0
                immutable = bool(attributes & known & _STATX_IMMUTABLE)
                return Look(((major << 32) | minor, ino, born), immutable)
            error = ctypes.get_errno()
            if error == errno.ENOENT:
                return None
            if error != errno.ENOSYS:  # an old kernel: os.stat below
                raise OSError(error, os.strerror(error), os.fsdecode(path))
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        born = int(getattr(st, "st_birthtime", 0) * 1_000_000_000)
        immutable = bool(getattr(st, "st_flags", 0) & _BSD_IMMUTABLE)
        return Look((st.st_dev, st.st_ino, born), immutable)

    def _file_id(self, path: str) -> FileId | None:
        found = self.look(os.fsencode(path))
        return None if found is None else found.id

    # -- faults, logged once ------------------------------------------------------------

    def _unavailable(self, fault: str, message: str) -> SessionStoreUnavailable:
        with self._lock:
            new, self._fault = self._fault != fault, fault
        if new:
            logger.error("%s", message)
        error = SessionStoreUnavailable(message)
        error.logged = True
        return error

    def _recovered(self) -> None:
        with self._lock:
            fault, self._fault = self._fault, None
        if fault is not None:
            logger.warning("the SQLite database %s is usable again", self.path)


def safe_to_close(
    files: SqliteFiles | None, opened: OpenedFiles | None, connection: sqlite3.Connection
) -> bool:
    """Whether ``connection`` may be closed now. Not if its ``-shm`` file turned
    immutable (see :meth:`SqliteFiles.may_close`): where Python allows it (3.12+) its
    checkpoint at close is turned off so it may; otherwise it is kept open for good
    (the system closes it at exit)."""
    if files is None or files.may_close(opened):
        return True
    setconfig = getattr(connection, "setconfig", None)
    if setconfig is not None:
        setconfig(getattr(sqlite3, "SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE", 1006), True)
        return True
    # Never deallocated, so never closed, not even at interpreter exit.
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(connection))
    logger.warning("a connection to %s is left open: its -shm file is immutable", files.path)
    return False


# -- stat ------------------------------------------------------------------------------


_STATX_IMMUTABLE = 0x10  # STATX_ATTR_IMMUTABLE
# struct statx: stx_mask at 0, stx_attributes at 8, stx_ino at 32, stx_attributes_mask
# at 56, stx_btime at 80 (seconds, then nanoseconds), stx_dev_major and _minor at 136.
_STATX_FIELDS = struct.Struct("<I4xQ16xQ16xQ16xqI44xII")
_STATX_FLAGS = 0x100 | 0x4000  # AT_SYMLINK_NOFOLLOW | AT_STATX_DONT_SYNC
_STATX_INO, _STATX_BTIME = 0x100, 0x800
_STATX_WANTED = _STATX_INO | _STATX_BTIME
_AT_FDCWD = -100
_BSD_IMMUTABLE = getattr(stat, "UF_IMMUTABLE", 0) | getattr(stat, "SF_IMMUTABLE", 0)


def _load_statx() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        # PyDLL keeps the GIL: releasing and taking it back costs more than the call.
        function = ctypes.PyDLL(None, use_errno=True).statx
    except (AttributeError, OSError):  # an old C library
        return None
    function.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_void_p,
    ]
    function.restype = ctypes.c_int
    return function


_statx = _load_statx()
