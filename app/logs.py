"""Log lines a person can read, for the app and for quartsess, when nobody else set up
logging; and what a client sent, kept short and on one line in them."""

from __future__ import annotations

import logging
import logging.config
from collections.abc import MutableMapping
from typing import Any

LOGGERS = ("app", "quartsess")
# hypercorn's access log: every atom (path, User-Agent, Referer, address) is the client's.
ACCESS_LOGGER = "hypercorn.access"
VALUE_LIMIT = 200  # characters of one value a client sent, in a log line
# The shape of hypercorn's own lines, plus which logger spoke:
# [2026-12-01 19:30:00 +0000] [1234] [INFO] quartsess: pruned 3 expired sessions in 0.01 s
FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S %z"

LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": FORMAT, "datefmt": DATE_FORMAT}},
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stderr",
            "formatter": "plain",
        }
    },
    # Propagation stays on: if the host adds a root handler later, it sees these too.
    "loggers": {name: {"level": "INFO", "handlers": ["stderr"]} for name in LOGGERS},
}


def configure_logging() -> None:
    """Send the app's and quartsess's INFO and above to stderr, with time, worker pid,
    level and logger. Left alone when the host already configured logging (a root
    handler, as ``logging.basicConfig`` or pytest add, or handlers on these loggers), so
    it neither doubles lines nor takes records away from anyone; called once per process
    in effect, since the second call finds the handlers of the first."""
    if logging.getLogger().handlers:
        return
    if any(logging.getLogger(name).handlers for name in LOGGERS):
        return
    logging.config.dictConfig(LOGGING)


def capped(value: str, limit: int = VALUE_LIMIT) -> str:
    """``value`` cut to ``limit`` characters, saying how many more there were. For what a
    client sent (a 16 kB User-Agent would be a 16 kB log line); log it with ``%r``, which
    also escapes line breaks and other control characters."""
    if len(value) <= limit:
        return value
    return f"{value[:limit]}…(+{len(value) - limit})"


def escaped(value: str) -> str:
    """``value`` with its control characters escaped (``\\n``, ``\\x1b``), for a format
    that prints it with ``%s``: so it can neither start a forged line nor drive a terminal."""
    if value.isprintable():
        return value
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in value
    )


class ClientValues(logging.Filter):
    """Caps and escapes every text value of a record's arguments (hypercorn's access log
    passes one mapping of them), before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, MutableMapping):  # changed in place: it may be a dict subclass
            for key, value in list(args.items()):
                if isinstance(value, str) and not (
                    value.isprintable() and len(value) <= VALUE_LIMIT
                ):
                    args[key] = escaped(capped(value))
        elif isinstance(args, tuple):
            record.args = tuple(
                escaped(capped(value)) if isinstance(value, str) else value for value in args
            )
        return True


def guard_access_log() -> None:
    """Put :class:`ClientValues` on hypercorn's access logger (once per process), whoever
    set up logging: the filter changes what is logged, not where it goes."""
    access = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(existing, ClientValues) for existing in access.filters):
        access.addFilter(ClientValues())
