"""The clock quartsess reads "now" from: epoch seconds, injectable for tests."""

from __future__ import annotations

from collections.abc import Callable

Clock = Callable[[], float]
"""A function returning the current time in epoch seconds (``time.time`` by default)."""
