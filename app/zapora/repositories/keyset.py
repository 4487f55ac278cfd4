"""The WHERE and ORDER BY of a keyset page: newest first, id as the tie-breaker."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID


def clauses(
    filters: dict[str, Any], at_column: str, after: tuple[datetime, UUID] | None
) -> tuple[str, list[Any]]:
    """`WHERE ... ORDER BY ...` and its parameters. Column names come from the repositories'
    fixed lists, never from a request; a filter whose value is None is left out."""
    parts: list[str] = []
    params: list[Any] = []
    for column, value in filters.items():
        if value is not None:
            parts.append(f"{column} = %s")
            params.append(value)
    if after is not None:
        parts.append(f"({at_column}, id) < (%s, %s)")
        params.extend(after)
    where = ("WHERE " + " AND ".join(parts)) if parts else ""
    return f"{where} ORDER BY {at_column} DESC, id DESC", params
