"""The per-request statements, compiled once per dialect, and what runs them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from sqlalchemy.engine import Dialect
from sqlalchemy.sql import Executable
from sqlalchemy.sql.compiler import SQLCompiler

Row = Sequence[Any]


class CompiledStatement:
    """A Core statement compiled for one dialect: its SQL and the order of its parameters."""

    def __init__(self, statement: Executable, dialect: Dialect, keys: Sequence[str] = ()):
        compiled = statement.compile(  # type: ignore[attr-defined]
            dialect=dialect, column_keys=list(keys) if keys else None
        )
        if not isinstance(compiled, SQLCompiler):  # pragma: no cover - DDL is never passed
            raise TypeError("only DML statements can be compiled for the hot path")
        self.statement = statement
        self.sql = str(compiled)
        self.order: list[str] = list(compiled.positiontup or [])

    def arguments(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(params[name] for name in self.order)


class StatementRunner(Protocol):
    """Runs compiled statements; raises one of the store errors when the database fails."""

    #: Keep connections open between statements; when False, close them after each.
    keep_open: bool

    async def fetch_one(
        self, statement: CompiledStatement, params: Mapping[str, Any]
    ) -> Row | None: ...

    async def rowcount(self, statement: CompiledStatement, params: Mapping[str, Any]) -> int: ...

    async def close(self) -> None: ...
