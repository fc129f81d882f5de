"""How recent a login must be for a sensitive action (changing the password, logging out
every other device): 10 minutes, or ``QUARTSESS_RECENT_LOGIN_SECONDS`` (read when the app
is imported; the browser tests shorten it)."""

from __future__ import annotations

import os
from datetime import timedelta

RECENT = timedelta(seconds=float(os.environ.get("QUARTSESS_RECENT_LOGIN_SECONDS", "600")))
