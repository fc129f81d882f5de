"""The app a ``quart sessions`` command works on, and what quartsess built for it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click
from quart.cli import ScriptInfo

from .errors import ConfigurationError

if TYPE_CHECKING:
    from quart import Quart

    from .extension import SessionParts


def load_app(info: ScriptInfo) -> Quart:
    """Load the app (``--app`` or ``QUART_APP``); a misconfiguration of quartsess is a
    message (exit status 1), not a traceback."""
    try:
        return info.load_app()
    except ConfigurationError as error:
        raise click.ClickException(f"quartsess is misconfigured: {error}") from None


def load_parts(info: ScriptInfo) -> SessionParts:
    """Load the app and build quartsess's parts for it, as the app does (with a store of
    their own: the command runs on an event loop of its own); or a message (exit
    status 1) an operator can act on."""
    app = load_app(info)
    extension = app.extensions.get("quartsess")
    if extension is None:
        raise click.ClickException(
            "quartsess is not set up on this app: call Session(app) when creating it"
        )
    parts: SessionParts = extension.compose(extension.parts_for(app).config, app)
    return parts
