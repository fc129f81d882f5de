"""The app a ``quart sessions`` command works on, and what quartsess built for it."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import click
from quart.cli import ScriptInfo

from .errors import ConfigurationError
from .stores.connections import twin_engine

if TYPE_CHECKING:
    from quart import Quart

    from .config import SessionConfig
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
    their own: the command runs on an event loop of its own, see :func:`command_config`);
    or a message (exit status 1) an operator can act on. Close them with
    :func:`close_parts`."""
    app = load_app(info)
    extension = app.extensions.get("quartsess")
    if extension is None:
        raise click.ClickException(
            "quartsess is not set up on this app: call Session(app) when creating it"
        )
    parts: SessionParts = extension.compose(command_config(extension.parts_for(app).config), app)
    return parts


def command_config(config: SessionConfig) -> SessionConfig:
    """``config`` for a command's own event loop. The app's own engine gives way to a
    twin (its URL, driver arguments, pool settings and connect listeners, and an empty
    pool): the app's pool may hold connections of another event loop, and the command
    must close what it opened without disposing the app's engine."""
    if config.engine is None:
        return config
    from sqlalchemy.ext.asyncio import AsyncEngine

    return replace(config, engine=AsyncEngine(twin_engine(config.engine.sync_engine)))


async def close_parts(parts: SessionParts) -> None:
    """Close the store of :func:`load_parts`, and dispose the engine twin it made."""
    await parts.store.close()
    if parts.config.engine is not None:
        await parts.config.engine.dispose()
