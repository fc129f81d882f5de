"""Log lines a person can read, for the app and for quartsess, when nobody else set up logging."""

from __future__ import annotations

import logging
import logging.config
from typing import Any

LOGGERS = ("app", "quartsess")
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
