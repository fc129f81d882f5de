"""Session data <-> bytes: Quart's tagged JSON, compact UTF-8, never pickle.

Apps can store types of their own by registering a :class:`~flask.json.tag.JSONTag` on a
subclass and naming that subclass in ``Session.serializer_class``.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from flask.json.tag import JSONTag, TaggedJSONSerializer

from .errors import SessionNotSerializable


class _TagPreciseDateTime(JSONTag):
    """datetime as ISO 8601: keeps microseconds and the (absent or present) timezone.

    Quart's default datetime tag goes through an HTTP date and drops both.
    """

    __slots__ = ()
    key = " dt"

    def check(self, value: Any) -> bool:
        return isinstance(value, datetime)

    def to_json(self, value: Any) -> Any:
        return value.isoformat()

    def to_python(self, value: Any) -> Any:
        return datetime.fromisoformat(value)


class SessionSerializer(TaggedJSONSerializer):
    """Quart's tagged JSON (dict, tuple, bytes, Markup, UUID, datetime) as compact UTF-8."""

    __slots__ = ("_decoder",)

    def __init__(self) -> None:
        super().__init__()
        self.register(_TagPreciseDateTime, index=0)
        self._decoder = json.JSONDecoder(object_hook=self.untag)

    def dump_bytes(self, value: dict[str, Any]) -> bytes:
        try:
            # Plain JSON content tags to itself: skip the tagging walk (same bytes).
            tagged = value if self._is_plain(value) else self.tag(value)
            text = json.dumps(tagged, separators=(",", ":"), ensure_ascii=False)
            # Inside the try: a lone surrogate ("\ud800", e.g. from a JSON request body)
            # cannot be encoded and is reported like any other unstorable value.
            return text.encode("utf-8")
        except (TypeError, ValueError) as error:
            path, kind = self._first_unstorable(value, "") or ("", type(error).__name__)
            raise SessionNotSerializable(path, kind) from error
        except RecursionError:
            raise SessionNotSerializable("", "nesting too deep to store") from None

    def _first_unstorable(self, value: Any, path: str) -> tuple[str, str] | None:
        """Where in ``value`` the first value this serializer cannot store is, and its
        type: ``("['cart'][2]", "set")``."""
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str | int | float | bool | type(None)):
                    return f"{path}[{key!r}]", f"key of type {type(key).__name__}"
                found = self._first_unstorable(item, f"{path}[{key!r}]")
                if found:
                    return found
            return None
        if isinstance(value, list | tuple):
            for index, item in enumerate(value):
                found = self._first_unstorable(item, f"{path}[{index}]")
                if found:
                    return found
            return None
        try:
            json.dumps(self.tag(value), ensure_ascii=False).encode("utf-8")
        except (TypeError, ValueError):
            kind = type(value).__name__
            return path, "str that is not valid Unicode" if kind == "str" else kind
        return None

    def _is_plain(self, value: Any) -> bool:
        """Whether ``value`` holds only exact JSON types and no dict that looks tagged."""
        try:
            return self._plain(value)
        except RecursionError:
            return False  # the tagging walk reports it

    def _plain(self, value: Any) -> bool:
        kind = type(value)
        if kind is str or kind is int or kind is float or kind is bool or value is None:
            return True
        if kind is dict:
            if len(value) == 1 and next(iter(value)) in self.tags:
                return False
            return all(type(k) is str and self._plain(v) for k, v in value.items())
        if kind is list:
            return all(self._plain(item) for item in value)
        return False

    def load_bytes(self, data: bytes) -> dict[str, Any]:
        # ``untag`` as the object hook sees every JSON object bottom-up, exactly like
        # ``loads``'s own walk, but inside the C decoder.
        value = self._decoder.decode(data.decode("utf-8"))
        if not isinstance(value, dict):
            raise ValueError("a session payload must be a JSON object")
        return value
