"""Flash messages that cannot pile up in the session."""

from __future__ import annotations

from quart import flash as quart_flash
from quart import session

# Quart's flash list grows until a page shows it; a client that never follows the
# redirects would grow it, and so the session, without end.
MAX_FLASHES = 3
FLASHES_KEY = "_flashes"  # where Quart keeps them


async def flash(message: str, category: str = "message") -> None:
    """Quart's ``flash``, keeping only the newest ``MAX_FLASHES`` messages not yet shown."""
    await quart_flash(message, category)
    pending = session[FLASHES_KEY]
    if len(pending) > MAX_FLASHES:
        session[FLASHES_KEY] = pending[-MAX_FLASHES:]
